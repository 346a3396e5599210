"""ragged_rows against a row-by-row reading of its definition."""

from __future__ import annotations

import numpy as np
import torch

from tl_inversion.inversion.pool import ragged_rows


def test_ragged_rows_is_each_rows_prefix_as_its_own_list():
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 50, (40, 9), generator=g)
    rng = np.random.default_rng(0)
    src = rng.integers(0, 40, size=300)  # repeats: several output rows share a source row
    lengths = rng.integers(0, 10, size=300)
    out = ragged_rows(values, src, lengths)
    assert out.dtype == object and out.shape == (300,)
    for r in range(300):
        assert out[r] == [int(v) for v in values[src[r]][: lengths[r]]]
        assert type(out[r]) is list and all(type(v) is int for v in out[r])
    same = [r for r in range(1, 300) if src[r] == src[0] and lengths[r] == lengths[0]]
    assert same and all(out[r] is not out[0] for r in same)  # no list is shared between rows


def test_ragged_rows_of_floats_and_of_nothing():
    values = torch.tensor([[0.5, 0.25, 1.0]])
    assert ragged_rows(values, np.array([0, 0]), np.array([3, 1])).tolist() == [[0.5, 0.25, 1.0], [0.5]]
    assert ragged_rows(values, np.array([], dtype=np.int64), np.array([], dtype=np.int64)).shape == (0,)
