"""Pictures of an evaluation: faithfulness heat map, completeness AUROC per site, and the
paper's completeness scatter (distance vs decoder log-probability).

All use matplotlib's Agg backend (no display needed) and write PNG files.
Source: InversionView (arXiv 2405.17653) Sec. 3 (the completeness scatter).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tl_inversion.errors import InputValueError

__all__ = ["SHARE_EDGES", "auroc_stats", "plot_auroc", "plot_completeness", "plot_faithfulness"]

#: Preimage share intervals (``n_members / n_candidates``) of the completeness report.
SHARE_EDGES = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def auroc_stats(a: pd.Series) -> pd.Series:
    """Row count, min, 10th percentile, median, max and fraction >= 0.95 of AUROC values."""
    return pd.Series({"rows": len(a), "min": a.min(), "p10": a.quantile(0.1), "median": a.median(),
                      "max": a.max(), "frac_ge_0.95": float((a >= 0.95).mean())})


def plot_faithfulness(df: pd.DataFrame, path: Path) -> Path:
    """Heat map of the faithfulness rate, sites (rows) x positions (columns), values in [0, 1].

    Args:
        df: :attr:`EvaluationReport.faithfulness` (index ``(site, position)``).
        path: the PNG to write.

    Returns:
        The path written.
    """
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


def plot_auroc(df: pd.DataFrame, path: Path) -> Path:
    """Completeness AUROC per site: one dot per completeness row (filled: eligible rows,
    hollow: fewer than ``min_members`` members), a dashed line at 0.95.

    Args:
        df: :attr:`EvaluationReport.completeness`.
        path: the PNG to write.

    Returns:
        The path written.
    """
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


def plot_completeness(
    result: Any,
    path: str | Path,
    *,
    query: int | None = 0,
    epsilon: float | None = None,
    title: str | None = None,
) -> Path:
    """The paper's completeness scatter: distance D(x) (x axis) vs decoder log p(x | z_q) (y axis).

    Members (``D <= epsilon``) are drawn in another colour; a dashed line marks epsilon.
    Written with matplotlib's Agg backend (no display needed).

    Args:
        result: a :class:`~tl_inversion.evaluation.completeness.CompletenessResult` or its
            ``scores`` DataFrame.
        path: the PNG to write (parent folders are created).
        query: which query's rows to draw (``None``: all).
        epsilon: the threshold line (default: the result's epsilon).
        title: figure title.

    Returns:
        The path written.

    Raises:
        ValueError: no rows for that query.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    scores = result if isinstance(result, pd.DataFrame) else result.scores
    eps = epsilon if epsilon is not None else getattr(result, "epsilon", None)
    df = scores if query is None else scores[scores["query"] == query]
    if df.empty:
        raise InputValueError(
            f"no scored candidates for query {query!r}; queries present: {sorted(scores['query'].unique())}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    m = df["member"].to_numpy(bool)
    ax.scatter(
        df["distance"][~m], df["logp"][~m], s=3, alpha=0.4, c="tab:gray", label="outside preimage", rasterized=True
    )
    ax.scatter(df["distance"][m], df["logp"][m], s=5, alpha=0.8, c="tab:red", label="in preimage", rasterized=True)
    if eps is not None:
        ax.axvline(eps, ls="--", c="k", lw=0.8, label=f"epsilon = {eps:g}")
    ax.set_xlabel("distance D(x, z_q)")
    ax.set_ylabel("decoder log p(x | z_q) [nats]")
    ax.set_title(title or "completeness", fontsize=10)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")  # a long title widens the picture rather than being cut
    plt.close(fig)
    return path
