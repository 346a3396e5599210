"""Small probed models written to disk as Hugging Face checkpoints and read back by
``tl_inversion.loading`` (the path a user's real model takes)."""

from __future__ import annotations

from pathlib import Path

import torch


def write_gpt2(folder: Path, *, d_vocab: int = 40, n_ctx: int = 33, d_model: int = 16, n_layers: int = 2,
               n_heads: int = 2, seed: int = 0, biases: bool = True) -> Path:
    """Save a random-init ``GPT2LMHeadModel`` (safetensors) into ``folder``; with ``biases``
    (default) every bias is random and non-zero (``helpers.randomize_biases``), not HF's zeros."""
    from helpers import randomize_biases
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=d_vocab, n_positions=n_ctx, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
                     bos_token_id=37 if d_vocab == 40 else 0, eos_token_id=38 if d_vocab == 40 else 0,
                     pad_token_id=39 if d_vocab == 40 else 0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    if biases:
        randomize_biases(model, seed)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def load_counting_shaped(folder: Path, model_class: str, processing: str | None = None, seed: int = 0):
    """A counting-shaped (vocab 40, n_ctx 33) random model through ``load_hf_gpt2``."""
    from tl_inversion.model.loading import load_hf_gpt2

    if not (folder / "config.json").exists():
        write_gpt2(folder, seed=seed)
    processing = processing or ("default" if model_class == "hooked" else "compat")
    return load_hf_gpt2(folder, model_class, processing)
