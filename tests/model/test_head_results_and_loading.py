"""Per-head outputs against hand sums with non-zero b_O (issue 18), load_hf_gpt2 refusing
weights its config has no place for (19.4) and its log-probabilities equal to Hugging Face's (19.10)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import HAS_BRIDGE, HAS_HOOKED, SPECIAL_ID
from model_files import write_gpt2

from tl_inversion.errors import LoadError
from tl_inversion.model.activations import harvest

CLASSES = [pytest.param("hooked", marks=pytest.mark.skipif(not HAS_HOOKED, reason="no HookedTransformer (TL >= 4)")),
           pytest.param("bridge", marks=pytest.mark.skipif(not HAS_BRIDGE, reason="no TransformerBridge (TL < 3)"))]


def _w_o_b_o(model, variant, layer):
    """W_O [head, d_head, d_model] and b_O [d_model], from the Hugging Face module itself for a
    raw bridge (Conv1D c_proj: out = z_flat @ weight + bias), else TL's own parameters."""
    n_heads, d_head = model.cfg.n_heads, model.cfg.d_head
    if variant == "bridge-raw":
        c_proj = model.original_model.transformer.h[layer].attn.c_proj
        return c_proj.weight.detach().reshape(n_heads, d_head, -1), c_proj.bias.detach()
    return model.blocks[layer].attn.W_O.detach(), model.blocks[layer].attn.b_O.detach()


def test_head_results_plus_b_o_sum_to_attn_out(tiny_model, tiny_model_variant):
    tokens = torch.tensor([[SPECIAL_ID, 3, 1, 4, 1, 5, 9, 2], [SPECIAL_ID, 2, 7, 1, 8, 2, 8, 1]])
    n_heads = tiny_model.cfg.n_heads
    for layer in range(tiny_model.cfg.n_layers):
        w_o, b_o = _w_o_b_o(tiny_model, tiny_model_variant, layer)
        assert b_o.abs().max() > 0.01, "test models must have non-zero b_O, or a b_O bug goes unseen"
        names = [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out"]
        _, cache = tiny_model.run_with_cache(tokens, names_filter=names)
        z, attn_out = cache[names[0]], cache[names[1]]  # [b, p, h, d_head], [b, p, d_model]
        got = harvest(tiny_model, tokens, [f"blocks.{layer}.attn.hook_result[{h}]" for h in range(n_heads)])
        total = b_o.expand_as(attn_out).clone()
        for h in range(n_heads):
            by_hand = torch.zeros_like(attn_out)
            for i in range(w_o.shape[1]):  # z[..., h, :] @ W_O[h], written out
                by_hand += z[:, :, h, i : i + 1] * w_o[h, i]
            torch.testing.assert_close(got[f"blocks.{layer}.attn.hook_result[{h}]"], by_hand, atol=1e-5, rtol=1e-5)
            total += got[f"blocks.{layer}.attn.hook_result[{h}]"]
        torch.testing.assert_close(total, attn_out, atol=1e-5, rtol=1e-5)
        # a head output carrying b_O / n_heads would miss attn_out by b_O / n_heads * n_heads = b_O
        assert (total + b_o - attn_out).abs().max() > 0.01


@pytest.mark.parametrize("model_class", CLASSES)
def test_extra_layer_in_checkpoint_is_refused(tmp_path, model_class):
    from safetensors.torch import load_file

    from tl_inversion.model.loading import load_hf_gpt2

    write_gpt2(tmp_path, n_layers=3)
    state = load_file(str(tmp_path / "model.safetensors"))
    extra = sorted(k for k in state if k.startswith("transformer.h.2."))
    assert extra
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["n_layer"] = 2
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError) as e:
        load_hf_gpt2(tmp_path, model_class)
    msg = str(e.value)
    assert f"{len(extra)} weights the model of its config.json has no place for" in msg
    assert f"{len(state) - len(extra)} of {len(state)} keys matched" in msg
    for k in extra[:10]:
        assert repr(k) in msg
    cfg["n_layer"] = 3  # with the right config it loads
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert load_hf_gpt2(tmp_path, model_class).cfg.n_layers == 3


@pytest.mark.parametrize("model_class", CLASSES)
@pytest.mark.parametrize("processing", ["default", "none"])
def test_log_probs_equal_hugging_face(tmp_path, model_class, processing):
    from transformers import GPT2LMHeadModel

    from tl_inversion.model.loading import load_hf_gpt2

    if model_class == "bridge" and processing == "default":
        processing = "compat"
    write_gpt2(tmp_path)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert hf.transformer.h[0].attn.c_proj.bias.abs().max() > 0.01  # biases are part of the check
    model = load_hf_gpt2(tmp_path, model_class, processing)
    tokens = torch.tensor([[37, 1, 5, 9, 2, 6, 5, 3], [37, 30, 20, 10, 0, 4, 4, 38]])
    with torch.no_grad():
        ref = hf(tokens).logits
        got = model(tokens, return_type="logits")
    torch.testing.assert_close(got.log_softmax(-1), ref.log_softmax(-1), atol=1e-5, rtol=1e-5)
    diff = got - ref
    # raw logits: equal without processing; otherwise off by one constant per position (center_unembed)
    torch.testing.assert_close(diff, diff.mean(-1, keepdim=True).expand_as(diff), atol=1e-5, rtol=1e-5)
    if processing == "none":
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    else:
        assert diff.abs().max() > 1e-3


@pytest.mark.parametrize("model_class", CLASSES)
def test_loaded_model_refuses_left_padding_with_its_config_pad(tmp_path, model_class):
    from tl_inversion.errors import InputValueError
    from tl_inversion.model.loading import load_hf_gpt2

    write_gpt2(tmp_path)  # config.json: BOS 37, PAD 39
    assert json.loads((tmp_path / "config.json").read_text())["pad_token_id"] == 39
    model = load_hf_gpt2(tmp_path, model_class)
    site = ["blocks.0.hook_resid_post"]
    harvest(model, torch.tensor([[37, 1, 2, 39, 39]]), site)  # right padding runs
    with pytest.raises(InputValueError, match=r"row 2 starts with the PAD id 39 \(1 of 3 rows"):
        harvest(model, torch.tensor([[37, 1, 2, 39], [37, 3, 39, 39], [39, 37, 1, 2]]), site)
