"""Length-sorted chunks (tl_inversion.inversion.batching)."""

from __future__ import annotations

import torch

from tl_inversion.inversion.batching import last_kept, length_chunks


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
