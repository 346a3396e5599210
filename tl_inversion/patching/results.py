"""Results of a patching pass: per-example metrics, tables, bootstrap intervals.

The effect of a patch is ``mean metric(clean) - mean metric(patched)`` over a data set
(InversionView Sec. 4); its uncertainty is a percentile bootstrap over examples (Efron &
Tibshirani 1993), per batch for metrics that return one scalar per batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from tl_inversion.patching.notation import NodeGroup


def _weighted_mean(x: np.ndarray, w: np.ndarray) -> float:
    return float(np.sum(x * w) / np.sum(w)) if len(x) else float("nan")


def bootstrap_ci(
    values: np.ndarray, weights: np.ndarray | None = None, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a (weighted) mean.

    Args:
        values: ``[n]`` per-unit values (per example, or per batch for scalar metrics).
        weights: ``[n]`` unit weights (``None`` = 1 each).
        n_boot: resamples (0 disables: returns NaNs).
        ci: coverage, e.g. 0.95.
        seed: numpy seed.

    Returns:
        ``(low, high)``.
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n_boot <= 0 or n < 2:
        return float("nan"), float("nan")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, int(2e7 // n)))
    means = []
    xw = values * w
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(k, n), dtype=np.int64 if n > 2**31 - 1 else np.int32)
        means.append(xw[idx].sum(1) / w[idx].sum(1))
    means = np.concatenate(means)
    alpha = (1 - ci) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


@dataclass
class PatchingResult:
    """Raw per-example metrics of one patching pass; build tables from it.

    Args:
        groups: ``{label: NodeGroup}`` of the patched node sets.
        clean: ``[units]`` metric on the clean inputs.
        patched: ``{label: [units]}`` metric with that group patched.
        contrast: ``[units]`` metric on the contrast inputs (a forward source), else ``None``.
        weights: ``[units]`` rows per unit (1 per example; the batch size for a metric that
            returns a scalar per batch).
        settings: source, metric, counts and other settings of the pass.
        descriptions: ``{label: text}`` for the ``nodes`` column (default: the notation).
    """

    groups: dict[str, NodeGroup]
    clean: np.ndarray
    patched: dict[str, np.ndarray]
    contrast: np.ndarray | None
    weights: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)

    def effect_values(self, label: str) -> np.ndarray:
        """Per-unit effect ``clean - patched`` of one group."""
        return self.clean - self.patched[label]

    def row(self, label: str, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict[str, Any]:
        """One table row (see :meth:`table`)."""
        w = self.weights
        ld_clean = _weighted_mean(self.clean, w)
        ld_patched = _weighted_mean(self.patched[label], w)
        effect = ld_clean - ld_patched
        low, high = bootstrap_ci(self.effect_values(label), w, n_boot=n_boot, ci=ci, seed=seed)
        if self.contrast is not None:
            ld_contrast = _weighted_mean(self.contrast, w)
            denom, by = ld_clean - ld_contrast, "clean-contrast"
        else:
            ld_contrast, denom, by = float("nan"), ld_clean, "clean"
        return {
            "group": label,
            "nodes": self.descriptions.get(label) or " + ".join(n.notation for n in self.groups[label].nodes),
            "n": int(w.sum()),
            "LD_clean": ld_clean,
            "LD_patched": ld_patched,
            "effect": effect,
            "ci_low": low,
            "ci_high": high,
            "normalised": effect / denom if denom else float("nan"),
            "LD_contrast": ld_contrast,
            "normalised_by": by,
        }

    def table(
        self, labels: Sequence[str] | None = None, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
    ) -> pd.DataFrame:
        """DataFrame indexed by group label.

        Columns: ``nodes`` (notation), ``n`` (rows), ``LD_clean`` and ``LD_patched`` (mean
        metric; the logit difference by default, in logits), ``effect`` (``LD_clean -
        LD_patched``), ``ci_low``/``ci_high`` (bootstrap CI of the effect over the data set),
        ``normalised`` (effect / (LD_clean - LD_contrast) for forward sources: 1 = as much as
        running the contrast input; effect / LD_clean otherwise, as said by ``normalised_by``),
        ``LD_contrast``. ``df.attrs`` holds the settings.
        """
        labels = list(self.patched) if labels is None else list(labels)
        df = pd.DataFrame([self.row(lab, n_boot=n_boot, ci=ci, seed=seed) for lab in labels]).set_index("group")
        df.attrs.update(self.settings)
        return df


__all__ = ["PatchingResult", "bootstrap_ci"]
