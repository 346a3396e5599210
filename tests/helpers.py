"""Builders for tiny, offline, randomly-initialised models on every supported TL version.

Imported by ``tests/conftest.py`` (``from helpers import ...``; pytest puts ``tests/`` on
``sys.path``) and meant as a reference for how ``tl_inversion`` should construct models.

What we learned about building models OFFLINE (no Hugging Face hub access)
-------------------------------------------------------------------------
* TL 2.18 / TL 3.9 -- ``HookedTransformer(HookedTransformerConfig(...), tokenizer=tok)``
  builds a random-init model from a config; no hub. (TL 4 removed ``HookedTransformer``:
  even ``hasattr(transformer_lens, "HookedTransformer")`` raises ImportError there.)
* TL 3.9 and TL 4.3 -- ``TransformerBridge.boot_transformers(name, hf_model=m,
  tokenizer=tok, device="cpu")`` wraps an in-memory HF module. With ``hf_model`` given,
  the HF config is ``deepcopy(hf_model.config)`` (no ``AutoConfig`` call) and the weights
  are used as-is; ``name`` is only recorded as ``cfg.model_name`` (it need not exist on
  the hub). Code: TL 3.9 ``model_bridge/sources/transformers.py::boot``; TL 4.3
  ``model_bridge/sources/transformers/source.py::boot`` (attached to ``TransformerBridge``
  as a staticmethod when ``transformer_lens.model_bridge`` is imported). There is also
  ``model_bridge.sources.build_bridge_from_module(model, architecture, hf_config=...)``
  (lower level; ``boot_transformers`` is the supported path).
* The tokenizer MUST be passed: without it ``boot`` calls ``AutoTokenizer.from_pretrained
  (name)`` (hub). A passed tokenizer goes through ``setup_tokenizer`` ->
  ``get_tokenizer_with_bos``, which *re-loads* it with ``AutoTokenizer.from_pretrained(
  tokenizer.name_or_path, add_bos_token=True)`` (hub again!) unless its ``init_kwargs``
  already say ``add_bos_token=True`` (or it has no BOS token). So the tiny tokenizer is built
  with ``add_bos_token=True`` and a BOS-prepending post-processor (transformers 5 installs
  that post-processor itself when ``add_bos_token=True``; 4.x ignores the flag, so we set it
  explicitly -- same encodings on both). ``setup_tokenizer`` also *adds* an
  ``<|endoftext|>`` token when eos/pad/bos are missing, so all three are in the 11-token vocab.
* ``bridge.enable_compatibility_mode()`` (same signature on TL 3.9 and 4.3: ``disable_warnings,
  no_processing, fold_ln, center_writing_weights, center_unembed, fold_value_biases,
  refactor_factored_attn_matrices``) processes the weights like HookedTransformer
  (fold LN, centre writing weights and unembed), so logits then match the HF module only up
  to a per-position constant (compare ``log_softmax``). It processes weights in place on the
  wrapped HF module, so compute HF reference outputs on a separately built copy.
* The bridge runs the HF module with eager attention (TL forces it); the HF model here is
  built with ``attn_implementation="eager"`` so direct HF calls use the same kernel.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

SEED = 0

#: Shape of every tiny model (HookedTransformerConfig field names).
TINY_CFG: dict[str, Any] = dict(
    n_layers=2,
    d_model=16,
    n_heads=2,
    d_head=8,
    d_mlp=32,
    n_ctx=12,
    d_vocab=11,
    act_fn="gelu_new",
    normalization_type="LN",
)

#: Vocabulary of the tiny tokenizer: digits "0".."9" are ids 0..9, id 10 is BOS = EOS = PAD.
TINY_VOCAB = [str(i) for i in range(10)] + ["<|endoftext|>"]
SPECIAL_TOKEN = "<|endoftext|>"
SPECIAL_ID = 10


def tl_version() -> tuple[int, ...]:
    """Installed transformer-lens version as a tuple of ints, e.g. (3, 9, 0)."""
    parts = []
    for p in importlib.metadata.version("transformer-lens").split("."):
        digits = "".join(c for c in p if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if digits != p:
            break
    return tuple(parts)


def _has_hooked() -> bool:
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: F401
    except Exception:  # TL 4: ImportError with a migration message
        return False
    return True


def _has_bridge() -> bool:
    try:
        from transformer_lens.model_bridge import TransformerBridge  # noqa: F401
    except Exception:
        return False
    return True


TL_VERSION = tl_version()
HAS_HOOKED = _has_hooked()  # TL < 4
HAS_BRIDGE = _has_bridge()  # TL >= 3


def has_compat_mode() -> bool:
    if not HAS_BRIDGE:
        return False
    from transformer_lens.model_bridge import TransformerBridge

    return hasattr(TransformerBridge, "enable_compatibility_mode")


def model_variants() -> list[str]:
    """Ids of the tiny-model variants available in this environment."""
    out = []
    if HAS_HOOKED:
        out.append("hooked")
    if HAS_BRIDGE:
        out.append("bridge-raw")
        if has_compat_mode():
            out.append("bridge-compat")
    return out


def build_tokenizer(cfg: dict | None = None):
    """Tiny in-memory word-level tokenizer over TINY_VOCAB (no files, no hub).

    ``"1 2 3"`` and ``"123"`` both encode to ``[10, 1, 2, 3]`` (BOS prepended).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    from tl_inversion.tasks.gpt2_tokenizer import wrap_for_transformer_lens

    d_vocab = (cfg or TINY_CFG)["d_vocab"]
    assert d_vocab == len(TINY_VOCAB), f"tiny tokenizer has {len(TINY_VOCAB)} tokens, cfg wants {d_vocab}"
    vocab = {tok: i for i, tok in enumerate(TINY_VOCAB)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKEN))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)]
    )
    # TransformerLens-ready wrapping, as for GPT-2's own BPE (one special token, right padding)
    return wrap_for_transformer_lens(tk, SPECIAL_TOKEN, SPECIAL_ID, model_max_length=(cfg or TINY_CFG)["n_ctx"],
                                     name="tl-inversion/tiny-digits")


#: Standard deviation of the random biases every tiny model gets (TL and HF initialise biases
#: to zero, which would hide any bug that adds or drops a bias, e.g. ``b_O / n_heads`` per head).
BIAS_STD = 0.1


def randomize_biases(model, seed: int = SEED, std: float = BIAS_STD):
    """Give every bias of ``model`` (attention q/k/v/out, MLP, LayerNorm, unembedding) random
    non-zero values, in place, deterministically in ``seed``; weights are left as they are.

    Biases are the parameters named ``b_*`` (HookedTransformer: ``b_Q b_K b_V b_O b_in b_out
    b_U``), ``*.b`` (HookedTransformer LayerNorm) or ``*.bias`` (Hugging Face GPT-2:
    ``c_attn``, ``c_proj``, ``c_fc``, ``ln_*``); causal-mask buffers are not parameters.
    """
    g = torch.Generator().manual_seed(seed + 12345)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("b_") or leaf in ("b", "bias"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std)
    return model


def build_hooked(cfg: dict | None = None, seed: int = SEED):
    """Random-init ``HookedTransformer`` (TL < 4), eval mode, CPU, fp32, with random
    non-zero biases (:func:`randomize_biases`)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = dict(cfg or TINY_CFG)
    torch.manual_seed(seed)
    ht_cfg = HookedTransformerConfig(**cfg, seed=seed, device="cpu")
    with warnings.catch_warnings():
        # TL 3.x: "HookedTransformer is deprecated and will be removed in 4.0" -- known.
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        model = HookedTransformer(ht_cfg, tokenizer=build_tokenizer(cfg))
    randomize_biases(model, seed)
    return model.eval()


def build_hf_gpt2(cfg: dict | None = None, seed: int = SEED):
    """Random-init HF ``GPT2LMHeadModel`` with the same shape as ``cfg`` (eval, eager attention),
    with random non-zero biases (:func:`randomize_biases`).

    Deterministic in ``seed``: call it twice to get an independent copy with identical weights.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = dict(cfg or TINY_CFG)
    assert cfg["d_model"] == cfg["n_heads"] * cfg["d_head"], "GPT-2 needs d_model == n_heads*d_head"
    assert cfg.get("normalization_type", "LN") == "LN", "GPT-2 uses LayerNorm"
    hf_cfg = GPT2Config(
        vocab_size=cfg["d_vocab"],
        n_positions=cfg["n_ctx"],
        n_embd=cfg["d_model"],
        n_layer=cfg["n_layers"],
        n_head=cfg["n_heads"],
        n_inner=cfg["d_mlp"],
        activation_function=cfg.get("act_fn", "gelu_new"),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        bos_token_id=SPECIAL_ID,
        eos_token_id=SPECIAL_ID,
        pad_token_id=SPECIAL_ID,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(hf_cfg)
    randomize_biases(model, seed)
    return model.eval()


def build_bridge(cfg: dict | None = None, seed: int = SEED, compat: bool = False, hf_model=None):
    """``TransformerBridge`` (TL >= 3) around a random-init HF GPT-2, built offline.

    ``compat=True`` additionally calls ``enable_compatibility_mode()`` (HookedTransformer
    numerics: folded LN, centred weights). Pass ``hf_model`` to wrap a specific module
    (it is used as-is and, with ``compat=True``, modified in place).
    """
    from transformer_lens.model_bridge import TransformerBridge

    cfg = dict(cfg or TINY_CFG)
    if hf_model is None:
        hf_model = build_hf_gpt2(cfg, seed)
    bridge = TransformerBridge.boot_transformers(
        "tl-inversion-tiny-gpt2",  # label only: with hf_model= nothing is fetched
        hf_model=hf_model,
        tokenizer=build_tokenizer(cfg),
        device="cpu",
        dtype=torch.float32,
    )
    if compat:
        bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge.eval()


def build_variant(variant: str, cfg: dict | None = None, seed: int = SEED):
    """Build one of ``model_variants()`` by id."""
    if variant == "hooked":
        return build_hooked(cfg, seed)
    if variant == "bridge-raw":
        return build_bridge(cfg, seed, compat=False)
    if variant == "bridge-compat":
        return build_bridge(cfg, seed, compat=True)
    raise ValueError(f"unknown model variant {variant!r}")


def amplify(model):
    """GPT-2 init (std 0.02) gives logit differences of ~1e-3; scale weights so that the
    bridge variants have effects of order 1, like the HookedTransformer's init."""
    if type(model).__name__ != "HookedTransformer":
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.mul_(10)
    return model


def random_patching_data(seed: int, n: int = 6, n_pos: int = 12):
    """Random clean and contrast rows ``[n, n_pos]`` over ids 0..9, answers ``[n]`` and
    contrast answers that always differ from them."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 10, (n, n_pos), generator=g)
    contrast = torch.randint(0, 10, (n, n_pos), generator=g)
    answers = torch.randint(0, 10, (n,), generator=g)
    contrast_answers = (answers + 1 + torch.randint(0, 8, (n,), generator=g)) % 10
    return clean, contrast, answers, contrast_answers
