"""Length-sorted chunks (tl_inversion.inversion.batching)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from tl_inversion.inversion import batching
from tl_inversion.inversion.batching import last_kept, length_chunks, unique_rows


def test_last_kept_is_one_past_the_last_kept_column():
    pad = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    assert last_kept(pad).tolist() == [2, 3, 1, 4]


def test_chunks_cover_every_row_once_and_fit_their_rows():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 30, (1000,), generator=g)
    chunks = length_chunks(lengths, max_rows=128, min_rows=50)
    rows = torch.cat([r for r, _ in chunks])
    assert sorted(rows.tolist()) == list(range(1000))
    for r, width in chunks:
        assert len(r) <= 128 and int(lengths[r].max()) == width
    # sorted: later chunks are never shorter
    widths = [w for _, w in chunks]
    assert widths == sorted(widths)


def test_small_groups_merge_and_equal_lengths_stay_together():
    lengths = torch.tensor([5] * 3 + [7] * 300 + [9] * 2)
    chunks = length_chunks(lengths, max_rows=1000, min_rows=256)
    assert [(len(r), w) for r, w in chunks] == [(303, 7), (2, 9)]
    assert length_chunks(torch.tensor([], dtype=torch.long), 10) == []


def _classes_by_dict(x):
    """Brute force: class of each row (by first occurrence), counts and first index, via a dict."""
    first: dict[tuple, int] = {}
    for i, row in enumerate(x.tolist()):
        first.setdefault(tuple(row), i)
    return first


@pytest.mark.parametrize("vocab,width", [(3, 6), (40, 34), (50257, 12)])
def test_unique_rows_matches_a_dictionary_of_rows(vocab, width):
    g = torch.Generator().manual_seed(vocab)
    x = torch.randint(0, vocab, (3000, width), generator=g)
    x[1000:2000] = x[:1000]  # plenty of repeats
    u = unique_rows(x)
    first = _classes_by_dict(x)
    assert u.rows.shape[0] == len(first)
    assert torch.equal(u.rows[u.inverse], x)  # every row is its class's row
    assert sorted(u.first.tolist()) == sorted(first.values())
    for k in range(u.rows.shape[0]):
        assert first[tuple(u.rows[k].tolist())] == int(u.first[k])
    tally = Counter(tuple(r) for r in x.tolist())
    assert u.counts.tolist() == [tally[tuple(r)] for r in u.rows.tolist()]


def test_unique_rows_is_exact_when_hashes_collide(monkeypatch):
    # all multipliers 1: the hash is the row sum, so (1, 2) and (2, 1) collide
    monkeypatch.setattr(batching, "_multipliers", lambda width: torch.ones(width, dtype=torch.long))
    x = torch.tensor([[1, 2], [2, 1], [1, 2], [3, 0]])
    u = unique_rows(x)
    assert u.rows.shape[0] == 3
    assert torch.equal(u.rows[u.inverse], x)
    assert sorted(zip(u.first.tolist(), u.counts.tolist())) == [(0, 2), (1, 1), (3, 1)]


def test_unique_rows_of_nothing():
    u = unique_rows(torch.zeros(0, 5, dtype=torch.long))
    assert u.rows.shape == (0, 5) and u.inverse.numel() == 0 and u.first.numel() == 0
