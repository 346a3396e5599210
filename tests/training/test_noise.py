"""The preimage kernel: its posterior is uniform over the epsilon-preimage, checked by Monte Carlo.

Independent expectation: for a handful of activations ``f_i`` (one per "input", uniform
prior), draw ``z ~ K(. | f_i)`` many times and look at the draws that land in a small ball
around a point ``z0``. The share of each ``i`` among them estimates ``p(i | z0)``. For the
preimage kernel it must be the same for every ``i`` with ``||z0 - f_i|| <= eps ||z0||``
(hand-computed below) and zero for the others; the ball kernel (density ``||f||^-d``) must
give the members unequal shares in the ratio of ``||f_i||^-d``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tl_inversion.training.noise import kernel_log_posterior, perturb, preimage_kernel_sample

EPS = 0.3
# the activations of five inputs, and a point z0 (first two coordinates; the rest are 0)
F2 = [(1.0, 0.0), (1.25, 0.0), (1.1, 0.25), (1.6, 0.0), (0.7, 0.2)]
Z0 = (1.12, 0.0)
# ||z0 - f_i|| = 0.12, 0.13, 0.2508, 0.48, 0.4651 against EPS * ||z0|| = 0.336: members 0, 1, 2
MEMBERS = [0, 1, 2]


def _shares(d: int, shape: str, n: int, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    f = torch.zeros(len(F2), d)
    f[:, :2] = torch.tensor(F2)
    z0 = torch.zeros(d)
    z0[:2] = torch.tensor(Z0)
    g = torch.Generator().manual_seed(0)
    hits = torch.zeros(len(F2))
    for i in range(len(F2)):
        z = perturb(f[i].expand(n, d).contiguous(), EPS, g, shape)
        hits[i] = ((z - z0).norm(dim=-1) <= radius).sum()
    return hits / hits.sum(), hits


def test_membership_by_hand():
    for i, (a, b) in enumerate(F2):
        dist = math.hypot(a - Z0[0], b - Z0[1])
        assert (dist <= EPS * math.hypot(*Z0)) == (i in MEMBERS)
        # every f_i is clearly inside or outside (margin > the neighbourhood radius used below)
        assert abs(dist - EPS * math.hypot(*Z0)) > 0.08


@pytest.mark.parametrize("d,radius", [(2, 0.02), (3, 0.04)])
def test_preimage_kernel_posterior_is_uniform_over_the_preimage(d, radius):
    share, hits = _shares(d, "preimage", 400_000, radius)
    assert hits[MEMBERS].min() > 500  # enough draws for the 0.035 tolerance (sd of a share about 0.008)
    assert share[MEMBERS].tolist() == pytest.approx([1 / 3] * 3, abs=0.035)
    assert share[3:].sum() == 0


def test_ball_kernel_posterior_weights_members_by_norm_to_the_minus_d():
    """Ball kernel, d = 2: the density at z0 of f_i's ball is 1 / (pi (EPS ||f_i||)^2) where z0
    lies in it: f_0 (norm 1) and f_1 (norm 1.25) both cover z0, so their shares are in the ratio
    1.25^2 = 1.5625; f_2 (norm 1.128, radius 0.338 > 0.2508) covers it too."""
    share, _ = _shares(2, "ball", 400_000, 0.02)
    norms = torch.tensor([math.hypot(*p) for p in F2[:3]])
    expected = norms ** -2 / (norms ** -2).sum()
    assert share[:3].tolist() == pytest.approx(expected.tolist(), abs=0.035)
    assert float(share[0] / share[1]) == pytest.approx(1.5625, rel=0.12)


def test_preimage_kernel_draws_stay_in_the_region_and_reject_bad_levels():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(5000, 32, generator=g) * torch.linspace(0.1, 10, 5000)[:, None]
    z = preimage_kernel_sample(f, 0.1, g)
    assert bool(((z - f).norm(dim=-1) <= 0.1 * z.norm(dim=-1) * (1 + 1e-5)).all())
    # scale invariance: the relative distance does not depend on ||f||
    rel = (z - f).norm(dim=-1) / f.norm(dim=-1)
    assert float(rel[:2500].median()) == pytest.approx(float(rel[2500:].median()), abs=0.005)
    # a zero activation (e.g. a dead head) stays zero, width 1 works
    assert torch.equal(preimage_kernel_sample(torch.zeros(3, 4), 0.1, g), torch.zeros(3, 4))
    one = preimage_kernel_sample(torch.full((100, 1), 2.0), 0.1, g)
    assert bool(((one - 2.0).abs() <= 0.1 * one.abs() * (1 + 1e-5)).all())
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=rf"the preimage kernel needs 0 < level < 1 .* got {bad}"):
            preimage_kernel_sample(f, bad, g)


def test_kernel_log_posterior_by_hand():
    zq = torch.tensor([1.0, 0.0])
    acts = torch.tensor([
        [[1.0, 0.05], [1.2, 0.0], [1.0, 0.0]],   # D = 0.05, 0.2, (special)
        [[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]],    # D = 1, 1.41, 2
        [[1.0, 0.08], [0.95, 0.0], [1.0, 0.0]],  # D = 0.08, 0.05, 0 (exact copy)
    ])
    ignore = torch.tensor([[False, False, True], [False, False, False], [False, False, False]])
    # preimage kernel, level 0.1: positions within 0.1, over the non-special positions
    out = kernel_log_posterior(zq, acts, ignore, "preimage", 0.1)
    assert out.tolist() == pytest.approx([math.log(1 / 2), -math.inf, math.log(3 / 3)])
    # exact training: only the identical activation counts
    ex = kernel_log_posterior(zq, acts, ignore, None, 0.0)
    assert ex.tolist() == pytest.approx([-math.inf, -math.inf, math.log(1 / 3)])
    # ball kernel, level 0.3: ||zq - f|| <= 0.3 ||f||, each weighted ||f||^-2 (d = 2)
    # input 0: f = (1, .05) (dist .05 <= .3003) and (1.2, 0) (dist .2 <= .36): (1.0025^-1 + 1.44^-1) / 2
    ball = kernel_log_posterior(zq, acts, ignore, "ball", 0.3)
    assert float(ball[0]) == pytest.approx(math.log((1 / 1.0025 + 1 / 1.44) / 2))
    assert ball[1] == -math.inf
    # input 2: (1, .08) dist .08 <= .301; (.95, 0) dist .05 <= .285; (1, 0) dist 0
    assert float(ball[2]) == pytest.approx(math.log((1 / 1.0064 + 1 / 0.9025 + 1) / 3))


def test_kernel_log_posterior_gaussian_against_a_fine_integral():
    """d = 1, z_q = 1, f = 1.2, level 0.5: int_0^1 N(1; 1.2, (0.6 u)^2) du by a 400,001-point trapezoid."""
    u = np.linspace(1e-9, 1.0, 400_001)
    sd = 0.5 * 1.2 * u
    dens = np.exp(-(0.2**2) / (2 * sd**2)) / (np.sqrt(2 * np.pi) * sd)
    expected = math.log(float(np.sum((dens[1:] + dens[:-1]) / 2 * np.diff(u))))
    out = kernel_log_posterior(torch.tensor([1.0]), torch.tensor([[[1.2]]]), torch.tensor([[False]]), "gaussian", 0.5)
    # the kernel's normalisation constant (2 pi)^(-d/2) is dropped: a constant shifts no ranking
    assert float(out[0]) - 0.5 * math.log(2 * math.pi) == pytest.approx(expected, abs=2e-3)
    with pytest.raises(ValueError, match=r"noise shape must be one of .* or None, got 'cube'"):
        kernel_log_posterior(torch.tensor([1.0]), torch.tensor([[[1.2]]]), torch.tensor([[False]]), "cube", 0.5)


@pytest.mark.parametrize("d", [1, 3, 32, 768])
def test_kernel_log_posterior_gaussian_wide_sites_against_quadrature(d):
    """Widths 3 / 32 / 768, activations at D / level from 0.05 (the width mixture's peak at
    small widths) to 4 (far tail, where the incomplete gamma function underflows and an
    asymptotic series takes over): against int_0^1 (u a)^-d exp(-delta^2 / (2 u^2 a^2)) du
    by mpmath's adaptive quadrature at 30 digits, split around the integrand's peak."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    level = 0.1
    ratios = [0.05, 0.5, 1.0, 1.5, 2.5, 4.0]
    zq = torch.zeros(d, dtype=torch.float64)
    zq[0] = 1.0
    acts = zq.repeat(len(ratios), 1, 1).clone()  # one position per input: z_q + r * level * e_2 (e_1 at d = 1)
    acts[:, 0, min(1, d - 1)] += torch.tensor(ratios, dtype=torch.float64) * level
    out = kernel_log_posterior(zq, acts, torch.zeros(len(ratios), 1, dtype=torch.bool), "gaussian", level).numpy()
    for i, r in enumerate(ratios):
        delta = r * level
        a = level * (1.0 + delta if d == 1 else math.sqrt(1.0 + delta**2)) / math.sqrt(d)  # level ||f|| / sqrt(d)
        peak = min(r, 1.0)  # the integrand is largest at u = delta / (a sqrt d) ~ r, or at u = 1
        cuts = sorted({0.0, 0.5 * peak, 0.9 * peak, peak, min(1.0, 1.1 * peak), 0.99, 0.999, 0.9999, 1.0})
        val = mpmath.quad(lambda u: (u * a) ** (-d) * mpmath.exp(-(delta**2) / (2 * (u * a) ** 2)), cuts)
        assert out[i] == pytest.approx(float(mpmath.log(val)), rel=1e-9, abs=1e-6), (d, r)
    assert np.all(np.diff(out) < 0)  # nearer activations score higher


def test_kernel_log_posterior_gaussian_dead_head_and_exact_copies():
    """A dead head (f_t = 0) adds nothing: the input scores as its live position alone, over
    two positions (minus log 2), also at a level where the kernel's width underflows; an
    exact copy scores +inf, at width 1 too."""
    d = 768
    zq = torch.ones(d, dtype=torch.float64)
    acts = torch.stack([torch.zeros(d, dtype=torch.float64), 1.01 * zq])[None]
    for level in (0.1, 0.01):
        both = kernel_log_posterior(zq, acts, torch.zeros(1, 2, dtype=torch.bool), "gaussian", level)
        live = kernel_log_posterior(zq, acts[:, 1:], torch.zeros(1, 1, dtype=torch.bool), "gaussian", level)
        assert torch.isfinite(both).all() and float(both[0]) == pytest.approx(float(live[0]) - math.log(2), abs=1e-9)
    dead = kernel_log_posterior(torch.tensor([1e5, 0.0, 0.0]), torch.zeros(1, 1, 3),
                                torch.zeros(1, 1, dtype=torch.bool),
                                "gaussian", 0.1)
    assert dead.tolist() == [-math.inf]
    z1 = torch.tensor([1.0], dtype=torch.float64)
    rows = torch.tensor([[[1.0], [100.0]], [[1.0 + 1e-7], [100.0]], [[1.0002], [1.0002]]], dtype=torch.float64)
    out = kernel_log_posterior(z1, rows, torch.zeros(3, 2, dtype=torch.bool), "gaussian", 0.1)
    assert out[0] == math.inf and out[1] > out[2]  # the exact copy first, then the nearer one


def test_preimage_kernel_small_levels_and_wide_sites():
    """Small levels stay inside the region (the angle is kept in float64), and on a 768-wide
    site the angle follows its law: its CDF from a 400,001-point numerical integration of
    sin^(d-2)(theta) log(rho_+ / rho_-) written out here, against 20,000 draws (Kolmogorov-
    Smirnov distance below the 1% critical value 1.63 / sqrt(n) = 0.0115)."""
    g = torch.Generator().manual_seed(3)
    for level in (1e-4, 1e-3, 1e-2):
        f = torch.randn(4000, 32, generator=g, dtype=torch.float64)
        z = preimage_kernel_sample(f, level, g)
        assert bool(((z - f).norm(dim=-1) <= level * z.norm(dim=-1) * (1 + 1e-9)).all()), level
    d, level, n = 768, 0.1, 20000
    f = torch.zeros(n, d)
    f[:, 0] = 2.0
    z = preimage_kernel_sample(f, level, g).double()
    theta = torch.atan2(z[:, 1:].norm(dim=-1), z[:, 0]).numpy()
    grid = np.linspace(0.0, math.asin(level), 400_001)
    c, s = np.cos(grid), np.sin(grid)
    root = np.sqrt(np.clip(c**2 - 1 + level**2, 0, None))
    with np.errstate(divide="ignore"):
        log_dens = (d - 2) * np.log(s) + np.log(np.log((c + root) / (c - root)))
    dens = np.exp(log_dens - np.nanmax(log_dens[np.isfinite(log_dens)]))
    dens[~np.isfinite(dens)] = 0.0
    cdf = np.r_[0.0, np.cumsum((dens[1:] + dens[:-1]) / 2)]
    cdf /= cdf[-1]
    emp = np.searchsorted(np.sort(theta), grid, side="right") / n
    assert np.abs(emp - cdf).max() < 1.63 / math.sqrt(n)


def test_bad_shapes_are_named():
    g = torch.Generator()
    with pytest.raises(ValueError, match=r"z must be \[batch, d >= 1\] activations, got shape \[16\]"):
        perturb(torch.randn(16), 0.1, g, "gaussian")
    with pytest.raises(ValueError, match=r"got shape \[3, 0\]"):
        perturb(torch.randn(3, 0), 0.1, g, "ball")
    with pytest.raises(TypeError, match="generator must be a torch.Generator .*got NoneType"):
        perturb(torch.randn(3, 2), 0.0, None)
    with pytest.raises(ValueError, match=r"f must be \[batch, d\] activations, got shape \[2, 3, 4\]"):
        preimage_kernel_sample(torch.randn(2, 3, 4), 0.1, g)
    zq, acts, ign = torch.ones(2), torch.ones(3, 4, 2), torch.zeros(3, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"z_q must be \[d\] and acts \[N, T, d\] of the same d, got \[4, 2\]"):
        kernel_log_posterior(torch.ones(4, 2), acts, ign, "ball", 0.1)
    with pytest.raises(ValueError, match=r"ignore must be a bool \[N, T\] = \[3, 4\] mask, got torch.int64 \[3, 4\]"):
        kernel_log_posterior(zq, acts, ign.long(), "preimage", 0.1)
    with pytest.raises(ValueError, match=r"ignore must be a bool \[N, T\] = \[3, 4\] mask, got torch.bool \[4\]"):
        kernel_log_posterior(zq, acts, ign[0], "preimage", 0.1)
    with pytest.raises(ValueError, match=r"< 1 for 'preimage'\), got 2.0"):
        kernel_log_posterior(zq, acts, ign, "preimage", 2.0)
    # a dead head (zero query, zero activations) gives a finite Gaussian score, not NaN
    dead = kernel_log_posterior(torch.zeros(2), torch.zeros(3, 4, 2), ign, "gaussian", 0.1)
    assert not dead.isnan().any()
