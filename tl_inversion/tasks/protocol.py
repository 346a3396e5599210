"""The :class:`Task` protocol: what training, sampling and evaluation need of a task.

A task is the start of the data flow (task -> probed model -> decoders -> verification ->
evaluation). The rest of the package reads a task only through the members below, so any
object that has them can be used (``isinstance(obj, Task)`` checks that they exist; the
call signatures are the ones documented here). The built-in tasks satisfy it:
:class:`~tl_inversion.tasks.base.CharTask` subclasses (counting, addition), and the
tokenizer-based :class:`~tl_inversion.tasks.ioi.IOITask` and
:class:`~tl_inversion.tasks.custom.TextTask`.

Who uses what: training draws positions with ``train_position_mask`` and records
``name``/``n_ctx``/``vocab_hash()`` with the decoders; sampling encodes queries, resolves
positions, masks special positions out of membership (``special_ids``, ``special_mask``)
and flags ill-formed samples (``is_valid``); evaluation also asks for ``default_plan()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

from jaxtyping import Bool, Int
from torch import Tensor

from tl_inversion.tasks.base import PositionLike

if TYPE_CHECKING:  # pragma: no cover
    from tl_inversion.tasks.plan import EvalPlan

__all__ = ["Task", "TASK_METHODS", "TASK_ATTRIBUTES"]


@runtime_checkable
class Task(Protocol):
    """What a task provides (InversionView, arXiv 2405.17653, Sec. 3 and App. C).

    Attributes:
        name: short name recorded with decoders and reports (e.g. ``"counting"``).
        n_ctx: fixed row length in tokens (BOS + input + EOS + padding).
        d_vocab: number of token ids (the probed model's vocabulary size); ids lie in
            ``0..d_vocab-1``.
        bos_id, eos_id, pad_id: the special token ids (they may coincide, as in GPT-2).
        special_ids: ``(BOS, EOS, PAD)`` ids (without repeats for tokenizer tasks):
            positions holding them are never compared by preimage membership.
        vocab: token strings by id (``len(vocab) == d_vocab``), for rendering.
        train_position_names: names of the positions decoders are trained on, or ``None``
            (every non-special position).
    """

    name: str
    n_ctx: int
    d_vocab: int
    bos_id: int
    eos_id: int
    pad_id: int
    special_ids: tuple[int, ...]
    vocab: list[str]
    train_position_names: Sequence[str] | None

    def vocab_hash(self) -> str:
        """SHA-256 hex digest of the vocabulary, special tokens and ``n_ctx``; a bank refuses a
        task whose hash differs from the one it recorded.
        """
        ...

    def encode(self, texts: str | Sequence[str]) -> Int[Tensor, "batch n_ctx"]:
        """Token ids ``[batch, n_ctx]`` (int64, CPU) of texts without special tokens.

        Raises:
            InputValueError: a text the task cannot encode (unknown token, too long).
        """
        ...

    def decode(self, tokens: Int[Tensor, "... n_ctx"], *, keep_special: bool = False) -> str | list[str]:
        """Text of one row ``[n_ctx]`` (a str) or of rows ``[batch, n_ctx]`` (a list); by
        default without BOS and cut at the first EOS.
        """
        ...

    def is_valid(self, tokens: Int[Tensor, "batch n_ctx"]) -> Bool[Tensor, " batch"]:
        """Whether each row obeys the task's grammar (``BOS input EOS PAD...`` with an input
        the task accepts): the ``valid`` column of samples and reports.
        """
        ...

    def special_mask(self, tokens: Int[Tensor, "batch n_ctx"]) -> Bool[Tensor, "batch n_ctx"]:
        """True at positions holding BOS, EOS or PAD."""
        ...

    def resolve_position(self, tokens: Int[Tensor, "batch n_ctx"], position: PositionLike) -> Int[Tensor, " batch"]:
        """Absolute index ``[batch]`` (int64) of ``position`` in each row: an int (negative
        counts from the end) or a name the task defines.

        Raises:
            PositionError: an index out of range, an unknown name, or a name absent from a row.
        """
        ...

    def train_position_mask(self, tokens: Int[Tensor, "batch n_ctx"]) -> Bool[Tensor, "batch n_ctx"]:
        """True at the positions decoders are trained on (training draws a random one per
        row; InversionView Sec. 3).
        """
        ...

    def default_plan(self) -> "EvalPlan | None":
        """The task's default :class:`~tl_inversion.tasks.plan.EvalPlan`, or ``None`` when it
        has none (then :func:`~tl_inversion.tasks.plan.default_plan` asks for one).
        """
        ...


#: The protocol's methods, by name (for conformance checks).
TASK_METHODS: tuple[str, ...] = ("vocab_hash", "encode", "decode", "is_valid", "special_mask", "resolve_position",
                                 "train_position_mask", "default_plan")
#: The protocol's data members, by name.
TASK_ATTRIBUTES: tuple[str, ...] = ("name", "n_ctx", "d_vocab", "bos_id", "eos_id", "pad_id", "special_ids", "vocab",
                                    "train_position_names")
