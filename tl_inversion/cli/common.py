"""Helpers the verbs share: the probed-model flags, reading banks, checking output folders.

Heavy modules (torch, TransformerLens, the library's model code) are imported inside the
functions, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from tl_inversion.errors import InputValueError, MissingPathError, TLInversionError

__all__ = [
    "TASK_HELP",
    "add_model_args",
    "attach_bank",
    "check_out_dir",
    "load_model",
    "read_banks",
    "require_at_least",
    "stored_dtype",
]

TASK_HELP = ("registered task: counting or addition (default: %(default)s); IOI and your own texts: "
             "Python API")
SAVE_DTYPES = ["float32", "float16", "bfloat16"]


def add_model_args(p: argparse.ArgumentParser, *, device: bool = True) -> None:
    """The flags of the probed model: ``--model``, ``--model-class``, ``--processing`` and
    (unless a config of the verb has its own ``device`` field) ``--device``.
    """
    g = p.add_argument_group("probed model")
    g.add_argument("--model", required=True, help="folder of a Hugging Face GPT-2 checkpoint (config.json + weights)")
    g.add_argument("--model-class", choices=["hooked", "bridge"], default=None,
                   help="hooked (HookedTransformer) or bridge (TransformerBridge) (default: hooked on TL<4, "
                        "else bridge)")
    g.add_argument("--processing", choices=["default", "none", "compat"], default=None,
                   help="weight processing (default: 'default' for hooked, 'compat' for bridge)")
    if device:
        g.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")


def load_model(args: argparse.Namespace, device: str | None = None) -> Any:
    """The probed model of ``--model`` (on ``device``, else ``--device``)."""
    from tl_inversion.model.loading import load_hf_gpt2

    return load_hf_gpt2(args.model, args.model_class, args.processing, device=device or args.device)


def read_banks(paths: Sequence[str]) -> tuple[list[Any], Any]:
    """The banks of the folders (on the CPU, not yet checked against a model) and one bank of
    them all (the folder's own, or ``DecoderBank.merge`` of several): read before the model is
    loaded, so a wrong bank, site or condition is reported at once.
    """
    from tl_inversion.decoding.bank import DecoderBank

    banks = []
    for p in paths:
        try:
            banks.append(DecoderBank.load(p))
        except FileNotFoundError as e:  # the --bank path the user gave: invalid input, not a bug
            if isinstance(e, TLInversionError):
                raise
            raise MissingPathError(str(e)) from e
    return banks, banks[0] if len(banks) == 1 else DecoderBank.merge(banks)


def attach_bank(banks: Sequence[Any], bank: Any, model: Any, allow_mismatch: bool = False) -> Any:
    """``bank`` checked against the probed model (each folder's fingerprint) and moved to its device."""
    from tl_inversion.model.activations import model_device

    for b in banks:
        b.check_model(model, allow_mismatch=allow_mismatch)
    return bank.to(model_device(model))


def check_out_dir(path: str, flag: str) -> None:
    """A report folder: refuse a path that is (or lies under) an existing file, before any work.

    Raises:
        InputValueError: ``path`` or a folder above it is a file.
    """
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise InputValueError(f"{flag} must be a folder (existing or new), but {q} is a file")
            break


def require_at_least(flag: str, value: int, low: int, meaning: str = "") -> None:
    """Refuse a command-line count below ``low``.

    Raises:
        InputValueError: ``value < low``.
    """
    if value < low:
        raise InputValueError(f"{flag} must be >= {low}{meaning}, got {value}")


def stored_dtype(folder: str) -> str:
    """The floating dtype a bank folder's weights are stored in (``"float32"`` if none is)."""
    from safetensors import safe_open

    from tl_inversion.decoding.bank import WEIGHTS

    names = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}
    with safe_open(str(Path(folder) / WEIGHTS), "pt") as f:
        for key in f.keys():
            kind = f.get_slice(key).get_dtype()
            if kind in names:
                return names[kind]
    return "float32"
