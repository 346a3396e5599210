"""Evaluate a decoder bank per site and position: faithfulness, completeness, feature consistency.

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
  (:mod:`tl_inversion.completeness`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from tl_inversion.model.activations import activations_at, harvest, model_device
from tl_inversion.evaluation.completeness import completeness, plot_completeness, preimage_distances_by_site
from tl_inversion.inversion.distance import default_epsilon
from tl_inversion.evaluation.consistency import baseline_consistency, feature_consistency
from tl_inversion.inversion.sampling import PAPER_SCHEDULE, check_query_positions, sample_many
from tl_inversion.tasks import as_task
from tl_inversion.tasks.base import PositionError
from tl_inversion.training.trainer import measure_faithfulness, sample_positions
from tl_inversion.errors import InputTypeError, InputValueError, ModelMismatchError, SiteError

__all__ = ["EvalPlan", "EvaluationReport", "default_plan", "evaluate"]

Feature = Callable[[Tensor], Tensor]
PositionLike = int | str
RANDOM = "random"  # position label of the paper's faithfulness rate (random trainable position)


@dataclass
class EvalPlan:
    """What :func:`evaluate` measures.

    Args:
        positions: positions (task names or indices) of the faithfulness and consistency
            tables.
        features: ``{name: g}`` with ``g(tokens [n, n_ctx]) -> [n]`` values, called on
            well-formed inputs only.
        completeness_queries: query texts whose true preimage is enumerated (empty: skip).
        completeness_positions: positions at which every completeness query is read.
        candidates: ``() -> [N, n_ctx]`` the enumerated input space (needed for completeness).
        class_fn: task-level class of an input for ``class_recall`` (optional).
        min_members: completeness rows whose true preimage is smaller are reported but not
            counted in the AUROC summary (the issue's rule: at least 10 members).
    """

    positions: list[PositionLike]
    features: dict[str, Feature] = field(default_factory=dict)
    completeness_queries: list[str] = field(default_factory=list)
    completeness_positions: list[PositionLike] = field(default_factory=list)
    candidates: Callable[[], Tensor] | None = None
    class_fn: Callable[[Tensor], Any] | None = None
    min_members: int = 10

    def completeness_rows(self, task: Any) -> tuple[Tensor, Tensor, list[str]]:
        """The completeness rows: every query at every completeness position.

        Args:
            task: the task object (e.g. ``tl_inversion.tasks.addition.make_task()``) that
                encodes the query texts and resolves the positions in each query.

        Returns:
            ``(queries [R, n_ctx], positions [R], names)`` with ``R = len(completeness_positions)
            * len(completeness_queries)``, position-major (the queries repeated per
            position), ``positions`` the resolved indices (each query's own: queries of
            different layouts resolve to different indices) and ``names`` their labels.

        Raises:
            TypeError: ``completeness_queries`` or ``completeness_positions`` is a single
                string instead of a list, or ``task`` is not a task object.
            ValueError: the plan has no completeness queries or no completeness positions,
                a query the task cannot encode, or a position it cannot resolve
                (``PositionError``).
        """
        for name in ("completeness_queries", "completeness_positions"):
            if isinstance(getattr(self, name), str):
                raise InputTypeError(f"EvalPlan.{name} must be a list, got the string {getattr(self, name)!r}; "
                                f"write [{getattr(self, name)!r}]")
        if not self.completeness_queries or not self.completeness_positions:
            raise InputValueError("this plan measures no completeness: it needs completeness_queries and "
                             f"completeness_positions, got {len(self.completeness_queries)} queries and "
                             f"{len(self.completeness_positions)} positions")
        if not (hasattr(task, "encode") and hasattr(task, "resolve_position")):
            raise InputTypeError(f"task must be a task object (e.g. tl_inversion.tasks.get_task('addition')), "
                            f"got {type(task).__name__}")
        cq = task.encode(list(self.completeness_queries))
        queries = cq.repeat(len(self.completeness_positions), 1)
        positions = torch.cat([task.resolve_position(cq, p) for p in self.completeness_positions])
        names = [str(p) for p in self.completeness_positions for _ in range(cq.shape[0])]
        return queries, positions, names


def default_plan(task_name: str | Any) -> EvalPlan:
    """The plan for a built-in task (give its name, or the task: its ``name`` is used).

    * ``addition``: positions ``+ = A1 A2 A3 A4``; features: hundreds, tens and ones digit of
      each operand, the carry into the tens and into the hundreds, the sum's length;
      completeness for the issue's queries 615+861=1476, 925+398=1323, 101+539=640,
      556+280=836 at ``= A1 A2 A3`` over all 810,000 inputs, classes = the sum.
    * ``counting``: positions ``c`` (the query letter) and ``:``; features: the query
      letter's count, the query letter, the string length; completeness (only for queries
      given) against the 390,000 inputs of the test split, classes = (letter, count).
    * any other task: every non-special position index is not enumerable, so positions
      must be given; no features.

    Raises:
        ValueError: an unknown task name without positions.
    """
    task_name = getattr(task_name, "name", task_name)
    if task_name == "addition":
        from tl_inversion.tasks import addition

        def digit(i: int) -> Feature:
            return lambda t: t[:, i]

        def carry(mod: int) -> Feature:
            def fn(t: Tensor) -> Tensor:
                a, b = addition.operands(t)
                return ((a % mod + b % mod) >= mod).long()

            return fn

        def total(t: Tensor) -> Tensor:
            a, b = addition.operands(t)
            return a + b

        return EvalPlan(
            positions=["+", "=", "A1", "A2", "A3", "A4"],
            features={
                "a_hundreds": digit(1), "a_tens": digit(2), "a_ones": digit(3),
                "b_hundreds": digit(5), "b_tens": digit(6), "b_ones": digit(7),
                "carry_to_tens": carry(10), "carry_to_hundreds": carry(100),
                "sum_length": addition.sum_lengths,
            },
            completeness_queries=["615+861=1476", "925+398=1323", "101+539=640", "556+280=836"],
            completeness_positions=["=", "A1", "A2", "A3"],
            candidates=lambda: addition.paper_split("all"),
            class_fn=total,
        )
    if task_name == "counting":
        from tl_inversion.tasks import counting

        task = counting.make_task()

        def letter(t: Tensor) -> Tensor:
            return t.gather(1, task.resolve_position(t, "c")[:, None])[:, 0]

        def letter_and_count(t: Tensor) -> Tensor:
            return torch.stack([letter(t), counting.query_counts(t)], dim=-1)

        return EvalPlan(
            positions=["c", ":"],
            features={"query_count": counting.query_counts, "query_letter": letter,
                      "string_length": counting.string_lengths},
            candidates=lambda: counting.paper_split("test"),
            class_fn=letter_and_count,
        )
    raise InputValueError(f"no default evaluation plan for task {task_name!r} (built-in plans: addition, counting); "
                     "give an EvalPlan with positions")


@dataclass
class EvaluationReport:
    """What :func:`evaluate` returns; every table is a pandas DataFrame.

    Attributes:
        faithfulness: one row per (site, position): ``faithfulness`` (paper's rate, in
            [0, 1]), ``mean_distance``, ``median_distance``, ``valid`` (well-formed samples),
            ``n`` (held-out activations), ``pool_in_preimage`` and ``pool_valid`` (fractions of
            the whole sampling pool of ``n_queries`` queries), ``pool_size``.
        consistency: one row per (site, position, feature): ``consistency`` (mean over queries
            of the per-query fraction), ``bos_baseline``, ``random_baseline``, ``n_samples``
            (in-preimage well-formed samples counted), ``n_queries``.
        completeness: one row per (site, position, query): ``n_members``, ``auroc``,
            ``recall``, ``class_recall`` and the rest of
            :class:`~tl_inversion.completeness.CompletenessResult.summary`; ``eligible`` marks
            rows with at least ``min_members`` members.
        scores: completeness scores of every scored candidate (for the scatter plots), with
            ``site`` and ``position`` columns.
        info: settings and sizes (epsilon, metric, seeds, counts).
    """

    faithfulness: pd.DataFrame
    consistency: pd.DataFrame
    completeness: pd.DataFrame
    scores: pd.DataFrame = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict)

    def completeness_summary(self) -> pd.DataFrame:
        """Distribution of AUROC over eligible completeness rows, per site and overall."""
        c = self.completeness
        if c.empty:
            return pd.DataFrame()
        e = c[c["eligible"] & c["auroc"].notna()]
        if e.empty:
            return pd.DataFrame({"rows": [0]}, index=pd.Index(["all"], name="site"))
        rows = {site: _auroc_stats(df["auroc"]) for site, df in e.groupby("site", sort=False)}
        rows["all"] = _auroc_stats(e["auroc"])
        return pd.DataFrame(rows).T.astype({"rows": int}).rename_axis("site")

    def completeness_by_preimage_size(self) -> pd.DataFrame:
        """AUROC distribution of eligible completeness rows, grouped by the true preimage's
        share of the candidate space (``n_members / n_candidates``, in decades).

        Returns:
            One row per non-empty share interval (``preimage_share``, e.g. ``"[0.001, 0.01)"``)
            with ``rows``, ``min``, ``p10``, ``median``, ``max``, ``frac_ge_0.95``; empty when
            there are no completeness rows. Large shares mean a diffuse activation with many
            candidates near the epsilon boundary, where log p separates members least.
        """
        c = self.completeness
        if c.empty:
            return pd.DataFrame()
        e = c[c["eligible"] & c["auroc"].notna()]
        share = e["n_members"] / e["n_candidates"]
        groups = {}
        for lo, hi in zip(SHARE_EDGES[:-1], SHARE_EDGES[1:]):
            inside = (share >= lo) & (share < hi) if hi < 1 else (share >= lo)
            if inside.any():
                groups[f"[{lo:g}, {hi:g}{']' if hi == 1 else ')'}"] = _auroc_stats(e.loc[inside, "auroc"])
        if not groups:
            return pd.DataFrame()
        return pd.DataFrame(groups).T.astype({"rows": int}).rename_axis("preimage_share")

    def _wide(self, column: str) -> pd.DataFrame:
        """``column`` as a site x position table in evaluation order."""
        idx = self.faithfulness.index
        table = self.faithfulness.reset_index().pivot(index="site", columns="position", values=column)
        return table.reindex(index=list(dict.fromkeys(idx.get_level_values("site"))),
                             columns=list(dict.fromkeys(idx.get_level_values("position"))))

    def paper_faithfulness(self) -> pd.Series:
        """Per site: the paper's faithfulness rate (held-out activations at a random
        trainable position, one temperature-1 sample each, fraction with D < epsilon)."""
        f = self.faithfulness.xs(RANDOM, level="position")
        return f["faithfulness"]

    def summary(self) -> dict[str, Any]:
        """Headline numbers: mean faithfulness over sites (at the trained positions, pooled),
        the AUROC distribution (with ``auroc_ideal_median`` / ``auroc_ideal_frac_ge_0.95``:
        the same for a perfectly trained decoder of the bank's training noise, where known),
        and per feature the best site's consistency."""
        f = self.faithfulness
        out: dict[str, Any] = {
            # the paper's definition: random trainable position, mean over sites
            "mean_faithfulness": float(self.paper_faithfulness().mean()) if not f.empty else math.nan,
            "mean_pool_in_preimage": float(f["pool_in_preimage"].mean(skipna=True)) if "pool_in_preimage" in f else math.nan,
        }
        cs = self.completeness_summary()
        if not cs.empty and "min" in cs:
            out["auroc_min"] = float(cs.loc["all", "min"])
            out["auroc_median"] = float(cs.loc["all", "median"])
            out["auroc_frac_ge_0.95"] = float(cs.loc["all", "frac_ge_0.95"])
            out["auroc_rows"] = int(cs.loc["all", "rows"])
            c = self.completeness
            ideal = c.loc[c["eligible"] & c["auroc"].notna(), "auroc_ideal"].dropna() if "auroc_ideal" in c else []
            if len(ideal):  # what a perfectly trained decoder of the same training noise would give
                out["auroc_ideal_median"] = float(ideal.median())
                out["auroc_ideal_frac_ge_0.95"] = float((ideal >= 0.95).mean())
        return out

    def to_markdown(self, plots: dict[str, str] | None = None) -> str:
        """The report as Markdown (tables via ``DataFrame.to_markdown``; ``plots`` maps
        captions to image paths relative to the report)."""
        fmt = ".3f"
        parts = ["# tl_inversion evaluation report", ""]
        info = self.info
        parts.append(
            f"Task `{info.get('task')}`, {info.get('n_sites')} sites, positions {info.get('positions')}; "
            f"epsilon {info.get('epsilon')} ({info.get('metric')}); faithfulness on {info.get('n_faithfulness')} "
            f"held-out activations per site and position (one temperature-1 sample each); pools of "
            f"{info.get('pool_per_query')} samples for {info.get('n_queries')} queries per site and position."
        )
        if info.get("training_noise"):
            line = f"Decoders trained on {info['training_noise']}."
            if info.get("noise_flag"):
                line += " Sampling, faithfulness and pools use the exact condition (noise flag 0)"
                if not self.completeness.empty:
                    flag = "blurred (flag 1)" if info.get("completeness_blurred") else "exact (flag 0)"
                    line += f"; completeness scores and draws its recall samples with the {flag} one"
                line += "."
            parts += ["", line]
        parts += ["", "## Headline", ""]
        parts += [f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in self.summary().items()]
        parts += ["", "## Faithfulness rate per site (paper's definition: random trained position)", "",
                  self.paper_faithfulness().to_frame("faithfulness").to_markdown(floatfmt=fmt)]
        table = self._wide("faithfulness")
        parts += ["", "## Faithfulness rate per site and position", "", table.to_markdown(floatfmt=fmt)]
        pool = self._wide("pool_in_preimage").drop(columns=RANDOM)
        parts += ["", "## In-preimage fraction of the whole sampling pool", "", pool.to_markdown(floatfmt=fmt)]
        if not self.consistency.empty:
            c = self.consistency.reset_index()
            wide = c.pivot(index=["site", "position"], columns="feature", values="consistency")
            wide = wide.reindex(index=list(dict.fromkeys(zip(c["site"], c["position"]))),
                                columns=list(dict.fromkeys(c["feature"])))
            parts += ["", "## Feature consistency (in-preimage samples sharing the query's feature)", "",
                      wide.reset_index().to_markdown(index=False, floatfmt=fmt), "",
                      "nan: no well-formed in-preimage sample to compare (see `n_samples` in consistency.csv)."]
            base = c.groupby("feature", sort=False)[["bos_baseline", "random_baseline"]].mean()
            parts += ["", "Baselines (mean over sites and positions):", "", base.to_markdown(floatfmt=fmt)]
        if not self.completeness.empty:
            parts += ["", f"## Completeness (true preimage by brute force over {info.get('n_candidates')} inputs)", "",
                      f"AUROC of decoder log p(x | z_q), members vs non-members, rows with >= "
                      f"{info.get('min_members')} members:", "",
                      self.completeness_summary().astype(object).to_markdown(floatfmt=fmt)]  # object: counts print as ints
            by_share = self.completeness_by_preimage_size()
            if not by_share.empty:
                parts += ["", "The same rows by the true preimage's share of all inputs (diffuse activations, with "
                          "large preimages, separate least):", "", by_share.astype(object).to_markdown(floatfmt=fmt)]
            cols = ["site", "position", "text", "n_members", "members_at_query_position", "auroc",
                    "auroc_at_query_position", "auroc_elsewhere", "auroc_ideal", "recall",
                    "class_recall", "sample_faithfulness"]
            cols = [k for k in cols if k in self.completeness.columns]
            parts += ["", "All rows:", "", self.completeness[cols].to_markdown(index=False, floatfmt=fmt)]
        if plots:
            parts += ["", "## Plots"]
        for caption, rel in (plots or {}).items():
            parts += ["", f"### {caption}", "", f"![{caption}]({rel})"]
        return "\n".join(parts) + "\n"

    def write(self, out_dir: str | Path) -> Path:
        """Write ``report.md``, ``faithfulness.csv``, ``consistency.csv`` (when the plan has
        features), ``completeness.csv`` (when completeness was measured) and plots
        (``faithfulness.png``, ``completeness_auroc.png``, completeness scatters) to
        ``out_dir``; returns the path of ``report.md``. A table that was not measured gets
        no file (an old one of that name in ``out_dir`` is removed, so the folder never
        mixes two evaluations)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.faithfulness.to_csv(out / "faithfulness.csv")
        for name, table, index in (("consistency.csv", self.consistency, True),
                                   ("completeness.csv", self.completeness, False)):
            if table.empty:
                (out / name).unlink(missing_ok=True)
            else:
                table.to_csv(out / name, index=index)
        plots = {"Faithfulness rate per site and position": _plot_faithfulness(self.faithfulness, out / "faithfulness.png").name}
        for stale in ("completeness_auroc.png", "completeness_worst.png", "completeness_best.png"):
            (out / stale).unlink(missing_ok=True)
        if not self.completeness.empty:
            plots["Completeness AUROC per site"] = _plot_auroc(self.completeness, out / "completeness_auroc.png").name
            e = self.completeness[self.completeness["eligible"] & self.completeness["auroc"].notna()]
            if not e.empty:
                for tag, row in (("worst", e.loc[e["auroc"].idxmin()]), ("best", e.loc[e["auroc"].idxmax()])):
                    sub = self.scores[(self.scores["site"] == row["site"]) & (self.scores["position"] == row["position"])
                                      & (self.scores["query"] == row["query"])]
                    path = plot_completeness(sub, out / f"completeness_{tag}.png", query=None,
                                             epsilon=self.info.get("epsilon"),
                                             title=f"{row['site']} @ {row['position']}\n{row['text']} (AUROC {row['auroc']:.3f})")
                    plots[f"Completeness scatter, {tag} AUROC"] = path.name
        path = out / "report.md"
        path.write_text(self.to_markdown(plots))
        return path


SHARE_EDGES = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # preimage share intervals of the completeness report


def _auroc_stats(a: pd.Series) -> pd.Series:
    """Row count, min, 10th percentile, median, max and fraction >= 0.95 of AUROC values."""
    return pd.Series({"rows": len(a), "min": a.min(), "p10": a.quantile(0.1), "median": a.median(),
                      "max": a.max(), "frac_ge_0.95": float((a >= 0.95).mean())})


def _plot_faithfulness(df: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    table = df.reset_index().pivot(index="site", columns="position", values="faithfulness")
    table = table.reindex(index=list(dict.fromkeys(df.index.get_level_values("site"))),
                          columns=list(dict.fromkeys(df.index.get_level_values("position"))))
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * table.shape[1], 0.8 + 0.4 * table.shape[0]), dpi=120)
    im = ax.imshow(table.to_numpy(float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [str(i) for i in table.index], fontsize=7)
    for (i, j), v in np.ndenumerate(table.to_numpy(float)):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
    fig.colorbar(im, ax=ax, label="faithfulness rate")
    ax.set_xlabel("position")
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _plot_auroc(df: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sites = list(dict.fromkeys(df["site"]))
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.35 * len(sites)), dpi=120)
    for i, s in enumerate(sites):
        sub = df[df["site"] == s]
        ok = sub["eligible"].to_numpy(bool)
        ax.scatter(sub["auroc"][ok], np.full(ok.sum(), i), s=12, c="tab:blue", label="eligible" if i == 0 else None)
        ax.scatter(sub["auroc"][~ok], np.full((~ok).sum(), i), s=12, facecolors="none", edgecolors="tab:gray",
                   label="< min members" if i == 0 else None)
    ax.axvline(0.95, ls="--", c="k", lw=0.8)
    ax.set_yticks(range(len(sites)), sites, fontsize=7)
    ax.set_xlabel("AUROC of decoder log p(x | z_q), preimage members vs non-members")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


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
    blurred: bool | None = None,
) -> EvaluationReport:
    """Measure a decoder bank per site and position (faithfulness, consistency, completeness).

    Args:
        model: the probed model (``HookedTransformer`` or ``TransformerBridge``).
        bank: a :class:`~tl_inversion.bank.DecoderBank` trained on ``model``.
        task: the task or its registered name (positions, grammar, special ids).
        eval_data: held-out inputs ``[n, n_ctx]`` (e.g. the test split); faithfulness
            activations, pool queries and the random baseline are drawn from it.
        plan: what to measure; ``None``: :func:`default_plan` of ``task.name``.
        sites: a subset of the bank's sites (default: all).
        n_faithfulness: held-out activations per (site, position) (paper 200).
        n_queries: pool queries per (site, position) for pool fractions and consistency.
        n_repeats: repeats of the schedule per pool (paper's 4 settings x 64: 256 samples each).
        schedule: the pool's ``(temperature, noise)`` settings (default: the paper's).
        n_bos_samples: samples from the BOS activation per site (consistency baseline).
        n_random: random inputs for the chance baseline.
        max_candidates, n_samples: completeness scoring cap and recall samples
            (:func:`~tl_inversion.completeness.completeness`).
        epsilon: membership threshold (``None``: 0.1 for l2, 0.25 for cosine); metric: l2 or cosine.
        seed: seed of every random choice.
        progress: one tqdm bar over (site, stage).
        blurred: the noise flag completeness conditions on (banks trained with
            ``train_noise_flag``); ``None``: blurred exactly when the bank has the flag.
            Faithfulness, pools and consistency always use the exact condition.

    Returns:
        :class:`EvaluationReport`.

    Raises:
        ModelMismatchError: the bank was trained on another model.
        SiteError: a site the bank does not cover. PositionError: a position the task lacks.
        ValueError: ``max_candidates < 2``, or ``blurred=True`` for a bank without a noise flag.

    Source: InversionView App. C (faithfulness rate), Sec. 3 (completeness picture),
    Sec. 4 (readings as features shared by the preimage).
    """
    task = as_task(task)
    plan = plan or default_plan(task.name)
    eps = default_epsilon(metric) if epsilon is None else float(epsilon)
    _check_counts(n_faithfulness=(n_faithfulness, 1), n_queries=(n_queries, 1), n_repeats=(n_repeats, 1),
                  n_bos_samples=(n_bos_samples, 0), n_random=(n_random, 1), n_samples=(n_samples, 0))
    if max_candidates is not None and max_candidates < 2:
        raise InputValueError(f"max_candidates must be >= 2 (or None for all), got {max_candidates}")
    blurred = None if blurred is None else bank.check_blurred(blurred)
    if not eps > 0:
        raise InputValueError(f"epsilon must be a positive distance (paper: 0.1 for l2, 0.25 for cosine), got {epsilon}")
    if not plan.positions:
        raise InputValueError("the plan has no positions: give at least one (a task-named position or an index)")
    if eval_data.ndim != 2 or eval_data.shape[-1] != task.n_ctx or eval_data.shape[0] == 0:
        raise InputValueError(f"eval_data must be [n >= 1, {task.n_ctx}] token ids of task {task.name!r}, "
                         f"got shape {tuple(eval_data.shape)}")
    if bool(plan.completeness_queries) != bool(plan.completeness_positions):
        raise InputValueError("completeness needs both queries and positions (completeness_queries and "
                         "completeness_positions; CLI --completeness-queries and --completeness-positions)")
    if plan.completeness_queries and plan.candidates is None:
        raise InputValueError("completeness queries need an enumerated input space: the plan has no candidates")
    if plan.completeness_queries:  # bad queries or positions fail now, not after the other stages
        plan.completeness_rows(task)
    bank.check_model(model)
    bank.check_task(task)
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
        df = measure_faithfulness(bank, model, task, held, sample_positions(task, held, g, 0.0),
                                  epsilon=eps, metric=metric, seed=seed)
        df = df.loc[[str(s) for s in use_sites]]
        df["position"] = RANDOM
        faith_rows.append(df.reset_index())
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
                results = sample_many(bank, model, task, q, site, qi, schedule=schedule, n_repeats=n_repeats,
                                      epsilon=eps, metric=metric, seed=seed, colour=False, warn_positions=False)
                pool = pd.concat([r.df for r in results])
                pool_rows.append({"site": str(site), "position": str(p), "pool_in_preimage": float(pool["in_preimage"].mean()),
                                  "pool_valid": float(pool["valid"].mean()), "pool_size": int(len(pool))})
                for name, fn in plan.features.items():
                    fc = feature_consistency(results, fn)
                    cons_rows.append({
                        "site": str(site), "position": str(p), "feature": name,
                        "consistency": float(fc["consistency"].mean(skipna=True)) if fc["n"].sum() else math.nan,
                        "bos_baseline": _agreement(fn, bos_samples, q),
                        "random_baseline": baseline_consistency(random_inputs, q, fn),
                        "n_samples": int(fc["n"].sum()), "n_queries": int(q.shape[0]),
                    })
                bar.update(1)
        faith = faith.merge(pd.DataFrame(pool_rows), on=["site", "position"], how="left").set_index(["site", "position"])
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
            distances = preimage_distances_by_site(model, candidates, z_by_site, task.special_ids, metric=metric,
                                                   progress=False)
            for site in use_sites:
                res = completeness(model, bank, task, site, queries, positions, candidates, epsilon=eps, metric=metric,
                                   max_candidates=max_candidates, n_samples=n_samples, class_fn=plan.class_fn,
                                   seed=seed, progress=False, blurred=blurred, distances=distances.pop(site))
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
        "task": task.name, "n_sites": len(use_sites), "positions": [str(p) for p in plan.positions], "epsilon": eps,
        "metric": metric, "n_faithfulness": n_faithfulness, "n_queries": n_queries,
        "pool_per_query": 64 * len(schedule) * n_repeats, "n_candidates": n_candidates, "min_members": plan.min_members,
        "max_candidates": max_candidates, "seed": seed, "device": str(model_device(model)),
        "training_noise": _training_noise(bank.training_runs(), [str(x) for x in use_sites]), "noise_flag": bank.noise_flag,
        "completeness_blurred": bank.noise_flag if blurred is None else blurred,
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
    dec, idx = bank.lookup(site)
    gen = torch.Generator(device=bank.device).manual_seed(seed)
    was = dec.training
    dec.eval()
    z_rows = bank.pad(z.reshape(1, -1).expand(n, -1), site)
    samples = bank.to_task_tokens(dec.generate(z_rows, idx, temperature=1.0, generator=gen)).cpu()
    dec.train(was)
    if samples.shape[-1] < one_input.shape[-1]:
        samples = torch.nn.functional.pad(samples, (0, one_input.shape[-1] - samples.shape[-1]), value=task.pad_id)
    return samples[task.is_valid(samples)]


def _training_noise(runs: list[dict[str, Any]], sites: list[str] | None = None) -> str:
    """How decoders were conditioned in training, in words, from a bank's
    :meth:`~tl_inversion.bank.DecoderBank.training_runs`; when the sites (all, or those of
    ``sites``) were trained differently, each setting with its sites."""

    def say(c: dict[str, Any]) -> str:
        if not c.get("train_noise"):
            return "exact activations (train_noise 0, as the paper)"
        flag = " with the noise flag" if c.get("train_noise_flag") else ""
        return f"activations blurred by train_noise {c['train_noise']:g} ({c.get('train_noise_shape', 'gaussian')}){flag}"

    by_setting: dict[str, list[str]] = {}
    for run in runs:
        kept = [s for s in run.get("sites") or [] if sites is None or s in sites]
        if kept:
            by_setting.setdefault(say(run.get("train_config") or {}), []).extend(kept)
    if len(by_setting) > 1:
        return " and ".join(f"{p} ({len(v)} site{'' if len(v) == 1 else 's'}: {', '.join(v)})" for p, v in by_setting.items())
    return next(iter(by_setting)) if by_setting else say({})


def _agreement(fn: Feature, samples: Tensor, queries: Tensor) -> float:
    """Mean over queries of the fraction of ``samples`` with the query's feature value."""
    if samples.shape[0] == 0:
        return math.nan
    return baseline_consistency(samples, queries, fn)
