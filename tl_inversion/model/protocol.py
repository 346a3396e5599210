"""The TransformerLens surface tl_inversion uses, as a ``typing.Protocol``.

Both ``HookedTransformer`` (TL 2.x/3.x) and ``TransformerBridge`` (TL 3.x/4.x) satisfy
:class:`ProbedModel` structurally; signatures in :mod:`tl_inversion.model` use it instead of
``Any`` so that a reader (and a type checker) sees which members are relied on. It is a
static description only: the run-time check is :func:`tl_inversion.model.checks.check_model`.

At run time the name ``ProbedModel`` is ``typing.Any`` (type checkers see the protocol
:class:`ProbedModelProtocol`): run-time type hooks (jaxtyping + beartype in the test suite)
would otherwise refuse a wrong argument with their own generic message before
``check_model`` can say what was expected (and hint that a string must be loaded first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class ProbedModelProtocol(Protocol):
    """What tl_inversion needs of a probed TransformerLens model.

    Members:
        cfg: the config (``n_layers``, ``n_heads``, ``d_model``, ``d_head``, ``n_ctx``,
            ``d_vocab``, ``normalization_type`` ...).
        hook_dict: ``{hook name: HookPoint}`` of every hook point.
        blocks: the transformer blocks; ``blocks[l].attn.W_O`` is ``[head, d_head, d_model]``
            and ``blocks[l].attn.b_O`` is ``[d_model]``.
        training: ``torch.nn.Module``'s train/eval flag.
    """

    cfg: Any
    training: bool

    @property
    def hook_dict(self) -> Mapping[str, Any]:
        """``{hook name: HookPoint}``."""

    @property
    def blocks(self) -> Sequence[Any]:
        """The transformer blocks."""

    def __call__(self, input: Tensor, *args: Any, **kwargs: Any) -> Any:
        """Forward pass (``return_type="logits"``: ``[batch, pos, d_vocab]``)."""

    def run_with_cache(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """Forward returning ``(output, ActivationCache)``."""

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any:
        """Forward with temporary hooks."""

    def hooks(self, *args: Any, **kwargs: Any) -> Any:
        """Context manager adding temporary hooks."""

    def eval(self) -> Any:
        """Eval mode (dropout off)."""

    def train(self, mode: bool = True) -> Any:
        """Train mode."""

    def modules(self) -> Iterator[torch.nn.Module]:
        """Every registered submodule."""

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        """Every parameter."""

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Parameters and buffers by name."""


if TYPE_CHECKING:
    ProbedModel = ProbedModelProtocol
else:
    ProbedModel = Any
