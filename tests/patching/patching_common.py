"""Constants and hand-written helpers shared by the patching tests (not the code under test)."""

from __future__ import annotations

import torch

N, POS = 6, 12


def ld_at_last(logits, a, b):
    """Per-example logit difference at the last position, written independently."""
    last = logits[:, -1]
    return last[torch.arange(last.shape[0]), a] - last[torch.arange(last.shape[0]), b]


def kw(data, **extra):
    clean, contrast, a, b = data
    return dict(contrast_tokens=contrast, answers=a, contrast_answers=b, answer_position=-1, progress=False, **extra)
