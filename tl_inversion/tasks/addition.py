"""3-digit addition, the paper's second case study (InversionView Sec. 4.2).

Input ``B a + b = s E`` padded with ``P`` to 14 tokens, one character per token: ``a`` and
``b`` are 3-digit numbers (100..999), ``s = a + b`` written without leading zeros (3 or 4
digits). Vocabulary ``"0123456789B+=EP"`` (token id = index: digits 0..9, ``B`` 10, ``+``
11, ``=`` 12, ``E`` 13, ``P`` 14), the ids of the paper's release.

Layout (fixed by the grammar): ``B`` at 0, a at 1..3, ``+`` at 4, b at 5..7, ``=`` at 8,
the answer digits A1..A3 at 9..11, A4 at 12 when the sum has 4 digits, then ``E``.

Data set (exactly the paper's, see :func:`paper_pairs`): all 900 x 900 = 810,000 ordered
pairs ``(a, b)``, listed a-major (``a = 100..999``, for each ``b = 100..999``), shuffled by
Python's ``random.seed(0); random.shuffle(pairs)``; the first ``int(0.75 * 810000) =
607,500`` are the training split, the other 202,500 the test split. This follows the
authors' ``addition/train.py::make_dataset`` (huangxt39/InversionView) call for call.

Named positions: ``"+"``, ``"="``, ``"A1"``, ``"A2"``, ``"A3"`` (the answer digits after
``=``) and ``"A4"`` (only for rows whose sum has 4 digits). Decoders train on every
non-special position (the paper's policy for addition). The answer mask (the probed
model's targets) is the sum's digits.
"""

from __future__ import annotations

import functools
import random
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tl_inversion.errors import InputValueError
from tl_inversion.tasks.base import CharTask, PositionError, first_token
from tl_inversion.tasks.datacache import cached_splits
from tl_inversion.tasks.plan import EvalPlan, Feature

CHARS = "0123456789B+=EP"
N_CTX = 14
BOS_ID, PLUS_ID, EQUAL_ID, EOS_ID, PAD_ID = 10, 11, 12, 13, 14
N_PAIRS = 900 * 900
N_TRAIN = int(0.75 * N_PAIRS)  # 607,500


def _grammar(text: str) -> bool:
    """``a+b=s`` with a, b in 100..999 (3 digits, no leading zero) and s = str(a + b)."""
    if text.count("+") != 1 or text.count("=") != 1:
        return False
    a, rest = text.split("+")
    b, _, s = rest.partition("=")
    for num in (a, b):
        if len(num) != 3 or not num.isdigit() or num[0] == "0":
            return False
    return s.isdigit() and s == str(int(a) + int(b))


def _answer_digit(k: int):
    """Named position of the k-th answer digit (k = 1..4): ``=`` + k, checked to be a digit."""
    after_equal = first_token(EQUAL_ID, k)

    def find(tokens: Tensor) -> Tensor:
        idx = after_equal(tokens)
        if bool((idx >= tokens.shape[-1]).any()):
            raise PositionError(f"A{k}: a row is too short to hold {k} answer digits")
        held = tokens.gather(-1, idx[:, None].to(tokens.device)).squeeze(-1)
        if not bool((held <= 9).all()):
            bad = int((held > 9).nonzero()[0, 0])
            raise PositionError(
                f"A{k}: row {bad} has no {k}-th answer digit (its sum has fewer digits); "
                f"A4 exists only for sums >= 1000"
            )
        return idx

    return find


def _answer_mask(tokens: Int[Tensor, "batch n_ctx"]) -> Bool[Tensor, "batch n_ctx"]:
    """True at the sum's digits: positions after ``=`` and before the first ``E``."""
    pos = torch.arange(tokens.shape[-1], device=tokens.device)[None]
    eq = (tokens == EQUAL_ID).int().argmax(-1)[:, None]
    is_eos = tokens == EOS_ID
    eos = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), torch.full_like(eq[:, 0], tokens.shape[-1]))[:, None]
    return (pos > eq) & (pos < eos) & (tokens <= 9)


class AdditionTask(CharTask):
    """The addition :class:`~tl_inversion.tasks.base.CharTask` with its evaluation plan."""

    def default_plan(self) -> EvalPlan:
        """Addition's evaluation plan (:func:`tl_inversion.evaluation.evaluate`).

        Positions ``+ = A1 A2 A3 A4``; features: hundreds, tens and ones digit of each
        operand (token ids 0..9 at positions 1..3 and 5..7), the carry into the tens and into
        the hundreds (0/1), the sum's length (3 or 4); completeness for the queries
        615+861=1476, 925+398=1323, 101+539=640, 556+280=836 at ``= A1 A2 A3`` over all
        810,000 inputs, classes = the sum.

        Returns:
            An :class:`~tl_inversion.tasks.plan.EvalPlan`.

        Source: InversionView Sec. 4.2 (the addition readings), Sec. 3 (completeness).
        """

        def digit(i: int) -> Feature:
            return lambda t: t[:, i]

        def carry(mod: int) -> Feature:
            def fn(t: Tensor) -> Tensor:
                a, b = operands(t)
                return ((a % mod + b % mod) >= mod).long()

            return fn

        def total(t: Tensor) -> Tensor:
            a, b = operands(t)
            return a + b

        return EvalPlan(
            positions=["+", "=", "A1", "A2", "A3", "A4"],
            features={
                "a_hundreds": digit(1), "a_tens": digit(2), "a_ones": digit(3),
                "b_hundreds": digit(5), "b_tens": digit(6), "b_ones": digit(7),
                "carry_to_tens": carry(10), "carry_to_hundreds": carry(100),
                "sum_length": sum_lengths,
            },
            completeness_queries=["615+861=1476", "925+398=1323", "101+539=640", "556+280=836"],
            completeness_positions=["=", "A1", "A2", "A3"],
            candidates=lambda: paper_split("all"),
            class_fn=total,
        )


def make_task() -> AdditionTask:
    """The addition task: vocabulary, named positions, grammar, answer mask, evaluation plan.

    Returns:
        An :class:`AdditionTask` (a :class:`~tl_inversion.tasks.base.CharTask`) named ``"addition"`` with ``n_ctx`` 14,
        named positions ``"+"``, ``"="``, ``"A1"``..``"A4"`` and all non-special positions
        as training positions.

    Source: InversionView Sec. 4.2; token ids of the authors' release.
    """
    return AdditionTask(
        name="addition",
        chars=CHARS,
        bos="B",
        eos="E",
        pad="P",
        n_ctx=N_CTX,
        named_positions={
            "+": first_token(PLUS_ID),
            "=": first_token(EQUAL_ID),
            "A1": _answer_digit(1),
            "A2": _answer_digit(2),
            "A3": _answer_digit(3),
            "A4": _answer_digit(4),
        },
        train_position_names=None,
        grammar=_grammar,
        answer_mask_fn=_answer_mask,
    )


def encode_pairs(
    a: Int[np.ndarray, " _n"] | Sequence[int],  # the lengths are checked here with a clear message
    b: Int[np.ndarray, " _n"] | Sequence[int],
) -> Int[Tensor, "n 14"]:
    """Token ids of ``B a+b=(a+b) E P...`` for arrays of operands, vectorised.

    Args:
        a: first operands, an integer array (or sequence) with values in 100..999.
        b: second operands, of the same length and range.

    Returns:
        ``[n, 14]`` int64 token ids.

    Raises:
        ValueError: operands outside 100..999 or of different lengths.
    """
    a = np.asarray(a, dtype=np.int64).reshape(-1)
    b = np.asarray(b, dtype=np.int64).reshape(-1)
    if a.shape != b.shape:
        raise InputValueError(f"a and b must have the same length, got {a.shape[0]} and {b.shape[0]}")
    if a.size and (a.min() < 100 or a.max() > 999 or b.min() < 100 or b.max() > 999):
        raise InputValueError("operands must be 3-digit numbers in 100..999")
    n = a.shape[0]
    s = a + b
    out = np.full((n, N_CTX), PAD_ID, dtype=np.int64)
    out[:, 0] = BOS_ID
    for k, p in enumerate((100, 10, 1)):
        out[:, 1 + k] = (a // p) % 10
        out[:, 5 + k] = (b // p) % 10
    out[:, 4] = PLUS_ID
    out[:, 8] = EQUAL_ID
    four = s >= 1000
    # 3-digit sums at 9..11, E at 12; 4-digit sums at 9..12, E at 13
    for k, p in enumerate((100, 10, 1)):
        out[~four, 9 + k] = (s[~four] // p) % 10
    for k, p in enumerate((1000, 100, 10, 1)):
        out[four, 9 + k] = (s[four] // p) % 10
    out[~four, 12] = EOS_ID
    out[four, 13] = EOS_ID
    return torch.from_numpy(out)


@functools.lru_cache(maxsize=1)
def paper_order() -> Int[np.ndarray, " 810000"]:
    """The paper's shuffled order of the 810,000 pairs, as indices ``(a - 100) * 900 + (b - 100)``.

    ``random.seed(0)`` then ``random.shuffle`` of the a-major list of pairs, as the authors'
    ``make_dataset``; a shuffle's swaps depend only on the list length, so shuffling the
    indices gives the same permutation as shuffling the tuples.
    """
    order = list(range(N_PAIRS))
    random.Random(0).shuffle(order)
    return np.asarray(order, dtype=np.int64)


def paper_pairs(split: str = "test") -> Int[np.ndarray, "n 2"]:
    """The operand pairs ``(a, b)`` of the paper's train (607,500) or test (202,500) split.

    Raises:
        ValueError: ``split`` is not ``"train"``, ``"test"`` or ``"all"`` (all 810,000 in
            a-major enumeration order, unshuffled).
    """
    if split == "all":
        idx = np.arange(N_PAIRS, dtype=np.int64)
    elif split == "train":
        idx = paper_order()[:N_TRAIN]
    elif split == "test":
        idx = paper_order()[N_TRAIN:]
    else:
        raise InputValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    return np.stack([100 + idx // 900, 100 + idx % 900], axis=1)


#: Version of the addition data generator (:func:`paper_pairs`, :func:`encode_pairs`); bump it when
#: their output changes.
GENERATOR_VERSION = 1


def _build_splits() -> dict[str, Tensor]:
    pairs = {split: paper_pairs(split) for split in ("train", "test", "all")}
    return {split: encode_pairs(p[:, 0], p[:, 1]) for split, p in pairs.items()}


def paper_split(split: str = "test") -> Int[Tensor, "n 14"]:
    """Token ids of the paper's ``"train"`` ``[607500, 14]`` or ``"test"`` ``[202500, 14]`` split.

    ``"all"`` gives all 810,000 inputs in a-major order (for completeness, where the whole
    input space is enumerated). Built once per process (and, with ``$TL_INVERSION_DATA_CACHE``
    set, once per machine: :mod:`tl_inversion.tasks.datacache`); every call returns a fresh
    copy, so writing into it changes no later call's result.

    Raises:
        ValueError: unknown split name.
    """
    return cached_splits("addition", GENERATOR_VERSION, split, _build_splits, splits=("train", "test", "all"),
                         rows={"train": N_TRAIN, "test": N_PAIRS - N_TRAIN, "all": N_PAIRS})


def operands(tokens: Int[Tensor, "batch 14"]) -> tuple[Int[Tensor, " batch"], Int[Tensor, " batch"]]:
    """``(a, b)`` of well-formed rows, read from the tokens (positions 1..3 and 5..7)."""
    w = torch.tensor([100, 10, 1], device=tokens.device)
    return (tokens[:, 1:4] * w).sum(-1), (tokens[:, 5:8] * w).sum(-1)


def sum_lengths(tokens: Int[Tensor, "batch 14"]) -> Int[Tensor, " batch"]:
    """Number of answer digits of each row (3 or 4 for well-formed rows)."""
    return _answer_mask(tokens).sum(-1)


def _register() -> None:
    from tl_inversion.tasks import register, task_names

    task_names()  # the built-in registry first, so importing this module alone keeps counting
    register("addition", make_task, paper_split)


_register()
