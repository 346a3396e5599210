"""The verified samples of one query's preimage: :class:`PreimageResult` (InversionView Sec. 3).

Produced by :func:`tl_inversion.inversion.sampling.sample_preimage` / ``sample_many``; a
pandas DataFrame with one row per candidate plus the query and the settings. Its repr is a
one-line summary (query, site, position, counts in and out of the preimage, epsilon,
metric); the rows are in :attr:`PreimageResult.df`, the numbers in :meth:`summary`, and it
renders as coloured HTML in a notebook through :mod:`tl_inversion.viewer`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

from tl_inversion.errors import InputValueError
from tl_inversion.model.sites import Site

__all__ = ["COLUMNS", "PreimageResult"]

#: Columns of :attr:`PreimageResult.df`, in order.
COLUMNS = (
    "text",
    "tokens",
    "distance",
    "matched_pos",
    "in_preimage",
    "valid",
    "temperature",
    "noise",
    "count",
    "duplicate",
    "sample",
    "colour",
)



@dataclass(repr=False)
class PreimageResult:
    """Verified samples of one query's preimage (InversionView Sec. 3).

    Args:
        df: one row per candidate, sorted by ``distance`` (stable: ties keep generation
            order). Columns:

            * ``text`` (str): ``task.decode`` of the candidate (no BOS, cut at EOS).
            * ``tokens`` (list[int]): the candidate's ids, ``BOS .. EOS`` (trailing PAD
              dropped); ``matched_pos`` and ``colour`` index into it.
            * ``distance`` (float): membership distance to the clean ``z_q`` (unitless,
              relative to ``||z_q||`` for ``"l2"``); ``inf`` if no position is usable.
            * ``matched_pos`` (int): the non-special position where it is reached; -1 if none.
            * ``in_preimage`` (bool): ``distance <= epsilon``.
            * ``valid`` (bool): the task's grammar accepts the candidate (``task.is_valid``).
            * ``temperature``, ``noise`` (float): the setting that generated the row.
            * ``count`` (int): how often this exact token sequence occurs in the pool.
            * ``duplicate`` (bool): True for every occurrence but the first (in generation
              order); ``df[~df.duplicate]`` is the pool of distinct inputs. All rows are
              kept, so fractions over ``df`` are fractions of the pool as sampled.
            * ``sample`` (int): index of the row in generation order.
            * ``colour`` (list[float] or None): ``p(tok | prefix, z_q) - p(tok | prefix,
              z_BOS)`` for each of ``tokens[1:]`` (EOS included), probabilities in
              ``[-1, 1]``; None when sampling ran with ``colour=False``.
        query_text: ``task.decode`` of the query input.
        query_tokens: the query's ids (``n_ctx`` of them, padding included).
        site: the queried site.
        position: absolute index of the queried position.
        z_q_norm: ``||z_q||_2`` in the probed model's units.
        epsilon: the membership threshold used for ``in_preimage``.
        metric: ``"l2"`` or ``"cosine"``.
        vocab: token strings by id (for rendering).
        special_ids: ids ignored by membership (BOS, EOS, PAD).
        z_q: the query activation ``[d_site]`` (CPU, float32).
        seed: the seed sampling used.
        settings: ``(temperature, noise)`` schedule, ``n_repeats`` and ``batch_size`` used.
        is_display: True when ``df`` is a :meth:`display_sample` subset of the pool.

    ``repr(result)`` is one line: query, site, position, candidates in / out of the preimage
    (all rows, duplicates included), distinct inputs, epsilon and metric; ``result.df`` holds
    the rows and :meth:`summary` the numbers.
    """

    df: pd.DataFrame
    query_text: str
    query_tokens: list[int]
    site: Site
    position: int
    z_q_norm: float
    epsilon: float
    metric: str
    vocab: list[str] = field(default_factory=list, repr=False)
    special_ids: tuple[int, ...] = ()
    z_q: Tensor | None = field(default=None, repr=False)
    seed: int | None = None
    settings: dict[str, Any] = field(default_factory=dict, repr=False)
    is_display: bool = False

    # summaries ----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Headline numbers of the pool (or of the display sample, if this is one).

        Returns:
            ``{"query", "site", "position", "metric", "epsilon", "z_q_norm",
            "n_candidates", "n_distinct", "in_preimage_fraction", "valid_fraction",
            "n_distinct_in_preimage", "min_distance", "median_distance"}``; fractions are
            over all rows (duplicates included); ``n_distinct*`` count distinct token
            sequences.
        """
        df = self.df
        keys = df["tokens"].map(tuple) if len(df) else pd.Series([], dtype=object)
        inside = df["in_preimage"].astype(bool) if len(df) else pd.Series([], dtype=bool)
        return {
            "query": self.query_text,
            "site": str(self.site),
            "position": self.position,
            "metric": self.metric,
            "epsilon": self.epsilon,
            "z_q_norm": self.z_q_norm,
            "n_candidates": int(len(df)),
            "n_distinct": int(keys.nunique()),
            "in_preimage_fraction": float(inside.mean()) if len(df) else math.nan,
            "valid_fraction": float(df["valid"].mean()) if len(df) else math.nan,
            "n_distinct_in_preimage": int(keys[inside].nunique()),
            "min_distance": float(df["distance"].min()) if len(df) else math.nan,
            "median_distance": float(df["distance"].median()) if len(df) else math.nan,
        }

    def by_setting(self) -> pd.DataFrame:
        """Per ``(temperature, noise)`` setting: rows, in-preimage and valid fractions, distinct inputs."""
        df = self.df.assign(_key=self.df["tokens"].map(tuple))
        return (
            df.groupby(["temperature", "noise"], sort=True)
            .agg(
                n=("distance", "size"),
                in_preimage_fraction=("in_preimage", "mean"),
                valid_fraction=("valid", "mean"),
                n_distinct=("_key", "nunique"),
                median_distance=("distance", "median"),
            )
            .reset_index()
        )

    def display_sample(
        self,
        k: int = 100,
        target_in: tuple[float, float] = (0.6, 0.8),
        *,
        distinct: bool = True,
        seed: int = 0,
    ) -> "PreimageResult":
        """The paper's display: ``k`` rows of the pool, about 60-80 % inside epsilon, by D.

        InversionView (Sec. 3 / App.) shows 100 samples drawn from the 1024-candidate pool so
        that about 60-80 % lie inside epsilon, sorted by distance. Here the inside share is
        the pool's own share clamped into ``target_in``; rows are drawn at random (seeded)
        from the inside and outside parts. When one part is too small, the other fills up
        (so the share can leave ``target_in``); when the pool has fewer than ``k`` rows,
        all are shown.

        Args:
            k: number of rows to show.
            target_in: ``(low, high)`` share of rows inside epsilon, ``0 <= low <= high <= 1``.
            distinct: draw from distinct inputs only (the first row of each token
                sequence; its ``count`` says how often it was sampled). Our choice for
                readability; ``False`` draws from the pool with its duplicates, as sampled.
            seed: seed of the draw.

        Returns:
            A :class:`PreimageResult` with ``is_display=True`` whose ``df`` holds the chosen
            rows sorted by distance (it renders as HTML in a notebook).

        Raises:
            ValueError: ``k < 0`` or an invalid ``target_in``.
        """
        low, high = (float(x) for x in target_in)
        if not 0.0 <= low <= high <= 1.0:
            raise InputValueError(f"target_in must be (low, high) with 0 <= low <= high <= 1, got {target_in!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise InputValueError(f"k must be an int >= 0, got {k!r}")
        pool = self.df
        if distinct:
            pool = pool[~pool["tokens"].map(tuple).duplicated(keep="first")]
        inside = pool[pool["in_preimage"].astype(bool)]
        outside = pool[~pool["in_preimage"].astype(bool)]
        k = min(k, len(pool))
        if k == 0:
            chosen = pool.iloc[:0]
        else:
            share = min(max(len(inside) / len(pool), low), high)
            k_in = min(int(round(share * k)), len(inside))
            k_out = min(k - k_in, len(outside))
            k_in = min(k - k_out, len(inside))
            rng = np.random.default_rng(seed)
            pick_in = rng.choice(len(inside), size=k_in, replace=False) if k_in else np.array([], dtype=int)
            pick_out = rng.choice(len(outside), size=k_out, replace=False) if k_out else np.array([], dtype=int)
            chosen = pd.concat([inside.iloc[np.sort(pick_in)], outside.iloc[np.sort(pick_out)]])
        chosen = chosen.sort_values("distance", kind="stable").reset_index(drop=True)
        return dataclasses.replace(self, df=chosen, is_display=True)

    # display ------------------------------------------------------------------------------
    def __repr__(self) -> str:
        """One line: query, site, position, counts in / out of the preimage, epsilon, metric."""
        df = self.df
        n = int(len(df))
        n_in = int(df["in_preimage"].astype(bool).sum()) if n else 0
        n_distinct = int(df["tokens"].map(tuple).nunique()) if n else 0
        kind = "display sample of " if self.is_display else ""
        return (
            f"PreimageResult(query={self.query_text!r}, site={str(self.site)!r}, position={self.position}, "
            f"{kind}{n} candidates: {n_in} in preimage, {n - n_in} out, {n_distinct} distinct; "
            f"epsilon={self.epsilon:g}, metric={self.metric!r}; rows in .df)"
        )

    def to_html_fragment(self, max_rows: int | None = 100) -> str:
        """HTML of the query and its samples (:func:`tl_inversion.viewer.preimage_fragment`).

        A pool larger than ``max_rows`` is shown through :meth:`display_sample` ``(k=max_rows)``;
        ``max_rows=None`` shows every row.
        """
        from tl_inversion.viewer.preimage import preimage_fragment  # the viewer is a later stage

        return preimage_fragment(self, max_rows)

    def _repr_html_(self) -> str:
        """Notebook display: :meth:`to_html_fragment` with at most 100 rows."""
        return self.to_html_fragment()

    def to_html(self, path: str | Path, max_rows: int | None = 100) -> Path:
        """Write a standalone HTML page of the query and its samples
        (:func:`tl_inversion.viewer.write_preimage_page`).

        Args:
            path: the file to write (parent folders are created).
            max_rows: as :meth:`to_html_fragment`.

        Returns:
            The path written.
        """
        from tl_inversion.viewer.preimage import write_preimage_page

        return write_preimage_page(self, path, max_rows)
