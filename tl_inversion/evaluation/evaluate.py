"""Evaluate a decoder bank per site and position: faithfulness, completeness, feature consistency.

This module measures; :mod:`.report` holds what it returns (:class:`EvaluationReport` and
its writers), :mod:`tl_inversion.tasks.plan` what it measures (:class:`EvalPlan`, and each
task's default plan). The model is checked against the bank (fingerprint: a hash of every
weight and a probe forward) once per evaluation, through an
:class:`~tl_inversion.evaluation.inverter.Inverter`.

This is the measuring side of InversionView (Huang et al. 2024, arXiv 2405.17653): the
paper reports faithfulness per site only in passing and completeness only as a picture;
:func:`evaluate` turns all three into tables (pandas) and :meth:`EvaluationReport.write`
into a report folder (``report.md``, CSV files, PNG plots). ``tl-inversion evaluate`` is the
same on the command line.

For every site of the bank and every position of the plan:

* **faithfulness**: the paper's rate (one temperature-1 sample per held-out activation,
  fraction with D < epsilon; App. C) and, over a pool drawn with the paper's
  temperature/noise schedule for ``n_queries`` queries, the in-preimage and well-formed
  fractions of the whole pool;
* **feature consistency**: for each feature ``g`` of the plan, the fraction of well-formed
  in-preimage samples with ``g(sample) == g(query)``, against two baselines: samples
  decoded from the site's BOS activation (which carries no information about the input)
  and random task inputs (chance agreement);
* **completeness** (where the plan enumerates the input space): for each completeness
  query and position, the brute-force true epsilon-preimage, the AUROC of the decoder's
  ``log p(x | z_q)`` for members against non-members, and recall among decoder samples
  (:mod:`tl_inversion.evaluation.completeness`).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from tl_inversion.errors import InputValueError, PositionError
from tl_inversion.evaluation.completeness import completeness, preimage_distances_by_site
from tl_inversion.evaluation.consistency import baseline_consistency, consistency_summary, feature_consistency
from tl_inversion.evaluation.report import EvaluationReport, _training_noise
from tl_inversion.inversion.decode import decode_to_task
from tl_inversion.inversion.distance import default_epsilon
from tl_inversion.inversion.queries import check_query_positions
from tl_inversion.inversion.sampling import PAPER_SCHEDULE
from tl_inversion.inversion.verify import measure_faithfulness
from tl_inversion.model.activations import activations_at, harvest, model_device
from tl_inversion.tasks import as_task
from tl_inversion.tasks.base import sample_positions
from tl_inversion.tasks.plan import RANDOM, EvalPlan, Feature, PositionLike, default_plan

if TYPE_CHECKING:  # pragma: no cover
    from tl_inversion.evaluation.inverter import Inverter

__all__ = ["evaluate"]


def _resolvable(task: Any, tokens: Tensor, position: PositionLike) -> tuple[Tensor, Tensor]:
    """Rows of ``tokens`` where ``position`` exists and holds an input token (not BOS, EOS or
    PAD, which membership never compares), and its index in each (e.g. A4 exists only for
    4-digit sums; index 30 of a counting row is often PAD).

    Raises:
        PositionError: no row has the position (or the name is unknown).
    """
    try:
        keep, idx = torch.arange(tokens.shape[0]), task.resolve_position(tokens, position)
    except PositionError:
        rows, found = [], []
        for i in range(tokens.shape[0]):
            try:
                found.append(int(task.resolve_position(tokens[i : i + 1], position)[0]))
                rows.append(i)
            except PositionError:
                continue
        if not rows:
            raise
        keep, idx = torch.tensor(rows, dtype=torch.long), torch.tensor(found, dtype=torch.long)
    kept = tokens[keep]
    ok = ~task.special_mask(kept)[torch.arange(kept.shape[0]), idx.to(kept.device)].cpu()
    if not bool(ok.any()):
        raise PositionError(f"position {position!r} holds BOS, EOS or PAD in every evaluation row; "
                            "choose a position of the input's own tokens")
    return kept[ok], idx[ok]


def _rows_for_position(task: Any, shuffled: Tensor, position: PositionLike, n_faithfulness: int,
                       n_queries: int) -> tuple[Tensor, Tensor, int]:
    """Held-out rows for one position: ``(tokens, indices, n_f)``; the first ``n_f`` rows
    measure faithfulness, the next ones are the pool queries (disjoint where possible).

    Looks first at a prefix of the shuffled data, then at all of it when the position is
    rare (an index beyond most inputs' length); warns when fewer rows than asked hold it,
    and warns once (rather than per query) when it is a position the decoders were not
    trained on.

    Raises:
        PositionError: no row holds the position as an input token.
    """
    need = n_faithfulness + n_queries
    first = shuffled[: max(4 * need, 2000)]
    try:
        toks, idx = _resolvable(task, first, position)
    except PositionError:
        if first.shape[0] == shuffled.shape[0]:
            raise
        toks = first[:0]
    if toks.shape[0] < need and first.shape[0] < shuffled.shape[0]:
        toks, idx = _resolvable(task, shuffled, position)
    toks, idx = toks[:need], idx[:need]
    n = toks.shape[0]
    n_f = n_faithfulness if n >= need else max(1, round(n * n_faithfulness / need))
    if n < need:
        warnings.warn(
            f"position {position!r} holds an input token in only {n} of {shuffled.shape[0]} evaluation rows: "
            f"faithfulness uses {n_f} rows (asked {n_faithfulness}) and the pools "
            + (f"{n - n_f} other rows" if n > n_f else "that same row")
            + f" (asked {n_queries})",
            UserWarning,
            stacklevel=3,
        )
    check_query_positions(task, toks[:1], idx[:1])  # once per position, not per query and stage
    return toks, idx, n_f


def evaluate(
    model: Any,
    bank: Any,
    task: Any,
    eval_data: Tensor,
    plan: EvalPlan | None = None,
    *,
    sites: Sequence[Any] | None = None,
    n_faithfulness: int = 200,
    n_queries: int = 16,
    n_repeats: int = 1,
    schedule: Sequence[tuple[float, float]] = PAPER_SCHEDULE,
    n_bos_samples: int = 256,
    n_random: int = 20000,
    max_candidates: int | None = 20000,
    n_samples: int = 256,
    epsilon: float | None = None,
    metric: str = "l2",
    seed: int = 0,
    progress: bool = True,
    blurred: Any = None,  # True, False or None; checked here with a clear message
) -> EvaluationReport:
    """Measure a decoder bank per site and position (faithfulness, consistency, completeness).

    Args:
        model: the probed model (``HookedTransformer`` or ``TransformerBridge``).
        bank: a :class:`~tl_inversion.bank.DecoderBank` trained on ``model``.
        task: the task or its registered name (positions, grammar, special ids).
        eval_data: held-out inputs ``[n, n_ctx]`` (e.g. the test split); faithfulness
            activations, pool queries and the random baseline are drawn from it.
        plan: what to measure; ``None``: the task's default plan
            (:func:`tl_inversion.tasks.plan.default_plan`).
        sites: a subset of the bank's sites (default: all).
        n_faithfulness: held-out activations per (site, position) (paper 200).
        n_queries: pool queries per (site, position) for pool fractions and consistency.
        n_repeats: repeats of the schedule per pool (paper's 4 settings x 64: 256 samples each).
        schedule: the pool's ``(temperature, noise)`` settings (default: the paper's).
        n_bos_samples: samples from the BOS activation per site (consistency baseline).
        n_random: random inputs for the chance baseline.
        max_candidates: completeness scoring cap (:func:`~tl_inversion.completeness.completeness`).
        n_samples: completeness recall samples.
        epsilon: membership threshold (``None``: 0.1 for l2, 0.25 for cosine).
        metric: ``"l2"`` or ``"cosine"``.
        seed: seed of every random choice.
        progress: one ``tqdm.auto`` bar over the stages (faithfulness per position, pools per
            site and position, completeness per site); it ends full.
        blurred: the noise flag completeness conditions on (banks trained with
            ``train_noise_flag``); ``None``: blurred exactly when the bank has the flag.
            Faithfulness, pools and consistency always use the exact condition.

    Returns:
        :class:`~tl_inversion.evaluation.report.EvaluationReport`.

    Raises:
        ModelMismatchError: the bank was trained on another model.
        SiteError: a site the bank does not cover. PositionError: a position the task lacks.
        ValueError: ``max_candidates < 2``, or ``blurred=True`` for a bank without a noise flag.

    Source: InversionView App. C (faithfulness rate), Sec. 3 (completeness picture),
    Sec. 4 (readings as features shared by the preimage).
    """
    from tl_inversion.evaluation.inverter import Inverter

    task = as_task(task)
    plan = plan or default_plan(task)
    eps = _check_arguments(bank, task, eval_data, plan, n_faithfulness=n_faithfulness, n_queries=n_queries,
                           n_repeats=n_repeats, n_bos_samples=n_bos_samples, n_random=n_random,
                           max_candidates=max_candidates, n_samples=n_samples, epsilon=epsilon, metric=metric,
                           blurred=blurred)
    inverter = Inverter(model, bank, task)  # the model is checked against the bank here, once
    return run_evaluation(inverter, eval_data, plan, sites=sites, n_faithfulness=n_faithfulness, n_queries=n_queries,
                          n_repeats=n_repeats, schedule=schedule, n_bos_samples=n_bos_samples, n_random=n_random,
                          max_candidates=max_candidates, n_samples=n_samples, epsilon=eps, metric=metric, seed=seed,
                          progress=progress, blurred=blurred)


def _check_arguments(bank: Any, task: Any, eval_data: Tensor, plan: EvalPlan, *, n_faithfulness: int, n_queries: int,
                     n_repeats: int, n_bos_samples: int, n_random: int, max_candidates: int | None, n_samples: int,
                     epsilon: float | None, metric: str, blurred: bool | None) -> float:
    """Check everything that needs no model run (so errors come before any work); returns epsilon."""
    eps = default_epsilon(metric) if epsilon is None else float(epsilon)
    _check_counts(n_faithfulness=(n_faithfulness, 1), n_queries=(n_queries, 1), n_repeats=(n_repeats, 1),
                  n_bos_samples=(n_bos_samples, 0), n_random=(n_random, 1), n_samples=(n_samples, 0))
    if max_candidates is not None and max_candidates < 2:
        raise InputValueError(f"max_candidates must be >= 2 (or None for all), got {max_candidates}")
    if blurred is not None:
        bank.check_blurred(blurred)
    if not eps > 0:
        raise InputValueError(
            f"epsilon must be a positive distance (paper: 0.1 for l2, 0.25 for cosine), got {epsilon}"
        )
    if not plan.positions:
        raise InputValueError("the plan has no positions: give at least one (a task-named position or an index)")
    if eval_data.ndim != 2 or eval_data.shape[-1] != task.n_ctx or eval_data.shape[0] == 0:
        raise InputValueError(
            f"eval_data must be [n >= 1, {task.n_ctx}] token ids of task {task.name!r}, "
            f"got shape {tuple(eval_data.shape)}"
        )
    if bool(plan.completeness_queries) != bool(plan.completeness_positions):
        raise InputValueError(
            "completeness needs both queries and positions (completeness_queries and completeness_positions)"
        )
    if plan.completeness_queries and plan.candidates is None:
        raise InputValueError("completeness queries need an enumerated input space: the plan has no candidates")
    if plan.completeness_queries:  # bad queries or positions fail now, not after the other stages
        plan.completeness_rows(task)
    return eps


def run_evaluation(
    inverter: "Inverter",
    eval_data: Tensor,
    plan: EvalPlan,
    *,
    sites: Sequence[Any] | None = None,
    n_faithfulness: int = 200,
    n_queries: int = 16,
    n_repeats: int = 1,
    schedule: Sequence[tuple[float, float]] = PAPER_SCHEDULE,
    n_bos_samples: int = 256,
    n_random: int = 20000,
    max_candidates: int | None = 20000,
    n_samples: int = 256,
    epsilon: float | None = None,
    metric: str = "l2",
    seed: int = 0,
    progress: bool = True,
    blurred: Any = None,  # True, False or None; checked here with a clear message
) -> EvaluationReport:
    """:func:`evaluate` for an :class:`~tl_inversion.evaluation.inverter.Inverter` whose model
    and bank are already checked (no fingerprint is taken here).

    Args:
        inverter: the checked (model, bank, task).
        eval_data: as :func:`evaluate`.
        plan: as :func:`evaluate` (required here).
        sites: as :func:`evaluate`.
        n_faithfulness: as :func:`evaluate`.
        n_queries: as :func:`evaluate`.
        n_repeats: as :func:`evaluate`.
        schedule: as :func:`evaluate`.
        n_bos_samples: as :func:`evaluate`.
        n_random: as :func:`evaluate`.
        max_candidates: as :func:`evaluate`.
        n_samples: as :func:`evaluate`.
        epsilon: as :func:`evaluate`.
        metric: as :func:`evaluate`.
        seed: as :func:`evaluate`.
        progress: as :func:`evaluate`.
        blurred: as :func:`evaluate`.

    Returns:
        :class:`~tl_inversion.evaluation.report.EvaluationReport`.

    Raises:
        As :func:`evaluate`, except ModelMismatchError.
    """
    model, bank, task = inverter.model, inverter.bank, inverter.task
    eps = _check_arguments(
        bank,
        task,
        eval_data,
        plan,
        n_faithfulness=n_faithfulness,
        n_queries=n_queries,
        n_repeats=n_repeats,
        n_bos_samples=n_bos_samples,
        n_random=n_random,
        max_candidates=max_candidates,
        n_samples=n_samples,
        epsilon=epsilon,
        metric=metric,
        blurred=blurred,
    )
    blurred = None if blurred is None else bank.check_blurred(blurred)
    use_sites = list(bank.sites) if sites is None else [bank.resolve_site(s) for s in sites]
    for s in use_sites:
        bank.lookup(s)  # SiteError listing the bank's sites
    g = torch.Generator().manual_seed(seed)
    shuffled = eval_data[torch.randperm(eval_data.shape[0], generator=g)]
    per_pos = {p: _rows_for_position(task, shuffled, p, n_faithfulness, n_queries) for p in plan.positions}
    random_inputs = shuffled[:n_random]
    completeness_on = bool(plan.completeness_queries) and plan.candidates is not None
    stages = 1 + len(plan.positions) * (1 + len(use_sites)) + (len(use_sites) if completeness_on else 0)
    bar = tqdm(total=stages, disable=not progress, desc="evaluate", unit="stage")
    try:
        faith_rows = []
        # the paper's rate: a random trainable position per held-out input (App. C)
        held = shuffled[:n_faithfulness]
        df = measure_faithfulness(
            bank, model, task, held, sample_positions(task, held, g, 0.0), epsilon=eps, metric=metric, seed=seed
        )
        df = df.loc[[str(s) for s in use_sites]]
        df["position"] = RANDOM
        faith_rows.append(df.reset_index())
        bar.update(1)
        for p in plan.positions:
            toks, idx, n_f = per_pos[p]
            df = measure_faithfulness(bank, model, task, toks[:n_f], idx[:n_f], epsilon=eps, metric=metric, seed=seed)
            df = df.loc[[str(s) for s in use_sites]]
            df["position"] = str(p)
            faith_rows.append(df.reset_index())
            bar.update(1)
        faith = pd.concat(faith_rows, ignore_index=True)

        cons_rows, pool_rows = [], []
        for site in use_sites:
            bos_samples = _bos_samples(bank, model, task, site, shuffled[:1], n_bos_samples, seed)
            for p in plan.positions:
                toks, idx, n_f = per_pos[p]
                q, qi = toks[n_f : n_f + n_queries], idx[n_f : n_f + n_queries]
                if q.shape[0] == 0:  # a single row holds the position: it is also the query
                    q, qi = toks[:1], idx[:1]
                results = inverter.sample_many(
                    q,
                    site,
                    qi,
                    schedule=schedule,
                    n_repeats=n_repeats,
                    epsilon=eps,
                    metric=metric,
                    seed=seed,
                    colour=False,
                    warn_positions=False,
                )
                pool = pd.concat([r.df for r in results])
                pool_rows.append(
                    {
                        "site": str(site),
                        "position": str(p),
                        "pool_in_preimage": float(pool["in_preimage"].mean()),
                        "pool_valid": float(pool["valid"].mean()),
                        "pool_size": int(len(pool)),
                    }
                )
                for name, fn in plan.features.items():
                    fc = consistency_summary(feature_consistency(results, fn))
                    cons_rows.append(
                        {
                            "site": str(site),
                            "position": str(p),
                            "feature": name,
                            "consistency": fc.per_query_mean,
                            "consistency_pooled": fc.pooled,
                            "bos_baseline": _agreement(fn, bos_samples, q),
                            "random_baseline": baseline_consistency(random_inputs, q, fn),
                            "n_samples": fc.n_samples,
                            "n_queries": fc.n_queries,
                            "n_queries_counted": fc.n_queries_counted,
                        }
                    )
                bar.update(1)
        faith = faith.merge(pd.DataFrame(pool_rows), on=["site", "position"], how="left").set_index(
            ["site", "position"]
        )
        consistency = pd.DataFrame(cons_rows)
        if not consistency.empty:
            consistency = consistency.set_index(["site", "position", "feature"])

        comp_frames, score_frames = [], []
        n_candidates = 0
        if completeness_on:
            candidates = plan.candidates()
            n_candidates = int(candidates.shape[0])
            queries, positions, names = plan.completeness_rows(task)
            # the true preimages of every site from one probed pass over the candidates
            z_by_site = activations_at(model, queries, positions, use_sites, validate=False)
            distances = preimage_distances_by_site(
                model, candidates, z_by_site, task.special_ids, metric=metric, progress=False
            )
            for site in use_sites:
                res = completeness(
                    model,
                    bank,
                    task,
                    site,
                    queries,
                    positions,
                    candidates,
                    epsilon=eps,
                    metric=metric,
                    max_candidates=max_candidates,
                    n_samples=n_samples,
                    class_fn=plan.class_fn,
                    seed=seed,
                    progress=False,
                    blurred=blurred,
                    distances=distances.pop(site),
                )
                s = res.summary.rename(columns={"position": "position_index"})
                s.insert(0, "position", [names[i] for i in s["query"]])
                s.insert(0, "site", str(site))
                s["eligible"] = s["n_members"] >= plan.min_members
                comp_frames.append(s)
                sc = res.scores.copy()
                sc["site"] = str(site)
                sc["position"] = [names[i] for i in sc["query"]]
                score_frames.append(sc)
                bar.update(1)
    finally:
        bar.close()
    info = {
        "task": task.name,
        "n_sites": len(use_sites),
        "positions": [str(p) for p in plan.positions],
        "epsilon": eps,
        "metric": metric,
        "n_faithfulness": n_faithfulness,
        "n_queries": n_queries,
        "pool_per_query": 64 * len(schedule) * n_repeats,
        "n_candidates": n_candidates,
        "min_members": plan.min_members,
        "max_candidates": max_candidates,
        "seed": seed,
        "device": str(model_device(model)),
        "training_noise": _training_noise(bank.training_runs(), [str(x) for x in use_sites]),
        "noise_flag": bank.noise_flag,
        "completeness_blurred": bank.noise_flag if blurred is None else blurred,
        "completeness_note": "" if completeness_on else _why_no_completeness(task, plan),
    }
    return EvaluationReport(
        faithfulness=faith,
        consistency=consistency,
        completeness=pd.concat(comp_frames, ignore_index=True) if comp_frames else pd.DataFrame(),
        scores=pd.concat(score_frames, ignore_index=True) if score_frames else pd.DataFrame(),
        info=info,
    )


def _check_counts(**values: tuple[int, int]) -> None:
    """Raise a ValueError naming the first count below its minimum."""
    for name, (value, low) in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _bos_samples(bank: Any, model: Any, task: Any, site: Any, one_input: Tensor, n: int, seed: int) -> Tensor:
    """Well-formed samples decoded (temperature 1) from the site's BOS activation."""
    if n <= 0:
        return one_input[:0]
    z = harvest(model, one_input, [site], validate=False)[site][0, 0]
    gen = torch.Generator(device=bank.device).manual_seed(seed)
    samples = decode_to_task(bank, site, z.reshape(1, -1).expand(n, -1), temperature=1.0, generator=gen)
    if samples.shape[-1] < one_input.shape[-1]:
        samples = torch.nn.functional.pad(samples, (0, one_input.shape[-1] - samples.shape[-1]), value=task.pad_id)
    return samples[task.is_valid(samples)]


def _check_counts(**values: tuple[int, int]) -> None:
    """Raise a ValueError naming the first count below its minimum."""
    for name, (value, low) in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _bos_samples(bank: Any, model: Any, task: Any, site: Any, one_input: Tensor, n: int, seed: int) -> Tensor:
    """Well-formed samples decoded (temperature 1) from the site's BOS activation."""
    if n <= 0:
        return one_input[:0]
    z = harvest(model, one_input, [site], validate=False)[site][0, 0]
    gen = torch.Generator(device=bank.device).manual_seed(seed)
    samples = decode_to_task(
        bank,
        site,
        z.reshape(1, -1).expand(n, -1),
        temperature=1.0,
        generator=gen,
        n_ctx=one_input.shape[-1],
        pad_id=task.pad_id,
    )
    return samples[task.is_valid(samples)]


def _why_no_completeness(task: Any, plan: EvalPlan) -> str:
    """The reason, in words, that a plan measures no completeness (evaluate refuses queries
    without candidates, so a plan without completeness lacks the queries).
    """
    name = getattr(task, "name", "this task")
    why = (
        f"the plan has no completeness queries (EvalPlan.completeness_queries and completeness_positions; "
        f"the default plan of {name!r} gives none: pass some in the plan)"
    )
    if plan.candidates is None:
        why += " and no enumerated input space (EvalPlan.candidates) to find true preimages in by brute force"
    return why


def _agreement(fn: Feature, samples: Tensor, queries: Tensor) -> float:
    """Mean over queries of the fraction of ``samples`` with the query's feature value."""
    if samples.shape[0] == 0:
        return math.nan
    return baseline_consistency(samples, queries, fn)
