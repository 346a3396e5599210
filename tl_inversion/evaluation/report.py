"""What :func:`~tl_inversion.evaluation.evaluate` returns: :class:`EvaluationReport`, its
summaries and its writers (``report.md`` with a column legend, CSV files, PNG plots).

The measuring itself is in :mod:`tl_inversion.evaluation.evaluate`, the pictures in
:mod:`tl_inversion.evaluation.plots`. Source: InversionView (Huang et al. 2024, arXiv
2405.17653), App. C (faithfulness rate), Sec. 3 (completeness), Sec. 4 (readings).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tl_inversion.errors import TLInversionWarning
from tl_inversion.evaluation.plots import SHARE_EDGES, auroc_stats, plot_auroc, plot_completeness, plot_faithfulness
from tl_inversion.tasks.plan import RANDOM

__all__ = ["COLUMN_LEGEND", "CompletenessNotMeasuredWarning", "EvaluationReport"]


class CompletenessNotMeasuredWarning(TLInversionWarning):
    """A completeness table was asked of an evaluation that measured no completeness."""


#: What each reported column means (written into ``report.md``; :meth:`EvaluationReport.legend`).
COLUMN_LEGEND: dict[str, str] = {
    "faithfulness": "fraction of held-out activations whose one temperature-1 sample lies within epsilon "
                    "(D < epsilon; the paper's rate, App. C)",
    "valid": "fraction of samples the task's grammar accepts (task.is_valid: BOS, a well-formed input, EOS, "
             "then only padding; e.g. counting's n equals the count of c)",
    "pool_in_preimage": "fraction of the whole sampling pool (paper schedule) within epsilon",
    "pool_valid": "fraction of the whole sampling pool the task's grammar accepts (as valid)",
    "consistency": "mean over queries of the fraction of well-formed in-preimage samples sharing the query's "
                   "feature value (the headline; each query weighs the same)",
    "consistency_pooled": "the same fraction pooled over all counted samples of all queries",
    "bos_baseline": "the same agreement for samples decoded from the site's BOS activation (no information)",
    "random_baseline": "the same agreement for random task inputs (chance)",
    "n_members": "size of the true epsilon-preimage among the enumerated inputs (brute force)",
    "auroc": "AUROC of the decoder's log p(x | z_q) separating preimage members from non-members "
             "(1: every member likelier than every non-member, 0.5: chance)",
    "auroc_at_query_position": "AUROC of the members matching z_q at the query's own position",
    "auroc_elsewhere": "AUROC of the members matching z_q at another position",
    "auroc_ideal": "AUROC a perfectly trained decoder of the bank's training noise would reach; shown only "
                   "for banks trained on blurred activations (for exact training it does not apply)",
    "recall": "fraction of distinct preimage members found among the decoder's samples",
    "class_recall": "fraction of the members' task-level classes found among in-preimage samples",
    "sample_faithfulness": "fraction of the completeness samples within epsilon",
    "eligible": "row counted in the AUROC summary (at least min_members members)",
}


@dataclass
class EvaluationReport:
    """What :func:`evaluate` returns; every table is a pandas DataFrame.

    Attributes:
        faithfulness: one row per (site, position): ``faithfulness`` (paper's rate, in
            [0, 1]), ``mean_distance``, ``median_distance``, ``valid`` (well-formed samples),
            ``n`` (held-out activations), ``pool_in_preimage`` and ``pool_valid`` (fractions of
            the whole sampling pool of ``n_queries`` queries), ``pool_size``.
        consistency: one row per (site, position, feature): ``consistency`` (mean over queries
            of the per-query fraction; the headline), ``consistency_pooled`` (the fraction
            over all counted samples of all queries), ``bos_baseline``, ``random_baseline``,
            ``n_samples`` (in-preimage well-formed samples counted), ``n_queries``,
            ``n_queries_counted`` (queries with at least one counted sample).
        completeness: one row per (site, position, query): ``n_members``, ``auroc``,
            ``recall``, ``class_recall`` and the rest of
            :class:`~tl_inversion.completeness.CompletenessResult.summary`; ``eligible`` marks
            rows with at least ``min_members`` members.
        scores: completeness scores of every scored candidate (for the scatter plots), with
            ``site`` and ``position`` columns.
        info: settings and sizes (epsilon, metric, seeds, counts); ``completeness_note``
            says why completeness was not measured, where it was not.

    Column meanings: :data:`COLUMN_LEGEND` (also written into ``report.md``).
    """

    faithfulness: pd.DataFrame
    consistency: pd.DataFrame
    completeness: pd.DataFrame
    scores: pd.DataFrame = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict)

    def completeness_summary(self) -> pd.DataFrame:
        """Distribution of AUROC over eligible completeness rows, per site and overall.

        Returns:
            One row per site and ``all``: ``rows``, ``min``, ``p10``, ``median``, ``max``,
            ``frac_ge_0.95``; empty when completeness was not measured.

        Warns:
            CompletenessNotMeasuredWarning: completeness was not measured (with the reason).
        """
        return self._completeness_summary(warn=True)

    def _not_measured(self, warn: bool) -> bool:
        """True (and, with ``warn``, a warning giving the reason) when there is no completeness."""
        if not self.completeness.empty:
            return False
        if warn:
            warnings.warn(f"no completeness was measured: {self.completeness_note()}", CompletenessNotMeasuredWarning,
                          stacklevel=3)
        return True

    def completeness_note(self) -> str:
        """Why completeness was not measured (empty string when it was)."""
        if not self.completeness.empty:
            return ""
        return self.info.get("completeness_note") or (
            "the plan has no completeness queries and positions (EvalPlan.completeness_queries / "
            "completeness_positions)")

    def _completeness_summary(self, warn: bool) -> pd.DataFrame:
        c = self.completeness
        if self._not_measured(warn):
            return pd.DataFrame()
        e = c[c["eligible"] & c["auroc"].notna()]
        if e.empty:
            return pd.DataFrame({"rows": [0]}, index=pd.Index(["all"], name="site"))
        rows = {site: auroc_stats(df["auroc"]) for site, df in e.groupby("site", sort=False)}
        rows["all"] = auroc_stats(e["auroc"])
        return pd.DataFrame(rows).T.astype({"rows": int}).rename_axis("site")

    def completeness_by_preimage_size(self) -> pd.DataFrame:
        """AUROC distribution of eligible completeness rows, grouped by the true preimage's
        share of the candidate space (``n_members / n_candidates``, in decades).

        Returns:
            One row per non-empty share interval (``preimage_share``, e.g. ``"[0.001, 0.01)"``)
            with ``rows``, ``min``, ``p10``, ``median``, ``max``, ``frac_ge_0.95``; empty when
            there are no completeness rows. Large shares mean a diffuse activation with many
            candidates near the epsilon boundary, where log p separates members least.

        Warns:
            CompletenessNotMeasuredWarning: completeness was not measured (with the reason).
        """
        c = self.completeness
        if self._not_measured(warn=True):
            return pd.DataFrame()
        e = c[c["eligible"] & c["auroc"].notna()]
        share = e["n_members"] / e["n_candidates"]
        groups = {}
        for lo, hi in zip(SHARE_EDGES[:-1], SHARE_EDGES[1:], strict=True):
            inside = (share >= lo) & (share < hi) if hi < 1 else (share >= lo)
            if inside.any():
                groups[f"[{lo:g}, {hi:g}{']' if hi == 1 else ')'}"] = auroc_stats(e.loc[inside, "auroc"])
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
        trainable position, one temperature-1 sample each, fraction with D < epsilon).
        """
        f = self.faithfulness.xs(RANDOM, level="position")
        return f["faithfulness"]

    def summary(self) -> dict[str, Any]:
        """Headline numbers: mean faithfulness over sites (at the trained positions, pooled),
        the AUROC distribution (with ``auroc_ideal_median`` / ``auroc_ideal_frac_ge_0.95``:
        the same for a perfectly trained decoder of the bank's training noise, present only
        where it applies: banks trained on blurred activations).
        """
        f = self.faithfulness
        out: dict[str, Any] = {
            # the paper's definition: random trainable position, mean over sites
            "mean_faithfulness": float(self.paper_faithfulness().mean()) if not f.empty else math.nan,
            "mean_pool_in_preimage": float(f["pool_in_preimage"].mean(skipna=True))
            if "pool_in_preimage" in f
            else math.nan,
        }
        cs = self._completeness_summary(warn=False)
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
        captions to image paths relative to the report).
        """
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
        parts += [
            "",
            "## Faithfulness rate per site (paper's definition: random trained position)",
            "",
            self.paper_faithfulness().to_frame("faithfulness").to_markdown(floatfmt=fmt),
        ]
        table = self._wide("faithfulness")
        parts += ["", "## Faithfulness rate per site and position", "", table.to_markdown(floatfmt=fmt)]
        pool = self._wide("pool_in_preimage").drop(columns=RANDOM)
        parts += ["", "## In-preimage fraction of the whole sampling pool", "", pool.to_markdown(floatfmt=fmt)]
        if not self.consistency.empty:
            c = self.consistency.reset_index()
            wide = c.pivot(index=["site", "position"], columns="feature", values="consistency")
            rows = list(dict.fromkeys(zip(c["site"], c["position"], strict=True)))
            wide = wide.reindex(index=rows, columns=list(dict.fromkeys(c["feature"])))
            parts += [
                "",
                "## Feature consistency (in-preimage samples sharing the query's feature)",
                "",
                "Mean over queries of the per-query fraction (each query weighs the same); the fraction "
                "pooled over all samples is `consistency_pooled` in consistency.csv.",
                "",
                wide.reset_index().to_markdown(index=False, floatfmt=fmt),
                "",
                "nan: no well-formed in-preimage sample to compare (see `n_samples` in consistency.csv).",
            ]
            base = c.groupby("feature", sort=False)[["bos_baseline", "random_baseline"]].mean()
            parts += ["", "Baselines (mean over sites and positions):", "", base.to_markdown(floatfmt=fmt)]
        if self.completeness.empty:
            parts += ["", "## Completeness", "", f"Not measured: {self.completeness_note()}."]
        else:
            parts += [
                "",
                f"## Completeness (true preimage by brute force over {info.get('n_candidates')} inputs)",
                "",
                f"AUROC of decoder log p(x | z_q), members vs non-members, rows with >= "
                f"{info.get('min_members')} members:",
                "",
                self._completeness_summary(warn=False).astype(object).to_markdown(floatfmt=fmt),
            ]  # object: counts print as ints
            by_share = self.completeness_by_preimage_size()
            if not by_share.empty:
                parts += [
                    "",
                    "The same rows by the true preimage's share of all inputs (diffuse activations, with "
                    "large preimages, separate least):",
                    "",
                    by_share.astype(object).to_markdown(floatfmt=fmt),
                ]
            cols = [
                "site",
                "position",
                "text",
                "n_members",
                "members_at_query_position",
                "auroc",
                "auroc_at_query_position",
                "auroc_elsewhere",
                "auroc_ideal",
                "recall",
                "class_recall",
                "sample_faithfulness",
            ]
            cols = [k for k in cols if k in self.completeness.columns and self.completeness[k].notna().any()]
            parts += ["", "All rows:", "", self.completeness[cols].to_markdown(index=False, floatfmt=fmt)]
        parts += ["", "## What the columns mean", ""]
        parts += [f"- `{k}`: {v}" for k, v in self.legend().items()]
        if plots:
            parts += ["", "## Plots"]
        for caption, rel in (plots or {}).items():
            parts += ["", f"### {caption}", "", f"![{caption}]({rel})"]
        return "\n".join(parts) + "\n"

    def legend(self) -> dict[str, str]:
        """:data:`COLUMN_LEGEND` restricted to the columns this report shows."""
        shown = set(self.faithfulness.columns) | set(self.consistency.columns) | set(self.completeness.columns)
        if (
            not self.completeness.empty
            and "auroc_ideal" in shown
            and not self.completeness["auroc_ideal"].notna().any()
        ):
            shown.discard("auroc_ideal")
        return {k: v for k, v in COLUMN_LEGEND.items() if k in shown}

    def write(self, out_dir: str | Path) -> Path:
        """Write ``report.md``, ``faithfulness.csv``, ``consistency.csv`` (when the plan has
        features), ``completeness.csv`` (when completeness was measured) and plots
        (``faithfulness.png``, ``completeness_auroc.png``, completeness scatters) to
        ``out_dir``; returns the path of ``report.md``. A table that was not measured gets
        no file (an old one of that name in ``out_dir`` is removed, so the folder never
        mixes two evaluations).
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.faithfulness.to_csv(out / "faithfulness.csv")
        for name, table, index in (
            ("consistency.csv", self.consistency, True),
            ("completeness.csv", self.completeness, False),
        ):
            if table.empty:
                (out / name).unlink(missing_ok=True)
            else:
                table.to_csv(out / name, index=index)
        plots = {
            "Faithfulness rate per site and position": plot_faithfulness(
                self.faithfulness, out / "faithfulness.png"
            ).name
        }
        for stale in ("completeness_auroc.png", "completeness_worst.png", "completeness_best.png"):
            (out / stale).unlink(missing_ok=True)
        if not self.completeness.empty:
            plots["Completeness AUROC per site"] = plot_auroc(self.completeness, out / "completeness_auroc.png").name
            e = self.completeness[self.completeness["eligible"] & self.completeness["auroc"].notna()]
            if not e.empty:
                for tag, row in (("worst", e.loc[e["auroc"].idxmin()]), ("best", e.loc[e["auroc"].idxmax()])):
                    sub = self.scores[
                        (self.scores["site"] == row["site"])
                        & (self.scores["position"] == row["position"])
                        & (self.scores["query"] == row["query"])
                    ]
                    path = plot_completeness(
                        sub,
                        out / f"completeness_{tag}.png",
                        query=None,
                        epsilon=self.info.get("epsilon"),
                        title=f"{row['site']} @ {row['position']}\n{row['text']} (AUROC {row['auroc']:.3f})",
                    )
                    plots[f"Completeness scatter, {tag} AUROC"] = path.name
        path = out / "report.md"
        path.write_text(self.to_markdown(plots))
        return path


def _training_noise(runs: list[dict[str, Any]], sites: list[str] | None = None) -> str:
    """How decoders were conditioned in training, in words, from a bank's
    :meth:`~tl_inversion.bank.DecoderBank.training_runs`; when the sites (all, or those of
    ``sites``) were trained differently, each setting with its sites.
    """

    def say(c: dict[str, Any]) -> str:
        if not c.get("train_noise"):
            return "exact activations (train_noise 0, as the paper)"
        flag = " with the noise flag" if c.get("train_noise_flag") else ""
        return (
            f"activations blurred by train_noise {c['train_noise']:g} ({c.get('train_noise_shape', 'gaussian')}){flag}"
        )

    by_setting: dict[str, list[str]] = {}
    for run in runs:
        kept = [s for s in run.get("sites") or [] if sites is None or s in sites]
        if kept:
            by_setting.setdefault(say(run.get("train_config") or {}), []).extend(kept)
    if len(by_setting) > 1:
        return " and ".join(
            f"{p} ({len(v)} site{'' if len(v) == 1 else 's'}: {', '.join(v)})" for p, v in by_setting.items()
        )
    return next(iter(by_setting)) if by_setting else say({})
