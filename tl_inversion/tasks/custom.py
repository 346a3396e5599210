"""Bring your own data: a task made of the user's texts, tokenised by the probed model's tokenizer.

:class:`TextTask` exposes the surface the rest of tl_inversion uses from
:class:`~tl_inversion.tasks.base.CharTask` (``name``, ``n_ctx``, ``d_vocab``, ``bos_id``,
``eos_id``, ``pad_id``, ``special_ids``, ``special_mask``, ``resolve_position``,
``train_position_mask``, ``train_position_names``, ``is_valid``, ``decode``, ``encode``,
``vocab``, ``vocab_hash``) and holds the data as token ids ``[n, n_ctx]``.

Layout of every row (recorded in :attr:`TextTask.handling`): ``[BOS] text [EOS] PAD...``,
right-padded to ``n_ctx``. BOS and EOS are added by this module (the tokenizer is called
with ``add_special_tokens=False``), so the layout never depends on a tokenizer's
post-processor. ``add_bos``/``add_eos`` switch them off. Positions are token indices;
``"first"`` and ``"last"`` name the first and last non-special token of each row.
Decoders train on every non-special position (InversionView Sec. 3).

A tokenizer that uses one token for BOS, EOS and PAD (GPT-2's ``<|endoftext|>``) works as
is: the probed model sees the rows as the tokenizer made them, and a decoder bank gives
its decoders two extra ids for EOS and PAD
(:meth:`~tl_inversion.bank.DecoderBank.to_decoder_tokens`). Explicit ``bos_id``,
``eos_id`` and ``pad_id`` are still accepted (a warning says when one occurs in the texts).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tl_inversion.errors import InputTypeError, InputValueError
from tl_inversion.tasks.base import PositionError, PositionLike, TokenizerVocab, index_position

__all__ = ["TextTask"]


def _ids_of(tokenizer: Any, attr: str) -> int | None:
    v = getattr(tokenizer, attr, None)
    return int(v) if v is not None else None


def _tokenize(tokenizer: Any, texts: Sequence[str], specials: set[int]) -> list[list[int]]:
    """Token ids of each text (no special tokens added); warns when the tokenizer replaced
    words outside its vocabulary by its unknown token (a word-level tokenizer does this
    silently; byte-level ones such as GPT-2's never need to).
    """
    bodies = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    unk = _ids_of(tokenizer, "unk_token_id")
    if unk is not None and unk not in specials:
        hits = [i for i, b in enumerate(bodies) if unk in b]
        if hits:
            warnings.warn(
                f"{len(hits)} of {len(bodies)} texts hold the tokenizer's unknown token "
                f"{getattr(tokenizer, 'unk_token', unk)!r} (id {unk}), first text {hits[0]}: "
                "words outside the tokenizer's vocabulary were replaced by it",
                UserWarning,
                stacklevel=3,
            )
    return bodies


class TextTask(TokenizerVocab):
    """A task over the user's own inputs (token ids ``[n, n_ctx]``).

    Build one with :meth:`from_strings`, :meth:`from_file`, :meth:`from_iterator` or
    :meth:`from_tokens` rather than the constructor.

    Args:
        tokens: ``[n, n_ctx]`` int64 token ids, rows ``[BOS] text [EOS] PAD...``.
        bos_id, eos_id, pad_id: special token ids (they may coincide, as in GPT-2).
        d_vocab: vocabulary size of the probed model.
        tokenizer: the tokenizer used (``None`` for :meth:`from_tokens`): gives
            ``decode``/``encode`` and the vocabulary strings.
        name: task name recorded with decoders.
        add_bos, add_eos: whether rows start with BOS / end their text with EOS.

    Raises:
        ValueError: ids outside ``0..d_vocab-1``, or a tokens tensor that is not 2-D.
    """

    train_position_names = None
    named_positions: dict[str, Any] = {"first": None, "last": None}

    def __init__(
        self,
        tokens: Int[Tensor, "n n_ctx"],
        *,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        d_vocab: int,
        tokenizer: Any = None,
        name: str = "custom",
        add_bos: bool = True,
        add_eos: bool = True,
    ) -> None:
        tokens = torch.as_tensor(tokens).long()
        if tokens.ndim != 2:
            raise InputValueError(f"tokens must have shape [n, n_ctx], got {tuple(tokens.shape)}")
        for what, i in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
            if not isinstance(i, int) or not 0 <= i < d_vocab:
                raise InputValueError(f"{what} must be an int in 0..{d_vocab - 1}, got {i!r}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab):
            raise InputValueError(f"token ids {int(tokens.min())}..{int(tokens.max())} fall outside 0..{d_vocab - 1}")
        self.tokens = tokens
        self.bos_id, self.eos_id, self.pad_id = int(bos_id), int(eos_id), int(pad_id)
        self.d_vocab = int(d_vocab)
        self.tokenizer = tokenizer
        self.name = name
        self.add_bos, self.add_eos = bool(add_bos), bool(add_eos)

    # construction -------------------------------------------------------------------
    @classmethod
    def from_strings(
        cls,
        strings: Sequence[str],
        tokenizer: Any,
        n_ctx: int | None = None,
        *,
        name: str = "custom",
        add_bos: bool = True,
        add_eos: bool = True,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
        truncate: bool = False,
    ) -> "TextTask":
        """Tokenise texts with the probed model's tokenizer.

        Args:
            strings: the inputs, one text each.
            tokenizer: a Hugging Face tokenizer (called with ``add_special_tokens=False``).
            n_ctx: row length (BOS + text + EOS + padding); ``None``: the longest row.
            name: task name.
            add_bos: prepend BOS (the decoder's ``[BOS] x [EOS]``).
            add_eos: append EOS.
            bos_id: override the tokenizer's BOS id; default its ``bos_token_id`` (else
                ``eos_token_id``).
            eos_id: override the EOS id; default ``eos_token_id`` (else ``bos_token_id``).
            pad_id: override the PAD id; default ``pad_token_id`` (else the EOS id).
            truncate: cut texts that do not fit ``n_ctx`` instead of raising.

        Returns:
            The task, data in :attr:`tokens` ``[len(strings), n_ctx]``.

        Raises:
            TypeError: one string instead of a sequence of strings, or a tokenizer that is
                not a Hugging Face transformers tokenizer.
            ValueError: no strings, an empty text, a text that does not fit ``n_ctx``
                (unless ``truncate``), or a tokenizer without BOS/EOS ids and none given.
        """
        if isinstance(strings, (str, bytes)):
            raise InputTypeError("strings must be a list (or other sequence) of texts, got one string; wrap it: [text]")
        strings = list(strings)
        if not strings:
            raise InputValueError("no input strings given")
        if not callable(tokenizer) or not hasattr(tokenizer, "convert_ids_to_tokens"):
            raise InputTypeError(
                f"tokenizer must be a Hugging Face transformers tokenizer (e.g. AutoTokenizer.from_pretrained(...) "
                f"or PreTrainedTokenizerFast(tokenizer_object=...)), got {type(tokenizer).__name__}"
            )
        tok_bos, tok_eos = _ids_of(tokenizer, "bos_token_id"), _ids_of(tokenizer, "eos_token_id")
        bos = bos_id if bos_id is not None else (tok_bos if tok_bos is not None else tok_eos)
        eos = eos_id if eos_id is not None else (tok_eos if tok_eos is not None else tok_bos)
        if bos is None or eos is None:
            raise InputValueError(
                "the tokenizer has no BOS/EOS token ids; pass bos_id= and eos_id= explicitly "
                "(they mark the start and end of every input, as the decoder generates [BOS] x [EOS])"
            )
        pad = pad_id if pad_id is not None else _ids_of(tokenizer, "pad_token_id")
        pad = eos if pad is None else pad
        special = {bos, eos, pad}
        bodies = _tokenize(tokenizer, strings, special)
        hit = next((i for i, b in enumerate(bodies) if special.intersection(b)), None)
        if hit is not None:
            warnings.warn(
                f"input {hit} contains a special id ({sorted(special.intersection(bodies[hit]))}); such positions "
                "are masked out of membership and the text is cut there on decoding; choose ids that never occur "
                "in the texts",
                UserWarning,
                stacklevel=2,
            )
        return cls._from_bodies(
            bodies, n_ctx, bos, eos, pad, len(tokenizer), tokenizer, name, add_bos, add_eos, truncate
        )

    @classmethod
    def from_file(cls, path: str | Path, tokenizer: Any, n_ctx: int | None = None, **kwargs: Any) -> "TextTask":
        """Inputs from a UTF-8 text file, one example per line (blank lines skipped).

        Other arguments as :meth:`from_strings`.

        Raises:
            FileNotFoundError: no such file; ValueError: as :meth:`from_strings`.
        """
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return cls.from_strings([ln for ln in lines if ln.strip()], tokenizer, n_ctx, **kwargs)

    @classmethod
    def from_iterator(
        cls, texts: Iterable[str], tokenizer: Any, n_ctx: int | None = None, *, limit: int | None = None, **kwargs: Any
    ) -> "TextTask":
        """Inputs from any iterable of texts (e.g. a streamed data set), at most ``limit`` of them.

        Other arguments as :meth:`from_strings`.
        """
        out = []
        for t in texts:
            if limit is not None and len(out) >= limit:
                break
            out.append(t)
        return cls.from_strings(out, tokenizer, n_ctx, **kwargs)

    @classmethod
    def from_tokens(cls, tokens: Int[Tensor, "n n_ctx"], **kwargs: Any) -> "TextTask":
        """Wrap ready token ids ``[n, n_ctx]`` laid out as ``[BOS] text [EOS] PAD...``.

        Keyword arguments are the constructor's (``bos_id``, ``eos_id``, ``pad_id`` and
        ``d_vocab`` are required).

        Raises:
            ValueError: as the constructor.
        """
        return cls(tokens, **kwargs)

    @classmethod
    def _from_bodies(cls, bodies, n_ctx, bos, eos, pad, d_vocab, tokenizer, name, add_bos, add_eos, truncate):
        extra = int(add_bos) + int(add_eos)
        if any(len(b) == 0 for b in bodies):
            i = next(i for i, b in enumerate(bodies) if len(b) == 0)
            raise InputValueError(f"input {i} tokenises to no tokens")
        longest = max(len(b) for b in bodies) + extra
        n_ctx = longest if n_ctx is None else int(n_ctx)
        if n_ctx < 1 + extra:
            raise InputValueError(f"n_ctx={n_ctx} leaves no room for a token between BOS and EOS")
        rows = []
        for i, body in enumerate(bodies):
            if len(body) + extra > n_ctx:
                if not truncate:
                    raise InputValueError(
                        f"input {i} has {len(body)} tokens; with BOS/EOS at most {n_ctx - extra} fit in n_ctx={n_ctx} "
                        "(raise n_ctx or pass truncate=True)"
                    )
                body = body[: n_ctx - extra]
            row = ([bos] if add_bos else []) + body + ([eos] if add_eos else [])
            rows.append(row + [pad] * (n_ctx - len(row)))
        task = cls(torch.tensor(rows, dtype=torch.long), bos_id=bos, eos_id=eos, pad_id=pad, d_vocab=d_vocab,
                   tokenizer=tokenizer, name=name, add_bos=add_bos, add_eos=add_eos)
        return task

    # facts ----------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        """Row length: the width of the stored token table."""
        return int(self.tokens.shape[1])

    @property
    def handling(self) -> dict[str, Any]:
        """How rows were laid out (JSON-able): special ids, BOS/EOS flags, padding side."""
        return {"bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id, "add_bos": self.add_bos,
                "add_eos": self.add_eos, "padding_side": "right", "n_ctx": self.n_ctx,
                "tokenizer": getattr(self.tokenizer, "name_or_path", None)}

    def vocab_hash(self) -> str:
        """SHA-256 of the vocabulary strings, special ids and ``n_ctx``."""
        payload = json.dumps([self.vocab, self.bos_id, self.eos_id, self.pad_id, self.n_ctx])
        return hashlib.sha256(payload.encode()).hexdigest()

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def split(self, train_fraction: float = 0.75, seed: int = 0) -> tuple[Tensor, Tensor]:
        """A random (train, test) split of :attr:`tokens` (``torch.randperm`` with ``seed``).

        Raises:
            ValueError: ``train_fraction`` not in (0, 1).
        """
        if not 0 < train_fraction < 1:
            raise InputValueError(f"train_fraction must lie in (0, 1), got {train_fraction}")
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        k = int(train_fraction * len(self))
        return self.tokens[perm[:k]], self.tokens[perm[k:]]

    # text <-> tokens ------------------------------------------------------------------
    def encode(self, texts: str | Sequence[str]) -> Int[Tensor, "batch n_ctx"]:
        """Token rows ``[batch, n_ctx]`` of new texts, laid out like the data.

        Raises:
            ValueError: no tokenizer (a task from token ids), or a text that does not fit.
        """
        if self.tokenizer is None:
            raise InputValueError("this task was built from token ids and has no tokenizer; pass token tensors instead")
        if isinstance(texts, str):
            texts = [texts]
        bodies = _tokenize(self.tokenizer, texts, set(self.special_ids))
        other = self._from_bodies(bodies, self.n_ctx, self.bos_id, self.eos_id, self.pad_id, self.d_vocab,
                                  self.tokenizer, self.name, self.add_bos, self.add_eos, False)
        return other.tokens

    def _body_bounds(self, row: list[int]) -> tuple[int, int]:
        """(start, stop) of the text of a row: after BOS, before the first EOS (or the padding)."""
        start = 1 if self.add_bos and row and row[0] == self.bos_id else 0
        stop = len(row)
        for i in range(start, len(row)):
            if (self.add_eos and row[i] == self.eos_id) or (not self.add_eos and row[i] == self.pad_id):
                stop = i
                break
        return start, stop

    def decode(self, tokens: Int[Tensor, "... n_ctx"], *, keep_special: bool = False) -> str | list[str]:
        """Text of token rows; by default without BOS, cut at the first EOS."""
        if tokens.dim() > 1:
            return [self.decode(r, keep_special=keep_special) for r in tokens]
        row = [int(i) for i in tokens.tolist()]
        if not keep_special:
            a, b = self._body_bounds(row)
            row = row[a:b]
        if self.tokenizer is None:
            return " ".join(str(i) for i in row)
        return self.tokenizer.decode(row)

    def is_valid(self, tokens: Int[Tensor, "batch n_ctx"]) -> Bool[Tensor, " batch"]:
        """Whether each row is ``[BOS] text [EOS] PAD...`` with a non-empty text free of special ids."""
        out = []
        special = set(self.special_ids)
        for r in tokens.tolist():
            ok = not self.add_bos or (len(r) > 0 and r[0] == self.bos_id)
            a, b = self._body_bounds(r)
            ok = ok and b > a and not any(t in special for t in r[a:b])
            if ok and self.add_eos:
                ok = b < len(r) and all(t == self.pad_id for t in r[b + 1:])
            elif ok:
                ok = all(t == self.pad_id for t in r[b:])
            out.append(ok)
        return torch.tensor(out, dtype=torch.bool)

    def default_plan(self) -> None:
        """No built-in evaluation plan for the user's own inputs: give an
        :class:`~tl_inversion.tasks.plan.EvalPlan` with positions (e.g. ``"last"``).

        Returns:
            ``None`` (the :class:`~tl_inversion.tasks.protocol.Task` protocol's "no plan").
        """
        return None

    # positions ------------------------------------------------------------------------
    def special_mask(self, tokens: Int[Tensor, "batch n_ctx"]) -> Bool[Tensor, "batch n_ctx"]:
        """True at BOS, EOS and PAD positions."""
        ids = torch.tensor(self.special_ids, device=tokens.device)
        return torch.isin(tokens, ids)

    def resolve_position(self, tokens: Int[Tensor, "batch n_ctx"], position: PositionLike) -> Int[Tensor, " batch"]:
        """Absolute index of a position in each row.

        Args:
            tokens: ``[batch, n_ctx]`` token ids.
            position: an index (negative counts from the end of the row) or ``"first"`` /
                ``"last"`` (the first / last non-special token of each row).

        Raises:
            PositionError: an index out of range, an unknown name, or a row with no
                non-special token.
        """
        n = tokens.shape[-1]
        by_index = index_position(tokens, position)
        if by_index is not None:
            return by_index
        if position not in ("first", "last"):
            raise PositionError(f"{self.name} has no position named {position!r}; named positions: 'first', 'last', "
                                "or an integer index")
        ok = ~self.special_mask(tokens)
        if not bool(ok.any(-1).all()):
            raise PositionError("a row has no non-special token")
        if position == "first":
            return ok.int().argmax(-1)
        return n - 1 - ok.flip(-1).int().argmax(-1)

    def train_position_mask(self, tokens: Int[Tensor, "batch n_ctx"]) -> Bool[Tensor, "batch n_ctx"]:
        """Every non-special position (InversionView Sec. 3)."""
        return ~self.special_mask(tokens)
