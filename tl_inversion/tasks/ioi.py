"""Indirect object identification (IOI) prompts in the style of Wang et al. (2022).

A prompt such as ``"When Mary and John went to the store, John gave a drink to"`` names
two people; the subject S (John) appears twice, the indirect object IO (Mary) once, and
the model should continue with IO. InversionView (Huang et al. 2024, Sec. 4.3) reads the
26 circuit heads of Wang et al. at S1+1, S2 and END (see
:func:`tl_inversion.sites.ioi_paper_sites`).

Unlike the character tasks, IOI is tokenised by the probed model's own tokenizer (a
Hugging Face tokenizer object). Each prompt is assembled from template pieces, each piece
tokenised on its own (``add_special_tokens=False``), so the token index of every name is
recorded while building; the concatenation is checked against tokenising the whole text.
Rows are ``[BOS] prompt [EOS] PAD...`` right-padded to ``n_ctx``; the answer (the IO
name's token) is not part of the prompt and is returned separately.

Named positions (:meth:`IOITask.resolve_position` finds them from the tokens alone):
``"S1"``, ``"S1+1"``, ``"S2"``, ``"IO"``, ``"END"`` (the last prompt token, where IO is
predicted). Templates come in the two orders of Wang et al.: ``BABA`` (S named first) and
``ABBA`` (IO named first). Names must be single tokens (with their leading space); names
the tokenizer splits are dropped.

Source: Wang et al. 2022, "Interpretability in the Wild" (arXiv 2211.00593), Sec. 2 and
App. (templates, names, places, objects); the lists here are a subset written for this
project.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tl_inversion.errors import InputValueError
from tl_inversion.tasks.base import PositionError, PositionLike, TokenizerVocab, index_position

__all__ = ["IOITask", "IOIPrompt", "IOIBatch", "TEMPLATES", "NAMES", "PLACES", "OBJECTS", "POSITION_NAMES"]

#: BABA templates (S first); ``[A]`` is IO, ``[B]`` is S. The final ``[A]`` is the answer.
TEMPLATES: tuple[str, ...] = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "Friends [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
)
NAMES: tuple[str, ...] = (
    "Mary", "John", "Alice", "Bob", "James", "Sarah", "David", "Laura", "Michael", "Emily",
    "Daniel", "Rachel", "Thomas", "Kate", "Paul", "Anna", "Mark", "Lisa", "Peter", "Jessica",
    "Andrew", "Rose", "Kevin", "Amy", "Henry", "Grace", "Robert", "Jane", "Eric", "Victoria",
)
PLACES: tuple[str, ...] = ("store", "garden", "restaurant", "school", "hospital", "office", "station", "house")
OBJECTS: tuple[str, ...] = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")
POSITION_NAMES: tuple[str, ...] = ("S1", "S1+1", "S2", "IO", "END")

_SLOT = re.compile(r"( ?\[(?:A|B|PLACE|OBJECT)\])")


@dataclass(frozen=True)
class IOIPrompt:
    """One IOI prompt: its text (without the answer), the two names, the template and order."""

    text: str
    io: str
    s: str
    place: str
    obj: str
    template: int
    order: str  # "BABA" (S first) or "ABBA" (IO first)


@dataclass
class IOIBatch:
    """Prompts as tensors.

    Attributes:
        tokens: ``[n, n_ctx]`` int64, ``[BOS] prompt [EOS] PAD...``.
        positions: ``{name: [n] int64}`` for ``S1``, ``S1+1``, ``S2``, ``IO``, ``END``,
            recorded while building (absolute indices, BOS included).
        io_ids, s_ids: ``[n]`` token ids of the IO (the answer) and S names.
        prompts: the :class:`IOIPrompt` of each row.
    """

    tokens: Tensor
    positions: dict[str, Tensor]
    io_ids: Tensor
    s_ids: Tensor
    prompts: list[IOIPrompt]


class IOITask(TokenizerVocab):
    """IOI prompts tokenised by the probed model's tokenizer (a ``TokenTask``).

    Exposes the task surface used by sampling, verification and training (``name``,
    ``n_ctx``, ``d_vocab``, ``bos_id``/``eos_id``/``pad_id``, ``special_ids``,
    ``special_mask``, ``resolve_position``, ``train_position_mask``, ``is_valid``,
    ``decode``, ``encode``, ``vocab``, ``vocab_hash``).

    Args:
        tokenizer: the probed model's Hugging Face tokenizer.
        n_ctx: row length; ``None``: the longest prompt any template can give + BOS + EOS.
        names, places, objects, templates: the word lists (defaults: :data:`NAMES` ...).
        bos_id, eos_id, pad_id: special ids; defaults from the tokenizer (BOS: its
            ``bos_token_id`` else ``eos_token_id``; PAD: ``pad_token_id`` else EOS). GPT-2
            uses one id for all three: fine for sampling and verification, but the decoders
            of :mod:`tl_inversion.decoder` need three different ids to be trained.

    Raises:
        ValueError: fewer than two single-token names, a template without the four slots,
            no BOS/EOS id, or a template whose piecewise tokenisation differs from the
            whole text's.
    """

    name = "ioi"
    train_position_names = None

    def __init__(
        self,
        tokenizer: Any,
        n_ctx: int | None = None,
        *,
        names: Sequence[str] = NAMES,
        places: Sequence[str] = PLACES,
        objects: Sequence[str] = OBJECTS,
        templates: Sequence[str] = TEMPLATES,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        tb, te, tp = (getattr(tokenizer, a, None) for a in ("bos_token_id", "eos_token_id", "pad_token_id"))
        self.bos_id = bos_id if bos_id is not None else (tb if tb is not None else te)
        self.eos_id = eos_id if eos_id is not None else (te if te is not None else tb)
        if self.bos_id is None or self.eos_id is None:
            raise InputValueError("the tokenizer has no BOS/EOS ids; pass bos_id= and eos_id=")
        self.pad_id = pad_id if pad_id is not None else (tp if tp is not None else self.eos_id)
        self.d_vocab = len(tokenizer)
        for t in templates:
            slots = re.findall(r"\[(\w+)\]", t)
            if sorted(set(slots)) != ["A", "B", "OBJECT", "PLACE"] or slots.count("B") != 2 or slots[-1] != "A":
                raise InputValueError(f"template {t!r} must hold [B] twice, [A] once before the final answer [A], "
                                 "and [PLACE] and [OBJECT]")
        self.templates = tuple(templates)
        self.names = tuple(n for n in names if len(self._ids(" " + n)) == 1)
        if len(self.names) < 2:
            raise InputValueError(f"need at least two names that are single tokens for this tokenizer, "
                                  f"got {self.names}")
        self.name_ids = {n: self._ids(" " + n)[0] for n in self.names}
        self._name_id_set = torch.tensor(sorted(set(self.name_ids.values())))
        self.places, self.objects = tuple(places), tuple(objects)
        if n_ctx is None:
            longest_p = max(self.places, key=lambda p: len(self._ids(" " + p)))
            longest_o = max(self.objects, key=lambda o: len(self._ids(" " + o)))
            n_ctx = 2 + max(len(self._encode_prompt(t, "BABA", self.names[0], self.names[1], longest_p, longest_o)[0])
                            for t in range(len(self.templates)))
        self.n_ctx = int(n_ctx)

    def default_plan(self) -> None:
        """No built-in evaluation plan for IOI: give an
        :class:`~tl_inversion.tasks.plan.EvalPlan` with positions (e.g. ``"S2"``, ``"END"``).

        Returns:
            ``None`` (the :class:`~tl_inversion.tasks.protocol.Task` protocol's "no plan").
        """
        return None

    # tokenisation -----------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _piece_ids(self, piece: str) -> list[int]:
        """Token ids of one template piece, memoised (a prompt repeats a few dozen pieces)."""
        cache = self.__dict__.setdefault("_pieces", {})
        if piece not in cache:
            cache[piece] = self._ids(piece)
        return list(cache[piece])

    def _encode_prompt(self, t: int, order: str, io: str, s: str, place: str, obj: str):
        """Token ids of one prompt (answer removed) and the index of each name slot."""
        template = self.templates[t].rsplit("[A]", 1)[0].rstrip()
        fill = {"[PLACE]": place, "[OBJECT]": obj}
        first, second = (s, io) if order == "BABA" else (io, s)
        ids: list[int] = []
        where: dict[str, list[int]] = {"S": [], "IO": []}
        seen_b = 0
        text = ""
        for piece in _SLOT.split(template):
            if not piece:
                continue
            slot = piece.strip()
            lead = " " if piece.startswith(" ") else ""
            if slot in ("[A]", "[B]"):
                # the first [B]/[A] pair of a BABA template is swapped for ABBA
                if slot == "[B]":
                    value = first if seen_b == 0 else s
                    seen_b += 1
                else:
                    value = second
                where["S" if value == s else "IO"].append(len(ids))
                piece = lead + value
            elif slot in fill:
                piece = lead + fill[slot]
            ids += self._piece_ids(piece)
            text += piece
        return ids, where, text

    def prompt(self, t: int, order: str, io: str, s: str, place: str,
               obj: str) -> tuple[IOIPrompt, list[int], dict[str, int]]:
        """One prompt: its record, token ids ``[BOS] prompt [EOS] PAD...`` and named positions.

        Raises:
            ValueError: ``order`` not ``"ABBA"``/``"BABA"``, ``io == s``, unknown name, a
                prompt too long for ``n_ctx``, or piecewise != whole-text tokenisation.
        """
        if order not in ("ABBA", "BABA"):
            raise InputValueError(f"order must be 'ABBA' or 'BABA', got {order!r}")
        if io == s or io not in self.name_ids or s not in self.name_ids:
            raise InputValueError(f"io and s must be two different names of this task ({', '.join(self.names)})")
        rec, row, pos = self._assemble(t, order, io, s, place, obj)
        self._check_whole([rec], [row])
        return rec, row, pos

    def _check_whole(self, prompts: Sequence[IOIPrompt], rows: Sequence[list[int]]) -> None:
        """Refuse prompts whose whole-text tokenisation differs from the piecewise one (one batched call)."""
        whole = self.tokenizer([p.text for p in prompts], add_special_tokens=False)["input_ids"]
        for p, row, ids in zip(prompts, rows, whole, strict=True):
            if row[1: len(ids) + 2] != [*ids, self.eos_id]:
                raise InputValueError(f"template {p.template} tokenises differently piecewise and as a whole: "
                                      f"{p.text!r}")

    def _assemble(self, t: int, order: str, io: str, s: str, place: str,
                  obj: str) -> tuple[IOIPrompt, list[int], dict[str, int]]:
        """:meth:`prompt` without the whole-text check."""
        ids, where, text = self._encode_prompt(t, order, io, s, place, obj)
        if len(ids) + 2 > self.n_ctx:
            raise InputValueError(f"prompt {text!r} needs {len(ids) + 2} tokens, n_ctx is {self.n_ctx}")
        row = [self.bos_id] + ids + [self.eos_id]
        row += [self.pad_id] * (self.n_ctx - len(row))
        s1, s2 = where["S"][0] + 1, where["S"][1] + 1
        pos = {"S1": s1, "S1+1": s1 + 1, "S2": s2, "IO": where["IO"][0] + 1, "END": len(ids)}
        rec = IOIPrompt(text, io, s, place, obj, t, order)
        return rec, row, pos

    def build(self, n: int, seed: int = 0, *, orders: Sequence[str] = ("ABBA", "BABA")) -> IOIBatch:
        """``n`` random prompts (template, order, two names, place, object drawn with ``random.Random(seed)``).

        Returns:
            :class:`IOIBatch` with tokens ``[n, n_ctx]`` and the recorded positions.

        Raises:
            ValueError: ``n < 1`` or an unknown order.
        """
        if n < 1:
            raise InputValueError(f"n must be >= 1, got {n}")
        rng = random.Random(seed)
        prompts, rows, positions = [], [], {k: [] for k in POSITION_NAMES}
        for _ in range(n):
            io, s = rng.sample(self.names, 2)
            order = rng.choice(list(orders))
            if order not in ("ABBA", "BABA"):
                raise InputValueError(f"order must be 'ABBA' or 'BABA', got {order!r}")
            rec, row, pos = self._assemble(rng.randrange(len(self.templates)), order, io, s,
                                           rng.choice(self.places), rng.choice(self.objects))
            prompts.append(rec)
            rows.append(row)
            for k in POSITION_NAMES:
                positions[k].append(pos[k])
        self._check_whole(prompts, rows)
        return IOIBatch(
            torch.tensor(rows, dtype=torch.long),
            {k: torch.tensor(v, dtype=torch.long) for k, v in positions.items()},
            torch.tensor([self.name_ids[p.io] for p in prompts]),
            torch.tensor([self.name_ids[p.s] for p in prompts]),
            prompts,
        )

    # task surface (chars, special_ids, vocab: TokenizerVocab) ---------------------------
    @property
    def vocab(self) -> list[str]:
        """Token strings by id (see :class:`~tl_inversion.tasks.base.TokenizerVocab`).

        Memoised per tokenizer size: GPT-2's 50,257 look-ups take ~0.3 s, and sampling,
        verification and bank checks ask for the vocabulary on every call. A copy is returned.
        """
        key = len(self.tokenizer)
        cached = self.__dict__.get("_vocab_memo")
        if cached is None or cached[0] != key:
            cached = (key, TokenizerVocab.vocab.fget(self))
            self.__dict__["_vocab_memo"] = cached
        return list(cached[1])

    def vocab_hash(self) -> str:
        """SHA-256 (hex) of the vocabulary, the special ids and ``n_ctx``: what a bank records to match tasks."""
        key = (len(self.tokenizer), self.bos_id, self.eos_id, self.pad_id, self.n_ctx)
        cached = self.__dict__.get("_hash_memo")
        if cached is None or cached[0] != key:
            payload = json.dumps([self.vocab, self.bos_id, self.eos_id, self.pad_id, self.n_ctx])
            cached = (key, hashlib.sha256(payload.encode()).hexdigest())
            self.__dict__["_hash_memo"] = cached
        return cached[1]

    def encode(self, texts: str | Sequence[str]) -> Int[Tensor, "batch n_ctx"]:
        """Rows ``[BOS] text [EOS] PAD...`` of free texts (tokenised as a whole).

        Raises:
            ValueError: a text longer than ``n_ctx - 2`` tokens.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows = []
        for t in texts:
            ids = self._ids(t)
            if len(ids) + 2 > self.n_ctx:
                raise InputValueError(f"text {t!r} has {len(ids)} tokens, at most {self.n_ctx - 2} fit")
            row = [self.bos_id] + ids + [self.eos_id]
            rows.append(row + [self.pad_id] * (self.n_ctx - len(row)))
        return torch.tensor(rows, dtype=torch.long)

    def _body(self, row: list[int]) -> list[int]:
        start = 1 if row and row[0] == self.bos_id else 0
        for i in range(start, len(row)):
            if row[i] == self.eos_id:
                return row[start:i]
        return row[start:]

    def decode(self, tokens: Int[Tensor, "... n_ctx"], *, keep_special: bool = False) -> str | list[str]:
        """Text of token rows; by default without BOS and cut at the first EOS."""
        if tokens.dim() > 1:
            return [self.decode(r, keep_special=keep_special) for r in tokens]
        row = [int(i) for i in tokens.tolist()]
        return self.tokenizer.decode(row if keep_special else self._body(row))

    def special_mask(self, tokens: Int[Tensor, "batch n_ctx"]) -> Bool[Tensor, "batch n_ctx"]:
        """True where a token is BOS, EOS or PAD."""
        return torch.isin(tokens, torch.tensor(self.special_ids, device=tokens.device))

    def train_position_mask(self, tokens: Int[Tensor, "batch n_ctx"]) -> Bool[Tensor, "batch n_ctx"]:
        """Every non-special position."""
        return ~self.special_mask(tokens)

    def _structure(self, row: Tensor) -> dict[str, int] | None:
        """Named positions of one row from its tokens, or None when it is not an IOI prompt."""
        special = self.special_mask(row[None])[0]
        body = (~special).nonzero().flatten()
        if body.numel() == 0:
            return None
        is_name = torch.isin(row, self._name_id_set) & ~special
        idx = is_name.nonzero().flatten().tolist()
        if len(idx) != 3:
            return None
        ids = [int(row[i]) for i in idx]
        s_id = next((i for i in ids if ids.count(i) == 2), None)
        if s_id is None or len(set(ids)) != 2:
            return None
        s_pos = [p for p, i in zip(idx, ids, strict=True) if i == s_id]
        io_pos = next(p for p, i in zip(idx, ids, strict=True) if i != s_id)
        return {"S1": s_pos[0], "S1+1": s_pos[0] + 1, "S2": s_pos[1], "IO": io_pos, "END": int(body[-1])}

    def resolve_position(self, tokens: Int[Tensor, "batch n_ctx"], position: PositionLike) -> Int[Tensor, " batch"]:
        """Absolute index of a position in each row.

        Args:
            tokens: ``[batch, n_ctx]`` token ids.
            position: an index (negative from the row's end) or one of ``"S1"``,
                ``"S1+1"``, ``"S2"``, ``"IO"``, ``"END"``, found from the tokens: the name
                occurring twice is S, the one occurring once IO; END is the last
                non-special token.

        Raises:
            PositionError: index out of range, unknown name, or a row that does not hold
                exactly three name tokens of two names (S twice, IO once).
        """
        by_index = index_position(tokens, position)
        if by_index is not None:
            return by_index
        if position not in POSITION_NAMES:
            raise PositionError(f"ioi has no position named {position!r}; named positions: "
                                f"{', '.join(repr(k) for k in POSITION_NAMES)}, or an integer index")
        out = []
        for i, row in enumerate(tokens):
            st = self._structure(row)
            if st is None:
                raise PositionError(f"row {i} is not an IOI prompt (needs S twice and IO once); "
                                    f"cannot find {position!r}")
            out.append(st[position])
        return torch.tensor(out, dtype=torch.long)

    def is_valid(self, tokens: Int[Tensor, "batch n_ctx"]) -> Bool[Tensor, " batch"]:
        """``[BOS] prompt [EOS] PAD...`` with S named twice and IO once, no special id inside."""
        out = []
        for row in tokens:
            r = row.tolist()
            ok = bool(r) and r[0] == self.bos_id
            body = self._body(r)
            end = 1 + len(body)
            ok = ok and len(body) > 0 and end < len(r) and all(t == self.pad_id for t in r[end + 1:])
            ok = ok and not any(t in self.special_ids for t in body) and self._structure(row) is not None
            out.append(ok)
        return torch.tensor(out, dtype=torch.bool)
