"""How good are the decoders, and what do the preimages say? Numbers, not pictures.

* :func:`feature_consistency`: given a feature ``g`` of inputs (e.g. the count of the query
  letter), how often does ``g`` of an in-preimage sample equal ``g`` of the query? Compared
  with the same rate for a baseline (samples decoded from the BOS activation, which
  carries no information, or random task inputs). A site that keeps ``g`` scores near 1
  while its baseline does not: this is how a reading becomes a hypothesis to patch
  (InversionView Sec. 4; "what all samples share").
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

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
        results: :class:`~tl_inversion.sampling.PreimageResult` objects (one per query).
        g: feature ``fn(tokens [n, n_ctx]) -> values [n]`` (ints or floats).
        only_valid: drop samples that break the task grammar (``g`` may be undefined).
        only_in_preimage: keep only samples within epsilon (the preimage).

    Returns:
        DataFrame with one row per query: ``query``, ``g_query``, ``n`` (samples counted),
        ``consistency`` (fraction in [0, 1]; NaN when ``n`` is 0).
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
            cons = float((g(toks).cpu().numpy() == g_q).mean())
        else:
            cons = float("nan")
        rows.append({"query": r.query_text, "g_query": g_q, "n": int(len(sub)), "consistency": cons})
    return pd.DataFrame(rows)


def _pad_of(result: Any) -> int:
    special = getattr(result, "special_ids", None)
    return int(special[-1]) if special is not None else 0


def baseline_consistency(
    tokens: Int[Tensor, "n n_ctx"], query_tokens: Int[Tensor, "q n_ctx"], g: Feature
) -> float:
    """Chance agreement: fraction of (query, random input) pairs with equal ``g``."""
    gq = g(query_tokens).cpu()
    gx = g(tokens).cpu()
    return float((gq[:, None] == gx[None, :]).float().mean())
