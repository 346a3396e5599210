"""What a task tells the rest of tl_inversion: tokens, data, positions, grammar.

A task is the start of the data flow (task -> probed model -> activations -> decoder ->
verification). The decoders work on token-id tensors only; a task maps text to ids and
back, names the positions a researcher queries (e.g. counting's ``":"``), says which
positions decoders are trained on, and checks whether a decoded input obeys the task's
grammar (decoders may produce ill-formed inputs: they are flagged, not hidden).
"""

from __future__ import annotations

import hashlib
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tl_inversion.errors import InputTypeError, InputValueError, PositionError, TokenIdError

__all__ = [
    "CharTask",
    "PositionLike",
    "TokenizerVocab",
    "check_trainable",
    "distinct_special_ids",
    "eos_offset",
    "first_token",
    "index_position",
    "real_end",
    "sample_positions",
]

PositionLike = int | str


def real_end(tokens: Int[Tensor, "batch n_ctx"], pad_id: int) -> Int[Tensor, " batch"]:
    """``[batch]`` index of each row's last non-PAD token (-1 for a row of PAD only).

    Where negative positions count from, in sampling queries and in patching (right padding).
    """
    cols = torch.arange(tokens.shape[-1], device=tokens.device)
    return torch.where(tokens != pad_id, cols, torch.full_like(cols, -1)).amax(dim=-1)


@dataclass
class CharTask:
    """A task whose tokens are single characters padded to a fixed length.

    Args:
        name: short task name (``"counting"``, ``"addition"``).
        chars: the vocabulary; token id = index in this string.
        bos: the BOS character; eos: the EOS character; pad: the PAD character.
        n_ctx: fixed sequence length (BOS + text + EOS + padding).
        named_positions: ``{name: fn(tokens [batch, n_ctx]) -> index [batch]}``.
        train_position_names: names of the positions decoders are trained on; ``None``
            means every non-special position.
        grammar: ``fn(text) -> bool`` for the inner text (without B/E/P).
        answer_mask_fn: ``fn(tokens) -> bool [batch, n_ctx]``, True at the answer tokens
            (the probed model's training targets and the patching metric's answer).

    Class attributes:
        default_metric, default_epsilon: the distance D and preimage threshold this task is
            studied with: normalised L2 and 0.1 for the paper's character tasks (counting,
            addition; InversionView Sec. 4).
    """

    default_metric: ClassVar[str] = "l2"
    default_epsilon: ClassVar[float] = 0.1

    name: str
    chars: str
    bos: str
    eos: str
    pad: str
    n_ctx: int
    named_positions: dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict)
    train_position_names: Sequence[str] | None = None
    grammar: Callable[[str], bool] | None = None
    answer_mask_fn: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        if len(set(self.chars)) != len(self.chars):
            raise InputValueError("task vocabulary has repeated characters")
        self._lut = np.full(256, 255, dtype=np.uint8)
        for i, c in enumerate(self.chars):
            self._lut[ord(c)] = i
        # id -> ASCII byte, for decoding many rows at once (None: a non-ASCII vocabulary)
        self._bytes = np.frombuffer(self.chars.encode("ascii"), dtype=np.uint8) if self.chars.isascii() else None

    # vocabulary -------------------------------------------------------------------
    @property
    def vocab(self) -> list[str]:
        """Token strings by id."""
        return list(self.chars)

    @property
    def d_vocab(self) -> int:
        """Vocabulary size: the number of characters."""
        return len(self.chars)

    @property
    def bos_id(self) -> int:
        """Token id of the BOS character."""
        return self.chars.index(self.bos)

    @property
    def eos_id(self) -> int:
        """Token id of the EOS character."""
        return self.chars.index(self.eos)

    @property
    def pad_id(self) -> int:
        """Token id of the PAD character."""
        return self.chars.index(self.pad)

    @property
    def special_ids(self) -> tuple[int, int, int]:
        """(BOS, EOS, PAD): positions masked out of preimage membership."""
        return (self.bos_id, self.eos_id, self.pad_id)

    def vocab_hash(self) -> str:
        """SHA-256 of the vocabulary and special tokens (recorded with decoders)."""
        return hashlib.sha256(f"{self.chars}|{self.bos}{self.eos}{self.pad}|{self.n_ctx}".encode()).hexdigest()

    # text <-> tokens --------------------------------------------------------------
    def encode(self, texts: str | Sequence[str]) -> Int[Tensor, "batch n_ctx"]:
        """Token ids ``[batch, n_ctx]`` of texts without B/E/P (BOS, EOS and padding added).

        Raises:
            ValueError: unknown character, or a text longer than ``n_ctx - 2``.
        """
        if isinstance(texts, str):
            texts = [texts]
        rows = []
        for t in texts:
            bad = sorted({c for c in t if c not in self.chars or c in (self.bos, self.eos, self.pad)})
            if bad:
                raise InputValueError(
                    f"{self.name}: characters {bad} are not input characters of this task; valid: "
                    f"{''.join(c for c in self.chars if c not in (self.bos, self.eos, self.pad))!r}"
                )
            if len(t) > self.n_ctx - 2:
                raise InputValueError(f"{self.name}: text {t!r} has {len(t)} characters, at most {self.n_ctx - 2} fit")
            rows.append(self.bos + t + self.eos + self.pad * (self.n_ctx - 2 - len(t)))
        return self.encode_padded(rows)

    def encode_padded(self, rows: Sequence[str]) -> Int[Tensor, "batch n_ctx"]:
        """Ids of full rows (with B, E and P already in place, each ``n_ctx`` long); fast path."""
        buf = np.frombuffer("".join(rows).encode("ascii"), dtype=np.uint8).reshape(len(rows), self.n_ctx)
        ids = self._lut[buf]
        if (ids == 255).any():
            raise InputValueError(f"{self.name}: unknown character in rows")
        return torch.from_numpy(ids.astype(np.int64))

    def decode(self, tokens: Any, *, keep_special: bool = False) -> str | list[Any]:
        """Text of token rows; by default without BOS, and cut at the first EOS.

        Args:
            tokens: integer ids: one row ``[width]`` (one text) or ``[..., width]`` (nested
                lists of texts), ``width <= n_ctx``, as a Tensor, a numpy array or a (nested)
                list, e.g. a row of ``PreimageResult.df.tokens``.
            keep_special: keep BOS, EOS and PAD characters (the raw row).

        Returns:
            A str for one row, a list of str for ``[batch, width]``, nested lists beyond.

        Raises:
            InputTypeError: ids that are not integers (floats, bools).
            InputValueError: a single number, rows wider than ``n_ctx``, ragged nesting, or
                a tensor without data (meta device).
            TokenIdError: an id outside the vocabulary (also an ``IndexError``).
        """
        if not isinstance(keep_special, bool):
            raise InputTypeError(f"{self.name}.decode: keep_special must be True or False, got {keep_special!r}")
        ids = self._id_array(tokens, "decode")
        if ids.ndim > 2:
            return [self.decode(sub, keep_special=keep_special) for sub in ids]
        flat = ids.reshape(1 if ids.ndim == 1 else ids.shape[0], ids.shape[-1])  # -1 fails for zero-width rows
        rows = self._raw_rows(flat) if keep_special else self._texts(flat)
        return rows[0] if ids.ndim == 1 else rows

    def _id_array(self, tokens: Any, what: str, max_dim: int | None = None) -> np.ndarray:
        """``tokens`` as a fresh int64 array ``[..., width]`` after the checks :meth:`decode` lists."""
        where = f"{self.name}.{what}"
        if isinstance(tokens, (str, bytes)):
            raise InputTypeError(f"{where}: takes token ids, got a {type(tokens).__name__}; encode texts with "
                                 f"{self.name}.encode")
        if isinstance(tokens, Tensor):
            if tokens.device.type == "meta":
                raise InputValueError(f"{where}: the ids are on the meta device and hold no values; pass ids with data")
            if tokens.layout != torch.strided or tokens.is_nested or tokens.is_quantized:
                raise InputTypeError(f"{where}: token ids must be a dense integer tensor, got one of layout "
                                     f"{tokens.layout}{' (nested)' if tokens.is_nested else ''}"
                                     f"{' (quantized)' if tokens.is_quantized else ''}")
            integer = tokens.dtype != torch.bool and not (tokens.is_floating_point() or tokens.is_complex())
            if not integer and tokens.numel():
                raise InputTypeError(f"{where}: token ids must be integers, got a {tokens.dtype} tensor")
            arr = tokens.detach().cpu().numpy() if integer else np.zeros(tuple(tokens.shape), dtype=np.int64)
        else:
            try:
                arr = np.asarray(tokens)
            except ValueError as err:  # ragged nesting
                raise InputValueError(f"{where}: rows of ids must all have one length ({err})") from None
            if arr.dtype.kind == "O" and arr.size and all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                                          for v in arr.flat):
                self._check_range(int(min(arr.flat)), int(max(arr.flat)), where)  # Python ints beyond 64 bits
                arr = arr.astype(np.int64)  # in range, so they fit
            if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
                got = f"{arr.dtype} values" if arr.dtype.kind in "fcbmM" else f"a {type(tokens).__name__}"
                raise InputTypeError(f"{where}: token ids must be integers (a Tensor, numpy array or list of ints), "
                                     f"got {got}")
        if arr.ndim == 0:
            raise InputValueError(f"{where}: expects a row of ids [width] or rows [..., width], got one number")
        if max_dim is not None and arr.ndim > max_dim:
            raise InputValueError(f"{where}: expects a row of ids [width] or rows [batch, width], got shape "
                                  f"{list(arr.shape)}")
        if arr.shape[-1] > self.n_ctx:
            raise InputValueError(f"{where}: rows are at most n_ctx = {self.n_ctx} ids long, got rows of "
                                  f"{arr.shape[-1]}")
        if arr.size:
            self._check_range(int(arr.min()), int(arr.max()), where)  # before int64 could wrap unsigned ids
        return np.array(arr, dtype=np.int64)  # a copy: writable, positive strides, not the caller's memory

    def _check_range(self, low: int, high: int, where: str) -> None:
        """Raise TokenIdError naming the id outside ``0 .. len(chars) - 1`` (``low``, ``high``: the ids' min, max)."""
        if low < 0 or high >= len(self.chars):
            bad = low if low < 0 else high
            raise TokenIdError(f"{where}: token id {bad} is outside the vocabulary 0..{len(self.chars) - 1}")

    def _raw_rows(self, ids: np.ndarray) -> list[str]:
        """Every row of checked ids ``[n, width]`` as its raw string (one character per id)."""
        if self._bytes is None or ids.size == 0:
            return ["".join(self.chars[i] for i in row) for row in ids.tolist()]
        width = ids.shape[1]
        flat = self._bytes[ids].tobytes().decode("ascii")
        return [flat[k : k + width] for k in range(0, len(flat), width)]

    def _strip(self, s: str) -> str:
        """One raw row's text: a leading BOS dropped, cut at the first EOS, PAD removed."""
        if s.startswith(self.bos):
            s = s[1:]
        return s.split(self.eos, 1)[0].replace(self.pad, "")

    def _texts(self, ids: np.ndarray) -> list[str]:
        """:meth:`_strip` of every row of checked ids ``[n, width]``, worked out on the whole array.

        Every row's kept characters (after a leading BOS, before the first EOS, not PAD) are
        picked by one mask over the whole array and decoded as one string, which is then cut
        at the rows' cumulative lengths: one slice per row instead of three string
        operations (the H200 profile of 100 queries x 1,024 candidates spent 0.18 s in them).
        """
        if self._bytes is None or ids.size == 0:
            return [self._strip(s) for s in self._raw_rows(ids)]
        width = ids.shape[1]
        col = np.arange(width)[None]
        start = (ids[:, :1] == self.bos_id).astype(np.int64)
        is_eos = (ids == self.eos_id) & (col >= start)
        first_eos = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1), width)[:, None]
        keep = (col >= start) & (col < first_eos) & (ids != self.pad_id)
        flat = self._bytes[ids[keep]].tobytes().decode("ascii")  # row-major: each row's kept characters in turn
        ends = np.cumsum(keep.sum(axis=1)).tolist()
        return [flat[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]

    def is_valid(self, tokens: Any) -> Bool[Tensor, " batch"]:
        """Whether each row is ``BOS text EOS PAD...`` with a text the grammar accepts.

        The layout is checked on the whole array at once; the grammar is asked once per
        distinct text.

        Args:
            tokens: integer ids ``[batch, width]`` or one row ``[width]``, ``width <= n_ctx``
                (Tensor, numpy array or list).

        Returns:
            ``[batch]`` bool (CPU); ``[1]`` for one row.

        Raises:
            As :meth:`decode`, and InputValueError for more than two dimensions.
        """
        ids = self._id_array(tokens, "is_valid", max_dim=2)
        ids = ids.reshape(1 if ids.ndim == 1 else ids.shape[0], ids.shape[-1])
        t = torch.from_numpy(ids)
        n, width = t.shape
        if width == 0:
            return torch.zeros(n, dtype=torch.bool)
        is_eos = t == self.eos_id
        has_eos = is_eos.any(dim=1)
        first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), torch.full((n,), width))
        col = torch.arange(width)[None]
        inner = (col > 0) & (col < first_eos[:, None])
        after = col > first_eos[:, None]
        ok = has_eos & (t[:, 0] == self.bos_id)
        ok &= ~(after & (t != self.pad_id)).any(dim=1)  # only PAD after the first EOS
        ok &= ~(inner & ((t == self.bos_id) | (t == self.pad_id))).any(dim=1)  # no BOS/PAD inside
        if self.grammar is not None and bool(ok.any()):
            rows = torch.nonzero(ok).flatten()
            texts = self._texts(ids[rows.numpy()])
            verdict = {s: bool(self.grammar(s)) for s in set(texts)}
            ok[rows] = torch.tensor([verdict[s] for s in texts], dtype=torch.bool)
        return ok

    # positions --------------------------------------------------------------------
    def special_mask(self, tokens: Int[Tensor, "batch n_ctx"]) -> Bool[Tensor, "batch n_ctx"]:
        """True at BOS, EOS and PAD positions."""
        m = torch.zeros_like(tokens, dtype=torch.bool)
        for i in self.special_ids:
            m |= tokens == i
        return m

    def resolve_position(self, tokens: Int[Tensor, "batch n_ctx"], position: PositionLike) -> Int[Tensor, " batch"]:
        """Absolute index of a position in each row.

        Args:
            tokens: token ids ``[batch, n_ctx]``.
            position: an index (negative counts from the end of the row, as in Python) or a
                name the task defines (see ``named_positions``).

        Raises:
            PositionError: an index outside ``-n_ctx..n_ctx-1``, an unknown name (the
                message lists the valid names), or a name absent from a row (e.g. ``:`` in an
                empty counting input).
        """
        by_index = index_position(tokens, position)
        if by_index is not None:
            return by_index
        if position not in self.named_positions:
            raise PositionError(
                f"{self.name} has no position named {position!r}; named positions: "
                f"{', '.join(repr(k) for k in self.named_positions)}, or an integer index"
            )
        idx = self.named_positions[position](tokens).long()
        outside = torch.nonzero((idx < 0) | (idx >= tokens.shape[-1])).flatten()
        if outside.numel():
            raise PositionError(
                f"position {position!r} does not exist in {outside.numel()} of {tokens.shape[0]} rows (first: row "
                f"{int(outside[0])}): the input is too short or lacks what defines it; check its {self.name} format"
            )
        return idx

    def answer_mask(self, tokens: Int[Tensor, "batch n_ctx"]) -> Bool[Tensor, "batch n_ctx"]:
        """True at the answer tokens of each row.

        Raises:
            ValueError: the task defines no answer.
        """
        if self.answer_mask_fn is None:
            raise InputValueError(f"task {self.name!r} defines no answer tokens")
        return self.answer_mask_fn(tokens).bool()

    def train_position_mask(self, tokens: Int[Tensor, "batch n_ctx"]) -> Bool[Tensor, "batch n_ctx"]:
        """Positions decoders are trained on (InversionView Sec. 3: random among these)."""
        if self.train_position_names is None:
            return ~self.special_mask(tokens)
        m = torch.zeros_like(tokens, dtype=torch.bool)
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        for name in self.train_position_names:
            m[rows, self.resolve_position(tokens, name)] = True
        return m

    def default_plan(self) -> Any:
        """The task's default evaluation plan (:class:`~tl_inversion.tasks.plan.EvalPlan`), or
        ``None`` when it has none (a plain ``CharTask``; the paper's tasks override this).
        """
        return None


def index_position(tokens: Int[Tensor, "batch n_ctx"], position: PositionLike) -> Int[Tensor, " batch"] | None:
    """``position`` as an index into every row, or ``None`` when it is a name.

    An int (or a string of digits, e.g. ``"-1"`` from a command line) counts from the start,
    a negative one from the end of the row, as in Python.

    Returns:
        ``[batch]`` absolute indices (int64), or ``None`` for a named position.

    Raises:
        PositionError: an index outside ``-n_ctx..n_ctx-1`` (the message gives the range).
    """
    n = tokens.shape[-1]
    if isinstance(position, str) and position.lstrip("-").isdigit():
        position = int(position)
    if not isinstance(position, int):
        return None
    if not -n <= position < n:
        raise PositionError(f"position {position} out of range for inputs of length {n}: valid -{n}..{n - 1}")
    return torch.full((tokens.shape[0],), position % n, dtype=torch.long)


def distinct_special_ids(bos_id: int, eos_id: int, pad_id: int) -> tuple[int, ...]:
    """(BOS, EOS, PAD) without repeats (GPT-2 uses one id for all three)."""
    return tuple(dict.fromkeys((bos_id, eos_id, pad_id)))


class TokenizerVocab:
    """Vocabulary surface of a task whose tokens come from a (Hugging Face) tokenizer.

    Needs ``bos_id``, ``eos_id``, ``pad_id``, ``d_vocab`` and ``tokenizer`` (may be
    ``None``: ids are then shown as numbers) on the task.

    Class attributes:
        default_metric, default_epsilon: the distance D and preimage threshold the task is
            studied with: normalised L2 and 0.1, as the paper's IOI (InversionView Sec. 4.3).
            (Its factual-recall study on GPT-2 XL used the cosine metric with 0.25; it has
            no task class here: see :func:`tl_inversion.inversion.distance.default_epsilon`.)
    """

    default_metric: ClassVar[str] = "l2"
    default_epsilon: ClassVar[float] = 0.1

    bos_id: int
    eos_id: int
    pad_id: int
    d_vocab: int
    tokenizer: object

    @property
    def chars(self) -> None:
        """``None``: no character vocabulary (see :attr:`vocab`)."""
        return None

    @property
    def special_ids(self) -> tuple[int, ...]:
        """(BOS, EOS, PAD) without repeats: positions masked out of preimage membership."""
        return distinct_special_ids(self.bos_id, self.eos_id, self.pad_id)

    @property
    def vocab(self) -> list[str]:
        """Token strings by id (``str(id)`` without a tokenizer; ``<id>`` for unnamed ids)."""
        if self.tokenizer is None:
            return [str(i) for i in range(self.d_vocab)]
        toks = self.tokenizer.convert_ids_to_tokens(list(range(self.d_vocab)))
        return [t if t is not None else f"<{i}>" for i, t in enumerate(toks)]


def eos_offset(task_eos_id: int, offset: int) -> Callable[[Tensor], Tensor]:
    """A named position ``offset`` tokens before the first EOS of each row."""

    def find(tokens: Tensor) -> Tensor:
        is_eos = tokens == task_eos_id
        if not bool(is_eos.any(-1).all()):
            raise PositionError("a row has no EOS, so positions counted from the end are undefined")
        return is_eos.int().argmax(-1) - offset

    return find


def first_token(token_id: int, offset: int = 0) -> Callable[[Tensor], Tensor]:
    """A named position at the first occurrence of a token (plus ``offset``)."""

    def find(tokens: Tensor) -> Tensor:
        hit = tokens == token_id
        if not bool(hit.any(-1).all()):
            raise PositionError("a row lacks the token that defines this named position")
        return hit.int().argmax(-1) + offset

    return find


def check_trainable(mask: Bool[Tensor, "batch n_ctx"]) -> None:
    """Refuse rows with no trainable position.

    Args:
        mask: ``[batch, n_ctx]`` bool, a task's :meth:`~CharTask.train_position_mask`.

    Raises:
        InputValueError: some row has no True entry (the message names the first one).
    """
    empty = torch.nonzero(mask.sum(-1) == 0).flatten()
    if empty.numel():
        raise InputValueError(
            f"{empty.numel()} input(s) have no trainable position (first: row {int(empty[0])}); decoders train on "
            "the positions the task's train_position_mask marks: check the task's position policy or the inputs"
        )


def sample_positions(
    task: object,
    tokens: Int[Tensor, "batch n_ctx"],
    generator: torch.Generator,
    bos_prob: float,
    *,
    check: bool = True,
) -> Int[Tensor, " batch"]:
    """One random trainable position per row; BOS (position 0) with probability ``bos_prob``.

    The position is uniform over the row's trainable positions (``task.train_position_mask``:
    counting trains on the query letter and ``:``); replacing it by BOS is the paper's "no
    information" condition.

    Args:
        task: any task with ``train_position_mask(tokens) -> [batch, n_ctx] bool``.
        tokens: token ids ``[batch, n_ctx]``, on ``generator``'s device.
        generator: the source of randomness (its device is where the positions are drawn).
        bos_prob: probability in ``[0, 1)`` of replacing a row's position by 0.
        check: test that every row has a trainable position (one host sync; a caller drawing
            many batches from a checked data set may skip it).

    Returns:
        ``[batch]`` int64 absolute positions on ``tokens``'s device.

    Raises:
        InputValueError: a row has no trainable position (with ``check``).

    Source: InversionView Sec. 3 and App. C (random position per input; BOS with p = 0.01).
    """
    mask = task.train_position_mask(tokens)
    if check:
        check_trainable(mask)
    pos = torch.multinomial(mask.float(), 1, generator=generator).squeeze(-1)
    if bos_prob > 0:
        to_bos = torch.rand(tokens.shape[0], generator=generator, device=tokens.device) < bos_prob
        pos = torch.where(to_bos, torch.zeros_like(pos), pos)
    return pos
