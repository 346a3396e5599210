"""The learning-rate schedule of decoder (and probed-model) training: linear warm-up, then
constant (the paper) or cosine decay to 10% of the peak.
"""

from __future__ import annotations

import math
from typing import Callable

from tl_inversion.training.config import TrainConfig

__all__ = ["lr_factor", "lr_lambda"]


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> float:
    """Learning-rate multiplier: linear warm-up, then constant or cosine decay to 10%.

    Args:
        step: the optimizer step (0-based).
        warmup_steps: steps of linear warm-up (factor ``(step + 1) / warmup_steps``).
        total_steps: the run's length in steps (the cosine reaches 0.1 there).
        schedule: ``"constant"`` or ``"cosine"``.

    Returns:
        A factor in (0, 1] applied to the peak learning rate.

    Source: InversionView App. C (warm-up then constant); the cosine is this project's option.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """``step -> lr_factor(step, ...)`` for ``torch.optim.lr_scheduler.LambdaLR`` under ``cfg``."""
    return lambda step: lr_factor(step, cfg.warmup_steps, cfg.steps, cfg.schedule)
