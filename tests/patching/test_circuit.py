"""Circuit faithfulness: against ablations written out by hand with run_with_hooks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from patching_common import POS, N, kw, ld_at_last

from tl_inversion.patching import (
    CircuitFaithfulness,
    DisconnectedCircuitWarning,
    MeanAblation,
    ZeroAblation,
    circuit_faithfulness,
)
from tl_inversion.patching.notation import Circuit

# Faithfulness --------------------------------------------------------------------------


def test_faithfulness_full_circuit_scores_one(model, data):
    full = ["e_tok", "e_pos"] + [f"a{layer}" for layer in range(2)] + [f"m{layer}" for layer in range(2)]
    res = circuit_faithfulness(model, full, data[0], "zero", n_boot=20, **kw(data))
    assert res.score == 1.0 and res.normalised_score == 1.0
    assert res.settings["source"] == "zero" and res.settings["n_components_ablated"] == 0
    assert "ablation=zero" in str(res) and res.to_frame()["ablation_source"].iloc[0] == "zero"


def test_faithfulness_matches_hand_ablation(model, data):
    clean, contrast, a, b = data
    keep = {
        ("blocks.1.attn.hook_z", 0): {POS - 1},
        ("hook_embed", None): set(range(POS)),
        ("blocks.0.attn.hook_z", 1): {2, 5},
    }
    comps = _comps(model)
    fwd = [(h, _zeroing_hook(head, keep.get((h, head), set()))) for h, head in comps]
    with torch.no_grad():
        expected = ld_at_last(model.run_with_hooks(clean, fwd_hooks=fwd), a, b).double().mean().item()
        full = ld_at_last(model(clean), a, b).double().mean().item()
    circuit = Circuit.parse(f"a1.0@{POS - 1}; e_tok; a0.1@2,5", name="hand")
    res = circuit_faithfulness(model, circuit, clean, ZeroAblation(), n_boot=0, **kw(data))
    assert res.metric_circuit == pytest.approx(expected, abs=1e-5)
    assert res.metric_full == pytest.approx(full, abs=1e-5)
    assert res.score == pytest.approx(expected / full, rel=1e-4)
    assert res.settings["n_components_ablated"] == len(comps) - 3
    with pytest.raises(ValueError, match="components"):
        circuit_faithfulness(model, ["resid_post.0@3"], clean, "zero", **kw(data))


def test_faithfulness_mean_ablation_runs(model, data):
    res = circuit_faithfulness(model, "a1@-1; a0; e_tok", data[0], MeanAblation(data[1]), n_boot=20, **kw(data))
    assert np.isfinite(res.score) and res.settings["source"] == "mean" and res.settings["reference_rows"] == N


def _zeroing_hook(head, kept):
    """A hook zeroing a component's output (one head's, or all of it) at every position not in ``kept``."""

    def fn(x, hook):
        x = x.clone()
        for p in range(POS):
            if p in kept:
                continue
            if head is None:
                x[:, p] = 0
            else:
                x[:, p, head] = 0
        return x

    return fn


def _comps(model):
    comps = [("hook_embed", None), ("hook_pos_embed", None)]
    for layer in range(model.cfg.n_layers):
        comps += [(f"blocks.{layer}.attn.hook_z", h) for h in range(model.cfg.n_heads)] + [
            (f"blocks.{layer}.hook_mlp_out", None)
        ]
    return comps


def test_normalised_score_leads_and_matches_hand_ablation(model, data):
    clean, contrast, a, b = data
    comps = _comps(model)
    keep = {("hook_embed", None): set(range(POS)), ("blocks.1.attn.hook_z", 0): {POS - 1}}
    ablate = _zeroing_hook
    with torch.no_grad():
        circ = ld_at_last(
            model.run_with_hooks(clean, fwd_hooks=[(h, ablate(hd, keep.get((h, hd), set()))) for h, hd in comps]), a, b
        )
        none = ld_at_last(model.run_with_hooks(clean, fwd_hooks=[(h, ablate(hd, set())) for h, hd in comps]), a, b)
        full = ld_at_last(model(clean), a, b)
    mc, ma, mf = (float(x.double().mean()) for x in (circ, none, full))
    res = circuit_faithfulness(model, f"e_tok; a1.0@{POS - 1}", clean, "zero", n_boot=50, **kw(data))
    assert isinstance(res, CircuitFaithfulness)
    assert res.metric_ablated == pytest.approx(ma, abs=1e-5)
    assert res.normalised_score == pytest.approx((mc - ma) / (mf - ma), rel=1e-4, abs=1e-6)
    text = repr(res)
    assert text == str(res) and text.index("normalised") < text.index("raw ratio")
    # the ablated components are named: everything but e_tok and head 1.0 (kept at one position only)
    assert "e_pos" in res.ablated and "m0" in res.ablated and "a0.0" in res.ablated and "e_tok" not in res.ablated
    assert res.partly_kept == (f"a1.0@{POS - 1}",) and "a1.0" not in res.ablated
    assert len(res.ablated) == len(comps) - 2 and "m1" in text.split("ablated at every position:")[1]
    assert np.isfinite(res.ci_low) and res.ci_low <= res.normalised_score <= res.ci_high


def test_circuit_without_a_path_from_the_embeddings_warns(model, data):
    clean = data[0]
    # three layer-0 heads: their inputs (embeddings) are ablated, nothing of the input reaches the output
    with pytest.warns(DisconnectedCircuitWarning, match="no path"):
        res = circuit_faithfulness(model, "a0.0; a0.1; a1.0", clean, "zero", n_boot=0, **kw(data))
    assert res.rows_without_path == N and "NO PATH" in str(res)
    # the token embedding at 3 reaches the output at POS - 1 only through a head at a query position >= 3:
    # a head kept at query position 2 cannot read key 3, one kept at POS - 1 can (causal attention)
    with pytest.warns(DisconnectedCircuitWarning):
        circuit_faithfulness(model, "e_tok@3; a0.0@2", clean, "zero", n_boot=0, **kw(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DisconnectedCircuitWarning)
        ok = circuit_faithfulness(model, f"e_tok@3; a0.0@{POS - 1}", clean, "zero", n_boot=0, **kw(data))
        assert ok.rows_without_path == 0
        circuit_faithfulness(model, "e_pos", clean, "zero", n_boot=0, **kw(data))  # the embedding at the answer
