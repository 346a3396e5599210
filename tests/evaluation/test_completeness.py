"""Completeness: AUROC formula, brute-force preimage vs a plain loop, end-to-end numbers, plot."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas.testing as pd_testing
import pytest
import torch
from helpers import HAS_BRIDGE, HAS_HOOKED
from model_files import write_gpt2

from tl_inversion.decoding.bank import DecoderBank
from tl_inversion.evaluation.completeness import (
    auroc,
    completeness,
    decoder_logprobs,
    preimage_distances,
    preimage_distances_by_site,
)
from tl_inversion.evaluation.plots import plot_completeness
from tl_inversion.model.activations import harvest, site_width
from tl_inversion.model.sites import validate_sites
from tl_inversion.tasks import addition

TASK = addition.make_task()
RESID = "blocks.0.hook_resid_post"
HEAD = "blocks.0.attn.hook_result[1]"


def _pairwise_auroc(s, y):
    """P(s_pos > s_neg) + 0.5 P(tie), by counting every pair."""
    pos = [a for a, lab in zip(s, y) if lab]
    neg = [a for a, lab in zip(s, y) if not lab]
    tot = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return tot / (len(pos) * len(neg))


def test_auroc_hand_cases():
    assert auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert auroc([1, 2, 3, 4], [1, 1, 0, 0]) == 0.0
    assert auroc([5, 5, 5, 5], [0, 1, 0, 1]) == 0.5
    assert auroc([1, 2, 2, 3], [0, 1, 0, 1]) == pytest.approx(0.875)  # pairs: (2>1),(2=2),(3>1),(3>2)
    assert auroc(torch.tensor([-np.inf, 0.0]), torch.tensor([False, True])) == 1.0
    assert np.isnan(auroc([1, 2], [1, 1]))
    with pytest.raises(ValueError, match="0/1"):
        auroc([1, 2], [0, 2])
    g = np.random.default_rng(0)
    for _ in range(5):
        s = g.integers(0, 6, size=40).astype(float)  # many ties
        y = g.integers(0, 2, size=40)
        assert auroc(s, y) == pytest.approx(_pairwise_auroc(s, y))


@pytest.fixture(scope="module", params=[c for c, ok in (("hooked", HAS_HOOKED), ("bridge", HAS_BRIDGE)) if ok])
def model(request, tmp_path_factory):
    from tl_inversion.model.loading import load_hf_gpt2

    folder = write_gpt2(tmp_path_factory.mktemp("add"), d_vocab=15, n_ctx=14, d_model=16, n_layers=2, n_heads=2)
    return load_hf_gpt2(folder, request.param, "default" if request.param == "hooked" else "compat")


@pytest.fixture(scope="module", params=[c for c, ok in (("hooked", HAS_HOOKED), ("bridge", HAS_BRIDGE)) if ok])
def zero_bias_model(request, tmp_path_factory):
    """HF's own initialisation (zero biases): the auroc_ideal test's hand-picked epsilon 0.5 and
    ball level 0.8 split its 300 candidates into members and non-members on this model."""
    from tl_inversion.model.loading import load_hf_gpt2

    folder = write_gpt2(tmp_path_factory.mktemp("add0"), d_vocab=15, n_ctx=14, d_model=16, n_layers=2, n_heads=2,
                        biases=False)
    return load_hf_gpt2(folder, request.param, "default" if request.param == "hooked" else "compat")


def _small_bank(sites, widths, **kw):
    """A 1-layer d16 bank over the addition task's ids (the fixtures' and tests' decoders)."""
    size = dict(d_model=16, n_layers=1, n_heads=2, d_mlp=32, n_cond_blocks=1)
    return DecoderBank.create(sites, widths, vocab_size=15, n_ctx=14, bos_id=TASK.bos_id, eos_id=TASK.eos_id,
                              pad_id=TASK.pad_id, **{**size, **kw})


@pytest.fixture(scope="module")
def bank(model):
    torch.manual_seed(0)
    sites = [RESID, HEAD]
    return _small_bank(sites, {s: site_width(model, s) for s in sites}).eval()


@pytest.fixture(scope="module")
def candidates():
    return addition.paper_split("test")[:1500]


def _loop_distance(model, row, site, z_q):
    """Plain loop: run_with_cache on one row, distance at every non-special position, min."""
    with torch.inference_mode():
        _, cache = model.run_with_cache(row[None])
        if site == HEAD:
            acts = cache["blocks.0.attn.hook_z"][0, :, 1] @ model.blocks[0].attn.W_O[1]
        else:
            acts = cache[site][0]
    best = float("inf")
    for t in range(row.shape[0]):
        if int(row[t]) in TASK.special_ids:
            continue
        best = min(best, float((acts[t] - z_q).norm() / z_q.norm()))
    return best


@pytest.mark.parametrize("site", [RESID, HEAD])
def test_brute_force_matches_a_plain_loop(model, candidates, site):
    cand = candidates[:40]
    z = harvest(model, candidates[100:102], [site])[validate_sites([site], model)[0]][:, 5]
    dist, pos = preimage_distances(model, cand, site, z, TASK.special_ids, batch_size=16, progress=False)
    assert dist.shape == (2, 40) and pos.shape == (2, 40)
    for q in range(2):
        expect = [_loop_distance(model, cand[i], site, z[q]) for i in range(40)]
        assert np.allclose(dist[q].numpy(), expect, rtol=1e-4, atol=1e-5)
        assert not bool(torch.isin(cand.gather(1, pos[q][:, None]).squeeze(1), torch.tensor(TASK.special_ids)).any())


def test_many_sites_in_one_pass_match_the_plain_loop(model, candidates):
    cand = candidates[:30]
    head = validate_sites([HEAD], model)[0]
    acts = harvest(model, candidates[200:203], [RESID, HEAD])
    z = {RESID: acts[validate_sites([RESID], model)[0]][:, 4], head: acts[head][:2, 6]}
    out = preimage_distances_by_site(model, cand, z, TASK.special_ids, batch_size=8, progress=False)
    assert set(out) == {RESID, head} and out[RESID][0].shape == (3, 30) and out[head][1].shape == (2, 30)
    for site, key in ((RESID, RESID), (HEAD, head)):
        for q in range(z[key].shape[0]):
            expect = [_loop_distance(model, cand[i], site, z[key][q]) for i in range(30)]
            assert np.allclose(out[key][0][q].numpy(), expect, rtol=1e-4, atol=1e-5)
    # completeness with the distances given equals completeness computing them itself
    queries = candidates[200:202]
    zq = harvest(model, queries, [head])[head][:, 6]
    given = preimage_distances_by_site(model, candidates[:400], {head: zq}, TASK.special_ids, progress=False)[head]
    kw = dict(epsilon=0.5, max_candidates=None, n_samples=0, progress=False)
    torch.manual_seed(0)
    bank = _small_bank([HEAD], {HEAD: site_width(model, HEAD)}).eval()
    a = completeness(model, bank, TASK, HEAD, queries, 6, candidates[:400], distances=given, **kw)
    b = completeness(model, bank, TASK, HEAD, queries, 6, candidates[:400], **kw)
    pd_testing.assert_frame_equal(a.summary, b.summary)
    pd_testing.assert_frame_equal(a.scores, b.scores)
    with pytest.raises(ValueError, match=r"distances must be two \[2, 400\] tensors"):
        completeness(
            model, bank, TASK, HEAD, queries, 6, candidates[:400], distances=(given[0][:1], given[1][:1]), **kw
        )


def test_completeness_numbers_are_consistent(model, bank, candidates, tmp_path):
    queries = candidates[:2]
    # an epsilon that puts some, not all, candidates in the preimage of the untrained setting
    z = harvest(model, queries, [RESID])[validate_sites([RESID], model)[0]][:, TASK.resolve_position(queries, "=")[0]]
    d_all, _ = preimage_distances(model, candidates, RESID, z, TASK.special_ids, progress=False)
    eps = float(d_all.quantile(0.05))
    res = completeness(
        model,
        bank,
        TASK,
        RESID,
        queries,
        "=",
        candidates,
        epsilon=eps,
        max_candidates=None,
        n_samples=16,
        class_fn=addition.sum_lengths,
        progress=False,
        decoder_batch_size=512,
    )
    s, sc = res.summary, res.scores
    assert list(s["query"]) == [0, 1] and (s["n_candidates"] == 1500).all()
    for q in range(2):
        rows = sc[sc["query"] == q]
        assert len(rows) == 1500
        assert np.allclose(rows["distance"].to_numpy(), d_all[q].numpy())
        assert int(rows["member"].sum()) == int(s.loc[q, "n_members"]) == int((d_all[q] <= eps).sum())
        assert s.loc[q, "auroc"] == pytest.approx(auroc(rows["logp"].to_numpy(), rows["member"].to_numpy()))
        # the query itself is a candidate at distance 0, hence a member
        assert bool(rows.loc[rows["candidate"] == q, "member"].iloc[0])
        assert 0.0 <= s.loc[q, "recall"] <= 1.0 and 0.0 <= s.loc[q, "class_recall"] <= 1.0
        assert 1 <= s.loc[q, "n_member_classes"] <= 2
    # matched positions, by a plain computation: run_with_cache, D at every non-special position, arg-min
    with torch.inference_mode():
        _, cache = model.run_with_cache(candidates)
    acts = cache[RESID]
    special = torch.isin(candidates, torch.tensor(TASK.special_ids))
    q_pos = int(TASK.resolve_position(queries, "=")[0])
    for q in range(2):
        d = ((acts - z[q]).norm(dim=-1) / z[q].norm()).masked_fill(special, float("inf"))
        argmin = d.argmin(-1).numpy()
        rows = sc[sc["query"] == q].sort_values("candidate")
        assert (rows["matched_position"].to_numpy() == argmin).all()
        members = d.min(-1).values.numpy() <= eps
        assert s.loc[q, "members_at_query_position"] == pytest.approx(float((argmin[members] == q_pos).mean()))
        # the AUROC of each kind of member (matching at the query's position / elsewhere)
        # against all non-members, by counting pairs
        logp = rows["logp"].to_numpy()
        for col, kind in (("auroc_at_query_position", argmin == q_pos), ("auroc_elsewhere", argmin != q_pos)):
            keep = (members & kind) | ~members
            if (members & kind).any():
                assert s.loc[q, col] == pytest.approx(_pairwise_auroc(logp[keep], (members & kind)[keep]))
            else:
                assert np.isnan(s.loc[q, col])
    lp = decoder_logprobs(bank, RESID, z[0], candidates[:10])
    assert np.allclose(lp.numpy(), sc[sc["query"] == 0]["logp"].to_numpy()[:10], atol=1e-5)
    png = plot_completeness(res, tmp_path / "c.png", query=0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_subsample_keeps_members_and_caps_the_decoder_work(model, bank, candidates):
    res = completeness(
        model,
        bank,
        TASK,
        HEAD,
        candidates[:1],
        "A1",
        candidates,
        epsilon=0.5,
        max_candidates=100,
        n_samples=0,
        progress=False,
    )
    s, sc = res.summary.iloc[0], res.scores
    assert s["n_scored"] == len(sc) <= 100
    n_mem = int(s["n_members"])
    assert int(sc["member"].sum()) == min(n_mem, 50)
    assert "recall" not in res.summary.columns


def test_a_noise_flagged_bank_scores_with_the_blurred_condition(model, candidates):
    torch.manual_seed(1)
    sites = [RESID, HEAD]
    widths = {s: site_width(model, s) for s in sites}
    flagged = _small_bank(sites, widths, noise_flag=True).eval()
    head = validate_sites([HEAD], model)[0]
    z = harvest(model, candidates[:1], [HEAD])[head][0, 5]
    dec, idx = flagged.lookup(HEAD)
    assert dec.cfg.d_act == max(widths.values()) + 1  # one column more than the widest site
    # the condition by hand: the head's vector, zeros up to d_act - 1, then its RMS as the flag column
    x = candidates[:12]
    logp = {}
    for flag in (False, True):
        cond = torch.zeros(1, dec.cfg.d_act)
        cond[0, : z.shape[0]] = z
        cond[0, -1] = float(flag) * float(z.norm()) / math.sqrt(z.shape[0])
        torch.testing.assert_close(flagged.pad(z[None], HEAD, blurred=flag), cond, rtol=1e-6, atol=1e-6)
        with torch.inference_mode():
            logp[flag] = dec.token_logprobs(x, flagged.pad(z[None], HEAD, blurred=flag).expand(12, -1), idx).sum(-1)
    assert not torch.equal(logp[True], logp[False])  # the flag reaches the decoder (untrained: by little)
    default = decoder_logprobs(flagged, HEAD, z, x)  # a flagged bank: blurred by default
    assert torch.equal(default, logp[True])
    assert torch.equal(decoder_logprobs(flagged, HEAD, z, x, blurred=False), logp[False])
    res = completeness(
        model,
        flagged,
        TASK,
        HEAD,
        candidates[:1],
        "A1",
        candidates[:300],
        epsilon=0.5,
        max_candidates=None,
        n_samples=4,
        progress=False,
    )
    assert bool(res.summary["blurred"].iloc[0])
    # a bank trained without the flag has only the exact condition
    plain = _small_bank(sites, widths)
    with pytest.raises(TypeError, match="blurred must be True or False, got 'no'"):
        completeness(model, flagged, TASK, HEAD, candidates[:1], "A1", candidates[:300], blurred="no", progress=False)
    with pytest.raises(
        ValueError, match=r"needs a bank trained with train_noise_flag; this bank has only the exact condition"
    ):
        completeness(model, plain, TASK, HEAD, candidates[:1], "A1", candidates[:300], blurred=True, progress=False)
    with pytest.raises(
        ValueError,
        match=r"bank 0 \(blocks.0.hook_resid_post, blocks.0.attn.hook_result\[1\]\) trained with a noise flag "
        r"\(train_noise_flag\), bank 1 \(blocks.1.hook_resid_post\) without",
    ):
        DecoderBank.merge(
            [
                flagged,
                DecoderBank.create(
                    ["blocks.1.hook_resid_post"],
                    {"blocks.1.hook_resid_post": 32},
                    vocab_size=15,
                    n_ctx=14,
                    bos_id=TASK.bos_id,
                    eos_id=TASK.eos_id,
                    pad_id=TASK.pad_id,
                    d_model=16,
                    n_layers=1,
                    n_heads=2,
                ),
            ]
        )


def test_auroc_ideal_is_the_auroc_of_the_training_kernels_posterior(zero_bias_model, candidates, monkeypatch):
    """auroc_ideal by a plain computation: run_with_cache activations at every non-special
    position, the kernel written out here, AUROC by counting pairs. With the preimage kernel at
    level epsilon the ideal posterior is positive exactly on the members, so it is 1."""
    model = zero_bias_model
    torch.manual_seed(2)
    widths = {RESID: site_width(model, RESID)}
    flagged = _small_bank([RESID], widths, noise_flag=True).eval()
    cand = candidates[:300]
    queries = candidates[:2]
    with torch.inference_mode():
        _, cache = model.run_with_cache(cand)
    acts = cache[RESID].double()
    special = torch.isin(cand, torch.tensor(TASK.special_ids))
    z = acts[:2, int(TASK.resolve_position(queries, "A1")[0])]
    eps = 0.5

    def run(**kw):
        return completeness(
            model,
            flagged,
            TASK,
            RESID,
            queries,
            "A1",
            cand,
            epsilon=eps,
            max_candidates=None,
            n_samples=0,
            progress=False,
            **kw,
        ).summary

    # a bank that does not record its training noise: unknown
    assert run()["auroc_ideal"].isna().all()
    # a bank trained on exact activations (train_noise 0): the ideal does not apply (issue 20.9)
    flagged.meta["train_config"] = {"train_noise": 0.0}
    assert run()["auroc_ideal"].isna().all()
    flagged.meta["train_config"] = {"train_noise": eps, "train_noise_shape": "preimage"}
    assert run()["auroc_ideal"].tolist() == [1.0, 1.0]
    flagged.meta["train_config"] = {"train_noise": 0.8, "train_noise_shape": "ball"}
    got = run()["auroc_ideal"].tolist()
    assert min(got) < 0.99  # a ball wider than epsilon admits non-members: not a trivial 1
    d = acts.shape[-1]
    for q in range(2):
        fn = acts.norm(dim=-1)
        dist = (acts - z[q]).norm(dim=-1)
        inside = (dist <= 0.8 * fn) & ~special
        weight = (inside * fn**-d).sum(-1)  # [300]; the 1 / n(x) factor is the same for every input here
        member = ((dist / z[q].norm()).masked_fill(special, float("inf")).min(-1).values <= eps).numpy()
        assert 0 < member.sum() < 300
        assert got[q] == pytest.approx(_pairwise_auroc(weight.numpy(), member))
    # the exact condition's ideal: only numerically identical activations count
    exact = run(blurred=False)["auroc_ideal"].tolist()
    for q in range(2):
        same = (((acts - z[q]).norm(dim=-1) <= 1e-6 * z[q].norm()) & ~special).sum(-1).numpy()
        member = (
            ((acts - z[q]).norm(dim=-1) / z[q].norm()).masked_fill(special, float("inf")).min(-1).values <= eps
        ).numpy()
        assert exact[q] == pytest.approx(_pairwise_auroc(same, member))

    # a bank trained with noise but no flag: every training row was blurred, so its (only,
    # exact-flag) condition is the blurred posterior; the preimage kernel at epsilon gives 1
    plain = _small_bank([RESID], widths).eval()
    plain.meta["train_config"] = {"train_noise": eps, "train_noise_shape": "preimage"}
    kw = dict(epsilon=eps, max_candidates=None, n_samples=0, progress=False)
    assert completeness(model, plain, TASK, RESID, queries, "A1", cand, **kw).summary["auroc_ideal"].tolist() == [
        1.0,
        1.0,
    ]
    # trained on "=" only (a position policy): the ideal counts the match at "=" alone
    eq = TASK.resolve_position(cand, "=")
    monkeypatch.setattr(
        TASK,
        "train_position_mask",
        lambda x: torch.nn.functional.one_hot(TASK.resolve_position(x, "="), x.shape[1]).bool(),
    )
    got = completeness(model, plain, TASK, RESID, queries, "A1", cand, **kw).summary["auroc_ideal"].tolist()
    for q in range(2):
        at_eq = ((acts[torch.arange(300), eq] - z[q]).norm(dim=-1) <= eps * z[q].norm()).numpy().astype(float)
        member = (
            ((acts - z[q]).norm(dim=-1) / z[q].norm()).masked_fill(special, float("inf")).min(-1).values <= eps
        ).numpy()
        assert got[q] == pytest.approx(_pairwise_auroc(at_eq, member))
    assert min(got) < 1.0  # members matching elsewhere than "=" are out of reach of such a decoder
