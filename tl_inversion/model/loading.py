"""Load a local Hugging Face GPT-2 checkpoint into a TransformerLens model, offline.

A folder with ``config.json`` and ``pytorch_model.bin`` or ``model.safetensors`` (as
written by ``GPT2LMHeadModel.save_pretrained``) becomes

* a ``HookedTransformer`` (TL 2.x/3.x) through TransformerLens's GPT-2 weight converter and
  ``load_and_process_state_dict``, with the weight processing you ask for; or
* a ``TransformerBridge`` (TL 3.x/4.x) wrapping the Hugging Face module, with raw weights
  or in compatibility mode.

Nothing is fetched from a hub. The weight processing used is recorded on the model
(``model._tl_inversion_processing``) so that decoders can record it: activation distances
depend on it, logits do not.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from tl_inversion.devices import resolve_device
from tl_inversion.errors import InputValueError, LoadError
from tl_inversion.model.protocol import ProbedModel

ModelClass = Literal["hooked", "bridge"]
Processing = Literal["default", "none", "compat"]

#: HookedTransformer's default processing (``HookedTransformer.from_pretrained``).
DEFAULT_PROCESSING = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
}
NO_PROCESSING = {k: False for k in DEFAULT_PROCESSING}



def _read_hf_gpt2(path: str | Path) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise LoadError(f"{path} has no config.json: expected a Hugging Face GPT-2 checkpoint folder")
    try:
        raw = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise LoadError(f"{path / 'config.json'} is not valid JSON ({e})") from e
    if raw.get("model_type", "gpt2") != "gpt2":
        raise LoadError(f"{path} holds a {raw['model_type']!r} checkpoint; load_hf_gpt2 reads GPT-2 checkpoints "
                        "(config.json model_type 'gpt2')")
    config = GPT2Config.from_dict(raw)
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(path / "model.safetensors"))
    elif (path / "pytorch_model.bin").is_file():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise LoadError(f"{path} has neither model.safetensors nor pytorch_model.bin")
    config._attn_implementation = "eager"
    model = GPT2LMHeadModel(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # causal-mask buffers (older checkpoints save them) and the tied unembedding are no weights of their own
    buffers = (".attn.bias", ".attn.masked_bias")
    missing = [k for k in missing if not k.endswith((*buffers, "lm_head.weight"))]
    unexpected = [k for k in unexpected if not k.endswith(buffers)]
    loaded = len(state) - len(unexpected)
    if missing:
        raise LoadError(f"{path}: {len(missing)} weights missing from the checkpoint (loaded {loaded} of "
                        f"{len(state)} keys): {missing[:5]}")
    if unexpected:
        raise LoadError(
            f"{path}: the checkpoint has {len(unexpected)} weights the model of its config.json has no place for "
            f"(config: {config.n_layer} layers, d_model {config.n_embd}; {loaded} of {len(state)} keys matched): "
            f"{sorted(unexpected)[:10]}{' ...' if len(unexpected) > 10 else ''}. "
            "Does config.json belong to these weights?"
        )
    model.tie_weights()
    return model.eval()


def _tl_version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")


def hooked_config_from_hf(hf_config: Any) -> Any:
    """A ``HookedTransformerConfig`` equal in shape to a Hugging Face ``GPT2Config``."""
    try:
        from transformer_lens import HookedTransformerConfig
    except Exception as e:  # TL 4 removed it
        raise LoadError("this TransformerLens has no HookedTransformer (TL >= 4): use model_class='bridge'") from e
    d_model = hf_config.n_embd
    return HookedTransformerConfig(
        n_layers=hf_config.n_layer,
        d_model=d_model,
        n_heads=hf_config.n_head,
        d_head=d_model // hf_config.n_head,
        d_mlp=hf_config.n_inner or 4 * d_model,
        n_ctx=hf_config.n_positions,
        d_vocab=hf_config.vocab_size,
        act_fn=hf_config.activation_function,
        eps=hf_config.layer_norm_epsilon,
        normalization_type="LN",
        positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel",
        default_prepend_bos=False,
        device="cpu",  # weights are processed on the CPU, then the model is moved
    )


def default_model_class() -> ModelClass:
    """``"hooked"`` where this TransformerLens has ``HookedTransformer`` (TL < 4), else ``"bridge"``."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401

        return "hooked"
    except Exception:
        return "bridge"


def load_hf_gpt2(
    path: str | Path,
    model_class: ModelClass | None = None,
    processing: Processing | None = None,
    *,
    device: str | torch.device = "cpu",
    tokenizer: Any = None,
) -> ProbedModel:
    """Load a local Hugging Face GPT-2 checkpoint as a TransformerLens model.

    Args:
        path: folder with ``config.json`` and ``pytorch_model.bin`` or ``model.safetensors``.
        model_class: ``"hooked"`` for a ``HookedTransformer`` (TL < 4) or ``"bridge"`` for a
            ``TransformerBridge`` (TL >= 3); ``None`` (default): :func:`default_model_class`.
        processing: ``"default"``: HookedTransformer's default weight processing (fold_ln,
            center_writing_weights, center_unembed, fold_value_biases; the paper's
            activations); ``"none"``: raw weights; ``"compat"``: the bridge's compatibility
            mode (bridge only; equals ``"default"`` processing). ``None`` (default):
            ``"default"`` for a HookedTransformer, ``"compat"`` for a bridge (the same
            activations either way).
        device: where to put the model (``"auto"``: CUDA when available, else CPU).
        tokenizer: a tokenizer for the bridge; a tiny character tokenizer is built from the
            vocabulary size when omitted (we work on token ids, never strings).

    Returns:
        The model in eval mode. With ``processing="none"`` its logits equal the Hugging Face
        model's to float32 rounding. With ``"default"``/``"compat"`` (``center_unembed``
        subtracts the mean over the vocabulary from the unembedding) the raw logits differ
        from Hugging Face's by a constant per position (the mean logit over the
        vocabulary); log-probabilities (``log_softmax``) and logit differences agree to
        float32 rounding. The PAD and BOS ids of ``config.json`` are recorded as
        ``model._tl_inversion_special_ids`` (for the left-padding check).

    Raises:
        LoadError: missing files, invalid ``config.json``, a checkpoint that is not GPT-2,
            weights missing from the checkpoint or weights the config has no place for
            (e.g. a third layer under a 2-layer config; the message lists them and says
            how many keys matched), or a model class this TransformerLens lacks.
        ValueError: unknown ``model_class``, ``processing`` or ``device``, or CUDA asked for
            without a GPU (see :func:`~tl_inversion.devices.resolve_device`).
    """
    path = Path(path)
    if model_class is None:
        model_class = default_model_class()
    if processing is None:
        processing = "default" if model_class == "hooked" else "compat"
    if model_class not in ("hooked", "bridge"):
        raise InputValueError(f"model_class must be 'hooked' or 'bridge', got {model_class!r}")
    if processing not in ("default", "none", "compat"):
        raise InputValueError(f"processing must be 'default', 'none' or 'compat', got {processing!r}")
    device = resolve_device(device)
    hf = _read_hf_gpt2(path)
    if model_class == "hooked":
        if processing == "compat":
            raise InputValueError("processing='compat' is the bridge's mode; for a HookedTransformer use 'default'")
        model = hooked_from_hf(hf, processing)
    else:
        model = bridge_from_hf(hf, processing, tokenizer=tokenizer)
    with contextlib.redirect_stdout(io.StringIO()):  # TL prints "Moving model to device" on every move
        model = model.to(device)
    special = {"pad": hf.config.pad_token_id, "bos": hf.config.bos_token_id}
    model._tl_inversion_special_ids = {k: (v if isinstance(v, int) else None) for k, v in special.items()}
    return model.eval()


def hooked_from_hf(hf: Any, processing: Processing = "default") -> ProbedModel:
    """A ``HookedTransformer`` from an in-memory Hugging Face GPT-2 module.

    Raises:
        LoadError: this TransformerLens (>= 4) has no HookedTransformer.
    """
    try:
        from transformer_lens import HookedTransformer
        from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    except Exception as e:
        raise LoadError(
            f"this TransformerLens ({_tl_version()}) has no HookedTransformer (removed in 4.0): "
            "use model_class='bridge' (processing 'compat' gives HookedTransformer-equal activations)"
        ) from e

    cfg = hooked_config_from_hf(hf.config)
    with contextlib.redirect_stdout(io.StringIO()):  # TL prints "Moving model to device" on every build
        model = HookedTransformer(cfg)
    state = {k: v.detach().clone() for k, v in convert_gpt2_weights(hf, cfg).items()}
    flags = DEFAULT_PROCESSING if processing == "default" else NO_PROCESSING
    model.load_and_process_state_dict(state, **flags)
    model._tl_inversion_processing = {"loader": "hooked", **flags}
    return model.eval()


def char_tokenizer(vocab: Sequence[str], *, bos: str, eos: str, pad: str) -> Any:
    """An in-memory ``PreTrainedTokenizerFast`` with one token per vocabulary entry.

    Used only so that a ``TransformerBridge`` never reaches for a hub; tl_inversion itself
    works on token ids. Text is split into single characters; BOS is prepended.
    """
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    ids = {v: i for i, v in enumerate(vocab)}
    tok = Tokenizer(WordLevel(ids, unk_token=pad))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, ids[bos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=pad,
        add_bos_token=True,  # otherwise TransformerLens re-loads the tokenizer by name (hub)
        padding_side="right",
        name_or_path="tl-inversion/char-tokenizer",
    )


def bridge_from_hf(hf: Any, processing: Processing = "none", *, tokenizer: Any = None) -> ProbedModel:
    """A ``TransformerBridge`` wrapping an in-memory Hugging Face GPT-2 module.

    ``processing``: ``"none"`` keeps raw weights; ``"compat"`` or ``"default"`` calls
    ``enable_compatibility_mode()`` (HookedTransformer-style processing).
    """
    from tl_inversion.model._bridge import build_bridge

    if tokenizer is None:
        n = hf.config.vocab_size
        vocab = [f"<{i}>" for i in range(n)]
        special = lambda i: vocab[i] if isinstance(i, int) and 0 <= i < n else vocab[-1]  # noqa: E731
        tokenizer = char_tokenizer(
            vocab,
            bos=special(hf.config.bos_token_id),
            eos=special(hf.config.eos_token_id),
            pad=special(hf.config.pad_token_id),
        )
    elif getattr(tokenizer, "bos_token", None) is not None and "name_or_path" not in getattr(
        tokenizer, "init_kwargs", {}
    ):
        # TransformerLens re-creates a tokenizer by this name unless it already adds BOS
        raise LoadError(
            "the TransformerBridge needs a tokenizer that records where it came from "
            "(tokenizer.init_kwargs['name_or_path']); an in-memory tokenizer lacks it: save it with "
            "save_pretrained(folder) and load it with AutoTokenizer.from_pretrained(folder), or build it with "
            "name_or_path=... and add_bos_token=True"
        )
    model = build_bridge(hf, tokenizer)
    if processing in ("compat", "default"):
        model.enable_compatibility_mode()
        model._tl_inversion_processing = {"loader": "bridge", "compatibility_mode": True}
    else:
        model._tl_inversion_processing = {"loader": "bridge", "compatibility_mode": False}
    return model.eval()
