"""Sanity tests of the test environment itself: the tiny_model fixture on every TL version."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import HAS_BRIDGE, HAS_HOOKED, TL_VERSION, build_bridge, build_hf_gpt2, build_tokenizer

BATCH, POS = 2, 12


@pytest.fixture
def tokens(tiny_cfg):
    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, tiny_cfg["d_vocab"], (BATCH, POS), generator=g)


def test_env_matches_installed_tl():
    expected = {"tl39": (3, 9, 0), "tl43": (4, 3, 0), "tl218": (2, 18, 0)}
    env = os.environ.get("TL_INVERSION_ENV")
    if env not in expected:
        pytest.skip(f"TL_INVERSION_ENV={env!r} is not one of run_all.sh's environments")
    assert TL_VERSION[:3] == expected[env]
    assert HAS_HOOKED == (TL_VERSION < (4,))
    assert HAS_BRIDGE == (TL_VERSION >= (3,))


def test_tl_version_fixture(tl_version):
    assert tl_version == TL_VERSION and len(tl_version) >= 2


def test_tokenizer_is_offline_and_fits_vocab(tiny_cfg):
    tok = build_tokenizer(tiny_cfg)
    assert len(tok) == tiny_cfg["d_vocab"]
    assert tok("1 2 3")["input_ids"] == [10, 1, 2, 3]
    assert tok.bos_token_id == tok.eos_token_id == tok.pad_token_id == 10


def test_forward_logits_shape(tiny_model, tiny_cfg, tokens):
    with torch.no_grad():
        logits = tiny_model(tokens)
    assert tuple(logits.shape) == (BATCH, POS, tiny_cfg["d_vocab"])
    assert torch.isfinite(logits).all()
    assert not tiny_model.training


def test_run_with_cache_shapes(tiny_model, tiny_cfg, tokens):
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]
    with torch.no_grad():
        logits, cache = tiny_model.run_with_cache(tokens, names_filter=names)
    assert tuple(logits.shape) == (BATCH, POS, tiny_cfg["d_vocab"])
    # The bridge may add alias keys (e.g. blocks.0.hook_out); only require the asked-for ones.
    assert tuple(cache["blocks.0.hook_resid_post"].shape) == (BATCH, POS, tiny_cfg["d_model"])
    assert tuple(cache["blocks.1.attn.hook_z"].shape) == (
        BATCH,
        POS,
        tiny_cfg["n_heads"],
        tiny_cfg["d_head"],
    )


def test_fixture_is_deterministic(tiny_model_variant, tiny_cfg, tokens):
    from helpers import build_variant

    with torch.no_grad():
        a = build_variant(tiny_model_variant, tiny_cfg)(tokens)
        b = build_variant(tiny_model_variant, tiny_cfg)(tokens)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_to_tokens_prepends_bos_once(tiny_model):
    toks = tiny_model.to_tokens("1 2 3")
    assert toks.tolist() == [[10, 1, 2, 3]]


@pytest.mark.skipif(not HAS_BRIDGE, reason="TransformerBridge needs TL >= 3")
def test_bridge_raw_matches_hf_module(tiny_cfg, tokens):
    # Reference computed on an independently built copy (same seed) *before* any bridging.
    with torch.no_grad():
        ref = build_hf_gpt2(tiny_cfg, seed=0)(tokens).logits
        hf = build_hf_gpt2(tiny_cfg, seed=0)
        bridge = build_bridge(tiny_cfg, seed=0, compat=False, hf_model=hf)
        out = bridge(tokens)
        direct = hf(tokens).logits  # the wrapped module itself still agrees
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(direct, ref, rtol=0, atol=1e-4)


@pytest.mark.skipif(not HAS_BRIDGE, reason="TransformerBridge needs TL >= 3")
def test_bridge_compat_matches_hf_up_to_logit_shift(tiny_cfg, tokens):
    # enable_compatibility_mode centres the unembedding: logits shift by a per-position
    # constant, so compare log-probabilities.
    with torch.no_grad():
        ref = build_hf_gpt2(tiny_cfg, seed=0)(tokens).logits.log_softmax(-1)
        out = build_bridge(tiny_cfg, seed=0, compat=True)(tokens).log_softmax(-1)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)


def test_paper_counting_dir_fixture(paper_counting_dir):
    assert (paper_counting_dir / "config.json").is_file()
