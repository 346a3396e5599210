"""A set of clean inputs paired row by row with contrast inputs (for patching).

Activation and path patching (InversionView Sec. 4, "causal verification"; Wang et al.
2022) run a clean input, replace some activations by those of a *contrast* (corrupted)
input, and measure how far the output moves. The task-specific builders
(:mod:`tl_inversion.tasks.counting_contrasts`, :mod:`tl_inversion.tasks.addition_contrasts`)
return a :class:`ContrastSet`; the patching functions (:mod:`tl_inversion.patching`) read
its tokens, answers, position resolver and predicting position. This module knows no task
and no model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from tl_inversion.errors import InputTypeError, InputValueError, TLInversionWarning


class ContrastDropWarning(TLInversionWarning):
    """A contrast builder dropped input rows (no valid contrast, or filtered out)."""


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
    contrast_tokens: Tensor  # [n, pos'] (checked in __post_init__ with a clear message)
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
        info = {k: (v[index] if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == self.n else v)
                for k, v in self.info.items()}
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
            f"ContrastSet(n={self.n}, clean {tuple(self.clean_tokens.shape)}, "
            f"contrast {tuple(self.contrast_tokens.shape)}, "
            f"answer_position={self.answer_position!r}, info keys={sorted(self.info)})"
        )


def as_generator(generator: Any) -> torch.Generator:  # checked here with a clear message
    """A CPU ``torch.Generator`` from a generator, a seed, or ``None`` (seed 0).

    Raises:
        InputTypeError: ``generator`` is neither a ``torch.Generator``, an int, nor ``None``.
    """
    if isinstance(generator, torch.Generator):
        return generator
    if generator is None:
        generator = 0
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise InputTypeError(f"generator must be a torch.Generator or an int seed, got {type(generator).__name__}")
    return torch.Generator().manual_seed(generator)


__all__ = ["ContrastDropWarning", "ContrastSet", "as_generator"]
