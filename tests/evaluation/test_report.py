"""The evaluation report against oracle decoders whose right answers are known by construction.

An *identity oracle* returns, for an activation z, the input of a fixed table whose
activation (at some position) is nearest to z: for queries from the table every sample is
the query itself (or an input with the same activation), so the faithfulness rate and the
pool's in-preimage fraction must be exactly 1, and every feature that the activation
determines must be shared by every sample. Its "log-probability" is minus the distance, so
the completeness AUROC must be exactly 1, and the preimage size is checked against a plain
``run_with_cache`` loop. A *constant oracle* always returns the same input X, so each rate
is a number computed here by hand from X and the query.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import HAS_BRIDGE, HAS_HOOKED
from model_files import write_gpt2

from tl_inversion.decoding.bank import DecoderBank
from tl_inversion.decoding.decoder import Decoder
from tl_inversion.evaluation import RANDOM, EvalPlan, default_plan, evaluate
from tl_inversion.model import fingerprints
from tl_inversion.model.activations import site_width
from tl_inversion.tasks import addition

TASK = addition.make_task()
SITES = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_result[1]"]
EPS = 0.1


def _acts(model, tokens, site):
    """Activations by TransformerLens's own run_with_cache (no tl_inversion code)."""
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens)
        if "hook_result" in site:
            layer, head = int(site.split(".")[1]), int(site[-2])
            return cache[f"blocks.{layer}.attn.hook_z"][:, :, head] @ model.blocks[layer].attn.W_O[head]
        return cache[site]


def _min_distance(acts_row, tokens_row, z_q):
    """min over non-special positions of ||a_t - z_q|| / ||z_q||, by a Python loop."""
    best = math.inf
    for t in range(tokens_row.shape[0]):
        if int(tokens_row[t]) in TASK.special_ids:
            continue
        best = min(best, float((acts_row[t] - z_q).norm() / z_q.norm()))
    return best


class IdentityOracle(Decoder):
    """Returns the table input whose activation is nearest to z; log p = -distance."""

    def __init__(self, cfg, table, acts):
        super().__init__(cfg)
        self.table, self.acts = table, acts.float()
        self.keys = {tuple(r.tolist()): i for i, r in enumerate(table)}

    def generate(self, z, site, temperature=1.0, max_len=None, generator=None, return_logprobs=False, **kwargs):
        zz = z[:, : self.acts.shape[-1]].float()
        flat = self.acts.reshape(-1, self.acts.shape[-1])
        nearest = torch.cdist(zz, flat).argmin(-1) // self.acts.shape[1]
        tokens = self.table[nearest].clone()
        return (tokens, self.token_logprobs(tokens, z, site)) if return_logprobs else tokens

    def token_logprobs(self, tokens, z, site):
        out = torch.zeros(tokens.shape[0], tokens.shape[1] - 1)
        for b in range(tokens.shape[0]):
            i = self.keys[tuple(tokens[b].tolist())]
            out[b, 0] = -_min_distance(self.acts[i], self.table[i], z[b, : self.acts.shape[-1]].float())
        return out


class ConstantOracle(Decoder):
    """Always returns the input x."""

    def __init__(self, cfg, x):
        super().__init__(cfg)
        self.x = x

    def generate(self, z, site, temperature=1.0, max_len=None, generator=None, return_logprobs=False, **kwargs):
        tokens = self.x.expand(z.shape[0], -1).clone()
        return (tokens, torch.zeros(tokens.shape[0], tokens.shape[1] - 1)) if return_logprobs else tokens


@pytest.fixture(scope="module", params=[c for c, ok in (("hooked", HAS_HOOKED), ("bridge", HAS_BRIDGE)) if ok])
def model(request, tmp_path_factory):
    from tl_inversion.model.loading import load_hf_gpt2

    folder = write_gpt2(tmp_path_factory.mktemp("add"), d_vocab=15, n_ctx=14, d_model=16, n_layers=2, n_heads=2)
    return load_hf_gpt2(folder, request.param, "default" if request.param == "hooked" else "compat")


def _bank(model, make):
    """A bank of oracle decoders (one per site); fingerprint recorded so check_model runs."""
    widths = {s: site_width(model, s) for s in SITES}
    bank = DecoderBank.create(SITES, widths, vocab_size=15, n_ctx=14, bos_id=TASK.bos_id, eos_id=TASK.eos_id,
                              pad_id=TASK.pad_id, d_model=8, n_layers=1, n_heads=1, d_mlp=8, n_cond_blocks=0,
                              meta={"fingerprint": fingerprints.fingerprint(model),
                                    "probe": fingerprints.probe_signature(model, SITES)})
    bank.decoders = [make(d.cfg, s) for d, s in zip(bank.decoders, SITES)]
    return bank.eval()


@pytest.fixture(scope="module")
def table():
    return addition.paper_split("test")[:300]


def test_identity_oracle_scores_perfectly(model, table):
    bank = _bank(model, lambda cfg, s: IdentityOracle(cfg, table, _acts(model, table, s)))
    plan = default_plan("addition")
    queries = ["615+861=1476", "101+539=640"]
    cand = torch.cat([table, TASK.encode(queries)])
    plan = EvalPlan(positions=["+", "=", "A1"], features=plan.features, completeness_queries=queries,
                    completeness_positions=["=", "A1"], candidates=lambda: cand, class_fn=plan.class_fn, min_members=1)
    # the oracle's table must hold the completeness queries too
    for d, s in zip(bank.decoders, SITES):
        d.table, d.acts = cand, _acts(model, cand, s).float()
        d.keys = {tuple(r.tolist()): i for i, r in enumerate(cand)}
    rep = evaluate(model, bank, TASK, table, plan, n_faithfulness=24, n_queries=3, schedule=[(1.0, 0.0)],
                   n_bos_samples=8, n_random=100, max_candidates=None, n_samples=4, progress=False)
    f = rep.faithfulness
    assert set(f.index.get_level_values("position")) == {RANDOM, "+", "=", "A1"}
    assert (f["faithfulness"] == 1.0).all() and (f["n"] == 24).all()
    assert (f.drop(index=RANDOM, level="position")["pool_in_preimage"] == 1.0).all()
    assert rep.summary()["mean_faithfulness"] == 1.0
    c = rep.consistency["consistency"]
    # causal model: the activation at '+' fixes the first operand; from '=' on it fixes everything
    for feat in ("a_hundreds", "a_tens", "a_ones"):
        assert (c.xs(feat, level="feature") == 1.0).all()
    assert (c.xs("=", level="position") == 1.0).all() and (c.xs("A1", level="position") == 1.0).all()
    comp = rep.completeness
    assert len(comp) == len(SITES) * 4 and set(comp["position"]) == {"=", "A1"}
    assert comp["auroc"].dropna().eq(1.0).all()  # log p = -D separates members exactly
    enc = TASK.encode(queries)
    acts_by_site = {s: _acts(model, cand, s) for s in SITES}
    for _, row in comp.iterrows():
        qi = queries.index(row["text"])
        z_q = _acts(model, enc[qi : qi + 1], row["site"])[0, int(row["position_index"])]
        members = sum(_min_distance(acts_by_site[row["site"]][i], cand[i], z_q) <= EPS for i in range(cand.shape[0]))
        assert row["n_members"] == members >= 1
        assert row["recall"] == pytest.approx(1 / members)  # every sample is the query itself


def test_constant_oracle_rates_by_hand(model, table):
    query = TASK.encode(["615+861=1476"])
    x = TASK.encode(["615+862=1477"])  # same up to b's ones digit
    bank = _bank(model, lambda cfg, s: ConstantOracle(cfg, x[0]))
    plan = EvalPlan(positions=["+", "=", "A1"], features={"b_ones": lambda t: t[:, 7], "a_ones": lambda t: t[:, 3]})
    data = query.repeat(50, 1)
    rep = evaluate(model, bank, TASK, data, plan, n_faithfulness=10, n_queries=2, schedule=[(1.0, 0.0)],
                   n_bos_samples=4, n_random=50, max_candidates=None, progress=False)
    x_acts = {s: _acts(model, x, s)[0] for s in SITES}
    for s in SITES:
        q_acts = _acts(model, query, s)[0]
        for name, p in (("+", 4), ("=", 8), ("A1", 9)):
            inside = _min_distance(x_acts[s], x[0], q_acts[p]) <= EPS
            row = rep.faithfulness.loc[(s, name)]
            assert row["faithfulness"] == float(inside) and row["pool_in_preimage"] == float(inside)
            cons = rep.consistency.loc[(s, name)]
            # X and the query share a's ones digit but not b's; every sample is X
            assert cons.loc["a_ones", "bos_baseline"] == 1.0 and cons.loc["b_ones", "bos_baseline"] == 0.0
            assert cons.loc["a_ones", "random_baseline"] == 1.0  # the "random" inputs are all the query
            if inside:
                assert cons.loc["a_ones", "consistency"] == 1.0 and cons.loc["b_ones", "consistency"] == 0.0
            else:
                assert math.isnan(cons.loc["a_ones", "consistency"]) and cons.loc["a_ones", "n_samples"] == 0


def test_report_files_and_markdown(model, table, tmp_path):
    bank = _bank(model, lambda cfg, s: ConstantOracle(cfg, table[0]))
    plan = EvalPlan(positions=["=", "A4"], features={"a_ones": lambda t: t[:, 3]},
                    completeness_queries=["615+861=1476"], completeness_positions=["="], candidates=lambda: table,
                    min_members=1)
    rep = evaluate(model, bank, TASK, table, plan, n_faithfulness=8, n_queries=2, n_bos_samples=4, n_random=20,
                   max_candidates=50, n_samples=2, progress=False)
    # A4 exists only where the sum has 4 digits: those rows alone are used
    assert rep.faithfulness.loc[(SITES[0], "A4"), "n"] == 8
    path = rep.write(tmp_path / "report")
    text = path.read_text()
    for heading in ("## Headline", "Faithfulness rate per site and position", "Feature consistency", "Completeness"):
        assert heading in text
    files = ("faithfulness.csv", "consistency.csv", "completeness.csv", "faithfulness.png", "completeness_auroc.png")
    for name in files:
        assert (tmp_path / "report" / name).stat().st_size > 0
    # a legend of the columns shown; auroc_ideal is left out (the bank records no training noise: NaN)
    assert "## What the columns mean" in text and "- `valid`: fraction of samples the task's grammar accepts" in text
    assert rep.completeness["auroc_ideal"].isna().all() and "auroc_ideal" not in text
    assert "consistency_pooled" in rep.consistency.columns
    # an evaluation without completeness or features in the same folder leaves no file of the old one
    # (the scatters of an earlier evaluation with finite AUROCs too: stand-ins here, the oracle gives NaN)
    for stale in ("completeness_worst.png", "completeness_best.png"):
        (tmp_path / "report" / stale).write_bytes(b"old")
    bare = evaluate(
        model,
        bank,
        TASK,
        table,
        EvalPlan(positions=["="]),
        n_faithfulness=8,
        n_queries=2,
        n_bos_samples=4,
        n_random=20,
        progress=False,
    )
    bare.write(tmp_path / "report")
    left = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert left == ["faithfulness.csv", "faithfulness.png", "report.md"]
    # why completeness is missing is said, in the info and in report.md
    assert "no completeness queries" in bare.info["completeness_note"]
    assert f"Not measured: {bare.info['completeness_note']}." in (tmp_path / "report" / "report.md").read_text()


def test_bad_inputs_are_named(model, table):
    from tl_inversion.model.sites import SiteError
    from tl_inversion.tasks.base import PositionError

    bank = _bank(model, lambda cfg, s: ConstantOracle(cfg, table[0]))
    with pytest.raises(SiteError, match="covers"):
        evaluate(model, bank, TASK, table, EvalPlan(positions=["="]), sites=["blocks.0.hook_mlp_out"], progress=False)
    with pytest.raises(PositionError, match="named positions"):
        evaluate(model, bank, TASK, table, EvalPlan(positions=["nowhere"]), progress=False)
    with pytest.raises(ValueError, match="no default evaluation plan for task 'sentiment' \\(built-in plans"):
        default_plan("sentiment")
    assert (
        default_plan(TASK).completeness_positions == default_plan("addition").completeness_positions
    )  # a task works too


def test_plan_and_data_errors_come_first(model, table):
    bank = _bank(model, lambda cfg, s: ConstantOracle(cfg, table[0]))
    with pytest.raises(ValueError, match="no positions"):
        evaluate(model, bank, TASK, table, EvalPlan(positions=[]), progress=False)
    with pytest.raises(ValueError, match="both queries and positions"):
        evaluate(
            model,
            bank,
            TASK,
            table,
            EvalPlan(positions=["="], completeness_queries=["615+861=1476"], candidates=lambda: table),
            progress=False,
        )
    with pytest.raises(ValueError, match=r"eval_data must be \[n >= 1, 14\]"):
        evaluate(model, bank, TASK, table[:, :8], EvalPlan(positions=["="]), progress=False)
    with pytest.raises(
        ValueError, match=r"needs a bank trained with train_noise_flag; this bank has only the exact condition"
    ):
        evaluate(model, bank, TASK, table, EvalPlan(positions=["="]), blurred=True, progress=False)


def test_positions_holding_special_tokens_are_left_out():
    from tl_inversion.evaluation.evaluate import _resolvable
    from tl_inversion.tasks import counting
    from tl_inversion.tasks.base import PositionError

    task = counting.make_task()
    rows = task.encode(["ab|a:1", "abcdefgh|a:1", "abcdefghij|b:1"])
    # index 9 is the '|' of row 1, the letter 'i' of row 2 and PAD in row 0: rows 1 and 2 remain
    assert rows[0, 9] == task.pad_id
    toks, idx = _resolvable(task, rows, 9)
    assert torch.equal(toks, rows[1:]) and idx.tolist() == [9, 9]
    with pytest.raises(PositionError, match="BOS, EOS or PAD"):
        _resolvable(task, rows, 0)  # BOS in every row
    with pytest.raises(PositionError, match="BOS, EOS or PAD"):
        _resolvable(task, rows[:1], 20)  # PAD


def test_rare_positions_are_searched_in_all_rows_and_shortfalls_reported():
    from tl_inversion.evaluation.evaluate import _rows_for_position
    from tl_inversion.tasks import counting

    task = counting.make_task()
    short = task.encode(["ab|a:1"] * 2000)
    long = task.encode(["abcdefghijklmnopq|a:1", "bbcdefghijklmnopq|b:2", "cbcdefghijklmnopq|c:1"])
    rows = torch.cat([short, long])  # index 15 is an input letter only in the last three rows
    with pytest.warns(UserWarning, match=r"only 3 of 2003 evaluation rows: faithfulness uses 2 rows \(asked 4\)"):
        toks, idx, n_f = _rows_for_position(task, rows, 15, n_faithfulness=4, n_queries=2)
    assert torch.equal(toks, long) and idx.tolist() == [15, 15, 15] and n_f == 2  # round(3 * 4 / 6)
    toks, idx, n_f = _rows_for_position(task, torch.cat([long, long]), 15, n_faithfulness=4, n_queries=2)
    assert toks.shape[0] == 6 and n_f == 4  # enough rows: as asked, faithfulness rows first


def test_auroc_by_preimage_share_groups_rows_by_hand():
    import pandas as pd

    from tl_inversion.evaluation.report import EvaluationReport

    # shares 0.00005, 0.005, 0.05, 0.06, 0.1, 0.5; one ineligible row and one without an AUROC
    comp = pd.DataFrame(
        {
            "site": ["s"] * 8,
            "n_candidates": [20000, 1000, 1000, 1000, 1000, 1000, 1000, 1000],
            "n_members": [1, 5, 50, 60, 100, 500, 3, 40],
            "auroc": [0.99, 0.97, 0.90, 0.70, 0.60, 0.50, 0.10, float("nan")],
            "eligible": [True, True, True, True, True, True, False, True],
        }
    )
    rep = EvaluationReport(pd.DataFrame(), pd.DataFrame(), comp, pd.DataFrame())
    got = rep.completeness_by_preimage_size()
    assert list(got.index) == ["[0, 0.0001)", "[0.001, 0.01)", "[0.01, 0.1)", "[0.1, 1]"]
    assert list(got["rows"]) == [1, 1, 2, 2]
    assert got.loc["[0.01, 0.1)", "median"] == pytest.approx(0.80)  # (0.90 + 0.70) / 2
    assert got.loc["[0.01, 0.1)", "min"] == pytest.approx(0.70)
    assert got.loc["[0.1, 1]", "max"] == pytest.approx(0.60)  # share exactly 0.1 opens the last interval
    assert list(got["frac_ge_0.95"]) == [1.0, 1.0, 0.0, 0.0]
    assert rep.completeness_summary().loc["all", "rows"] == 6
    assert "auroc_ideal_median" not in rep.summary()
    # the ideal AUROC of the eligible rows with an AUROC (the ineligible 0.2 and the NaN-AUROC row left out)
    comp["auroc_ideal"] = [1.0, 0.96, 0.94, 0.80, 0.99, 0.90, 0.20, 1.0]
    s = EvaluationReport(pd.DataFrame(), pd.DataFrame(), comp, pd.DataFrame()).summary()
    assert s["auroc_ideal_median"] == pytest.approx(0.95)  # median of 1, .96, .94, .80, .99, .90
    assert s["auroc_ideal_frac_ge_0.95"] == pytest.approx(3 / 6)
    from tl_inversion.evaluation import CompletenessNotMeasuredWarning

    empty = EvaluationReport(
        pd.DataFrame(),
        pd.DataFrame(),
        pd.DataFrame(),
        pd.DataFrame(),
        info={"completeness_note": "the plan has no completeness queries"},
    )
    with pytest.warns(
        CompletenessNotMeasuredWarning, match="no completeness was measured: the plan has no completeness"
    ):
        assert empty.completeness_by_preimage_size().empty
    with pytest.warns(CompletenessNotMeasuredWarning):
        assert empty.completeness_summary().empty


def test_the_report_says_how_the_decoders_were_blurred():
    from tl_inversion.evaluation.report import _training_noise

    exact = "exact activations (train_noise 0, as the paper)"
    assert _training_noise([{"sites": ["a"], "train_config": {"train_noise": 0.0}}]) == exact
    assert _training_noise([{"sites": ["a"], "train_config": None}]) == exact  # a bank from before the key existed
    assert (
        _training_noise(
            [
                {
                    "sites": ["a"],
                    "train_config": {"train_noise": 0.1, "train_noise_shape": "ball", "train_noise_flag": True},
                }
            ]
        )
        == "activations blurred by train_noise 0.1 (ball) with the noise flag"
    )
    merged = [
        {"sites": ["a", "b"], "train_config": {"train_noise": 0.0}},
        {"sites": ["c"], "train_config": {"train_noise": 0.2}},
        {"sites": ["d"], "train_config": {}},
    ]
    assert (
        _training_noise(merged)
        == f"{exact} (3 sites: a, b, d) and activations blurred by train_noise 0.2 (gaussian) (1 site: c)"
    )
    # the evaluated sites only
    assert (
        _training_noise(merged, ["a", "c"])
        == f"{exact} (1 site: a) and activations blurred by train_noise 0.2 (gaussian) (1 site: c)"
    )
    assert _training_noise(merged, ["b", "d"]) == exact
    same = [
        {"sites": ["a"], "train_config": {"train_noise": 0.1}},
        {"sites": ["b"], "train_config": {"train_noise": 0.1}},
    ]
    assert _training_noise(same) == "activations blurred by train_noise 0.1 (gaussian)"


def test_evaluate_fingerprints_the_model_once(model, table, monkeypatch):
    """The model check (a hash of every weight and a probe forward) runs once per evaluation,
    not once per (site, position) pool; an Inverter checks once for all its calls."""
    from tl_inversion.evaluation import Inverter
    from tl_inversion.inversion.sampling import sample_many, sample_preimage

    bank = _bank(model, lambda cfg, s: ConstantOracle(cfg, table[0]))
    calls = []
    real = fingerprints.fingerprint
    monkeypatch.setattr(fingerprints, "fingerprint", lambda m: calls.append(m) or real(m))
    plan = EvalPlan(positions=["+", "="], features={"a_ones": lambda t: t[:, 3]})
    kw = dict(n_faithfulness=4, n_queries=2, schedule=[(1.0, 0.0)], n_bos_samples=2, n_random=10, progress=False)
    evaluate(model, bank, TASK, table, plan, **kw)
    assert len(calls) == 1  # 2 sites x 2 positions of pools: still one
    calls.clear()
    sample_many(bank, model, TASK, table[:2], SITES[0], "=", n_repeats=1, batch_size=2)
    sample_many(bank, model, TASK, table[:2], SITES[0], "+", n_repeats=1, batch_size=2)
    assert len(calls) == 2  # the public function checks on every call
    calls.clear()
    inv = Inverter(model, bank, TASK)
    one = inv.sample("615+861=1476", SITES[1], "=", n_repeats=1, batch_size=4, seed=3)
    inv.sample_many(table[:2], SITES[0], "=", n_repeats=1, batch_size=2)
    rep = inv.evaluate(table, plan, **kw)
    assert len(calls) == 1 and rep.faithfulness.shape[0] == len(SITES) * 3
    # the same samples as the checking path
    ref = sample_preimage(bank, model, TASK, "615+861=1476", SITES[1], "=", n_repeats=1, batch_size=4, seed=3)
    assert one.df.drop(columns=["colour"]).equals(ref.df.drop(columns=["colour"]))
    assert repr(inv).startswith("Inverter(task='addition'")


def test_progress_bar_ends_full(model, table, monkeypatch):
    """Every stage counted in the total is updated (issue 20.4: the bar stopped one short)."""
    import importlib

    evaluate_module = importlib.import_module(
        "tl_inversion.evaluation.evaluate"
    )  # the package exports the function of that name

    bars = []

    class Bar:
        def __init__(self, total, disable, desc, unit):
            self.total, self.n, self.closed = total, 0, False
            bars.append(self)

        def update(self, k=1):
            self.n += k

        def close(self):
            self.closed = True

    monkeypatch.setattr(evaluate_module, "tqdm", Bar)
    bank = _bank(model, lambda cfg, s: ConstantOracle(cfg, table[0]))
    plan = EvalPlan(
        positions=["=", "A1"],
        completeness_queries=["615+861=1476"],
        completeness_positions=["="],
        candidates=lambda: table[:40],
        min_members=1,
    )
    evaluate(
        model,
        bank,
        TASK,
        table,
        plan,
        n_faithfulness=4,
        n_queries=2,
        schedule=[(1.0, 0.0)],
        n_bos_samples=2,
        n_random=10,
        max_candidates=None,
        n_samples=2,
        progress=True,
    )
    # 1 (random position) + 2 positions x (1 faithfulness + 2 site pools) + 2 sites of completeness
    (bar,) = bars
    assert bar.total == 1 + 2 * (1 + 2) + 2 and bar.n == bar.total and bar.closed
