"""Counting contrasts for activation patching (InversionView Sec. 4.1).

Counting inputs ``B S|c:n E`` (see :mod:`tl_inversion.tasks.counting`):

* :func:`counting_random_contrasts`: a random other example (from the whole pool) whose
  answer differs (the paper's "random" contrast);
* :func:`counting_flip_contrasts`: the same string with one character of S changed into
  another letter of S so that the query letter's count n changes, every count staying in
  1..9 and the length unchanged (the paper's "flip" contrast). Flips are uniform over the
  valid (position, replacement) pairs, which is the distribution of the paper's rejection
  sampler.

Both drop the shortest (|S| = 3) and longest (|S| = 27) strings by default, as the paper
did (no flip exists for them). Both return a :class:`~tl_inversion.tasks.contrast_set.ContrastSet`
whose ``positions`` is the counting task and whose predicting position is ``":"``. Every
builder is deterministic given ``generator`` (a ``torch.Generator`` or an int seed).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from tl_inversion.errors import InputValueError
from tl_inversion.tasks import counting as _counting
from tl_inversion.tasks.contrast_set import ContrastSet, as_generator

PAPER_EXCLUDED_LENGTHS = (3, 27)
"""|S| values the paper left out of its counting patching experiments."""



_COUNT_TASK = None


def _task():
    global _COUNT_TASK
    if _COUNT_TASK is None:
        _COUNT_TASK = _counting.make_task()
    return _COUNT_TASK


def counting_digit_id(n: Tensor | int) -> Tensor:
    """Token id of the digit ``n`` (1..9) in the counting vocabulary."""
    return torch.as_tensor(n, dtype=torch.long) + (_counting.CHARS.index("1") - 1)


def _check_counting(tokens: Tensor) -> None:
    if tokens.dim() != 2 or tokens.shape[1] != _counting.N_CTX:
        raise InputValueError(f"counting tokens must be [n, {_counting.N_CTX}], got {tuple(tokens.shape)}")
    task = _task()
    eos = tokens == task.eos_id
    if not bool(eos.any(-1).all()):
        raise InputValueError("every counting row needs an EOS token ('E'); some rows have none")


def counting_length_mask(tokens: Int[Tensor, "n 33"],
                         exclude_lengths: Sequence[int] = PAPER_EXCLUDED_LENGTHS) -> Tensor:
    """``[n]`` bool: rows whose |S| is not in ``exclude_lengths``."""
    lengths = _counting.string_lengths(tokens)
    if not exclude_lengths:
        return torch.ones_like(lengths, dtype=torch.bool)
    return ~torch.isin(lengths, torch.as_tensor(list(exclude_lengths), dtype=lengths.dtype))


def counting_random_contrasts(
    tokens: Int[Tensor, "n 33"],
    *,
    generator: Any = None,  # a torch.Generator, an int seed or None; checked with a clear message
    pool: Int[Tensor, "m 33"] | None = None,
    exclude_lengths: Sequence[int] = PAPER_EXCLUDED_LENGTHS,
) -> ContrastSet:
    """Pair each counting input with a random other input that has a different answer.

    The paper's random contrast (InversionView Sec. 4.1, counting patching): clean rows
    without the excluded lengths, each paired with a row drawn uniformly from ``pool``
    (default: all of ``tokens``, excluded lengths included, as the paper drew from the
    whole test set) among those whose count n differs. The contrast may have another
    length: patching matches positions by name (``tc``, ``:``), i.e. relative to EOS.

    Args:
        tokens: ``[n, 33]`` counting token ids (e.g. ``paper_split("test")``).
        generator: a ``torch.Generator`` or an int seed (default seed 0).
        pool: where contrasts are drawn from; default ``tokens``.
        exclude_lengths: |S| values dropped from the clean rows (default (3, 27)).

    Returns:
        A :class:`ContrastSet` (answers are digit token ids of the recounted n; its
        ``positions`` is the counting task and ``answer_position`` is ``":"``); ``info``
        holds ``clean_index`` (rows of ``tokens``), ``contrast_index`` (rows of ``pool``),
        ``n_input``, ``n_excluded_length``, ``excluded_lengths``.

    Raises:
        ValueError: tokens are not ``[n, 33]`` counting rows with EOS, or the pool has a
            single answer value (no contrast exists).
    """
    _check_counting(tokens)
    pool = tokens if pool is None else pool
    _check_counting(pool)
    g = as_generator(generator)
    keep = counting_length_mask(tokens, exclude_lengths)
    clean_index = torch.nonzero(keep).flatten()
    clean = tokens[clean_index]
    clean_n = _counting.query_counts(clean)
    pool_n = _counting.query_counts(pool)
    if clean.shape[0] and bool((pool_n == pool_n[0]).all()) and bool((clean_n == pool_n[0]).any()):
        raise InputValueError("every pool row has the same answer, so no contrast with a different answer exists")
    chosen = torch.empty(clean.shape[0], dtype=torch.long)
    todo = torch.arange(clean.shape[0])
    for _ in range(10_000):
        if todo.numel() == 0:
            break
        draw = torch.randint(0, pool.shape[0], (todo.numel(),), generator=g)
        ok = pool_n[draw] != clean_n[todo]
        chosen[todo[ok]] = draw[ok]
        todo = todo[~ok]
    if todo.numel():
        raise InputValueError(f"found no contrast with a different answer for {todo.numel()} rows")
    contrast = pool[chosen]
    return ContrastSet(
        clean,
        contrast,
        counting_digit_id(clean_n),
        counting_digit_id(pool_n[chosen]),
        {
            "kind": "counting_random",
            "clean_index": clean_index,
            "contrast_index": chosen,
            "n_input": int(tokens.shape[0]),
            "n_excluded_length": int((~keep).sum()),
            "excluded_lengths": tuple(exclude_lengths),
        },
        positions=_task(),
        answer_position=":",
    )


def counting_flip_contrasts(
    tokens: Tensor,  # [n, 33] counting rows; checked here with a clear message
    *,
    generator: Any = None,  # a torch.Generator, an int seed or None; checked with a clear message
    exclude_lengths: Sequence[int] = PAPER_EXCLUDED_LENGTHS,
    chunk_size: int = 32768,
) -> ContrastSet:
    """Change one character of S so that the query letter's count changes.

    The paper's flip contrast (InversionView Sec. 4.1): one position of S is set to another
    letter occurring in S such that n changes (a non-query letter becomes the query letter,
    n + 1, or the query letter becomes another letter, n - 1), every letter count stays in
    1..9 and the length is unchanged; the answer token n of the contrast is rewritten. The
    (position, replacement) pair is uniform over the valid pairs. Rows with no valid flip
    (only |S| = 3 or 27 for the paper's data) are dropped and counted in ``info``.

    Args:
        tokens: ``[n, 33]`` counting token ids.
        generator: a ``torch.Generator`` or an int seed (default seed 0).
        exclude_lengths: |S| values dropped first (default (3, 27), as the paper).
        chunk_size: rows processed at once (bounds memory: about 1 KB per row).

    Returns:
        A :class:`ContrastSet` (``positions`` = counting task, ``answer_position`` = ``":"``);
        ``info`` holds ``clean_index``, ``flip_position`` (index in the row),
        ``flip_from``/``flip_to`` (token ids), ``delta`` (+1 or -1: the change of n),
        ``n_input``, ``n_excluded_length``, ``n_no_flip``.

    Raises:
        ValueError: tokens are not ``[n, 33]`` counting rows with EOS.
    """
    _check_counting(tokens)
    g = as_generator(generator)
    task = _task()
    keep = counting_length_mask(tokens, exclude_lengths)
    cand_index = torch.nonzero(keep).flatten()
    n_letters = 26
    chosen_pos, chosen_letter, ok_rows = [], [], []
    for start in range(0, cand_index.numel(), chunk_size):
        rows = tokens[cand_index[start : start + chunk_size]]
        b, length = rows.shape
        bar = task.resolve_position(rows, "|")
        c = rows.gather(1, task.resolve_position(rows, "c")[:, None]).squeeze(1)
        pos = torch.arange(length)
        in_s = (pos[None] >= 1) & (pos[None] < bar[:, None])  # [b, L]
        letters = torch.where(in_s, rows, torch.full_like(rows, n_letters))  # n_letters = "not in S"
        counts = torch.zeros(b, n_letters + 1, dtype=torch.long).scatter_add_(1, letters, torch.ones_like(letters))
        counts = counts[:, :n_letters]
        present = counts > 0  # [b, 26]
        cur = letters.clamp(max=n_letters - 1)  # char at each position (garbage outside S, masked)
        cur_count = counts.gather(1, cur)  # [b, L]
        r = torch.arange(n_letters)
        valid = (
            in_s[:, :, None]
            & present[:, None, :]
            & (cur[:, :, None] != r[None, None, :])
            & (cur_count[:, :, None] >= 2)  # the replaced letter keeps at least 1
            & (counts[:, None, :] <= 8)  # the new letter stays at most 9
            & ((cur[:, :, None] == c[:, None, None]) | (r[None, None, :] == c[:, None, None]))  # n changes
        )
        scores = torch.rand(valid.shape, generator=g).masked_fill_(~valid, -1.0).flatten(1)
        best = scores.argmax(1)
        has = valid.flatten(1).any(1)
        chosen_pos.append(best // n_letters)
        chosen_letter.append(best % n_letters)
        ok_rows.append(has)
    if ok_rows:
        has_flip = torch.cat(ok_rows)
        flip_pos = torch.cat(chosen_pos)[has_flip]
        flip_to = torch.cat(chosen_letter)[has_flip]
    else:
        has_flip = torch.zeros(0, dtype=torch.bool)
        flip_pos = flip_to = torch.zeros(0, dtype=torch.long)
    clean_index = cand_index[has_flip]
    clean = tokens[clean_index]
    rows_ar = torch.arange(clean.shape[0])
    contrast = clean.clone()
    flip_from = clean[rows_ar, flip_pos]
    contrast[rows_ar, flip_pos] = flip_to
    clean_n = _counting.query_counts(clean)
    contrast_n = _counting.query_counts(contrast)
    n_pos = task.resolve_position(contrast, "n")
    contrast[rows_ar, n_pos] = counting_digit_id(contrast_n)
    return ContrastSet(
        clean,
        contrast,
        counting_digit_id(clean_n),
        counting_digit_id(contrast_n),
        {
            "kind": "counting_flip",
            "clean_index": clean_index,
            "flip_position": flip_pos,
            "flip_from": flip_from,
            "flip_to": flip_to,
            "delta": contrast_n - clean_n,
            "n_input": int(tokens.shape[0]),
            "n_excluded_length": int((~keep).sum()),
            "n_no_flip": int((~has_flip).sum()),
            "excluded_lengths": tuple(exclude_lengths),
        },
        positions=task,
        answer_position=":",
    )


__all__ = [
    "PAPER_EXCLUDED_LENGTHS", "counting_digit_id", "counting_flip_contrasts", "counting_length_mask",
    "counting_random_contrasts",
]
