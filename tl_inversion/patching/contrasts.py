"""Contrast (corrupted) inputs for activation patching, per task.

Activation patching (InversionView Sec. 4, "causal verification"; Wang et al. 2022) runs a
clean input, replaces some activations by those of a *contrast* input, and measures how far
the output moves towards the contrast's answer. Which contrast is used decides what is
tested. The builders here return a :class:`ContrastSet`:
``(clean_tokens, contrast_tokens, clean_answer_ids, contrast_answer_ids, info)`` (it unpacks
as that 5-tuple) plus the position resolver and the predicting position that the patching
functions pick up by default.

Counting (``B S|c:n E``, see :mod:`tl_inversion.tasks.counting`):

* :func:`counting_random_contrasts`: a random other example (from the whole pool) whose
  answer differs (the paper's "random" contrast);
* :func:`counting_flip_contrasts`: the same string with one character of S changed into
  another letter of S so that the query letter's count n changes, every count staying in
  1..9 and the length unchanged (the paper's "flip" contrast). Flips are uniform over the
  valid (position, replacement) pairs, which is the distribution of the paper's rejection
  sampler.

Both drop the shortest (|S| = 3) and longest (|S| = 27) strings by default, as the paper
did (no flip exists for them).

Addition (``B a + b = sum E`` padded to 14 with P; '0'..'9' = 0..9, B 10, + 11, = 12, E 13,
P 14; a, b in 100..999): :func:`addition_resample_digits` redraws chosen operand digits,
with filters on the length of the sum.

Every builder is deterministic given ``generator`` (a ``torch.Generator`` or an int seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from tl_inversion.tasks import counting as _counting
from tl_inversion.errors import InputTypeError, InputValueError

PAPER_EXCLUDED_LENGTHS = (3, 27)
"""|S| values the paper left out of its counting patching experiments."""


@dataclass
class ContrastSet:
    """Clean inputs paired row by row with contrast inputs, and their answers.

    Unpacks as ``clean_tokens, contrast_tokens, clean_answers, contrast_answers, info``.

    Args:
        clean_tokens: ``[n, pos]`` token ids of the clean inputs.
        contrast_tokens: ``[n, pos']`` token ids of the contrast inputs (row i pairs with
            clean row i; ``pos'`` may differ from ``pos``).
        clean_answers: ``[n]`` token id of each clean input's correct answer.
        contrast_answers: ``[n]`` token id of each contrast input's answer.
        info: how the set was built and filtered (indices into the input, counts of
            dropped rows, per-row details such as the flipped position).
        positions: what resolves named positions (a task), or ``None``.
        answer_position: the position whose logits predict the answer (a name or an int).
    """

    clean_tokens: Int[Tensor, "n pos"]
    contrast_tokens: Int[Tensor, "n pos_c"]
    clean_answers: Int[Tensor, " n"]
    contrast_answers: Int[Tensor, " n"]
    info: dict[str, Any] = field(default_factory=dict)
    positions: Any = None
    answer_position: int | str | None = None

    def __post_init__(self) -> None:
        n = self.clean_tokens.shape[0]
        for name in ("contrast_tokens", "clean_answers", "contrast_answers"):
            t = getattr(self, name)
            if t is not None and t.shape[0] != n:
                raise InputValueError(f"{name} has {t.shape[0]} rows, clean_tokens has {n}")

    def __iter__(self) -> Iterator[Any]:
        return iter((self.clean_tokens, self.contrast_tokens, self.clean_answers, self.contrast_answers, self.info))

    @property
    def n(self) -> int:
        """Number of pairs."""
        return int(self.clean_tokens.shape[0])

    def subset(self, index: Tensor | slice | Sequence[int]) -> "ContrastSet":
        """The pairs at ``index`` (per-row ``info`` tensors are indexed too)."""
        if isinstance(index, slice):
            index = torch.arange(self.n)[index]
        index = torch.as_tensor(index, dtype=torch.long)
        info = {k: (v[index] if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == self.n else v) for k, v in self.info.items()}
        return ContrastSet(
            self.clean_tokens[index],
            self.contrast_tokens[index],
            self.clean_answers[index],
            self.contrast_answers[index],
            info,
            self.positions,
            self.answer_position,
        )

    def swapped(self) -> "ContrastSet":
        """Contrast and clean exchanged (for denoising: start from the contrast input)."""
        return ContrastSet(
            self.contrast_tokens, self.clean_tokens, self.contrast_answers, self.clean_answers, dict(self.info),
            self.positions, self.answer_position,
        )

    def __repr__(self) -> str:
        return (
            f"ContrastSet(n={self.n}, clean {tuple(self.clean_tokens.shape)}, contrast {tuple(self.contrast_tokens.shape)}, "
            f"answer_position={self.answer_position!r}, info keys={sorted(self.info)})"
        )


def as_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """A CPU ``torch.Generator`` from a generator, a seed, or ``None`` (seed 0)."""
    if isinstance(generator, torch.Generator):
        return generator
    if generator is None:
        generator = 0
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise InputTypeError(f"generator must be a torch.Generator or an int seed, got {type(generator).__name__}")
    return torch.Generator().manual_seed(generator)


# Counting -------------------------------------------------------------------------------

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


def counting_length_mask(tokens: Int[Tensor, "n 33"], exclude_lengths: Sequence[int] = PAPER_EXCLUDED_LENGTHS) -> Tensor:
    """``[n]`` bool: rows whose |S| is not in ``exclude_lengths``."""
    lengths = _counting.string_lengths(tokens)
    if not exclude_lengths:
        return torch.ones_like(lengths, dtype=torch.bool)
    return ~torch.isin(lengths, torch.as_tensor(list(exclude_lengths), dtype=lengths.dtype))


def counting_random_contrasts(
    tokens: Int[Tensor, "n 33"],
    *,
    generator: torch.Generator | int | None = None,
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
    tokens: Int[Tensor, "n 33"],
    *,
    generator: torch.Generator | int | None = None,
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
        counts = torch.zeros(b, n_letters + 1, dtype=torch.long).scatter_add_(1, letters, torch.ones_like(letters))[:, :n_letters]
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


# Addition -------------------------------------------------------------------------------

ADDITION_BOS, ADDITION_PLUS, ADDITION_EQ, ADDITION_EOS, ADDITION_PAD = 10, 11, 12, 13, 14
ADDITION_N_CTX = 14
#: Index of "=" in every addition row; sum digit k is predicted at ``ADDITION_EQ_POS + k``.
ADDITION_EQ_POS = 8
_DIGIT_SLOTS = {"a0": 1, "a1": 2, "a2": 3, "b0": 5, "b1": 6, "b2": 7}


def addition_tokens(a: Tensor | Sequence[int], b: Tensor | Sequence[int]) -> Int[Tensor, "n 14"]:
    """Rows ``B a + b = sum E P..`` for 3-digit operands (sum without leading zeros).

    Raises:
        ValueError: an operand outside 100..999.
    """
    a = torch.as_tensor(a, dtype=torch.long).flatten()
    b = torch.as_tensor(b, dtype=torch.long).flatten()
    if a.shape != b.shape:
        raise InputValueError(f"a and b need the same length, got {a.shape[0]} and {b.shape[0]}")
    for name, x in (("a", a), ("b", b)):
        if x.numel() and (int(x.min()) < 100 or int(x.max()) > 999):
            raise InputValueError(f"operand {name} must be a 3-digit number (100..999)")
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
    four = s >= 1000
    digits = torch.stack([s // 1000, (s // 100) % 10, (s // 10) % 10, s % 10], 1)
    out[four, 9:13] = digits[four]
    out[four, 13] = ADDITION_EOS
    out[~four, 9:12] = digits[~four, 1:]
    out[~four, 12] = ADDITION_EOS
    return out


def addition_operands(tokens: Int[Tensor, "n 14"]) -> tuple[Tensor, Tensor]:
    """``(a, b)`` of addition rows.

    Raises:
        ValueError: rows not of the form ``B ddd + ddd = ...``.
    """
    if tokens.dim() != 2 or tokens.shape[1] != ADDITION_N_CTX:
        raise InputValueError(f"addition tokens must be [n, {ADDITION_N_CTX}], got {tuple(tokens.shape)}")
    fixed_ok = (tokens[:, 0] == ADDITION_BOS) & (tokens[:, 4] == ADDITION_PLUS) & (tokens[:, ADDITION_EQ_POS] == ADDITION_EQ)
    digits = tokens[:, [1, 2, 3, 5, 6, 7]]
    if not bool(fixed_ok.all()) or bool((digits > 9).any()):
        raise InputValueError("addition rows must read 'B ddd + ddd = sum E' (ids: digits 0-9, B 10, + 11, = 12, E 13, P 14)")
    a = tokens[:, 1] * 100 + tokens[:, 2] * 10 + tokens[:, 3]
    b = tokens[:, 5] * 100 + tokens[:, 6] * 10 + tokens[:, 7]
    return a, b


def addition_sum_lengths(tokens: Int[Tensor, "n 14"]) -> Int[Tensor, " n"]:
    """Number of digits of each row's sum (3 or 4), from the operands."""
    a, b = addition_operands(tokens)
    return 3 + (a + b >= 1000).long()


def addition_resample_digits(
    tokens: Int[Tensor, "n 14"],
    digits: Sequence[str],
    *,
    generator: torch.Generator | int | None = None,
    must_change: bool = True,
    clean_sum_lengths: Sequence[int] | None = None,
    contrast_sum_lengths: Sequence[int] | None = None,
    same_sum_length: bool = False,
    answer_digit: int = 0,
    answer_must_change: bool = False,
    max_tries: int = 100,
) -> ContrastSet:
    """Contrast addition inputs with chosen operand digits redrawn.

    Each row's digits named in ``digits`` are redrawn uniformly (the leading digit of an
    operand in 1..9, the others in 0..9; with ``must_change`` uniformly among the values
    other than the current one), the sum is recomputed and rewritten, and the draw is
    repeated (up to ``max_tries``) until the filters hold; rows that never pass are dropped.

    Args:
        tokens: ``[n, 14]`` addition rows ``B a + b = sum E P..``.
        digits: which digits to redraw: ``"a0"``, ``"a1"``, ``"a2"``, ``"b0"``, ``"b1"``,
            ``"b2"``; index 0 is the leftmost (hundreds) digit as written.
        generator: a ``torch.Generator`` or an int seed (default seed 0).
        must_change: every redrawn digit differs from the original.
        clean_sum_lengths: keep only clean rows whose sum has one of these lengths (3, 4).
        contrast_sum_lengths: the contrast's sum must have one of these lengths.
        same_sum_length: the contrast's sum must be as long as the clean one.
        answer_digit: which sum digit is the answer (0 = first written digit); the answer
            of a row whose sum is shorter is the EOS token predicted there.
        answer_must_change: the contrast's answer token must differ from the clean one.
        max_tries: redraws per row before it is dropped.

    Returns:
        A :class:`ContrastSet` with ``answer_position = 8 + answer_digit`` (the position that
        predicts that digit) and ``positions=None``; ``info`` has ``clean_index``,
        ``n_input``, ``n_filtered_clean``, ``n_no_contrast``, ``digits``, ``tries``.

    Raises:
        ValueError: unknown digit names (the valid ones are listed), bad rows, or a bad
            ``answer_digit``.
    """
    bad = [d for d in digits if d not in _DIGIT_SLOTS]
    if bad or not digits:
        raise InputValueError(f"unknown digits {bad or digits!r}; valid: {', '.join(_DIGIT_SLOTS)} (index 0 = hundreds)")
    if not 0 <= answer_digit <= 3:
        raise InputValueError(f"answer_digit must be in 0..3 (a sum has at most 4 digits), got {answer_digit}")
    g = as_generator(generator)
    a, b = addition_operands(tokens)
    lengths = 3 + (a + b >= 1000).long()
    keep = torch.ones_like(lengths, dtype=torch.bool)
    if clean_sum_lengths is not None:
        keep &= torch.isin(lengths, torch.as_tensor(list(clean_sum_lengths)))
    clean_index = torch.nonzero(keep).flatten()
    clean = addition_tokens(a[clean_index], b[clean_index])
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
            low = 1 if slot in (1, 5) else 0
            span = 10 - low
            if must_change:
                draw = torch.randint(0, span - 1, (todo.numel(),), generator=g) + low
                draw = draw + (draw >= cand[:, slot]).long()  # skip the current value
            else:
                draw = torch.randint(0, span, (todo.numel(),), generator=g) + low
            cand[:, slot] = draw
        ca, cb = addition_operands(cand)
        cand = addition_tokens(ca, cb)
        clen = 3 + (ca + cb >= 1000).long()
        ok = torch.ones(todo.numel(), dtype=torch.bool)
        if contrast_sum_lengths is not None:
            ok &= torch.isin(clen, torch.as_tensor(list(contrast_sum_lengths)))
        if same_sum_length:
            ok &= clen == lengths[clean_index][todo]
        if answer_must_change:
            ok &= cand[:, ans_col] != clean[todo, ans_col]
        contrast[todo[ok]] = cand[ok]
        done[todo[ok]] = True
    final = torch.nonzero(done).flatten()
    return ContrastSet(
        clean[final],
        contrast[final],
        clean[final, ans_col],
        contrast[final, ans_col],
        {
            "kind": "addition_resample",
            "clean_index": clean_index[final],
            "digits": tuple(dict.fromkeys(digits)),
            "n_input": int(tokens.shape[0]),
            "n_filtered_clean": int((~keep).sum()),
            "n_no_contrast": int((~done).sum()),
            "tries": tries[final],
        },
        positions=None,
        answer_position=ADDITION_EQ_POS + answer_digit,
    )
