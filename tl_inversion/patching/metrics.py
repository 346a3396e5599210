"""Metrics of a patching run: what is measured on the logits of each batch.

InversionView (Huang et al. 2024, Sec. 4) measures the logit difference

    LD = logit[clean answer] - logit[contrast answer]      at the predicting position

(:class:`LogitDiff`, the default); :class:`AnswerLogProb` needs no contrast answer. A user
metric is ``f(logits)`` or ``f(logits, ctx: MetricContext)`` returning one value per row or
a scalar per batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Union

import torch
from jaxtyping import Float
from torch import Tensor

from tl_inversion.errors import InputValueError
from tl_inversion.patching.notation import PositionLike, Resolver, resolve_position


@dataclass
class MetricContext:
    """What a metric may need besides the logits of one batch.

    Args:
        tokens: ``[batch, pos]`` the input of the run whose logits are scored (the clean
            input for clean and patched runs, the contrast input for the contrast run).
        clean_tokens: ``[batch, pos]`` the clean input of these rows.
        answers: ``[batch]`` token ids of the clean answers, or ``None``.
        contrast_answers: ``[batch]`` token ids of the contrast answers, or ``None``.
        rows: ``[batch]`` indices of these rows in the data set.
        positions: the resolver of named positions (a
            :class:`~tl_inversion.patching.positions.RowEndPositions` wrapping the task or
            mapping: negative integers count from each row's last non-PAD token).
        answer_position: the predicting position (a name or an int).
        run: ``"clean"``, ``"contrast"`` or ``"patched"``.
    """

    tokens: Tensor
    clean_tokens: Tensor
    answers: Tensor | None
    contrast_answers: Tensor | None
    rows: Tensor
    positions: Resolver
    answer_position: PositionLike | None
    run: str

    def position(self, spec: PositionLike | None = None) -> Tensor:
        """Absolute index ``[batch]`` of a position (default: the predicting position).

        Raises:
            InputValueError: no position given and the call has no predicting position.
            PositionError: the position cannot be resolved on these tokens.
        """
        spec = self.answer_position if spec is None else spec
        if spec is None:
            raise InputValueError("no predicting position: pass answer_position= (a name such as ':' or an int)")
        return resolve_position(self.tokens, spec, self.positions)


class LogitDiff:
    """``logit[clean answer] - logit[contrast answer]`` at the predicting position.

    The metric of InversionView's patching experiments (Sec. 4). Returns one value per row.

    Args:
        position: the predicting position; default the call's ``answer_position``.
    """

    name = "logit_diff"

    def __init__(self, position: PositionLike | None = None) -> None:
        self.position = position

    def __call__(self, logits: Float[Tensor, "batch pos vocab"], ctx: MetricContext) -> Float[Tensor, " batch"]:
        """Per-row logit difference ``[batch]`` (logits) at the predicting position.

        Raises:
            ValueError: the call has no clean or no contrast answers.
        """
        if ctx.answers is None or ctx.contrast_answers is None:
            raise InputValueError(
                "the logit-difference metric needs answers= and contrast_answers= (token ids per row); "
                "pass them, use a contrast builder from tl_inversion.tasks.counting_contrasts or addition_contrasts, "
                "or pass metric="
            )
        pos = ctx.position(self.position).to(logits.device)
        ar = torch.arange(logits.shape[0], device=logits.device)
        at = logits[ar, pos]
        return at[ar, ctx.answers.to(logits.device)] - at[ar, ctx.contrast_answers.to(logits.device)]

    def __repr__(self) -> str:
        return f"LogitDiff(position={self.position!r})"


class AnswerLogProb:
    """``log p(clean answer)`` at the predicting position (needs no contrast answer).

    Args:
        position: the predicting position; default the call's ``answer_position``.
    """

    name = "answer_logprob"

    def __init__(self, position: PositionLike | None = None) -> None:
        self.position = position

    def __call__(self, logits: Float[Tensor, "batch pos vocab"], ctx: MetricContext) -> Float[Tensor, " batch"]:
        """Per-row ``log p(answer)`` ``[batch]`` (nats) at the predicting position.

        Raises:
            ValueError: the call has no answers.
        """
        if ctx.answers is None:
            raise InputValueError("the answer log-prob metric needs answers= (token ids per row)")
        pos = ctx.position(self.position).to(logits.device)
        ar = torch.arange(logits.shape[0], device=logits.device)
        return logits[ar, pos].float().log_softmax(-1)[ar, ctx.answers.to(logits.device)]

    def __repr__(self) -> str:
        return f"AnswerLogProb(position={self.position!r})"


MetricLike = Union[Callable[..., Tensor], None]


def _metric_arity(metric: Callable[..., Any]) -> int:
    if isinstance(metric, (LogitDiff, AnswerLogProb)):
        return 2
    try:
        params = [
            p
            for p in inspect.signature(metric).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        return 1
    return 2 if len(params) >= 2 else 1


def _metric_name(metric: Callable[..., Any]) -> str:
    return getattr(metric, "name", None) or getattr(metric, "__name__", None) or type(metric).__name__


def _eval_metric(metric: Callable[..., Any], arity: int, logits: Tensor, ctx: MetricContext) -> Tensor:
    value = metric(logits, ctx) if arity == 2 else metric(logits)
    value = torch.as_tensor(value).detach().to("cpu", torch.float64)
    b = logits.shape[0]
    if value.dim() == 0:
        return value
    value = value.reshape(-1)
    if value.shape[0] != b:
        raise InputValueError(
            f"metric returned {value.shape[0]} values for a batch of {b}: return a scalar or one value per row"
        )
    return value


__all__ = ["AnswerLogProb", "LogitDiff", "MetricContext", "MetricLike"]
