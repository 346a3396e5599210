"""Length-sorted chunks: run causal models on right-padded rows without computing the padding.

In a causal model the output at position ``i`` depends only on positions ``<= i``, so a
batch of right-padded rows can be cut after its longest row without changing any kept
value. :func:`length_chunks` sorts rows by length and groups them so that each chunk is cut
close to every row's own length: preimage candidates differ in length (counting: 6 to 33
tokens), and without sorting a whole batch runs to its longest row.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

__all__ = ["MIN_CHUNK_ROWS", "length_chunks", "last_kept"]

#: Rows below which a chunk of equal-length rows is merged with its longer neighbour.
MIN_CHUNK_ROWS = 256


def last_kept(drop: Tensor) -> Int[Tensor, " n"]:
    """``[n]`` columns to keep per row: one past the last column where ``drop`` ``[n, pos]`` is False (>= 1)."""
    cols = torch.arange(1, drop.shape[1] + 1, device=drop.device)
    return torch.where(drop, torch.zeros_like(cols), cols).amax(dim=1).clamp_min(1)


def length_chunks(lengths: Int[Tensor, " n"], max_rows: int,
                  min_rows: int = MIN_CHUNK_ROWS) -> list[tuple[Int[Tensor, " k"], int]]:
    """Chunks ``(row indices, width)`` covering every row once, each of at most ``max_rows`` rows.

    Rows are sorted by length (stable); rows of equal length form a group; a group is
    merged with the next (longer) ones until the chunk has at least ``min_rows`` rows
    (fewer, larger calls) or would exceed ``max_rows``. ``width`` is the longest length in
    the chunk.

    Args:
        lengths: ``[n]`` columns each row needs (CPU).
        max_rows: most rows per chunk (memory).
        min_rows: equal-length groups smaller than this are merged with longer ones.
    """
    n = lengths.shape[0]
    if n == 0:
        return []
    order = torch.argsort(lengths, stable=True)
    sorted_len = lengths[order].tolist()
    chunks, start = [], 0
    for i in range(1, n + 1):
        size = i - start
        boundary = i == n or sorted_len[i] != sorted_len[i - 1]
        if size >= max_rows or (boundary and size >= min_rows) or i == n:
            chunks.append((order[start:i], int(sorted_len[i - 1])))
            start = i
    return chunks
