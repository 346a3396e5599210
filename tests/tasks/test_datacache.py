"""Task data built once per process, handed out as copies; the opt-in disk cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_inversion.errors import InputValueError
from tl_inversion.tasks import addition, counting, datacache


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv(datacache.CACHE_ENV, raising=False)
    datacache.clear_memory_cache()
    yield
    datacache.clear_memory_cache()


def _counted(value: dict[str, torch.Tensor]):
    calls = []

    def build():
        calls.append(1)
        return {k: v.clone() for k, v in value.items()}

    return build, calls


DATA = {"train": torch.tensor([[0, 3, 4, 1], [0, 5, 1, 2]]), "test": torch.tensor([[0, 7, 1, 2]])}


def test_built_once_and_copies_are_independent():
    build, calls = _counted(DATA)
    a = datacache.cached_splits("toy", 1, "train", build, splits=("train", "test"))
    a[0, 1] = 99  # a caller writing into its tensor ...
    b = datacache.cached_splits("toy", 1, "train", build, splits=("train", "test"))
    t = datacache.cached_splits("toy", 1, "test", build, splits=("train", "test"))
    assert calls == [1]  # ... one build for both splits and all three calls
    assert torch.equal(b, DATA["train"]) and torch.equal(t, DATA["test"])  # ... changes no later result
    assert b.data_ptr() != datacache.cached_splits("toy", 1, "train", build, splits=("train", "test")).data_ptr()
    datacache.cached_splits("toy", 2, "train", build, splits=("train", "test"))  # another generator version
    assert calls == [1, 1]
    with pytest.raises(InputValueError, match=r"split must be one of 'train', 'test', got 'val'"):
        datacache.cached_splits("toy", 1, "val", build, splits=("train", "test"))
    with pytest.raises(InputValueError, match=r"no \['test'\] split"):
        datacache.cached_splits("bad", 1, "train", lambda: {"train": DATA["train"]}, splits=("train", "test"))


def test_disk_cache_written_atomically_and_read_by_a_new_process(tmp_path, monkeypatch):
    monkeypatch.setenv(datacache.CACHE_ENV, str(tmp_path))
    build, calls = _counted(DATA)
    first = datacache.cached_splits("toy", 3, "train", build, splits=("train", "test"), rows={"train": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy-v3-test.npy", "toy-v3-train.npy"]
    on_disk = np.load(tmp_path / "toy-v3-train.npy")
    assert on_disk.dtype == np.uint8 and on_disk.tolist() == DATA["train"].tolist()
    datacache.clear_memory_cache()  # as a new process
    again = datacache.cached_splits("toy", 3, "train", build, splits=("train", "test"), rows={"train": 2})
    assert calls == [1] and again.dtype == torch.int64 and torch.equal(again, first)
    # a damaged file, or one of the wrong length, is rebuilt and rewritten
    (tmp_path / "toy-v3-test.npy").write_bytes(b"not an array")
    datacache.clear_memory_cache()
    assert torch.equal(datacache.cached_splits("toy", 3, "test", build, splits=("train", "test")), DATA["test"])
    assert calls == [1, 1] and np.load(tmp_path / "toy-v3-test.npy").tolist() == DATA["test"].tolist()
    datacache.clear_memory_cache()
    datacache.cached_splits("toy", 3, "train", build, splits=("train", "test"), rows={"train": 5})
    assert calls == [1, 1, 1]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_big_ids_keep_their_values(tmp_path, monkeypatch):
    monkeypatch.setenv(datacache.CACHE_ENV, str(tmp_path))
    big = {"train": torch.tensor([[50256, 300, 70000]])}
    datacache.cached_splits("big", 1, "train", lambda: big, splits=("train",))
    datacache.clear_memory_cache()
    assert datacache.cached_splits("big", 1, "train", lambda: {}, splits=("train",)).tolist() == [[50256, 300, 70000]]
    assert np.load(tmp_path / "big-v1-train.npy").dtype == np.uint32


@pytest.mark.parametrize("module", [counting, addition])
def test_paper_split_builds_once_and_returns_copies(module, monkeypatch):
    width = module.N_CTX  # the return annotation's width (checked under jaxtyping)
    small = {k: torch.arange(n * width).reshape(n, width) % 10 for k, n in (("train", 2), ("test", 1), ("all", 1))}
    build, calls = _counted(small)
    monkeypatch.setattr(module, "_build_splits", build)
    a = module.paper_split("train")
    a.zero_()
    assert torch.equal(module.paper_split("train"), small["train"])
    assert torch.equal(module.paper_split("test"), small["test"])
    assert calls == [1]
    with pytest.raises(InputValueError, match="split must be one of"):
        module.paper_split("validation")


def test_addition_split_rows_by_hand():
    """The real builder (fast for addition): the first test row is the 607,501st pair of the
    shuffle, and its tokens spell that pair's sum; 'all' is a-major."""
    all_rows = addition.paper_split("all")
    assert all_rows.shape == (810_000, 14)
    # a = 100, b = 101 is the second pair: B 1 0 0 + 1 0 1 = 2 0 1 E P
    assert all_rows[1].tolist() == [10, 1, 0, 0, 11, 1, 0, 1, 12, 2, 0, 1, 13, 14]
    tr, te = addition.paper_split("train"), addition.paper_split("test")
    assert tr.shape == (607_500, 14) and te.shape == (202_500, 14)
    order = addition.paper_order()
    a, b = 100 + order[607_500] // 900, 100 + order[607_500] % 900
    digits = [int(c) for c in f"{a}"] + [11] + [int(c) for c in f"{b}"] + [12] + [int(c) for c in str(a + b)]
    assert te[0, : len(digits) + 2].tolist() == [10, *digits, 13]
