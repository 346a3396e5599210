"""The paper's counting patching numbers, on a random subset of the filtered test split.

Numbers of the checkpoint's README (InversionView Sec. 4.1); the whole split is measured by
``benchmarks/patching_counting.py``. Subset sizes: the per-example effect has a standard
deviation of about 10.5 logits (random contrast) and 9.5 (flip), so 6000 / 4000 pairs give
standard errors of about 0.14 / 0.15, i.e. 0.5 is more than 3 standard errors; the subset
and the contrasts are fixed by seeds, so the test is deterministic.

Skips cleanly without the checkpoint (``paper_counting_dir`` fixture).
"""

from __future__ import annotations

import pytest
import torch
from helpers import HAS_HOOKED

from tl_inversion.patching import cumulative_patching, patch_nodes, run_patching, verify_feature
from tl_inversion.tasks.counting import make_task, paper_split, query_counts
from tl_inversion.tasks.counting_contrasts import counting_flip_contrasts, counting_random_contrasts

pytestmark = pytest.mark.paper

ORDER = {"e_pos": "e_pos@tc,:", "(a0@tc, e_tok)": "a0@tc + e_tok@tc", "a0@:": "a0@:", "a1@:": "a1@:"}
N_RANDOM, N_FLIP = 6000, 4000
TOL = 0.5


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread: this 64-wide model in batches of 256 runs faster on one thread than on two when the
    machine is busy (measured: 4k vs 0.7k example-forwards/s); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(paper_counting_dir, one_thread):
    from tl_inversion.model.loading import load_hf_gpt2

    if HAS_HOOKED:
        return load_hf_gpt2(paper_counting_dir, "hooked")
    return load_hf_gpt2(paper_counting_dir, "bridge", "none")  # logit differences do not depend on processing


@pytest.fixture(scope="module")
def split(paper_counting_dir):
    return paper_split("test")


@pytest.fixture(scope="module")
def subset(split):
    perm = torch.randperm(split.shape[0], generator=torch.Generator().manual_seed(2024))
    return perm


def _effects(df, direction):
    return df[df.direction == direction].sort_values("step")["effect"].tolist()


def _single(df, name):
    return float(df[(df.direction == "single") & (df.added == name)]["effect"].iloc[0])


def test_random_contrast_matches_paper(model, split, subset):
    cs = counting_random_contrasts(
        split[subset[: N_RANDOM + 20]], generator=0, pool=split
    )  # pool: whole split, as the paper
    cs = cs.subset(torch.arange(N_RANDOM))
    df = cumulative_patching(
        model, ORDER, cs, singles=True, extra={"a0@tc": "a0@tc"}, trim_padding=True, n_boot=0, progress=False
    )
    assert df["LD_clean"].iloc[0] == pytest.approx(22.12, abs=TOL)
    assert _effects(df, "forward") == pytest.approx([15.13, 37.22, 41.18, 44.25], abs=TOL)
    assert _effects(df, "backward") == pytest.approx([37.94, 42.94, 42.94, 44.25], abs=TOL)
    assert _single(df, "a1@:") == pytest.approx(37.94, abs=TOL)
    assert _single(df, "e_pos") == pytest.approx(15.13, abs=TOL)
    assert _single(df, "(a0@tc, e_tok)") == pytest.approx(26.79, abs=TOL)
    assert _single(df, "a0@:") == pytest.approx(6.09, abs=TOL)
    assert _single(df, "a0@tc") == pytest.approx(22.08, abs=TOL)


def test_flip_contrast_matches_paper(model, split, subset):
    cs = counting_flip_contrasts(split[subset[-N_FLIP - 20 :]], generator=0)
    cs = cs.subset(torch.arange(N_FLIP))
    assert bool((cs.contrast_tokens != cs.clean_tokens).sum(-1).le(2).all())  # one char + the answer
    df = cumulative_patching(model, ORDER, cs, trim_padding=True, n_boot=0, progress=False)
    assert df["LD_clean"].iloc[0] == pytest.approx(18.22, abs=TOL)
    assert _effects(df, "forward") == pytest.approx([0.00, 34.52, 34.55, 35.53], abs=TOL)
    assert _effects(df, "backward") == pytest.approx([35.43, 35.54, 35.53, 35.53], abs=TOL)
    a0 = run_patching(model, "a0@:", cs, trim_padding=True, progress=False).table(n_boot=200)
    assert a0["effect"].iloc[0] == pytest.approx(0.149, abs=0.1)  # the paper's 0.149, tighter than 0.5


def test_identical_inputs_give_exactly_zero_effect(model, split, subset):
    cs = counting_flip_contrasts(split[subset[:600]], generator=0)
    cs.contrast_tokens = cs.clean_tokens.clone()
    cs.contrast_answers = (cs.clean_answers + 1 - 26) % 9 + 26  # any other digit: LD needs two answers
    df = patch_nodes(
        model, list(ORDER.values()) + ["a0@tc", "m0@:", "a1"], cs, trim_padding=True, n_boot=50, progress=False
    )
    assert (df["effect"] == 0.0).all() and (df["ci_low"] == 0.0).all() and (df["ci_high"] == 0.0).all()


@pytest.mark.skipif(not HAS_HOOKED, reason="set_use_attn_result check on the HookedTransformer (TL < 4)")
def test_patching_hook_z_equals_hook_result(model, split, subset):
    cs = counting_random_contrasts(split[subset[:300]], generator=1, pool=split)
    task = make_task()
    colon_clean = task.resolve_position(cs.clean_tokens, ":")
    colon_con = task.resolve_position(cs.contrast_tokens, ":")
    ar = torch.arange(cs.n)
    model.set_use_attn_result(True)
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(cs.contrast_tokens, names_filter=["blocks.1.attn.hook_result"])
            src = cache["blocks.1.attn.hook_result"][ar, colon_con, 0]

            def put(x, hook):
                x[ar, colon_clean, 0] = src
                return x

            logits = model.run_with_hooks(cs.clean_tokens, fwd_hooks=[("blocks.1.attn.hook_result", put)])
    finally:
        model.set_use_attn_result(False)
    assert not model.cfg.use_attn_result
    at = logits[ar, colon_clean]
    expected = (at[ar, cs.clean_answers] - at[ar, cs.contrast_answers]).double()
    res = run_patching(model, "a1.0@:", cs, progress=False)
    torch.testing.assert_close(torch.from_numpy(res.patched["a1.0@:"]), expected, atol=1e-4, rtol=1e-5)


def test_layer1_output_at_colon_encodes_the_count(model, split, subset):
    """From reading to verifying: a1@: should matter when the count changes, not otherwise."""
    tokens = split[subset[:1500]]
    task = make_task()
    df = verify_feature(
        model,
        "a1@:",
        tokens,
        query_counts,
        answers=lambda t: t.gather(1, task.resolve_position(t, "n")[:, None]).squeeze(1),
        answer_position=":",
        positions=task,
        generator=0,
        feature_name="count of the query letter",
        trim_padding=True,
        n_boot=100,
        progress=False,
    )
    change, keep = df.loc["changes g", "effect"], df.loc["keeps g", "effect"]
    assert change > 10.0  # log p of the right answer collapses (measured: 17.6 nats)
    assert abs(keep) < 0.2 * change  # measured: 1.5 nats (a1@: carries a little besides the count)
