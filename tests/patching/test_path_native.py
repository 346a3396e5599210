"""Issue 19.5: q/k/v receivers on models that refuse ``set_use_split_qkv_input``.

A ``TransformerBridge`` built with ``boot_native`` has no hook before its q/k/v projections;
path patching then patches the receiver head's projected q/k/v. The expectation is a
two-step path patch written here with plain TransformerLens hooks: step 1 records the
receiver layer's residual input with the sender patched and every head and MLP frozen, a
second forward replaces that residual input and reads the head's q/k/v from it, step 2
writes that q/k/v for the receiver head only.
"""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_CFG, amplify, build_tokenizer, random_patching_data
from patching_common import POS, N, kw, ld_at_last

from tl_inversion.errors import InputValueError
from tl_inversion.patching.path import run_path_patching


def _native_bridge():
    try:
        import transformer_lens.model_bridge.sources  # noqa: F401  (attaches boot_native)
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        pytest.skip("this TransformerLens has no TransformerBridge")
    if not hasattr(TransformerBridge, "boot_native"):
        pytest.skip("this TransformerLens has no TransformerBridge.boot_native")
    bridge = TransformerBridge.boot_native(
        dict(TINY_CFG), tokenizer=build_tokenizer(TINY_CFG), device="cpu", dtype=torch.float32
    )
    return amplify(bridge.eval())


def _hand_path_patch(model, sender_layer, sender_head, recv_layer, recv_head, comp, clean, contrast, a, b):
    """Two-step path patch with plain hooks (whole sequence, one sender head, one receiver head)."""
    n_layers = model.cfg.n_layers
    z_hooks = [f"blocks.{i}.attn.hook_z" for i in range(n_layers)]
    mlp_hooks = [f"blocks.{i}.hook_mlp_out" for i in range(n_layers)]
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=z_hooks + mlp_hooks)
        _, con_cache = model.run_with_cache(contrast, names_filter=z_hooks)

        def freeze(name, head_from_contrast=None):
            def fn(x, hook):
                x = clean_cache[name].clone()
                if head_from_contrast is not None:
                    x[:, :, head_from_contrast] = con_cache[name][:, :, head_from_contrast]
                return x
            return fn

        recorded = {}
        hooks = [(h, freeze(h, sender_head if h == f"blocks.{sender_layer}.attn.hook_z" else None)) for h in z_hooks]
        hooks += [(h, freeze(h)) for h in mlp_hooks]
        hooks.append((f"blocks.{recv_layer}.hook_resid_pre", lambda x, hook: recorded.__setitem__("r", x.clone())))
        model.run_with_hooks(clean, fwd_hooks=hooks)
        # the receiver head's q/k/v computed by the model from the patched residual stream
        proj = {}
        model.run_with_hooks(clean, fwd_hooks=[
            (f"blocks.{recv_layer}.hook_resid_pre", lambda x, hook: recorded["r"]),
            (f"blocks.{recv_layer}.attn.hook_{comp}", lambda x, hook: proj.__setitem__("p", x.clone())),
        ])

        def write(x, hook):
            x = x.clone()
            x[:, :, recv_head] = proj["p"][:, :, recv_head]
            return x

        logits = model.run_with_hooks(clean, fwd_hooks=[(f"blocks.{recv_layer}.attn.hook_{comp}", write)])
        base = model(clean)
    return ld_at_last(base, a, b).double(), ld_at_last(logits, a, b).double()


@pytest.mark.parametrize("comp", ["q", "k", "v"])
def test_native_bridge_qkv_receivers_match_a_hand_path_patch(comp):
    model = _native_bridge()
    with pytest.raises(Exception):  # the set-up: this bridge refuses the split inputs
        model.set_use_split_qkv_input(True)
    data = random_patching_data(5, N, POS)
    clean, contrast, a, b = data
    edge = f"a0.1 -> a1.0.{comp}"
    res = run_path_patching(model, edge, clean, **kw(data))
    ld_clean, expected = _hand_path_patch(model, 0, 1, 1, 0, comp, clean, contrast, a, b)
    torch.testing.assert_close(torch.from_numpy(res.clean), ld_clean, atol=1e-5, rtol=1e-5)
    got = torch.from_numpy(res.patched[edge])
    assert (expected - ld_clean).abs().max() > 1e-3  # the path carries an effect
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert res.settings["qkv_receivers"] == "projected q/k/v"
    assert not getattr(model.cfg, "use_split_qkv_input", False)


def test_projected_receivers_equal_split_inputs(model, data, monkeypatch):
    """On models that support split inputs, refusing them gives the same numbers."""
    clean = data[0]
    edges = ["a0.1 -> a1.0.q", "a0.0 -> a1.1.k@3", "a0@3 -> a1.v@3,5", ("a0.0 -> a1.0.v", "a0.1 -> a1.0.v")]
    split = run_path_patching(model, edges, clean, **kw(data))
    assert split.settings["qkv_receivers"] == "split q/k/v inputs"

    def refuse(flag):
        raise NotImplementedError("no hook before the q/k/v projections")

    monkeypatch.setattr(model, "set_use_split_qkv_input", refuse)
    proj = run_path_patching(model, edges, clean, **kw(data))
    assert proj.settings["qkv_receivers"] == "projected q/k/v"
    moved = [label for label in split.patched if abs(split.patched[label] - split.clean).max() > 1e-3]
    assert len(moved) >= 3  # most edges carry an effect, so equality is not trivial
    for label in split.patched:
        torch.testing.assert_close(torch.from_numpy(proj.patched[label]), torch.from_numpy(split.patched[label]),
                                   atol=1e-4, rtol=1e-4)


def test_grouped_kv_heads_refused_with_the_reason(model, data, monkeypatch):
    def refuse(flag):
        raise NotImplementedError("no hook before the q/k/v projections")

    monkeypatch.setattr(model, "set_use_split_qkv_input", refuse)
    monkeypatch.setattr(model.cfg, "n_key_value_heads", 1, raising=False)
    with pytest.raises(InputValueError, match=r"refuses set_use_split_qkv_input.*grouped-query attention.*'resid'"):
        run_path_patching(model, "a0.1 -> a1.0.v", data[0], **kw(data))
