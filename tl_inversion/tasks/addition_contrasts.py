"""Addition contrasts for activation patching (InversionView Sec. 4.2).

Addition rows read ``B a + b = sum E`` padded to 14 with ``P`` (ids: '0'..'9' = 0..9, ``B``
10, ``+`` 11, ``=`` 12, ``E`` 13, ``P`` 14; see :mod:`tl_inversion.tasks.addition`). The
paper verifies its addition readings by patching from contrasts whose chosen operand digits
are redrawn: :func:`addition_resample_digits` follows that recipe. Each chosen digit is
redrawn uniformly in 0..9, *leading zeros included* (a contrast operand may read ``023``;
the probed model never saw such rows in training, but they are what the recipe draws), the
sum is recomputed and written without leading zeros, and the draw is repeated until the
token the model predicts at the answer position changes.

Contrast rows are built here (:func:`addition_contrast_tokens`), not by the task's
encoder, because the task's grammar only admits operands 100..999.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from tl_inversion.errors import InputValueError
from tl_inversion.tasks.contrast_set import ContrastDropWarning, ContrastSet, as_generator

ADDITION_BOS, ADDITION_PLUS, ADDITION_EQ, ADDITION_EOS, ADDITION_PAD = 10, 11, 12, 13, 14
ADDITION_N_CTX = 14
#: Index of "=" in every addition row; sum digit k is predicted at ``ADDITION_EQ_POS + k``.
ADDITION_EQ_POS = 8
_DIGIT_SLOTS = {"a0": 1, "a1": 2, "a2": 3, "b0": 5, "b1": 6, "b2": 7}


def _sum_digits(s: Tensor) -> Tensor:
    """``[n]`` number of digits of each non-negative sum written without leading zeros."""
    return 1 + (s >= 10).long() + (s >= 100).long() + (s >= 1000).long()


def addition_contrast_tokens(a: Tensor | Sequence[int], b: Tensor | Sequence[int]) -> Int[Tensor, "n 14"]:
    """Rows ``B ddd + ddd = sum E P..`` for operands 0..999, written with three digits each.

    Operands below 100 keep their leading zeros (``23`` is written ``023``); the sum is
    written without leading zeros (1 to 4 digits), then ``E``, then ``P`` up to 14 tokens.
    For operands in 100..999 the rows equal the task's own encoding.

    Args:
        a: ``[n]`` first operands, 0..999.
        b: ``[n]`` second operands, 0..999.

    Returns:
        ``[n, 14]`` token ids.

    Raises:
        InputValueError: operands of different lengths or outside 0..999.
    """
    a = torch.as_tensor(a, dtype=torch.long).flatten()
    b = torch.as_tensor(b, dtype=torch.long).flatten()
    if a.shape != b.shape:
        raise InputValueError(f"a and b need the same length, got {a.shape[0]} and {b.shape[0]}")
    for name, x in (("a", a), ("b", b)):
        if x.numel() and (int(x.min()) < 0 or int(x.max()) > 999):
            raise InputValueError(f"operand {name} must be in 0..999 (written with three digits)")
    s = a + b
    n = a.shape[0]
    out = torch.full((n, ADDITION_N_CTX), ADDITION_PAD, dtype=torch.long)
    out[:, 0] = ADDITION_BOS
    for i, x in ((1, a), (5, b)):
        out[:, i] = x // 100
        out[:, i + 1] = (x // 10) % 10
        out[:, i + 2] = x % 10
    out[:, 4] = ADDITION_PLUS
    out[:, ADDITION_EQ_POS] = ADDITION_EQ
    length = _sum_digits(s)
    all_digits = torch.stack([s // 1000, (s // 100) % 10, (s // 10) % 10, s % 10], 1)  # [n, 4]
    ar = torch.arange(n)
    for k in range(4):  # k-th written digit of the sum is all_digits[4 - length + k]
        has = length > k
        out[ar[has], ADDITION_EQ_POS + 1 + k] = all_digits[ar[has], (4 - length + k)[has]]
    out[ar, ADDITION_EQ_POS + 1 + length] = ADDITION_EOS
    return out


def addition_tokens(a: Tensor | Sequence[int], b: Tensor | Sequence[int]) -> Int[Tensor, "n 14"]:
    """Rows ``B a + b = sum E P..`` for 3-digit operands (the task's grammar).

    Args:
        a: ``[n]`` first operands, 100..999.
        b: ``[n]`` second operands, 100..999.

    Returns:
        ``[n, 14]`` token ids.

    Raises:
        InputValueError: an operand outside 100..999 (contrast rows with leading zeros come
            from :func:`addition_contrast_tokens`).
    """
    a = torch.as_tensor(a, dtype=torch.long).flatten()
    b = torch.as_tensor(b, dtype=torch.long).flatten()
    for name, x in (("a", a), ("b", b)):
        if x.numel() and (int(x.min()) < 100 or int(x.max()) > 999):
            raise InputValueError(f"operand {name} must be a 3-digit number (100..999)")
    return addition_contrast_tokens(a, b)


def addition_operands(tokens: Int[Tensor, "n 14"]) -> tuple[Tensor, Tensor]:
    """``(a, b)``, each ``[n]``, of addition rows (leading zeros allowed).

    Raises:
        InputValueError: rows not of the form ``B ddd + ddd = ...``.
    """
    if tokens.dim() != 2 or tokens.shape[1] != ADDITION_N_CTX:
        raise InputValueError(f"addition tokens must be [n, {ADDITION_N_CTX}], got {tuple(tokens.shape)}")
    fixed_ok = ((tokens[:, 0] == ADDITION_BOS) & (tokens[:, 4] == ADDITION_PLUS)
                & (tokens[:, ADDITION_EQ_POS] == ADDITION_EQ))
    digits = tokens[:, [1, 2, 3, 5, 6, 7]]
    if not bool(fixed_ok.all()) or bool((digits > 9).any()):
        raise InputValueError("addition rows must read 'B ddd + ddd = sum E' "
                              "(ids: digits 0-9, B 10, + 11, = 12, E 13, P 14)")
    a = tokens[:, 1] * 100 + tokens[:, 2] * 10 + tokens[:, 3]
    b = tokens[:, 5] * 100 + tokens[:, 6] * 10 + tokens[:, 7]
    return a, b


def addition_sum_lengths(tokens: Int[Tensor, "n 14"]) -> Int[Tensor, " n"]:
    """``[n]`` number of digits of each row's sum (1..4; 3 or 4 for the task's rows)."""
    a, b = addition_operands(tokens)
    return _sum_digits(a + b)


def addition_resample_digits(
    tokens: Int[Tensor, "n 14"],
    digits: Sequence[str],
    *,
    generator: Any = None,  # a torch.Generator, an int seed or None; checked with a clear message
    must_change: bool = False,
    clean_sum_lengths: Sequence[int] | None = None,
    contrast_sum_lengths: Sequence[int] | None = None,
    same_sum_length: bool = False,
    answer_digit: int = 0,
    answer_must_change: bool = True,
    max_tries: int = 100,
) -> ContrastSet:
    """Contrast addition inputs with chosen operand digits redrawn (the paper's recipe).

    Each row's digits named in ``digits`` are redrawn uniformly in 0..9, leading digits
    included (so a contrast operand may have leading zeros; with ``must_change`` uniformly
    among the nine values other than the current one). The sum is recomputed and written
    without leading zeros (:func:`addition_contrast_tokens`). The draw is repeated (up to
    ``max_tries``) until the filters hold; rows that never pass are dropped and reported in
    a :class:`~tl_inversion.tasks.contrast_set.ContrastDropWarning` and in ``info``.

    The target answer token is the token after position ``8 + answer_digit``: a sum digit,
    or ``E`` where the sum is shorter. A contrast whose token there is ``P`` (its sum ends
    earlier still) has no answer at that position and is always redrawn.

    Args:
        tokens: ``[n, 14]`` addition rows ``B a + b = sum E P..`` (operands 100..999).
        digits: which digits to redraw: ``"a0"``, ``"a1"``, ``"a2"``, ``"b0"``, ``"b1"``,
            ``"b2"``; index 0 is the leftmost (hundreds) digit as written.
        generator: a ``torch.Generator`` or an int seed (default seed 0).
        must_change: every redrawn digit differs from the original (default ``False``: the
            paper draws each digit uniformly in 0..9).
        clean_sum_lengths: keep only clean rows whose sum has one of these lengths (3, 4).
        contrast_sum_lengths: the contrast's sum must have one of these lengths (1..4).
        same_sum_length: the contrast's sum must be as long as the clean one.
        answer_digit: which answer token is the target (0 = first written sum digit).
        answer_must_change: the contrast's target answer token must differ from the clean
            one (default ``True``, as in the paper: otherwise the logit difference is 0).
        max_tries: redraws per row before it is dropped.

    Returns:
        A :class:`~tl_inversion.tasks.contrast_set.ContrastSet` with ``answer_position = 8 +
        answer_digit`` (the position that predicts the target token) and ``positions=None``;
        ``info`` has ``clean_index``, ``n_input``, ``n_filtered_clean``, ``n_no_contrast``,
        ``digits``, ``tries``.

    Raises:
        InputValueError: unknown digit names (the valid ones are listed), bad rows, or an
            ``answer_digit`` outside 0..3.

    Warns:
        ContrastDropWarning: some clean rows had no contrast passing the filters within
            ``max_tries`` draws, or were removed by ``clean_sum_lengths``.
    """
    bad = [d for d in digits if d not in _DIGIT_SLOTS]
    if bad or not digits:
        raise InputValueError(f"unknown digits {bad or digits!r}; valid: {', '.join(_DIGIT_SLOTS)} "
                              "(index 0 = hundreds)")
    if not 0 <= answer_digit <= 3:
        raise InputValueError(f"answer_digit must be in 0..3 (a sum has at most 4 digits), got {answer_digit}")
    g = as_generator(generator)
    a, b = addition_operands(tokens)
    lengths = _sum_digits(a + b)
    keep = torch.ones_like(lengths, dtype=torch.bool)
    if clean_sum_lengths is not None:
        keep &= torch.isin(lengths, torch.as_tensor(list(clean_sum_lengths)))
    clean_index = torch.nonzero(keep).flatten()
    clean = addition_tokens(a[clean_index], b[clean_index])
    clean_len = lengths[clean_index]
    n = clean.shape[0]
    slots = [_DIGIT_SLOTS[d] for d in dict.fromkeys(digits)]
    ans_col = ADDITION_EQ_POS + 1 + answer_digit
    contrast = clean.clone()
    done = torch.zeros(n, dtype=torch.bool)
    tries = torch.zeros(n, dtype=torch.long)
    for _ in range(max_tries):
        todo = torch.nonzero(~done).flatten()
        if todo.numel() == 0:
            break
        tries[todo] += 1
        cand = clean[todo].clone()
        for slot in slots:
            if must_change:
                draw = torch.randint(0, 9, (todo.numel(),), generator=g)
                draw = draw + (draw >= cand[:, slot]).long()  # skip the current value
            else:
                draw = torch.randint(0, 10, (todo.numel(),), generator=g)
            cand[:, slot] = draw
        ca, cb = addition_operands(cand)
        cand = addition_contrast_tokens(ca, cb)
        clen = _sum_digits(ca + cb)
        ok = cand[:, ans_col] != ADDITION_PAD  # the contrast has an answer token there
        if contrast_sum_lengths is not None:
            ok &= torch.isin(clen, torch.as_tensor(list(contrast_sum_lengths)))
        if same_sum_length:
            ok &= clen == clean_len[todo]
        if answer_must_change:
            ok &= cand[:, ans_col] != clean[todo, ans_col]
        contrast[todo[ok]] = cand[ok]
        done[todo[ok]] = True
    final = torch.nonzero(done).flatten()
    n_filtered, n_none = int((~keep).sum()), int((~done).sum())
    if n_filtered or n_none:
        warnings.warn(
            f"addition_resample_digits dropped {n_filtered + n_none} of {int(tokens.shape[0])} rows: "
            f"{n_filtered} by clean_sum_lengths, {n_none} with no contrast passing the filters in {max_tries} draws "
            "(see info['n_filtered_clean'], info['n_no_contrast'])",
            ContrastDropWarning,
            stacklevel=2,
        )
    return ContrastSet(
        clean[final],
        contrast[final],
        clean[final, ans_col],
        contrast[final, ans_col],
        {
            "kind": "addition_resample",
            "clean_index": clean_index[final],
            "digits": tuple(dict.fromkeys(digits)),
            "must_change": must_change,
            "answer_must_change": answer_must_change,
            "n_input": int(tokens.shape[0]),
            "n_filtered_clean": n_filtered,
            "n_no_contrast": n_none,
            "tries": tries[final],
        },
        positions=None,
        answer_position=ADDITION_EQ_POS + answer_digit,
    )


__all__ = [
    "ADDITION_BOS", "ADDITION_EOS", "ADDITION_EQ", "ADDITION_EQ_POS", "ADDITION_N_CTX", "ADDITION_PAD", "ADDITION_PLUS",
    "addition_contrast_tokens", "addition_operands", "addition_resample_digits", "addition_sum_lengths",
    "addition_tokens",
]
