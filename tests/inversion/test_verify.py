"""Membership and faithfulness against a brute-force re-derivation (InversionView Sec. 2-3).

The brute force runs ``model.run_with_cache`` on one input at a time, reads the hook by its
exact name, and computes D at every position with plain Python arithmetic.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from tl_inversion.decoding.bank import DecoderBank
from tl_inversion.inversion.verify import FaithfulnessResult, measure_faithfulness, membership
from tl_inversion.model.activations import harvest, site_width
from tl_inversion.model.sites import SiteError, parse_site
from tl_inversion.tasks.base import CharTask, PositionError

SPECIAL = 10  # the tiny vocabulary's BOS = EOS = PAD
SITES = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_result[1]", "blocks.0.hook_resid_mid"]


def _inputs(n: int, n_ctx: int, seed: int = 0) -> torch.Tensor:
    """``[SPECIAL] digits.. [SPECIAL] [SPECIAL]..`` rows of varying length."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.full((n, n_ctx), SPECIAL, dtype=torch.long)
    for i in range(n):
        length = 1 + (i * 3) % (n_ctx - 2)
        rows[i, 1 : 1 + length] = torch.randint(0, 10, (length,), generator=g)
    return rows


def _site_vectors(model, row: torch.Tensor, site: str) -> list[list[float]]:
    """Activation of ``site`` at every position of one input, via run_with_cache."""
    with torch.inference_mode():
        _, cache = model.run_with_cache(row[None])
        if site.startswith("blocks.0.attn.hook_result["):
            head = int(site[-2])
            value = cache["blocks.0.attn.hook_z"][0, :, head] @ model.blocks[0].attn.W_O[head]
        else:
            value = cache[site][0]
    return value.double().tolist()


def _brute_membership(model, rows, site, z_q, metric="l2", special=(SPECIAL,)):
    out = []
    for i, row in enumerate(rows):
        q = z_q[i] if z_q.ndim == 2 else z_q
        q = q.double().tolist()
        nq = math.sqrt(sum(b * b for b in q))
        best, best_t = math.inf, -1
        for t, z in enumerate(_site_vectors(model, row, site)):
            if int(row[t]) in special:
                continue
            if metric == "l2":
                d = math.sqrt(sum((a - b) ** 2 for a, b in zip(z, q))) / nq
            else:
                nz = math.sqrt(sum(a * a for a in z))
                d = 1 - sum(a * b for a, b in zip(z, q)) / (nz * nq)
            if d < best:
                best, best_t = d, t
        out.append((best, best_t))
    return out


def _harvest(model, tokens, site):
    return harvest(model, tokens, [site])[parse_site(site)]


def _n_forward_hooks(model) -> int:
    return sum(len(getattr(hp, "_forward_hooks", {})) for hp in model.hook_dict.values())


@pytest.mark.parametrize("site", SITES)
def test_membership_matches_brute_force(tiny_model, tiny_cfg, site):
    rows = _inputs(5, tiny_cfg["n_ctx"])
    queries = _inputs(5, tiny_cfg["n_ctx"], seed=1)
    acts = _harvest(tiny_model, queries, site)
    z_q = acts[torch.arange(5), torch.tensor([1, 2, 1, 3, 1])]  # one query vector per row
    hooks_before = _n_forward_hooks(tiny_model)
    for metric in ("l2", "cosine"):
        dist, pos = membership(tiny_model, rows, site, z_q, [SPECIAL], metric=metric, batch_size=4)
        want = _brute_membership(tiny_model, rows, site, z_q, metric)
        assert dist.shape == (5,) and dist.dtype == torch.float32 and pos.dtype == torch.long
        for (d_want, t_want), d, t in zip(want, dist.tolist(), pos.tolist()):
            assert d == pytest.approx(d_want, rel=1e-4, abs=1e-5)
            assert t == t_want
    assert _n_forward_hooks(tiny_model) == hooks_before


def test_the_query_is_in_its_own_preimage(tiny_model, tiny_cfg):
    site = "blocks.1.hook_resid_post"
    rows = _inputs(5, tiny_cfg["n_ctx"], seed=3)
    acts = _harvest(tiny_model, rows, site)
    positions = torch.tensor([1, 1, 2, 3, 3])  # each a non-special position
    z_q = acts[torch.arange(5), positions]
    dist, pos = membership(tiny_model, rows, site, z_q, [SPECIAL])
    assert dist.max().item() <= 1e-6
    # the matched position holds the same activation as the queried one
    matched = acts[torch.arange(5), pos]
    torch.testing.assert_close(matched, z_q, rtol=0, atol=1e-5)
    # one shared z_q: only the query row itself is at distance 0
    dist, pos = membership(tiny_model, rows, site, z_q[2], [SPECIAL])
    assert dist[2].item() <= 1e-6 and pos[2].item() == 2
    assert (dist[[0, 1, 3, 4]] > 1e-3).all()


def test_batch_size_does_not_change_results(tiny_model, tiny_cfg):
    site = "blocks.0.hook_resid_mid"
    rows = _inputs(7, tiny_cfg["n_ctx"], seed=4)
    z_q = torch.randn(7, tiny_cfg["d_model"], generator=torch.Generator().manual_seed(0))
    d1, p1 = membership(tiny_model, rows, site, z_q, [SPECIAL], batch_size=1)
    d2, p2 = membership(tiny_model, rows, site, z_q, [SPECIAL], batch_size=100)
    torch.testing.assert_close(d1, d2, rtol=1e-5, atol=1e-6)
    assert p1.tolist() == p2.tolist()


def test_rows_without_a_usable_position_get_inf(tiny_model, tiny_cfg):
    rows = _inputs(2, tiny_cfg["n_ctx"])
    rows[1] = SPECIAL
    z_q = torch.ones(tiny_cfg["d_model"])
    dist, pos = membership(tiny_model, rows, "blocks.0.hook_resid_mid", z_q, [SPECIAL])
    assert math.isfinite(dist[0].item()) and pos[0].item() >= 1
    assert math.isinf(dist[1].item()) and pos[1].item() == -1
    dist, pos = membership(tiny_model, rows[:1], "blocks.0.hook_resid_mid", torch.zeros_like(z_q), [SPECIAL])
    assert math.isinf(dist.item()) and pos.item() == -1


def test_membership_errors(tiny_model, tiny_cfg):
    rows = _inputs(2, tiny_cfg["n_ctx"])
    z = torch.ones(tiny_cfg["d_model"])
    with pytest.raises(SiteError, match="unknown hook name"):
        membership(tiny_model, rows, "blocks.0.hook_resid_poost", z, [SPECIAL])
    with pytest.raises(ValueError, match="width"):
        membership(tiny_model, rows, "blocks.0.hook_resid_mid", torch.ones(3), [SPECIAL])
    with pytest.raises(ValueError, match=r"shape \[N=2"):
        membership(tiny_model, rows, "blocks.0.hook_resid_mid", torch.ones(3, tiny_cfg["d_model"]), [SPECIAL])
    bad = rows.clone()
    bad[0, 1] = tiny_cfg["d_vocab"]
    with pytest.raises(ValueError, match="vocabulary"):
        membership(tiny_model, bad, "blocks.0.hook_resid_mid", z, [SPECIAL])
    with pytest.raises(ValueError, match="metric"):
        membership(tiny_model, rows, "blocks.0.hook_resid_mid", z, [SPECIAL], metric="dot")
    with pytest.raises(TypeError, match="integer"):
        membership(tiny_model, rows.float(), "blocks.0.hook_resid_mid", z, [SPECIAL])


# faithfulness -------------------------------------------------------------------------------


def _tiny_task(n_ctx: int) -> CharTask:
    # 11 characters for the tiny model's 11 ids: a..h = 0..7, B = 8, E = 9, P = 10
    return CharTask(name="tiny", chars="abcdefghBEP", bos="B", eos="E", pad="P", n_ctx=n_ctx)


def _tiny_bank(model, task, site):
    torch.manual_seed(0)
    widths = {site: site_width(model, site)}
    return DecoderBank.create(
        [site], widths, vocab_size=task.d_vocab, n_ctx=task.n_ctx, bos_id=task.bos_id, eos_id=task.eos_id,
        pad_id=task.pad_id, d_model=16, n_layers=1, n_heads=2, n_cond_blocks=1,
    )


def test_faithfulness_of_a_perfect_decoder_is_one(tiny_model, tiny_cfg, monkeypatch):
    task = _tiny_task(tiny_cfg["n_ctx"])
    site = "blocks.1.hook_resid_post"
    bank = _tiny_bank(tiny_model, task, site)
    tokens = task.encode(["abc", "hhgfa", "a", "bbbbbbbb"])
    decoder, _ = bank.lookup(site)
    # a decoder that returns exactly the input each activation came from
    monkeypatch.setattr(decoder, "generate", lambda z, site, temperature=1.0, generator=None: tokens.clone())
    res = measure_faithfulness(bank, tiny_model, task, tokens, 1, batch_size=8)
    assert isinstance(res, FaithfulnessResult)
    assert res.rate(site) == 1.0 and res.distances[site].max().item() <= 1e-6
    assert res.loc[site, "n"] == 4 and res.loc[site, "valid"] == 1.0  # every row is BOS text EOS PAD..


def test_faithfulness_scores_each_sample_against_its_own_activation(tiny_model, tiny_cfg):
    task = _tiny_task(tiny_cfg["n_ctx"])
    site = "blocks.0.attn.hook_result[0]"
    bank = _tiny_bank(tiny_model, task, site)
    tokens = task.encode(["abc", "hhgfa", "ab", "bbbbbbbb", "cdcd", "e"])
    positions = torch.tensor([1, 3, 2, 5, 4, 1])
    res = measure_faithfulness(bank, tiny_model, task, tokens, positions, seed=5, batch_size=64)
    again = measure_faithfulness(bank, tiny_model, task, tokens, positions, seed=5, batch_size=64)
    torch.testing.assert_close(res.distances[site], again.distances[site])
    # independent replay: same draws, then the brute-force distance of each sample to its own z
    decoder, idx = bank.lookup(site)
    z = _harvest(tiny_model, tokens, site)[torch.arange(6), positions]
    gen = torch.Generator().manual_seed(5)
    samples = decoder.generate(bank.pad(z, site), idx, temperature=1.0, generator=gen)
    brute = _brute_membership(tiny_model, samples, site, z, special=task.special_ids)  # B, E, P: ids 8, 9, 10
    want = torch.tensor([d for d, _ in brute], dtype=torch.float32)
    torch.testing.assert_close(res.distances[site], want, rtol=1e-4, atol=1e-5)
    finite = want[torch.isfinite(want)]
    assert res.loc[site, "mean_distance"] == pytest.approx(float(finite.mean()) if finite.numel() else math.inf,
                                                           rel=1e-4)
    # a threshold between two distinct distances (never on one: rounding must not decide)
    ordered = sorted(set(float(d) for d in finite))
    eps = (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2 if len(ordered) > 1 else 0.1
    res_eps = measure_faithfulness(bank, tiny_model, task, tokens, positions, epsilon=eps, seed=5)
    assert res_eps.rate(site) == pytest.approx(sum(float(d) < eps for d in want) / 6)
    assert res_eps.epsilon == eps and res_eps.metric == "l2"


def test_faithfulness_of_several_sites_equals_one_site_at_a_time(tiny_model, tiny_cfg):
    """Each site draws from its own generator seeded with `seed`: measuring sites together or
    alone, and in batches of any size, gives the same distances."""
    task = _tiny_task(tiny_cfg["n_ctx"])
    sites = ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_post"]
    torch.manual_seed(0)
    bank = DecoderBank.create(
        sites, {s: site_width(tiny_model, s) for s in sites}, vocab_size=task.d_vocab, n_ctx=task.n_ctx,
        bos_id=task.bos_id, eos_id=task.eos_id, pad_id=task.pad_id, d_model=16, n_layers=1, n_heads=2, n_cond_blocks=1,
    )
    tokens = task.encode(["abc", "hhgfa", "ab", "bbbbbbbb", "cdcd"])
    both = measure_faithfulness(bank, tiny_model, task, tokens, 1, seed=3)
    assert list(both.index) == sites
    for s in sites:
        alone = measure_faithfulness(bank, tiny_model, task, tokens, 1, sites=[s], seed=3)
        torch.testing.assert_close(alone.distances[s], both.distances[s])
    one_by_one = measure_faithfulness(bank, tiny_model, task, tokens[:1], 1, seed=3, batch_size=1)
    torch.testing.assert_close(one_by_one.distances[sites[0]], both.distances[sites[0]][:1])
    filtered = both.loc[[sites[1]]]  # a derived table is a plain DataFrame
    assert type(filtered) is pd.DataFrame and filtered.index.tolist() == [sites[1]]


def test_faithfulness_errors(tiny_model, tiny_cfg):
    task = _tiny_task(tiny_cfg["n_ctx"])
    bank = _tiny_bank(tiny_model, task, "blocks.0.hook_resid_mid")
    tokens = task.encode(["abc"])
    with pytest.raises(SiteError, match="this bank covers: blocks.0.hook_resid_mid"):
        measure_faithfulness(bank, tiny_model, task, tokens, 1, sites=["blocks.1.hook_resid_post"])
    with pytest.raises(PositionError, match="no position named"):
        measure_faithfulness(bank, tiny_model, task, tokens, "zz")
    with pytest.raises(ValueError, match="epsilon must be a finite distance >= 0"):
        measure_faithfulness(bank, tiny_model, task, tokens, 1, epsilon=-0.1)
    with pytest.raises(ValueError, match="2 entries for 1 inputs"):
        measure_faithfulness(bank, tiny_model, task, tokens, torch.tensor([1, 2]))
    with pytest.raises(SiteError, match="no faithfulness measured for site blocks.1.hook_resid_post"):
        measure_faithfulness(bank, tiny_model, task, tokens, 1).rate("blocks.1.hook_resid_post")
