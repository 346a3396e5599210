"""The arithmetic precision of decoders at inference: bf16 autocast on CUDA, float32 elsewhere.

Decoders are trained under bf16 autocast on CUDA (:attr:`TrainConfig.amp
<tl_inversion.training.config.TrainConfig>`, on by default), so sampling and scoring them the
same way reads them as trained, and on an H200 runs the matrix products on the bf16 tensor
cores instead of float32 arithmetic (about 790 against about 60 TFLOP/s). Log-probabilities
and logits leave the decoder as float32 (the softmax is taken in float32). The probed model is
never affected: verification distances are computed in the model's own precision.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

__all__ = ["INFERENCE_AUTOCAST", "inference_autocast"]

#: ``{device type: autocast dtype}`` of decoder inference; device types not listed run float32.
INFERENCE_AUTOCAST: dict[str, torch.dtype] = {"cuda": torch.bfloat16}


def inference_autocast(device: torch.device | str) -> ContextManager[object]:
    """The autocast context decoder inference on ``device`` runs under (a no-op where none is set).

    Args:
        device: the decoder's device.

    Returns:
        ``torch.autocast(device_type, dtype)`` for device types in :data:`INFERENCE_AUTOCAST`
        (on CUDA with cuDNN's fused attention left out), else a context that does nothing.
    """
    kind = torch.device(device).type
    dtype = INFERENCE_AUTOCAST.get(kind)
    if dtype is None:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device_type=kind, dtype=dtype))
    if kind == "cuda":
        stack.enter_context(_without_cudnn_attention())
    return stack


def _without_cudnn_attention() -> ContextManager[object]:
    """Fused attention by any backend but cuDNN's (it fails on bf16 batches of 100,000 rows on an H200)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: no cuDNN backend to avoid
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
