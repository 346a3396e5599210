"""Feature consistency: per-query mean and pooled fraction, both against hand counts (issue 19.11)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from tl_inversion.evaluation.consistency import ConsistencySummary, consistency_summary, feature_consistency

B, E, P = 0, 1, 2  # BOS, EOS, PAD ids of the toy rows


def _result(query_second: int, rows: list[tuple[int, bool, bool]]):
    """A stand-in PreimageResult: query ``[B, q, E, P]``; samples ``[B, t, E]`` with flags."""
    df = pd.DataFrame({
        "tokens": [[B, t, E] for t, _, _ in rows],
        "in_preimage": [i for _, i, _ in rows],
        "valid": [v for _, _, v in rows],
    })
    return SimpleNamespace(df=df, query_tokens=[B, query_second, E, P], query_text=f"q{query_second}",
                           special_ids=(B, E, P))


def second_token(t):
    return t[:, 1]


def test_per_query_mean_and_pooled_by_hand():
    results = [
        # query 5: counted samples 5, 5, 5, 7 -> 3 of 4; one outside epsilon and one ill-formed are left out
        _result(5, [(5, True, True), (5, True, True), (7, True, True), (5, True, True), (5, False, True),
                    (5, True, False)]),
        # query 2: one counted sample, it agrees -> 1 of 1
        _result(2, [(2, True, True), (3, False, True)]),
        # query 9: nothing counted
        _result(9, [(9, False, True)]),
    ]
    per_query = feature_consistency(results, second_token)
    assert per_query["n"].tolist() == [4, 1, 0] and per_query["n_agree"].tolist() == [3, 1, 0]
    assert per_query["consistency"].tolist()[:2] == [0.75, 1.0] and math.isnan(per_query["consistency"].iloc[2])
    s = consistency_summary(per_query)
    assert s == ConsistencySummary(per_query_mean=(0.75 + 1.0) / 2, pooled=4 / 5, n_queries=3, n_queries_counted=2,
                                   n_samples=5, n_agree=4)
    # the choices widen what is counted: all 6 + 2 + 1 rows, agreeing 5+5+5+5+5 / 2 / 9
    everything = consistency_summary(feature_consistency(results, second_token, only_valid=False,
                                                         only_in_preimage=False))
    assert everything.n_samples == 9 and everything.n_agree == 5 + 1 + 1
    assert everything.pooled == pytest.approx(7 / 9)
    assert everything.per_query_mean == pytest.approx((5 / 6 + 1 / 2 + 1) / 3)


def test_nothing_counted_gives_nan_and_bad_tables_are_refused():
    s = consistency_summary(feature_consistency([_result(9, [(9, False, True)])], second_token))
    assert math.isnan(s.per_query_mean) and math.isnan(s.pooled) and s.n_samples == 0 and s.n_queries == 1
    with pytest.raises(ValueError, match="n_agree"):
        consistency_summary(pd.DataFrame({"n": [1], "consistency": [1.0]}))


def test_padding_of_short_sample_rows_uses_the_pad_id():
    # a feature reading the last position sees PAD (2) in the 3-token samples padded to 4
    r = _result(5, [(5, True, True)])
    got = feature_consistency([r], lambda t: t[:, 3])
    assert got["g_query"].tolist() == [P] and got["n_agree"].tolist() == [1]
    assert torch.equal(torch.tensor(r.query_tokens)[3], torch.tensor(P))
