"""Activation patching on tiny random models of every class available here.

Expected values come from TransformerLens's own ``transformer_lens.patching`` or from hooks
written out by hand in the tests, never from the code under test.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from patching_common import POS, N, kw, ld_at_last

from tl_inversion.errors import InputTypeError, InputValueError
from tl_inversion.model.sites import SiteError
from tl_inversion.patching import (
    AnswerLogProb,
    Contrast,
    FromCache,
    MeanAblation,
    Resample,
    bootstrap_ci,
    circuit_faithfulness,
    cumulative_patching,
    patch_nodes,
    plot_cumulative,
    run_patching,
)
from tl_inversion.patching.notation import NotationError
from tl_inversion.tasks.base import PositionError

# Agreement with transformer_lens.patching ------------------------------------------------


CHECK_POS = (0, 3, 7, POS - 1)


def test_single_head_patches_match_transformer_lens(model, data):
    import pandas as pd
    import transformer_lens.patching as tlp

    clean, contrast, a, b = data
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    index = pd.DataFrame(
        [(layer, p, h) for layer in range(L) for p in CHECK_POS for h in range(H)], columns=["layer", "pos", "head"]
    )
    # TL: run the corrupted input, patch in the clean activation, scalar metric
    tl = tlp.generic_activation_patch(
        model,
        contrast,
        cache,
        lambda lg: ld_at_last(lg, a, b).mean(),
        patch_setter=tlp.layer_pos_head_vector_patch_setter,
        activation_name="z",
        index_df=index,
    )
    groups = {f"{layer},{p},{h}": f"{layer}.{h}@{p}" for layer, p, h in index.itertuples(index=False)}
    res = run_patching(
        model, groups, contrast, Contrast(clean), answers=a, contrast_answers=b, answer_position=-1, progress=False
    )
    ours = torch.tensor([res.patched[k].mean() for k in groups])
    assert tl.abs().max() > 0.05  # the comparison is not between zeros
    torch.testing.assert_close(ours, tl.double(), atol=2e-5, rtol=1e-5)
    # the same from the user's ActivationCache
    res_cache = run_patching(
        model, groups, contrast, cache, answers=a, contrast_answers=b, answer_position=-1, progress=False
    )
    for k in groups:
        np.testing.assert_array_equal(res_cache.patched[k], res.patched[k])


def test_residual_patches_match_transformer_lens(model, data):
    import pandas as pd
    import transformer_lens.patching as tlp

    clean, contrast, a, b = data
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
    rows = [(layer, p) for layer in range(model.cfg.n_layers) for p in CHECK_POS]
    index = pd.DataFrame(rows, columns=["layer", "pos"])
    tl = tlp.generic_activation_patch(
        model,
        contrast,
        cache,
        lambda lg: ld_at_last(lg, a, b).mean(),
        patch_setter=tlp.layer_pos_patch_setter,
        activation_name="resid_pre",
        index_df=index,
    )
    groups = {f"{layer},{p}": f"resid_pre.{layer}@{p}" for layer, p in index.itertuples(index=False)}
    res = run_patching(
        model, groups, contrast, Contrast(clean), answers=a, contrast_answers=b, answer_position=-1, progress=False
    )
    ours = torch.tensor([res.patched[k].mean() for k in groups])
    torch.testing.assert_close(ours, tl.double(), atol=2e-5, rtol=1e-5)


def test_identical_inputs_give_exactly_zero_effect(model, data):
    clean, _, a, b = data
    groups = ["a1.0@3", "a0", "e_tok", "e_pos@0,5", "m0@2", "resid_post.0@5", "a0.1@-1 + m1@4"]
    df = patch_nodes(
        model,
        groups,
        clean,
        "contrast",
        contrast_tokens=clean.clone(),
        answers=a,
        contrast_answers=b,
        answer_position=-1,
        progress=False,
        n_boot=100,
    )
    assert (df["effect"] == 0.0).all() and (df["ci_low"] == 0.0).all() and (df["ci_high"] == 0.0).all()
    assert (df["LD_patched"] == df["LD_clean"]).all()


@pytest.mark.skipif("not __import__('helpers').HAS_HOOKED")
def test_patching_hook_z_equals_patching_hook_result_on_hooked_transformer(data):
    from helpers import build_hooked

    model = build_hooked()
    clean, contrast, a, b = data
    layer, head, pos = 1, 1, POS - 1
    model.set_use_attn_result(True)
    try:
        with torch.no_grad():
            _, cc = model.run_with_cache(contrast, names_filter=[f"blocks.{layer}.attn.hook_result"])
            src = cc[f"blocks.{layer}.attn.hook_result"][:, pos, head]

            def put(x, hook):
                x[:, pos, head] = src
                return x

            logits = model.run_with_hooks(clean, fwd_hooks=[(f"blocks.{layer}.attn.hook_result", put)])
            expected = ld_at_last(logits, a, b).double()
    finally:
        model.set_use_attn_result(False)
    assert not model.cfg.use_attn_result
    res = run_patching(model, f"a{layer}.{head}@{pos}", clean, **kw(data))
    got = torch.from_numpy(res.patched[f"a{layer}.{head}@{pos}"])
    assert (got - torch.from_numpy(res.clean)).abs().max() > 1e-3
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# Hook hygiene -----------------------------------------------------------------------------


def _hook_counts(model):
    return {name: len(hp.fwd_hooks) for name, hp in model.hook_dict.items()}


def test_hooks_removed_and_user_hooks_kept(model, data):
    clean, contrast, a, b = data
    calls = []

    def user_hook(x, hook):
        calls.append(model.training)

    model.add_hook("blocks.0.attn.hook_z", user_hook)
    before = _hook_counts(model)
    assert before["blocks.0.attn.hook_z"] == 1
    model.train()
    patch_nodes(model, ["a0.0@3", "a0@5 + e_tok@1"], clean, **kw(data), n_boot=10)
    assert _hook_counts(model) == before
    assert model.training  # mode restored
    assert calls and not any(calls)  # the user's hook fired during our runs, in eval mode
    # a hook that raises (a cache of the wrong width) leaves the model clean too
    bad = {"blocks.0.attn.hook_z": torch.zeros(N, POS, model.cfg.n_heads, model.cfg.d_head + 3)}
    with pytest.raises(RuntimeError):
        run_patching(model, "a0.0@3", clean, bad, answers=a, contrast_answers=b, answer_position=-1, progress=False)
    assert _hook_counts(model) == before
    names = ["hook_embed", "hook_pos_embed"] + [
        f"blocks.{layer}.{h}" for layer in range(2) for h in ("attn.hook_z", "hook_mlp_out")
    ]
    with torch.no_grad():
        _, cache = model.run_with_cache(contrast, names_filter=names)
    bad_all = {name: cache[name] for name in names}
    bad_all.update(bad)
    with pytest.raises(RuntimeError):
        circuit_faithfulness(
            model,
            ["a0.0"],
            clean,
            FromCache(bad_all),
            answers=a,
            contrast_answers=b,
            answer_position=-1,
            progress=False,
            n_boot=0,
        )
    assert _hook_counts(model) == before
    n = len(calls)
    with torch.no_grad():
        model(clean)
    assert len(calls) == n + 1  # still attached, still fires


# Sources ----------------------------------------------------------------------------------

PICK = {"pick": lambda t: t[:, 0] % 5 + 3}  # a named position that differs per row


def _act(model, tokens, hook):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
    return cache[hook]


def _run_put(model, tokens, hook, fn):
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(hook, fn)])


def test_contrast_positions_are_matched_by_name(model, data):
    clean, contrast, a, b = data
    hook, head = "blocks.0.attn.hook_z", 1
    src = _act(model, contrast, hook)
    ar = torch.arange(N)
    src_vals = src[ar, PICK["pick"](contrast), head]

    def put(x, hook):
        x = x.clone()
        x[ar, PICK["pick"](clean), head] = src_vals
        return x

    expected = ld_at_last(_run_put(model, clean, hook, put), a, b).double()
    res = run_patching(model, "a0.1@pick", clean, **kw(data, positions=PICK))
    torch.testing.assert_close(torch.from_numpy(res.patched["a0.1@pick"]), expected, atol=1e-5, rtol=1e-5)


def test_zero_and_mean_ablation(model, data):
    clean, contrast, a, b = data
    hook, head = "blocks.1.attn.hook_z", 0
    ar = torch.arange(N)
    idx = PICK["pick"](clean)

    def zero(x, hook):
        x = x.clone()
        x[ar, idx, head] = 0
        return x

    expected_zero = ld_at_last(_run_put(model, clean, hook, zero), a, b).double()
    res = run_patching(model, "a1.0@pick", clean, "zero", **kw(data, positions=PICK))
    torch.testing.assert_close(torch.from_numpy(res.patched["a1.0@pick"]), expected_zero, atol=1e-5, rtol=1e-5)
    assert res.contrast is None

    reference = torch.cat([contrast, clean.flip(0)])
    ref_act = _act(model, reference, hook)
    mean = ref_act[torch.arange(reference.shape[0]), PICK["pick"](reference), head].double().mean(0).float()

    def put_mean(x, hook):
        x = x.clone()
        x[ar, idx, head] = mean
        return x

    expected_mean = ld_at_last(_run_put(model, clean, hook, put_mean), a, b).double()
    res = run_patching(model, "a1.0@pick", clean, MeanAblation(reference), **kw(data, positions=PICK, batch_size=4))
    torch.testing.assert_close(torch.from_numpy(res.patched["a1.0@pick"]), expected_mean, atol=1e-5, rtol=1e-5)
    df = res.table(n_boot=0)
    assert df["normalised_by"].iloc[0] == "clean" and np.isnan(df["LD_contrast"].iloc[0])

    # mean over every position: one mean per absolute index
    ref_all = ref_act[:, :, head].double().mean(0).float()

    def put_all(x, hook):
        x = x.clone()
        x[:, :, head] = ref_all
        return x

    expected_all = ld_at_last(_run_put(model, clean, hook, put_all), a, b).double()
    res = run_patching(model, "a1.0", clean, MeanAblation(reference), **kw(data))
    torch.testing.assert_close(torch.from_numpy(res.patched["a1.0"]), expected_all, atol=1e-5, rtol=1e-5)


def test_resample_and_cache_sources(model, data):
    clean, contrast, a, b = data
    one = contrast[:1].expand(N, POS).clone()
    r1 = run_patching(
        model,
        ["a0.0@2", "m1@7"],
        clean,
        Resample(one[:3], answers=b[:1].expand(3)),
        **{**kw(data), "contrast_answers": None},
    )
    r2 = run_patching(
        model, ["a0.0@2", "m1@7"], clean, Contrast(one), **{**kw(data), "contrast_answers": b[:1].expand(N)}
    )
    for k in r1.patched:
        np.testing.assert_array_equal(r1.patched[k], r2.patched[k])
    # resampling is deterministic given the seed, and the seed matters
    s1 = run_patching(model, "a0@-1", clean, Resample(seed=1), **kw(data)).patched["a0@-1"]
    s1b = run_patching(model, "a0@-1", clean, Resample(seed=1), **kw(data)).patched["a0@-1"]
    np.testing.assert_array_equal(s1, s1b)
    # a cache with its own tokens: named positions are resolved on those tokens
    with torch.no_grad():
        _, cache = model.run_with_cache(contrast)
    c1 = run_patching(model, "a0.1@pick", clean, FromCache(cache, tokens=contrast), **kw(data, positions=PICK))
    c2 = run_patching(model, "a0.1@pick", clean, "contrast", **kw(data, positions=PICK))
    np.testing.assert_array_equal(c1.patched["a0.1@pick"], c2.patched["a0.1@pick"])
    with pytest.raises(InputValueError, match="names_filter"):
        run_patching(model, "m0@1", clean, {"blocks.0.attn.hook_z": cache["blocks.0.attn.hook_z"]}, **kw(data))


# Groups, cumulative, metrics -----------------------------------------------------------


def test_groups_patch_together(model, data):
    clean, contrast, a, b = data
    hooks = {"blocks.0.attn.hook_z": (0, 3), "hook_embed": (None, 3)}
    acts = {h: _act(model, contrast, h) for h in hooks}

    def make(h, head, pos):
        def fn(x, hook):
            x = x.clone()
            if head is None:
                x[:, pos] = acts[h][:, pos]
            else:
                x[:, pos, head] = acts[h][:, pos, head]
            return x

        return fn

    with torch.no_grad():
        logits = model.run_with_hooks(clean, fwd_hooks=[(h, make(h, *v)) for h, v in hooks.items()])
    expected = ld_at_last(logits, a, b).double()
    res = run_patching(model, {"grp": "a0.0@3 + e_tok@3"}, clean, **kw(data))
    torch.testing.assert_close(torch.from_numpy(res.patched["grp"]), expected, atol=1e-5, rtol=1e-5)


def test_cumulative_forward_and_backward(model, data):
    order = ["e_pos@3", "a0.0@3 + e_tok@3", "a0@-1", "a1@-1"]
    df = cumulative_patching(model, order, data[0], singles=True, n_boot=50, **kw(data))
    fwd = df[df.direction == "forward"].reset_index(drop=True)
    bwd = df[df.direction == "backward"].reset_index(drop=True)
    single = df[df.direction == "single"].reset_index(drop=True)
    assert list(fwd["added"]) == ["e_pos@3", "a0.0@3 + e_tok@3", "a0@-1", "a1@-1"]
    assert list(bwd["added"]) == ["a1@-1", "a0@-1", "a0.0@3 + e_tok@3", "e_pos@3"]
    assert fwd["effect"].iloc[-1] == bwd["effect"].iloc[-1]  # everything patched either way
    np.testing.assert_allclose(fwd["increment"].sum(), fwd["effect"].iloc[-1], atol=1e-9)
    np.testing.assert_allclose(bwd["increment"].sum(), bwd["effect"].iloc[-1], atol=1e-9)
    assert fwd["effect"].iloc[0] == single["effect"].iloc[0] and bwd["effect"].iloc[0] == single["effect"].iloc[3]
    # step 2 forward equals patching its nodes as one group
    grp = patch_nodes(model, {"g": "e_pos@3 + a0.0@3 + e_tok@3"}, data[0], n_boot=0, **kw(data))
    assert grp.loc["g", "effect"] == pytest.approx(fwd["effect"].iloc[1], abs=1e-9)
    assert (df["ci_low"] <= df["effect"] + 1e-9).all() and (df["effect"] <= df["ci_high"] + 1e-9).all()
    only_fwd = cumulative_patching(model, order, data[0], direction="forward", n_boot=0, **kw(data))
    assert set(only_fwd.direction) == {"forward"}
    fig = plot_cumulative(df[df.direction != "single"], title="tiny")
    assert len(fig.axes) == 2
    fig.savefig(io.BytesIO(), format="png")
    with pytest.raises(ValueError, match="direction"):
        cumulative_patching(model, order, data[0], direction="sideways", **kw(data))


def test_metric_callables(model, data):
    clean, contrast, a, b = data
    groups = ["a1.1@-1", "a0@2"]
    per_row = run_patching(
        model, groups, clean, metric=lambda lg: ld_at_last(lg, a, b), batch_size=N, **{**kw(data), "answers": None}
    )
    ref = run_patching(model, groups, clean, **kw(data))
    for g in groups:
        np.testing.assert_allclose(per_row.patched[g], ref.patched[g], atol=1e-6)
    # a scalar metric per batch: one unit per batch, weighted by its size
    batch_means = run_patching(
        model,
        groups,
        clean,
        batch_size=4,
        metric=lambda lg, ctx: (lg[:, -1, ctx.answers].diagonal() - lg[:, -1, ctx.contrast_answers].diagonal()).mean(),
        **kw(data),
    )
    assert batch_means.weights.tolist() == [4.0, 2.0]
    t1, t2 = batch_means.table(n_boot=0), ref.table(n_boot=0)
    np.testing.assert_allclose(t1["LD_patched"], t2["LD_patched"], atol=1e-6)
    np.testing.assert_allclose(t1["LD_clean"], t2["LD_clean"], atol=1e-6)
    lp = run_patching(model, groups, clean, metric=AnswerLogProb(), **kw(data)).table(n_boot=0)
    assert (lp["LD_clean"] <= 0).all()


def test_batching_and_padding_trim_do_not_change_results(model, data):
    clean, contrast, a, b = data
    pad = 10
    # right-padded rows of different lengths; positions named relative to the first PAD
    lengths = torch.tensor([5, 7, 9, 12, 6, 8])
    padded = clean.clone()
    cpadded = contrast.clone()
    for i, n in enumerate(lengths.tolist()):
        padded[i, n:] = pad
        cpadded[i, (n + 2) % 12 or 12 :] = pad
    last = {"last": lambda t: (t != pad).long().cumsum(-1).argmax(-1)}
    groups = ["a0.1@last", "e_tok@last + a1@last"]
    args = dict(
        contrast_tokens=cpadded, answers=a, contrast_answers=b, answer_position="last", positions=last, progress=False
    )
    r1 = run_patching(model, groups, padded, batch_size=N, **args)
    r2 = run_patching(model, groups, padded, batch_size=1, **args)
    r3 = run_patching(model, groups, padded, batch_size=4, trim_padding=True, pad_id=pad, **args)
    for g in groups:
        np.testing.assert_allclose(r2.patched[g], r1.patched[g], atol=1e-5)
        np.testing.assert_allclose(r3.patched[g], r1.patched[g], atol=1e-5)
    np.testing.assert_allclose(r3.clean, r1.clean, atol=1e-5)
    # a negative position counts from the last non-PAD token, which trimming keeps: -1 is "last"
    neg = {**args, "answer_position": -1}
    r4 = run_patching(
        model, ["a0.1@-1", "e_tok@-1 + a1@-1"], padded, batch_size=4, trim_padding=True, pad_id=pad, **neg
    )
    for g_neg, g_name in zip(["a0.1@-1", "e_tok@-1 + a1@-1"], groups):
        np.testing.assert_allclose(r4.patched[g_neg], r1.patched[g_name], atol=1e-5)
    with pytest.raises(ValueError, match="pad_id"):
        run_patching(model, "a0@3", padded, trim_padding=True, **{**args, "positions": None, "answer_position": 3})


def test_bad_input_gets_clear_errors(model, data):
    clean = data[0]
    with pytest.raises(NotationError, match="unknown component"):
        patch_nodes(model, "q1@3", clean, **kw(data))
    with pytest.raises(SiteError, match="valid heads"):
        patch_nodes(model, "a1.9@3", clean, **kw(data))
    with pytest.raises(PositionError, match="out of range"):
        patch_nodes(model, "a1.0@40", clean, **kw(data))
    with pytest.raises(PositionError, match="no task"):
        patch_nodes(model, "a1.0@tc", clean, **kw(data))
    with pytest.raises(ValueError, match="valid: contrast, mean, zero, resample"):
        patch_nodes(model, "a1.0@3", clean, "noise", **kw(data))
    with pytest.raises(ValueError, match="contrast_tokens"):
        patch_nodes(model, "a1.0@3", clean, **{**kw(data), "contrast_tokens": None})
    with pytest.raises(ValueError, match="contrast_answers"):
        patch_nodes(model, "a1.0@3", clean, "zero", **{**kw(data), "contrast_answers": None})
    with pytest.raises(ValueError, match="rows"):
        patch_nodes(model, "a1.0@3", clean, **{**kw(data), "contrast_tokens": data[1][:2]})
    with pytest.raises(ValueError, match="batch_size"):
        patch_nodes(model, "a1.0@3", clean, batch_size=0, **kw(data))
    with pytest.raises(ValueError, match="same length|as long as"):
        patch_nodes(model, "a1.0", clean, **{**kw(data), "contrast_tokens": data[1][:, :8]})


def test_bootstrap_ci():
    assert bootstrap_ci(np.full(50, 3.0)) == (3.0, 3.0)
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, 4000)
    lo, hi = bootstrap_ci(x, n_boot=500, seed=1)
    assert lo < x.mean() < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * 2.0 / np.sqrt(4000), rel=0.15)
    assert np.isnan(bootstrap_ci(x, n_boot=0)[0])


# Negative positions on right-padded rows -------------------------------------------------


def test_negative_positions_count_from_each_rows_real_end(model, data):
    clean, contrast, a, b = data
    pad = 10
    lengths = [5, 7, 9, 12, 6, 8]  # real tokens per row; the rest is PAD
    padded, cpadded = clean.clone(), contrast.clone()
    for i, n in enumerate(lengths):
        padded[i, n:] = pad
        cpadded[i, n:] = pad
    # by hand: "-2" is the second-to-last real token, index n - 2 in each row; answer at n - 1
    pos2 = torch.tensor([n - 2 for n in lengths])
    last = torch.tensor([n - 1 for n in lengths])
    ar = torch.arange(N)
    store = {}

    def keep(x, hook):  # never reads hook.name (aliases differ on TransformerBridge)
        store["z"] = x.detach().clone()

    with torch.no_grad():
        model.run_with_hooks(cpadded, fwd_hooks=[("blocks.1.attn.hook_z", keep)])
        src = store["z"]

        def put(x, hook):
            x = x.clone()
            x[ar, pos2, 0] = src[ar, pos2, 0]
            return x

        patched = model.run_with_hooks(padded, fwd_hooks=[("blocks.1.attn.hook_z", put)])
        clean_logits = model(padded)
    exp_patched = (patched[ar, last, a] - patched[ar, last, b]).double().numpy()
    exp_clean = (clean_logits[ar, last, a] - clean_logits[ar, last, b]).double().numpy()
    res = run_patching(
        model,
        ["a1.0@-2"],
        padded,
        contrast_tokens=cpadded,
        answers=a,
        contrast_answers=b,
        answer_position=-1,
        pad_id=pad,
        progress=False,
    )
    np.testing.assert_allclose(res.patched["a1.0@-2"], exp_patched, atol=1e-4)
    np.testing.assert_allclose(res.clean, exp_clean, atol=1e-4)
    # a row with fewer real tokens than the position asks for is an error, not a PAD position
    short = padded.clone()
    short[0, 1:] = pad
    with pytest.raises(PositionError, match="last non-PAD"):
        run_patching(
            model,
            ["a1.0@-2"],
            short,
            contrast_tokens=cpadded,
            answers=a,
            contrast_answers=b,
            answer_position=3,
            pad_id=pad,
            progress=False,
        )


def test_negative_positions_use_the_tasks_pad_id():
    from tl_inversion.patching.positions import row_end_resolver
    from tl_inversion.tasks.counting import make_task

    task = make_task()
    rows = task.encode(["aab|a:2", "abcabc|c:2"])
    text_lengths = [len("B" + "aab|a:2" + "E"), len("B" + "abcabc|c:2" + "E")]  # BOS, text, EOS; then PAD
    res = row_end_resolver(task, None)
    assert res.pad_id == task.pad_id
    assert res.resolve_position(rows, -1).tolist() == [n - 1 for n in text_lengths]  # the EOS of each row
    assert res.resolve_position(rows, -3).tolist() == [n - 3 for n in text_lengths]  # the count's ':'
    assert rows[torch.arange(2), res.resolve_position(rows, -1)].tolist() == [task.eos_id] * 2
    assert res.resolve_position(rows, 2).tolist() == [2, 2]  # non-negative: absolute
    assert torch.equal(res.resolve_position(rows, ":"), task.resolve_position(rows, ":"))


# Argument types (issue 19.12) --------------------------------------------------------------


def test_list_of_label_group_pairs_reads_as_the_dict(model, data):
    clean = data[0]
    as_dict = run_patching(model, {"late": "a1.0@-1", "early": "a0@3 + e_tok@3"}, clean, **kw(data))
    as_pairs = run_patching(model, [("late", "a1.0@-1"), ("early", "a0@3 + e_tok@3")], clean, **kw(data))
    assert list(as_pairs.patched) == ["late", "early"]
    for k in ("late", "early"):
        np.testing.assert_array_equal(as_pairs.patched[k], as_dict.patched[k])
    # tuples of two nodes stay what they are documented to be: nodes patched together
    together = run_patching(model, [("a1.0@-1", "a0.1@3")], clean, **kw(data))
    assert [n.notation for n in together.groups[next(iter(together.groups))].nodes] == ["a1.0@-1", "a0.1@3"]
    with pytest.raises(InputTypeError, match="dict"):
        run_patching(model, [("late", "a1.0@-1"), ("a1.0@-1", "a0.1@3")], clean, **kw(data))


def test_positions_of_the_wrong_type_are_refused(model, data):
    clean = data[0]
    with pytest.raises(InputTypeError, match="positions= must be a task"):
        patch_nodes(model, "a1.0@3", clean, **kw(data, positions=["last"]))
    with pytest.raises(InputTypeError, match="maps to no function"):
        patch_nodes(model, "a1.0@3", clean, **kw(data, positions={"last": 3}))


def test_progress_bars_are_on_by_default_and_can_be_turned_off(model, data, capsys):
    clean = data[0]
    args = {k: v for k, v in kw(data).items() if k != "progress"}
    run_patching(model, "a1.0@3", clean, **args)
    assert "patching (contrast)" in capsys.readouterr().err  # tqdm.auto writes the bar (not a tty here)
    run_patching(model, "a1.0@3", clean, progress=False, **args)
    assert "patching" not in capsys.readouterr().err
