"""Path patching on tiny models: limiting cases, a hand computation, TL 4's own version."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers import HAS_HOOKED, amplify, random_patching_data

from tl_inversion.patching import FromCache, NoEffectEdgeWarning, run_patching
from tl_inversion.patching.notation import Edge
from tl_inversion.patching.path import path_patch, run_path_patching, split_qkv_inputs

N, POS = 6, 12



@pytest.fixture
def model(tiny_model):
    return amplify(tiny_model)


@pytest.fixture
def data():
    return random_patching_data(11, N, POS)


def kw(data, **extra):
    clean, contrast, a, b = data
    return dict(contrast_tokens=contrast, answers=a, contrast_answers=b, answer_position=-1, progress=False, **extra)


def ld_at_last(logits, a, b):
    last = logits[:, -1]
    ar = torch.arange(last.shape[0])
    return last[ar, a] - last[ar, b]


def test_only_path_equals_activation_patching(model, data):
    """The last layer's head reaches the final logits only through resid_post of the last
    layer (MLPs recomputed), so the path effect is the activation-patching effect."""
    clean = data[0]
    last = model.cfg.n_layers - 1
    for head in range(model.cfg.n_heads):
        pp = run_path_patching(model, f"a{last}.{head} -> resid_post.{last}@-1", clean, freeze_mlps=False, **kw(data))
        ap = run_patching(model, f"a{last}.{head}", clean, **kw(data))
        (k,) = pp.patched
        assert np.abs(ap.patched[f"a{last}.{head}"] - ap.clean).max() > 1e-3
        np.testing.assert_allclose(pp.patched[k], ap.patched[f"a{last}.{head}"], atol=1e-5, rtol=1e-5)
    # the same with the sender zero- and mean-ablated instead of taken from the contrast
    for source in ("zero", "mean"):
        pp = run_path_patching(
            model, f"a{last}.0@3,-1 -> resid_post.{last}@-1", clean, source, freeze_mlps=False, **kw(data)
        )
        ap = run_patching(model, f"a{last}.0@3,-1", clean, source, **kw(data))
        (k,) = pp.patched
        np.testing.assert_allclose(pp.patched[k], ap.patched[f"a{last}.0@3,-1"], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not HAS_HOOKED, reason="attention-only models are built as HookedTransformer (TL < 4)")
def test_only_path_in_attention_only_model_with_everything_frozen(data):
    from helpers import build_hooked

    model = build_hooked({**__import__("helpers").TINY_CFG, "attn_only": True})
    clean = data[0]
    pp = run_path_patching(model, "a1.0 -> resid_post.1@-1", clean, **kw(data))
    ap = run_patching(model, "a1.0", clean, **kw(data))
    np.testing.assert_allclose(pp.patched["a1.0 -> resid_post.1@-1"], ap.patched["a1.0"], atol=1e-5, rtol=1e-5)


def test_blocked_paths_give_exactly_zero(model, data):
    """A sender at the last position cannot reach earlier positions (causal attention)."""
    with pytest.warns(NoEffectEdgeWarning):
        df = path_patch(
            model,
            [
                f"a0@{POS - 1} -> a1.0.k@0,3,5",
                f"a0@{POS - 1} -> a1.1.q@4",
                f"e_tok@{POS - 1} -> resid_pre.1@2",
                f"m0@{POS - 1} -> a1.v@0,1",
            ],
            data[0],
            n_boot=20,
            **kw(data),
        )
    assert (df["effect"] == 0.0).all()
    # and identical clean/contrast inputs give exactly zero through any path
    df = path_patch(
        model,
        ["a0.0 -> a1.1.v", "e_pos -> a1.q@-1", "a0 -> resid_post.1@-1"],
        data[0],
        n_boot=0,
        **{**kw(data), "contrast_tokens": data[0].clone()},
    )
    assert (df["effect"] == 0.0).all()


def test_receiver_must_follow_sender(model, data):
    with pytest.raises(ValueError, match="earlier sender"):
        path_patch(model, "a1.0 -> a0.1.q", data[0], **kw(data))
    with pytest.raises(ValueError, match="earlier sender"):
        path_patch(model, "a1.0 -> a1.1.v", data[0], **kw(data))
    with pytest.raises(ValueError, match="earlier sender"):
        path_patch(model, "m1 -> resid_mid.1", data[0], **kw(data))


def test_flags_restored_and_hooks_removed(model, data):
    model.add_hook("blocks.1.hook_resid_pre", lambda x, hook: None)  # a user's hook
    before = {name: len(hp.fwd_hooks) for name, hp in model.hook_dict.items()}
    assert max(before.values()) == 1  # (the bridge lists one HookPoint under several names)
    assert not model.cfg.use_split_qkv_input
    path_patch(model, ["a0.1 -> a1.0.q", "a0.0 -> a1.1.v@2,3"], data[0], n_boot=0, **kw(data))
    assert not model.cfg.use_split_qkv_input
    assert {name: len(hp.fwd_hooks) for name, hp in model.hook_dict.items()} == before
    bad = FromCache({"blocks.0.attn.hook_z": torch.zeros(N, POS, model.cfg.n_heads, model.cfg.d_head + 1)})
    with pytest.raises(RuntimeError):
        path_patch(model, "a0.1@3 -> a1.0.k", data[0], bad, **{**kw(data), "contrast_tokens": None})
    assert not model.cfg.use_split_qkv_input
    assert {name: len(hp.fwd_hooks) for name, hp in model.hook_dict.items()} == before
    # a flag the user had set stays set
    model.set_use_split_qkv_input(True)
    try:
        with split_qkv_inputs(model):
            pass
        assert model.cfg.use_split_qkv_input
    finally:
        model.set_use_split_qkv_input(False)


def test_several_edges_and_labels(model, data):
    edges = {"both": ["a0.0 -> a1.0.v", "a0.1 -> a1.0.v"], "one": "a0.0 -> a1.0.v"}
    df = path_patch(model, edges, data[0], n_boot=0, **kw(data))
    assert list(df.index) == ["both", "one"]
    assert df.loc["both", "edges"] == "a0.0 -> a1.0.v & a0.1 -> a1.0.v"
    # two senders into one input, everything frozen: the changes of the receiver's input add,
    # so this equals the edge from the whole layer
    whole = path_patch(model, "a0 -> a1.0.v", data[0], n_boot=0, **kw(data))
    assert whole["LD_patched"].iloc[0] == pytest.approx(df.loc["both", "LD_patched"], abs=1e-5)
    assert Edge.parse(whole["edges"].iloc[0]) == Edge.parse("a0 -> a1.0.v")


@pytest.mark.skipif(not HAS_HOOKED, reason="the hand-built model is a HookedTransformer (TL < 4)")
def test_hand_computed_path_through_a_value_input(data):
    """Attention-only, no LayerNorm: the path a0.0 -> a1.1 (value input) by hand."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=8,
        n_heads=2,
        d_head=4,
        n_ctx=POS,
        d_vocab=10,
        attn_only=True,
        normalization_type=None,
        act_fn="relu",
        seed=3,
    )
    torch.manual_seed(3)
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    clean, contrast, a, b = data

    def heads(resid, layer, v_in=None):
        blk = model.blocks[layer].attn
        outs = []
        for h in range(2):
            q = resid @ blk.W_Q[h] + blk.b_Q[h]
            k = resid @ blk.W_K[h] + blk.b_K[h]
            v = (resid if v_in is None or h not in v_in else v_in[h]) @ blk.W_V[h] + blk.b_V[h]
            scores = q @ k.transpose(-1, -2) / 2.0  # sqrt(d_head)
            scores = scores.masked_fill(torch.triu(torch.ones(POS, POS, dtype=torch.bool), 1), float("-inf"))
            outs.append(scores.softmax(-1) @ v @ blk.W_O[h])
        return outs, blk.b_O

    with torch.no_grad():

        def embed(t):
            return model.W_E[t] + model.W_pos[:POS]

        r0_clean, r0_con = embed(clean), embed(contrast)
        o0_clean, bo0 = heads(r0_clean, 0)
        o0_con, _ = heads(r0_con, 0)
        r1_clean = r0_clean + o0_clean[0] + o0_clean[1] + bo0
        v_in = r1_clean + (o0_con[0] - o0_clean[0])  # only the direct path from head 0.0
        o1, bo1 = heads(r1_clean, 1, v_in={1: v_in})
        logits = (r1_clean + o1[0] + o1[1] + bo1) @ model.W_U + model.b_U
        expected = ld_at_last(logits, a, b).double()
    res = run_path_patching(model, "a0.0 -> a1.1.v", clean, **kw(data))
    got = torch.from_numpy(res.patched["a0.0 -> a1.1.v"])
    assert (got - torch.from_numpy(res.clean)).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_agrees_with_transformer_lens_direct_path_patching(model, data):
    import transformer_lens.patching as tlp

    if not hasattr(tlp, "get_act_patch_direct_path"):
        pytest.skip("this TransformerLens has no patching.get_act_patch_direct_path (TL 4 ships it)")
    clean, contrast, a, b = data
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupted_cache = model.run_with_cache(contrast)
    metric = lambda lg: ld_at_last(lg, a, b).mean()  # noqa: E731
    L, H = model.cfg.n_layers, model.cfg.n_heads
    for comp in ("q", "k", "v"):
        tl = tlp.get_act_patch_direct_path(
            model, contrast, clean_cache, corrupted_cache, metric, 0, 1, comp, verbose=False
        )
        # TL starts from the corrupted input and adds the clean write: swap the roles
        edges = [f"a0.1 -> a1.{h}.{comp}" for h in range(H)]
        ours = run_path_patching(
            model,
            edges,
            contrast,
            "contrast",
            contrast_tokens=clean,
            answers=a,
            contrast_answers=b,
            answer_position=-1,
            progress=False,
        )
        got = torch.tensor([ours.patched[e].mean() for e in edges])
        torch.testing.assert_close(got, tl[L - 1].double().cpu(), atol=1e-5, rtol=1e-5)


def test_edges_whose_positions_never_meet_warn(model, data):
    """The sender writes the residual stream at 3 only (every head frozen); a value input read
    at 5 is the clean one, so the effect is 0 by construction, and the call says so."""
    with pytest.warns(NoEffectEdgeWarning, match="a1.v@5"):
        df = path_patch(model, ["a0@3 -> a1.v@5", "a0@3 -> a1.v@3,5"], data[0], n_boot=0, **kw(data))
    assert df["effect"].iloc[0] == 0.0
    assert df["effect"].iloc[1] != 0.0  # the value at key position 3 carries the sender's change
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoEffectEdgeWarning)
        path_patch(model, ["a0 -> a1.q@5", "a0@3 -> a1.k@3"], data[0], n_boot=0, **kw(data))
