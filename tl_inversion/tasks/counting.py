"""Character counting, the paper's first case study (InversionView Sec. 4.1).

Input ``B S|c:n E`` padded with ``P`` to 33 tokens: S is a shuffled string over 3
distinct letters occurring 1..9 times each, c one of them, n its count. One character per
token, vocabulary ``abcdefghijklmnopqrstuvwxyz123456789|:BEP`` (token id = index).

The data set is the paper's: for each of the 2600 letter triples, 200 distinct count
triples, three examples each (one per query letter, each with a fresh shuffle), drawn with
Python's ``random.seed(0)``; shuffled and split 75/25. Named positions: ``"c"`` (the query
letter, also ``"tc"``), ``":"`` (where n is predicted), ``"|"`` and ``"n"`` (the answer).
"""

from __future__ import annotations

import random
import string
from itertools import combinations

import torch
from jaxtyping import Int
from torch import Tensor

from tl_inversion.tasks.base import CharTask, eos_offset
from tl_inversion.tasks.datacache import cached_splits
from tl_inversion.tasks.plan import EvalPlan

CHARS = string.ascii_lowercase + "123456789|:BEP"
N_CTX = 33


def _grammar(text: str) -> bool:
    """``S|c:n`` with S over <= 3 distinct letters, c in S, n = count of c in S."""
    if text.count("|") != 1 or text.count(":") != 1:
        return False
    s, rest = text.split("|")
    c, _, n = rest.partition(":")
    if not s or not s.isalpha() or len(set(s)) > 3 or len(c) != 1 or c not in s:
        return False
    return n.isdigit() and len(n) == 1 and int(n) == s.count(c)


class CountingTask(CharTask):
    """The counting :class:`~tl_inversion.tasks.base.CharTask` with its evaluation plan."""

    def default_plan(self) -> EvalPlan:
        """Counting's evaluation plan (:func:`tl_inversion.evaluation.evaluate`).

        Positions ``c`` (the query letter) and ``:``; features: the query letter's count
        (``query_count``), the query letter (``query_letter``, its token id) and the string
        length (``string_length``); no completeness queries (give some to measure
        completeness) but the candidates for them: the 390,000 inputs of the test split, with
        class = (letter, count).

        Returns:
            An :class:`~tl_inversion.tasks.plan.EvalPlan`.

        Source: InversionView Sec. 4.1 (what the counting readings share).
        """
        task = self

        def letter(t: Tensor) -> Tensor:
            return t.gather(1, task.resolve_position(t, "c")[:, None])[:, 0]

        def letter_and_count(t: Tensor) -> Tensor:
            return torch.stack([letter(t), query_counts(t)], dim=-1)

        return EvalPlan(
            positions=["c", ":"],
            features={"query_count": query_counts, "query_letter": letter, "string_length": string_lengths},
            candidates=lambda: paper_split("test"),
            class_fn=letter_and_count,
        )


def make_task() -> CountingTask:
    """The counting task (vocabulary, positions, grammar, default evaluation plan)."""
    eos = CHARS.index("E")
    return CountingTask(
        name="counting",
        chars=CHARS,
        bos="B",
        eos="E",
        pad="P",
        n_ctx=N_CTX,
        named_positions={
            "c": eos_offset(eos, 3),
            "tc": eos_offset(eos, 3),
            ":": eos_offset(eos, 2),
            "n": eos_offset(eos, 1),
            "|": eos_offset(eos, 4),
        },
        train_position_names=("c", ":"),
        grammar=_grammar,
        answer_mask_fn=_answer_mask,
    )


def _answer_mask(tokens: Tensor) -> Tensor:
    """True at n (the token before EOS)."""
    eos = CHARS.index("E")
    idx = (tokens == eos).int().argmax(-1) - 1
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[torch.arange(tokens.shape[0]), idx] = True
    return mask


def _draw_counts(rng: random.Random, used: set[tuple[int, int, int]]) -> tuple[int, int, int]:
    while True:
        counts = (rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9))
        if counts not in used:
            return counts


def paper_texts() -> tuple[list[str], list[str]]:
    """The paper's 1,560,000 counting texts ``S|c:n``, split 75/25 as (train, test).

    The draws follow the paper's generator call for call (so the split is the one its
    model was trained and tested on): ``random.seed(0)``; per letter triple, per new count
    triple: shuffle, emit for the first letter, shuffle again, second, again, third; then
    one shuffle of the whole list.
    """
    rng = random.Random(0)
    texts: list[str] = []
    for letters in combinations(string.ascii_lowercase, 3):
        used: set[tuple[int, int, int]] = set()
        for _ in range(200):
            counts = _draw_counts(rng, used)
            used.add(counts)
            chars = [letter for letter, k in zip(letters, counts, strict=True) for _ in range(k)]
            for letter, k in zip(letters, counts, strict=True):
                rng.shuffle(chars)
                texts.append(f"{''.join(chars)}|{letter}:{k}")
    rng.shuffle(texts)
    n_train = int(0.75 * len(texts))
    return texts[:n_train], texts[n_train:]


#: Version of the counting data generator (:func:`paper_texts`); bump it when its output changes.
GENERATOR_VERSION = 1
N_TRAIN, N_TEST = 1_170_000, 390_000


def _build_splits() -> dict[str, Tensor]:
    """Both splits' token ids from one run of :func:`paper_texts`."""
    task = make_task()
    out = {}
    for split, texts in zip(("train", "test"), paper_texts(), strict=True):
        out[split] = task.encode_padded(["B" + t + "E" + "P" * (N_CTX - 2 - len(t)) for t in texts])
    return out


def paper_split(split: str = "test") -> Int[Tensor, "n 33"]:
    """Token ids of the paper's train or test split (``[1170000, 33]`` / ``[390000, 33]``).

    Built once per process (both splits from one generator run, ~17 s) and, with
    ``$TL_INVERSION_DATA_CACHE`` set, once per machine (see :mod:`tl_inversion.tasks.datacache`);
    every call returns a fresh copy, so writing into it changes no later call's result.

    Raises:
        ValueError: ``split`` is not ``"train"`` or ``"test"``.
    """
    return cached_splits("counting", GENERATOR_VERSION, split, _build_splits, splits=("train", "test"),
                         rows={"train": N_TRAIN, "test": N_TEST})


def query_counts(tokens: Int[Tensor, "batch 33"]) -> Int[Tensor, " batch"]:
    """N of each row: how often the query letter occurs in S (from the tokens, not the label)."""
    task = make_task()
    c_idx = task.resolve_position(tokens, "c")
    bar_idx = task.resolve_position(tokens, "|")
    c = tokens.gather(1, c_idx[:, None])
    pos = torch.arange(tokens.shape[1])[None]
    in_s = (pos >= 1) & (pos < bar_idx[:, None])
    return ((tokens == c) & in_s).sum(-1)


def string_lengths(tokens: Int[Tensor, "batch 33"]) -> Int[Tensor, " batch"]:
    """|S| of each row."""
    return make_task().resolve_position(tokens, "|") - 1
