"""How good are the decoders, and what do the preimages say? Numbers, not pictures.

* :func:`feature_consistency`: given a feature ``g`` of inputs (e.g. the count of the query
  letter), how often does ``g`` of an in-preimage sample equal ``g`` of the query? Compared
  with the same rate for a baseline (samples decoded from the BOS activation, which
  carries no information, or random task inputs). A site that keeps ``g`` scores near 1
  while its baseline does not: this is how a reading becomes a hypothesis to patch
  (InversionView Sec. 4; "what all samples share").
* :func:`consistency_summary`: the two ways to average over queries, side by side: the
  mean of per-query fractions (each query weighs the same; the headline) and the pooled
  fraction over all counted samples (queries with large preimages weigh more), with the
  numbers of queries and samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from tl_inversion.errors import InputValueError

__all__ = ["ConsistencySummary", "baseline_consistency", "consistency_summary", "feature_consistency"]

Feature = Callable[[Tensor], Tensor]


def feature_consistency(
    results: Sequence[Any],
    g: Feature,
    *,
    only_valid: bool = True,
    only_in_preimage: bool = True,
) -> pd.DataFrame:
    """Per query: fraction of samples whose feature equals the query's.

    Args:
        results: :class:`~tl_inversion.inversion.result.PreimageResult` objects (one per query).
        g: feature ``fn(tokens [n, n_ctx]) -> values [n]`` (ints or floats).
        only_valid: drop samples that break the task grammar (``g`` may be undefined).
        only_in_preimage: keep only samples within epsilon (the preimage).

    Returns:
        DataFrame with one row per query: ``query``, ``g_query``, ``n`` (samples counted),
        ``n_agree`` (of those, samples with ``g == g(query)``), ``consistency``
        (``n_agree / n`` in [0, 1]; NaN when ``n`` is 0). Its mean over queries and the
        pooled ``sum(n_agree) / sum(n)`` differ when queries have different numbers of
        samples: :func:`consistency_summary` gives both.
    """
    rows = []
    for r in results:
        df = r.df
        keep = pd.Series(True, index=df.index)
        if only_valid:
            keep &= df["valid"].astype(bool)
        if only_in_preimage:
            keep &= df["in_preimage"].astype(bool)
        sub = df[keep]
        q = torch.as_tensor(r.query_tokens).reshape(1, -1).cpu()
        g_q = g(q)[0].item()
        if len(sub):
            n_ctx = q.shape[-1]
            toks = torch.tensor([list(t) + [_pad_of(r)] * (n_ctx - len(t)) for t in sub["tokens"]], dtype=torch.long)
            # every row is one candidate (duplicates are separate rows), so a plain mean
            agree = int((g(toks).cpu().numpy() == g_q).sum())
            cons = agree / len(sub)
        else:
            agree, cons = 0, float("nan")
        rows.append({"query": r.query_text, "g_query": g_q, "n": int(len(sub)), "n_agree": agree, "consistency": cons})
    return pd.DataFrame(rows, columns=["query", "g_query", "n", "n_agree", "consistency"])


@dataclass(frozen=True)
class ConsistencySummary:
    """Feature consistency over several queries, averaged two ways.

    Attributes:
        per_query_mean: mean over queries (with at least one counted sample) of each
            query's fraction ``n_agree / n``; the **headline** (the ``consistency`` column of
            :func:`tl_inversion.evaluation.evaluate`): every query weighs the same, so a
            query whose preimage is large (many in-preimage samples) does not dominate.
            NaN when no query has a counted sample.
        pooled: ``sum(n_agree) / sum(n)`` over all counted samples (each sample weighs the
            same; what "k of n samples share the feature" counts quote). NaN when no sample.
        n_queries: queries given; n_queries_counted: those with at least one counted sample.
        n_samples: samples counted (in-preimage, well-formed, as chosen); n_agree: of
            those, samples sharing the query's feature value.
    """

    per_query_mean: float
    pooled: float
    n_queries: int
    n_queries_counted: int
    n_samples: int
    n_agree: int


def consistency_summary(per_query: pd.DataFrame) -> ConsistencySummary:
    """Both averages of a :func:`feature_consistency` table (see :class:`ConsistencySummary`).

    Args:
        per_query: the DataFrame :func:`feature_consistency` returns (columns ``n``,
            ``n_agree``, ``consistency``).

    Returns:
        A :class:`ConsistencySummary`.

    Raises:
        InputValueError: a table without the ``n`` / ``n_agree`` / ``consistency`` columns.
    """
    missing = [c for c in ("n", "n_agree", "consistency") if c not in per_query.columns]
    if missing:
        raise InputValueError(f"expected a feature_consistency table; columns {missing} are missing "
                              f"(got {list(per_query.columns)})")
    n, agree = int(per_query["n"].sum()), int(per_query["n_agree"].sum())
    counted = per_query[per_query["n"] > 0]
    return ConsistencySummary(
        per_query_mean=float(counted["consistency"].mean()) if len(counted) else math.nan,
        pooled=agree / n if n else math.nan,
        n_queries=int(len(per_query)),
        n_queries_counted=int(len(counted)),
        n_samples=n,
        n_agree=agree,
    )


def _pad_of(result: Any) -> int:
    special = getattr(result, "special_ids", None)
    return int(special[-1]) if special is not None else 0


def baseline_consistency(
    tokens: Int[Tensor, "n n_ctx"], query_tokens: Int[Tensor, "q n_ctx"], g: Feature
) -> float:
    """Chance agreement: fraction of (query, random input) pairs with equal ``g``.

    Args:
        tokens: ``[n, n_ctx]`` inputs (random task inputs, or samples decoded from BOS).
        query_tokens: ``[q, n_ctx]`` query inputs.
        g: the feature.

    Returns:
        The fraction in [0, 1] (mean over queries of per-query agreement; every query has
        the same ``n`` rows, so this equals the pooled fraction).
    """
    gq = g(query_tokens).cpu()
    gx = g(tokens).cpu()
    return float((gq[:, None] == gx[None, :]).float().mean())
