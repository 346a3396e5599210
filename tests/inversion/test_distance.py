"""Distances and the best-position rule, against hand-computed values (InversionView Sec. 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tl_inversion.inversion.distance import (
    EPSILON_COSINE,
    EPSILON_L2,
    FAITHFULNESS_EPSILON,
    METRICS,
    best_position,
    default_epsilon,
    distance,
)

T = torch.tensor


def test_hand_computed_l2_and_cosine():
    z, zq = T([3.0, 4.0]), T([0.0, 5.0])
    # ||(3, -1)|| / ||(0, 5)|| = sqrt(10) / 5
    assert distance(z, zq).item() == pytest.approx(math.sqrt(10) / 5, rel=1e-6)
    # cos = (0*3 + 5*4) / (5 * 5) = 0.8
    assert distance(z, zq, "cosine").item() == pytest.approx(0.2, abs=1e-6)


def test_normalised_by_query_only_so_not_symmetric():
    a, b = T([6.0, 8.0]), T([0.0, 5.0])  # ||a|| = 10, ||b|| = 5, ||a - b|| = sqrt(45)
    assert distance(a, b).item() == pytest.approx(math.sqrt(45) / 5, rel=1e-6)
    assert distance(b, a).item() == pytest.approx(math.sqrt(45) / 10, rel=1e-6)
    # cosine is symmetric
    assert distance(a, b, "cosine").item() == pytest.approx(distance(b, a, "cosine").item(), abs=1e-7)


def test_identical_is_zero_and_scale_invariant():
    z = T([1.5, -2.0, 0.25])
    assert distance(z, z).item() == 0.0
    assert distance(z, z, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    w = T([0.5, 1.0, -1.0])
    assert distance(7 * w, 7 * z).item() == pytest.approx(distance(w, z).item(), rel=1e-6)
    # opposite direction: cosine distance 2, l2 distance 2
    assert distance(-z, z, "cosine").item() == pytest.approx(2.0, abs=1e-6)
    assert distance(-z, z).item() == pytest.approx(2.0, rel=1e-6)


def test_zero_norm_cases_are_documented_values():
    zero = torch.zeros(2)
    assert math.isinf(distance(T([1.0, 0.0]), zero).item())
    assert math.isinf(distance(zero, zero).item())
    assert math.isinf(distance(T([1.0, 0.0]), zero, "cosine").item())
    assert distance(zero, T([0.0, 2.0])).item() == 1.0
    assert distance(zero, T([0.0, 2.0]), "cosine").item() == 1.0


def test_broadcasting_over_leading_dims_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, 4, generator=g)
    zq = torch.randn(3, 1, 4, generator=g)
    for metric in METRICS:
        got = distance(z, zq, metric)
        assert got.shape == (3, 5)
        for i in range(3):
            for j in range(5):
                a, b = z[i, j].double().numpy(), zq[i, 0].double().numpy()
                want = (
                    np.linalg.norm(a - b) / np.linalg.norm(b)
                    if metric == "l2"
                    else 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
                )
                assert got[i, j].item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_half_inputs_give_float32_and_errors_are_clear():
    assert distance(T([1.0, 2.0]).half(), T([1.0, 1.0]).half()).dtype == torch.float32
    with pytest.raises(ValueError, match="'l2', 'cosine'"):
        distance(T([1.0]), T([1.0]), "manhattan")
    with pytest.raises(ValueError, match="widths differ"):
        distance(T([1.0, 2.0]), T([1.0]))
    with pytest.raises(TypeError, match="floating-point"):
        distance(T([1, 2]), T([1, 2]))


def test_constants_are_the_papers():
    assert EPSILON_L2 == 0.1 and EPSILON_COSINE == 0.25 and FAITHFULNESS_EPSILON == 0.1
    assert default_epsilon("l2") == 0.1 and default_epsilon("cosine") == 0.25
    # the tasks carry their case study's metric and epsilon (InversionView Sec. 4: L2, 0.1)
    from tl_inversion.tasks import addition, counting
    from tl_inversion.tasks.base import TokenizerVocab

    for task in (counting.make_task(), addition.make_task()):
        assert (task.default_metric, task.default_epsilon) == ("l2", 0.1)
    assert (TokenizerVocab.default_metric, TokenizerVocab.default_epsilon) == ("l2", 0.1)  # IOI, text tasks


def _hand_acts():
    # row 0: positions 0..3; position 0 is BOS (masked) and identical to z_q, so the
    # minimum must come from the unmasked positions.
    acts = T(
        [
            [[0.0, 5.0], [3.0, 4.0], [0.0, 4.0], [10.0, 10.0]],
            [[1.0, 1.0], [2.0, 2.0], [0.0, 5.0], [0.0, 5.0]],
            [[0.0, 5.0], [0.0, 5.0], [0.0, 5.0], [0.0, 5.0]],
        ]
    )
    mask = T(
        [
            [True, False, False, True],
            [False, False, False, False],
            [True, True, True, True],
        ]
    )
    return acts, mask


def test_best_position_on_a_hand_built_tensor():
    acts, mask = _hand_acts()
    zq = T([0.0, 5.0])
    dist, pos = best_position(acts, zq, mask)
    # row 0: pos 1 -> sqrt(10)/5 = 0.632, pos 2 -> 1/5 = 0.2; pos 0 and 3 masked
    assert pos.tolist() == [2, 2, -1]
    assert dist[0].item() == pytest.approx(0.2, rel=1e-6)
    # row 1: positions 2 and 3 tie at 0 -> the first one
    assert dist[1].item() == 0.0
    # row 2: everything masked
    assert math.isinf(dist[2].item())
    assert pos.dtype == torch.long


def test_best_position_per_row_query_and_no_mask():
    acts, _ = _hand_acts()
    zq = T([[3.0, 4.0], [1.0, 1.0], [0.0, 5.0]])
    dist, pos = best_position(acts, zq, None)
    assert pos.tolist() == [1, 0, 0]
    assert dist.tolist() == [0.0, 0.0, 0.0]
    # cosine: row 1's z_q (1, 1) is parallel to positions 0 and 1 (a tie up to rounding)
    dist_c, pos_c = best_position(acts, zq, None, "cosine")
    assert pos_c[1].item() in (0, 1) and dist_c[1].item() == pytest.approx(0.0, abs=1e-6)


def test_best_position_nan_and_zero_query_are_never_matched():
    acts = T([[[float("nan"), 0.0], [0.0, 4.0]]])
    dist, pos = best_position(acts, T([0.0, 5.0]), torch.zeros(1, 2, dtype=torch.bool))
    assert pos.item() == 1 and dist.item() == pytest.approx(0.2, rel=1e-6)
    dist, pos = best_position(acts, torch.zeros(2), None)
    assert math.isinf(dist.item()) and pos.item() == -1


def test_best_position_shape_errors():
    acts, mask = _hand_acts()
    with pytest.raises(ValueError, match="z_q must have shape"):
        best_position(acts, torch.zeros(2, 2), mask)
    with pytest.raises(ValueError, match="special_mask"):
        best_position(acts, torch.zeros(2), mask[:, :2])
    with pytest.raises(ValueError, match=r"\[N, pos, d\]"):
        best_position(acts[0], torch.zeros(2), None)


# activations are never near float32 underflow (squares of 1e-25 vanish); keep away from it
_component = st.floats(-100, 100, allow_nan=False, width=32).filter(lambda x: x == 0 or abs(x) > 1e-3)


@settings(max_examples=40, deadline=None)
@given(st.lists(_component, min_size=4, max_size=4), st.lists(_component, min_size=4, max_size=4))
def test_l2_matches_the_formula(z, zq):
    got = distance(torch.tensor(z), torch.tensor(zq)).item()
    nq = math.sqrt(sum(b * b for b in zq))
    if nq == 0:
        assert math.isinf(got)
    else:
        want = math.sqrt(sum((a - b) ** 2 for a, b in zip(z, zq))) / nq
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
