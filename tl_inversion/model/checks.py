"""Input checks for everything that runs a probed model on user tokens.

* :func:`check_model`: the object is a ``HookedTransformer`` or ``TransformerBridge`` (not,
  say, the model's name as a string).
* :func:`check_tokens`: token ids the model can run (shape, ``n_ctx``, vocabulary).
* :func:`check_padding`: no left-padded rows. TransformerLens runs a row without an
  attention mask as if every token were real, so a row that starts with PAD gets different
  activations at its real tokens than the unpadded row (measured: up to 4.8 on a
  HookedTransformer, 0.11 on a bridge). tl_inversion works on right-padded rows only (BOS
  first, PAD after EOS), where causal attention keeps the padding invisible to the real
  tokens. Other stages call :func:`check_padding` wherever they run a model on tokens they
  did not build themselves.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tl_inversion.errors import InputTypeError, InputValueError


def check_model(model: Any, name: str = "model") -> None:
    """Refuse anything that is not a TransformerLens model.

    Args:
        model: should be a ``HookedTransformer`` or ``TransformerBridge`` (anything with
            ``cfg``, ``hook_dict``, ``run_with_cache`` and ``run_with_hooks``).
        name: what to call it in the message.

    Raises:
        InputTypeError: naming the type given and the types expected; a string gets a hint
            to load the model first (:func:`tl_inversion.model.loading.load_hf_gpt2`).
    """
    needed = ("cfg", "hook_dict", "run_with_cache", "run_with_hooks")
    if isinstance(model, torch.nn.Module) and all(hasattr(model, a) for a in needed):
        return
    hint = ""
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        hint = (f" ({model!r} looks like a model name or path: load it first, e.g. "
                "tl_inversion.load_hf_gpt2(folder) or HookedTransformer.from_pretrained(name))")
    raise InputTypeError(
        f"{name} must be a TransformerLens HookedTransformer or TransformerBridge, got "
        f"{type(model).__name__}{hint}"
    )


def model_special_ids(model: Any) -> tuple[int | None, int | None]:
    """``(pad_id, bos_id)`` the model knows of, or ``None`` each where it knows none.

    Read from what :mod:`tl_inversion.model.loading` records on models it builds
    (``model._tl_inversion_special_ids``), else from ``model.tokenizer``.
    """
    recorded = getattr(model, "_tl_inversion_special_ids", None)
    if isinstance(recorded, dict):
        return recorded.get("pad"), recorded.get("bos")
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return None, None
    pad, bos = getattr(tok, "pad_token_id", None), getattr(tok, "bos_token_id", None)
    return (pad if isinstance(pad, int) else None), (bos if isinstance(bos, int) else None)


def check_padding(tokens: Tensor, pad_id: int | None, *, bos_id: int | None = None, name: str = "tokens") -> None:
    """Refuse left-padded rows (rows that start with PAD).

    A row counts as left-padded when its first id is ``pad_id``; where PAD and BOS share an
    id (GPT-2: 50256), when its first TWO ids are ``pad_id`` (a real row starts with one BOS).

    Args:
        tokens: token ids ``[batch, pos]``.
        pad_id: the PAD id; ``None`` checks nothing.
        bos_id: the BOS id, if known.
        name: what to call ``tokens`` in the message.

    Raises:
        InputValueError: naming the first left-padded row and how many there are.
    """
    if pad_id is None or not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.shape[0] == 0:
        return
    if pad_id == bos_id:
        if tokens.shape[1] < 2:
            return
        bad = (tokens[:, 0] == pad_id) & (tokens[:, 1] == pad_id)
        what = f"two PAD ids ({pad_id}, which is also BOS)"
    else:
        bad = tokens[:, 0] == pad_id
        what = f"the PAD id {pad_id}"
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise InputValueError(
            f"{name} row {rows[0]} starts with {what} ({len(rows)} of {tokens.shape[0]} rows are left-padded): "
            "left padding is not supported, TransformerLens would attend to the padding and shift the positions "
            "of the real tokens; pad on the right (BOS first, PAD after the last token)"
        )


def check_tokens(model: Any, tokens: Tensor, name: str = "tokens") -> None:
    """Refuse token ids the model cannot run: not ``[batch, pos]`` integers, more positions
    than ``n_ctx``, or ids outside ``0..d_vocab-1`` (torch would only say "index out of range").

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge`` (its ``cfg.n_ctx``, ``cfg.d_vocab``).
        tokens: token ids ``[batch, pos]``.
        name: what to call ``tokens`` in the message (e.g. ``"train_data"``).

    Raises:
        InputTypeError: ``model`` is not a TransformerLens model (:func:`check_model`).
        InputValueError: what is wrong and the valid range.
    """
    check_model(model)
    is_ids = isinstance(tokens, Tensor) and tokens.ndim == 2
    if not is_ids or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise InputValueError(f"{name} must be an integer tensor [batch, pos] of token ids, got {shape}"
                              + (f" {tokens.dtype}" if isinstance(tokens, Tensor) else ""))
    n_ctx, d_vocab = int(model.cfg.n_ctx), int(model.cfg.d_vocab)
    if tokens.shape[1] > n_ctx:
        raise InputValueError(f"{name} have {tokens.shape[1]} positions but the model's context is n_ctx={n_ctx}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab):
        raise InputValueError(f"{name} hold token ids {int(tokens.min())}..{int(tokens.max())}, outside the model's "
                              f"vocabulary 0..{d_vocab - 1}")
