"""Plots of patching results (matplotlib, made without pyplot so no backend is touched)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tl_inversion.errors import InputValueError


def plot_cumulative(df: pd.DataFrame, *, title: str | None = None, figsize: tuple[float, float] | None = None):
    """Waterfall plot of a :func:`cumulative_patching` table: one panel per direction.

    Each bar spans from the previous cumulative effect to the new one (its height is the
    increment of the group added at that step, labelled below); the error bar is the
    bootstrap CI of the cumulative effect; the dashed line is the last cumulative effect.

    Args:
        df: the table (columns ``direction``, ``step``, ``added``, ``effect``, ``increment``,
            optional ``ci_low``/``ci_high``).
        title: figure title.
        figsize: matplotlib figure size in inches.

    Returns:
        A ``matplotlib.figure.Figure`` (made without pyplot, so no backend is touched).

    Raises:
        ValueError: the table lacks the needed columns.
    """
    from matplotlib.figure import Figure

    need = {"direction", "step", "added", "effect", "increment"}
    if not need <= set(df.columns):
        raise InputValueError(f"plot_cumulative needs a cumulative_patching table with columns {sorted(need)}")
    dirs = [d for d in ("forward", "backward") if d in set(df["direction"])] or list(dict.fromkeys(df["direction"]))
    fig = Figure(figsize=figsize or (5.0 * len(dirs), 4.0), layout="constrained")
    axes = fig.subplots(1, len(dirs), squeeze=False)[0]
    for ax, d in zip(axes, dirs, strict=True):
        sub = df[df["direction"] == d].sort_values("step")
        x = np.arange(len(sub))
        tops = sub["effect"].to_numpy(dtype=float)
        bottoms = tops - sub["increment"].to_numpy(dtype=float)
        colors = ["tab:blue" if inc >= 0 else "tab:red" for inc in sub["increment"]]
        ax.bar(x, tops - bottoms, bottom=bottoms, color=colors, width=0.6)
        if {"ci_low", "ci_high"} <= set(sub.columns):
            lo = sub["ci_low"].to_numpy(dtype=float)
            hi = sub["ci_high"].to_numpy(dtype=float)
            ok = np.isfinite(lo) & np.isfinite(hi)
            if ok.any():
                ax.errorbar(
                    x[ok], tops[ok], yerr=[tops[ok] - lo[ok], hi[ok] - tops[ok]], fmt="none", ecolor="black", capsize=3
                )
        for xi, top, inc in zip(x, tops, sub["increment"], strict=True):
            ax.annotate(
                f"{top:.2f}\n(+{inc:.2f})" if inc >= 0 else f"{top:.2f}\n({inc:.2f})",
                (xi, top),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.axhline(tops[-1], ls="--", color="gray", lw=0.8)
        ax.axhline(0, color="black", lw=0.6)
        lo_y, hi_y = min(0.0, float(np.nanmin(bottoms)), float(np.nanmin(tops))), max(0.0, float(np.nanmax(tops)))
        span = (hi_y - lo_y) or 1.0
        ax.set_ylim(lo_y - 0.05 * span * (lo_y < 0), hi_y + 0.18 * span)  # room for the labels
        ax.set_xticks(x, [f"+ {a}" if i else str(a) for i, a in enumerate(sub["added"])], rotation=30, ha="right")
        ax.set_title(d)
        ax.set_ylabel("cumulative effect (LD_clean - LD_patched)")
    if title:
        fig.suptitle(title)
    return fig


__all__ = ["plot_cumulative"]
