"""``tl-inversion patch`` and ``path-patch`` on the embedded counting demo model: the CSV
tables equal the Python API's, and what is zero by construction is zero."""

from __future__ import annotations

import pandas as pd
import pytest

from tl_inversion.cli.app import main
from tl_inversion.demo import asset_dir, load_demo
from tl_inversion.patching import counting_flip_contrasts, patch_nodes, path_patch
from tl_inversion.tasks import task_data

MODEL = ["--model", str(asset_dir() / "probed"), "--device", "cpu"]
N = 24


@pytest.fixture(scope="module")
def demo():
    model, _ = load_demo()
    return model, counting_flip_contrasts(task_data("counting", "test")[:N], generator=3)


def test_patch_writes_the_tables_and_the_plot(tmp_path, capsys, demo):
    groups = ["e_pos@tc,:", "a0@tc + e_tok@tc", "a1@:"]
    out = tmp_path / "patch"
    assert main(["patch", *MODEL, "--groups", *groups, "--n-inputs", str(N), "--seed", "3", "--n-boot", "20",
                 "--direction", "forward", "--out", str(out)]) == 0
    table = pd.read_csv(out / "patching.csv", index_col=0)
    model, contrasts = demo
    direct = patch_nodes(model, groups, contrasts, seed=3, n_boot=20, progress=False)
    assert list(table.index) == groups
    pd.testing.assert_series_equal(table["effect"], direct["effect"], check_names=False, rtol=1e-5, atol=1e-6)
    # the flip contrast keeps the length, so the position embeddings are the same: no effect
    assert table.loc["e_pos@tc,:", "effect"] == 0
    cumulative = pd.read_csv(out / "cumulative.csv")
    assert list(cumulative["direction"].unique()) == ["forward"] and list(cumulative["step"]) == [1, 2, 3]
    # the last cumulative step patches every group: the sum of its increments
    assert cumulative["effect"].iloc[-1] == pytest.approx(cumulative["increment"].sum(), abs=1e-5)
    assert (out / "cumulative.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out


def test_path_patch_writes_the_table(tmp_path, capsys, demo):
    out = tmp_path / "path"
    edges = ["a0@tc -> a1.0.v@tc", "a0@tc -> a1.0.q@: & a0@tc -> a1.0.k@tc", "a0@tc -> a1.0.v@:"]
    assert main(["path-patch", *MODEL, "--edges", *edges, "--n-inputs", str(N), "--seed", "3", "--n-boot", "20",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    table = pd.read_csv(out / "path_patching.csv", index_col=0)
    model, contrasts = demo
    direct = path_patch(model, [["a0@tc -> a1.0.v@tc"], ["a0@tc -> a1.0.q@:", "a0@tc -> a1.0.k@tc"],
                                ["a0@tc -> a1.0.v@:"]], contrasts, seed=3, n_boot=20, progress=False)
    assert list(table.index) == list(direct.index)
    pd.testing.assert_series_equal(table["effect"], direct["effect"], check_names=False, rtol=1e-5, atol=1e-6)
    # the sender changes the stream only at tc; a value input read at ':' cannot see it
    assert table["effect"].iloc[2] == 0
    warnings = [x for x in captured.err.splitlines() if ": warning: " in x]
    assert warnings and all(x.startswith("tl-inversion path-patch: warning: ") for x in warnings)


@pytest.mark.parametrize("argv, message", [
    (["patch", "--groups", "a1@:", "--contrast", "resample"], "--contrast resample is not one of task 'counting'"),
    (["patch", "--groups", "a1@:", "--n-inputs", "0"], "--n-inputs must be >= 1"),
    (["path-patch", "--edges", "&"], "--edges has an empty edge set"),
])
def test_patching_verbs_refuse_bad_input(tmp_path, capsys, argv, message):
    assert main([argv[0], *MODEL, *argv[1:], "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
