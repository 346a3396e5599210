"""Atomic writes: permissions of a plain write, and nothing left behind when replacing."""

from __future__ import annotations

import os
import stat

import pytest

from tl_inversion.io import atomic_write_bytes, atomic_write_dir


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_and_folders_get_plain_permissions(tmp_path, umask_022):
    """With umask 022 a plain write gives 0644 files and 0755 folders; so must ours (a bank on
    a shared disk is readable by colleagues, as `torch.save` output would be)."""
    atomic_write_bytes(tmp_path / "f.bin", b"abc")
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o644

    def fill(d):
        atomic_write_bytes(d / "inner.json", b"{}")
        (d / "sub").mkdir(mode=0o700)
        with os.fdopen(os.open(d / "sub" / "weights", os.O_CREAT | os.O_WRONLY, 0o600), "wb") as f:
            f.write(b"w")  # as safetensors' save_file does: owner-only

    atomic_write_dir(tmp_path / "bank", fill)
    assert stat.S_IMODE((tmp_path / "bank").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "bank" / "inner.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "bank" / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "bank" / "sub" / "weights").stat().st_mode) == 0o644


def test_replacing_leaves_only_the_new_folder(tmp_path):
    """A folder or a file at the target is replaced whole; no hidden `.old` or `.tmp` remains."""
    def fill(d):
        (d / "x").write_text("new")

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "stale").write_text("old")
    (tmp_path / "b").write_text("a file")
    for name in ("a", "b"):
        atomic_write_dir(tmp_path / name, fill)
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]

    def fail(d):
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        atomic_write_dir(tmp_path / "a", fail)
    assert (tmp_path / "a" / "x").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
