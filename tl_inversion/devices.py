"""Device names: one resolver for every entry point (training, loading, the CLI)."""

from __future__ import annotations

import torch

from tl_inversion.errors import InputValueError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any other string as ``torch.device``.

    Raises:
        ValueError: a string torch does not know as a device (e.g. ``"tpu"``), a device type
            other than cpu/cuda/mps, or CUDA/MPS asked for where torch cannot use it.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as e:
        raise InputValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N' ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputValueError(f"device {device!r} asked for, but torch sees no CUDA GPU here: use 'cpu' or 'auto'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputValueError(
            f"device {device!r} asked for, but this torch has no usable MPS backend: use 'cpu' or 'auto'"
        )
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InputValueError(f"device {device!r} is not supported: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return dev
