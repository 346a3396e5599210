"""Blurring the activations a decoder is trained on (``train_noise``): the three kernels.

A decoder trained on ``(x, z')`` with ``z' ~ K(. | f_t(x))`` learns the posterior
``p(x | z) ∝ p(x) sum_t P(t) K(z | f_t(x))`` (``f_t(x)``: the site's activation at position
``t``). Which inputs that posterior favours is set by the kernel ``K``:

* ``"gaussian"``: isotropic Gaussian noise of a random level up to ``level``: a mix of
  nearly exact and blurred conditions.
* ``"ball"``: uniform in the ball of radius ``level * ||f||`` around ``f``. Its density is
  ``1 / vol(ball) ∝ ||f||^-d``, so the posterior weights each input by ``||f_t(x)||^-d``:
  with ``d`` = 32, members whose activation is 10% larger than another's count 21 times
  less, and non-members just outside the preimage but with large ``||f||`` are admitted.
* ``"preimage"``: the kernel ``K(z | f) = c ||z||^-d 1[||z - f|| <= level ||z||]``, normalised for
  every ``f`` (scale and rotation invariance). Its ``f``-dependence is the indicator only,
  so the posterior at a query ``z_q`` is ``p(x) * #{t : D(f_t(x), z_q) <= level} / n(x)``
  (``n(x)``: the positions training draws from) — uniform over the ``level``-preimage of
  ``z_q`` (method: Membership, with D normalised by the query's norm), weighted by the
  share of matching positions. With ``level`` = epsilon, it is the distribution
  completeness asks the decoder for.

Sampling the preimage kernel exactly (scale ``f`` to unit norm, ``e = f / ||f||``): in
polar coordinates ``z = ||f|| rho u``, the density ``||z||^-d dz ∝ d(log rho) du``, so
``log rho`` is uniform on the interval where ``||rho u - e|| <= level rho``, i.e.
``rho`` in ``[rho_-, rho_+] = (c -+ sqrt(c^2 - 1 + level^2)) / (1 - level^2)`` with
``c = cos(angle(u, e))`` (needs ``sin(angle) <= level``); the angle ``theta`` has density
``∝ sin^(d-2)(theta) log(rho_+ / rho_-)`` on ``[0, arcsin(level)]`` (drawn by inverse CDF on
a fine grid) and ``u = cos(theta) e + sin(theta) v`` with ``v`` uniform among unit
vectors orthogonal to ``e``.

Source: not in InversionView (the paper trains on exact activations; its sampling perturbs
the query instead). This project's addition; measured in README Results.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
from jaxtyping import Float, Shaped
from torch import Tensor

from tl_inversion.errors import InputTypeError, InputValueError

__all__ = ["NOISE_SHAPES", "perturb", "preimage_kernel_sample", "kernel_log_posterior"]

NOISE_SHAPES = ("gaussian", "ball", "preimage")
_GRID = 8193  # points of the angle's inverse CDF


def perturb(
    z: Float[Tensor, "..."],  # [batch, d >= 1]; checked here with a clear message
    level: float,
    generator: Any,  # a torch.Generator; checked here with a clear message
    shape: str = "gaussian",
) -> Float[Tensor, "batch d"]:
    """Blur activations ``z`` by one of the kernels of this module (its docstring compares them).

    ``level`` is in units of the distance D = ||z - z_q|| / ||z_q|| (method: Distance).

    * ``"gaussian"``: ``z + N(0, I) * u * level * ||z|| / sqrt(d)`` with ``u ~ U(0, 1)`` per
      row: noise norm about ``u * level * ||z||`` (times chi_d / sqrt(d), so a few percent of
      rows exceed ``level``, more on narrow sites).
    * ``"ball"``: ``z + n``, ``n`` uniform in the ball of radius ``level * ||z||`` (uniform
      direction, norm ``level * ||z|| * U^(1/d)``).
    * ``"preimage"``: a draw ``z'`` of the preimage kernel around ``z``
      (:func:`preimage_kernel_sample`): always ``||z' - z|| <= level * ||z'||``; trains
      towards the uniform distribution over the ``level``-preimage. Needs ``level < 1``.

    Training blurs every activation it conditions on, the BOS ("no information") one too.

    Args:
        z: ``[batch, d]`` activations (computed in float32, returned in ``z``'s dtype).
        level: the noise level, >= 0 and finite; 0 returns ``z`` and draws nothing.
        generator: random source; the result is on its device (``z`` is moved there).
        shape: ``"gaussian"``, ``"ball"`` or ``"preimage"``.

    Raises:
        ValueError: an unknown shape, a negative or non-finite level, ``level >= 1``
            with ``"preimage"``, or ``z`` not ``[batch, d >= 1]``.
        TypeError: ``generator`` is not a ``torch.Generator``.

    Source: this project's addition (see the module docstring).
    """
    if shape not in NOISE_SHAPES:
        raise InputValueError(f"noise shape must be one of {NOISE_SHAPES}, got {shape!r}")
    if not (level >= 0 and math.isfinite(level)):
        raise InputValueError(f"noise level must be finite and >= 0, got {level}")
    if z.ndim != 2 or z.shape[1] == 0:
        raise InputValueError(f"z must be [batch, d >= 1] activations, got shape {list(z.shape)}")
    if not isinstance(generator, torch.Generator):
        raise InputTypeError("generator must be a torch.Generator (its device is the result's), "
                             f"got {type(generator).__name__}")
    z = z.to(generator.device)
    if level == 0:
        return z
    if shape == "preimage":
        return preimage_kernel_sample(z.float(), level, generator).to(z.dtype)
    zf = z.float()
    norm = zf.norm(dim=-1, keepdim=True)
    u = torch.rand(z.shape[0], 1, generator=generator, device=z.device, dtype=torch.float32)
    noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=torch.float32)
    if shape == "gaussian":
        return (zf + noise * (u * level * norm / math.sqrt(z.shape[-1]))).to(z.dtype)
    direction = noise / noise.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (zf + direction * (u ** (1.0 / z.shape[-1]) * level * norm)).to(z.dtype)


def _radii(theta: Tensor, level: float) -> tuple[Tensor, Tensor]:
    """``rho_-, rho_+`` (float64): where the ray at angle ``theta`` to ``e`` is within ``level * rho`` of ``e``."""
    theta = theta.double()
    sin = theta.sin()
    root = ((level - sin) * (level + sin)).clamp_min(0.0).sqrt()  # sqrt(cos^2 - 1 + level^2), no cancellation
    return (theta.cos() - root) / (1.0 - level * level), (theta.cos() + root) / (1.0 - level * level)


def _log_angle_density(theta: Tensor, level: float, d: int) -> Tensor:
    lo, hi = _radii(theta, level)
    log_len = (hi / lo).log().clamp_min(1e-300).log()  # log of log(rho_+ / rho_-)
    return log_len + (d - 2) * theta.sin().clamp_min(1e-300).log() if d > 2 else log_len


@lru_cache(maxsize=32)
def _angle_grid(level: float, d: int) -> tuple[Tensor, Tensor]:
    """``(theta [G], cdf [G])`` (float64, CPU): the angle's CDF on a grid over ``[0, arcsin(level)]``,
    narrowed to where the density is above ``e^-40`` of its peak (wide sites concentrate the
    angle near ``arcsin(level)``; the grid follows it).
    """
    top = math.asin(level)
    coarse = torch.linspace(0.0, top, _GRID, dtype=torch.float64)
    log_dens = _log_angle_density(coarse, level, d)
    alive = torch.nonzero(log_dens > log_dens.max() - 40).squeeze(-1)
    lo_i, hi_i = max(int(alive[0]) - 1, 0), min(int(alive[-1]) + 1, _GRID - 1)
    theta = torch.linspace(float(coarse[lo_i]), float(coarse[hi_i]), _GRID, dtype=torch.float64)
    log_dens = _log_angle_density(theta, level, d)
    dens = (log_dens - log_dens.max()).exp()
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), ((dens[1:] + dens[:-1]) / 2).cumsum(0)])
    return theta, cdf / cdf[-1]


def preimage_kernel_sample(
    f: Float[Tensor, "..."],  # [batch, d]; checked here with a clear message
    level: float,
    generator: torch.Generator,
) -> Float[Tensor, "batch d"]:
    """One draw per row of the preimage kernel ``K(z | f) ∝ ||z||^-d 1[||z - f|| <= level ||z||]``.

    Exact up to the angle's inverse CDF on an 8,193-point grid (see the module docstring for
    the derivation and for why this kernel trains towards the uniform distribution over the
    ``level``-preimage); computed in float64, returned in ``f``'s dtype (float16 / bfloat16
    rounding can put a draw a hair outside the region). A zero row stays zero.

    Args:
        f: ``[batch, d]`` float activations.
        level: the preimage radius epsilon, in ``(0, 1)`` (units of D).
        generator: random source on ``f``'s device.

    Returns:
        ``[batch, d]``, ``f``'s dtype and device.

    Raises:
        ValueError: ``level`` outside ``(0, 1)`` (for ``level >= 1`` the set
        ``{z : ||z - f|| <= level ||z||}`` is unbounded and the kernel has no normalisation),
        or ``f`` not 2-D.
    """
    if not 0.0 < level < 1.0:
        raise InputValueError(f"the preimage kernel needs 0 < level < 1 (level is epsilon in units of D), got {level}")
    if f.ndim != 2:
        raise InputValueError(f"f must be [batch, d] activations, got shape {list(f.shape)}")
    n, d = f.shape
    dev = f.device
    norm = f.norm(dim=-1, keepdim=True)
    e = f / norm.clamp_min(1e-30)
    if d == 1:
        theta = torch.zeros(n, 1, device=dev)
    else:
        grid, cdf = _angle_grid(float(level), int(d))
        u = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
        cdf, grid = cdf.to(dev), grid.to(dev)
        k = torch.searchsorted(cdf, u).clamp(1, _GRID - 1)
        w = (u - cdf[k - 1]) / (cdf[k] - cdf[k - 1]).clamp_min(1e-300)
        theta = (grid[k - 1] + w * (grid[k] - grid[k - 1]))[:, None]  # float64: cos(1e-4) is 1 in float32
    theta = theta.double()
    e, norm = e.double(), norm.double()
    g = torch.randn(n, d, generator=generator, device=dev, dtype=torch.float64)
    v = g - (g * e).sum(-1, keepdim=True) * e
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    direction = theta.cos() * e + theta.sin() * v
    lo, hi = _radii(theta, level)
    t = torch.rand(n, 1, generator=generator, device=dev, dtype=torch.float64)
    rho = (lo.log() + t * (hi / lo).log()).exp()
    return (norm * rho * direction).to(f.dtype)


def kernel_log_posterior(  # the shapes and the dtype of ignore are checked here with clear messages
    z_q: Float[Tensor, "..."],  # [d]
    acts: Float[Tensor, "..."],  # [N, T, d]
    ignore: Shaped[Tensor, "..."],  # bool [N, T]
    shape: str | None,
    level: float,
) -> Float[Tensor, " N"]:
    """``log sum_t P(t) K(z_q | f_t(x))`` per input: the posterior a perfectly trained decoder gives.

    A decoder trained on ``(x, z ~ K(. | f_t(x)))`` with ``t`` uniform over the ``n(x)``
    positions training draws from learns ``p(x | z_q) ∝ p(x) sum_t K(z_q | f_t(x)) / n(x)``
    (plus the same BOS term for every input, which changes no ranking); with a uniform prior
    over the inputs given, this is that posterior's log up to one constant, so its ranking of
    the inputs is what a perfectly trained decoder would give (used by
    :func:`tl_inversion.completeness.completeness` as ``auroc_ideal``).

    Kernels (``level`` = r; ``D_t = ||z_q - f_t|| / ||z_q||``):

    * ``None`` or ``level`` 0 (exact training): ``K`` is a point mass; counted as the number of
      positions with ``D_t <= 1e-6`` (numerically identical activations).
    * ``"preimage"``: number of positions with ``D_t <= r`` (needs ``r < 1``).
    * ``"ball"``: ``sum_t 1[||z_q - f_t|| <= r ||f_t||] ||f_t||^-d``.
    * ``"gaussian"``: ``sum_t int_0^1 N(z_q; f_t, (u r ||f_t|| / sqrt d)^2 I) du`` (the constant
      ``(2 pi)^(-d/2)`` is left out), in closed form: with ``a = r ||f_t|| / sqrt d``,
      ``delta = ||z_q - f_t||``, ``s = (d - 1) / 2`` and ``x = delta^2 / (2 a^2)`` the integral
      is ``delta^(1-d) 2^(s-1) Gamma(s, x) / a`` (substitute ``x = delta^2 / (2 u^2 a^2)``;
      ``Gamma(s, x)`` the upper incomplete gamma function). It is ``+inf`` where
      ``f_t = z_q`` exactly (the mixture includes widths down to 0) and ``-inf`` at a dead
      head (``f_t = 0``, ``z_q != 0``). A width-1 site (``s`` = 0) uses
      ``Gamma(0, x) = E1(x)``, the exponential integral.

    Args:
        z_q: ``[d]`` the query activation.
        acts: ``[N, T, d]`` the site's activations of ``N`` inputs at every position.
        ignore: ``[N, T]`` bool, True where training never draws the position: special
            tokens (BOS, EOS, PAD) and positions outside the task's training positions
            (``~task.train_position_mask``).
        shape: ``"gaussian"``, ``"ball"``, ``"preimage"`` or ``None``.
        level: ``train_noise``.

    Returns:
        ``[N]`` float64 on CPU; ``-inf`` where no position can have produced ``z_q``.
        Memory: a float64 copy of ``acts`` (call it on batches of inputs).

    Raises:
        ValueError: an unknown shape, a negative / non-finite level (``>= 1`` for
        ``"preimage"``), or shapes that do not fit (``z_q [d]``, ``acts [N, T, d]``,
        ``ignore`` bool ``[N, T]``).

    Source: this project's addition (the kernels are in the module docstring).
    """
    if shape is not None and shape not in NOISE_SHAPES:
        raise InputValueError(f"noise shape must be one of {NOISE_SHAPES} or None, got {shape!r}")
    if not (level >= 0 and math.isfinite(level)) or (shape == "preimage" and level >= 1):
        raise InputValueError(f"noise level must be finite and >= 0 (< 1 for 'preimage'), got {level}")
    if z_q.ndim != 1 or acts.ndim != 3 or acts.shape[-1] != z_q.shape[0]:
        raise InputValueError(f"z_q must be [d] and acts [N, T, d] of the same d, got {list(z_q.shape)} "
                              f"and {list(acts.shape)}")
    if ignore.dtype != torch.bool or tuple(ignore.shape) != tuple(acts.shape[:2]):
        raise InputValueError(f"ignore must be a bool [N, T] = {list(acts.shape[:2])} mask, "
                              f"got {ignore.dtype} {list(ignore.shape)}")
    f = acts.double()  # computed where the activations are (a GPU when evaluate runs there)
    zq = z_q.double().to(f.device)
    d = f.shape[-1]
    keep = ~ignore.to(f.device)
    dist = (f - zq).norm(dim=-1)  # [N, T]
    fnorm = f.norm(dim=-1)
    del f
    n_pos = keep.sum(-1).clamp_min(1).double()
    neg_inf = torch.tensor(-math.inf, dtype=torch.float64, device=dist.device)
    if shape is None or level == 0 or shape == "preimage":
        radius = 1e-6 if shape is None or level == 0 else level
        count = ((dist <= radius * zq.norm()) & keep).sum(-1).double()
        return torch.where(count > 0, (count / n_pos).log(), neg_inf).cpu()
    if shape == "ball":
        log_k = torch.where((dist <= level * fnorm) & keep, -d * fnorm.clamp_min(1e-300).log(), neg_inf)
    else:
        a = fnorm.clamp_min(1e-150) * (level / math.sqrt(d))
        log_k = torch.where(keep, _log_width_mixture(dist, a, d), neg_inf)
    return (torch.logsumexp(log_k, -1) - n_pos.log()).cpu()


def _log_width_mixture(delta: Tensor, a: Tensor, d: int) -> Tensor:
    """``log int_0^1 (u a)^-d exp(-delta^2 / (2 u^2 a^2)) du`` elementwise (float64): the
    Gaussian kernel without ``(2 pi)^(-d/2)``; closed form in :func:`kernel_log_posterior`
    (``d`` = 1: ``Gamma(0, x) = E1(x)``, the exponential integral).
    """
    s = (d - 1) / 2
    x = delta**2 / (2 * a**2)  # +inf where a underflows (a dead head): the kernel is 0 there
    # xlogy: the delta term is absent for d = 1 (also at delta = 0), +inf at delta = 0 otherwise
    return torch.special.xlogy(torch.tensor(1.0 - d, dtype=delta.dtype, device=delta.device), delta) \
        + (s - 1) * math.log(2) - a.log() + _log_upper_gamma(s, x)


def _log_upper_gamma(s: float, x: Tensor) -> Tensor:
    """``log Gamma(s, x)`` (upper incomplete gamma, ``s >= 0``, ``x >= 0``, float64; ``-inf`` at
    ``x = +inf``). ``s > 0``: ``lgamma(s) + log Q(s, x)`` with ``torch.special.gammaincc``;
    where ``Q`` underflows (``x`` far above ``s``), the asymptotic series
    ``x^(s-1) e^-x sum_k (s-1)...(s-k) / x^k`` (Abramowitz & Stegun 6.5.32), summed while its
    terms shrink. ``s = 0``: :func:`_log_exp_integral`.
    """
    if s == 0:
        out = _log_exp_integral(x)
    else:
        q = torch.special.gammaincc(torch.full_like(x, s), x)
        out = q.log() + math.lgamma(s)
        far = (q < 1e-250) & torch.isfinite(x)
        if far.any():
            xf = x[far]
            term, total, shrinking = torch.ones_like(xf), torch.ones_like(xf), torch.ones_like(xf, dtype=torch.bool)
            for k in range(1, 60):
                nxt = term * (s - k) / xf
                shrinking &= nxt.abs() < term.abs()
                if not shrinking.any():
                    break
                term = torch.where(shrinking, nxt, term)
                total = total + torch.where(shrinking, nxt, torch.zeros_like(nxt))
            out[far] = (s - 1) * xf.log() - xf + total.log()
    return torch.where(torch.isposinf(x), torch.full_like(out, -math.inf), out)


def _log_exp_integral(x: Tensor) -> Tensor:
    """``log E1(x)`` (float64, ``x >= 0``; ``+inf`` at 0): the power series
    ``-gamma - ln x - sum_k (-x)^k / (k k!)`` below 1, and above it ``E1(x) = e^-x / (x + 1 -
    1^2 / (x + 3 - 2^2 / (x + 5 - ...)))`` (Abramowitz & Stegun 5.1.11 and 5.1.22), the
    continued fraction evaluated from the front (modified Lentz), 80 terms.
    """
    small = x < 1
    xs = torch.where(small, x, torch.zeros_like(x))
    series, power = torch.zeros_like(x), torch.ones_like(x)
    for k in range(1, 40):
        power = power * (-xs) / k
        series = series - power / k
    e1_small = -0.5772156649015329 - xs.log() + series  # +inf at x = 0
    xl = torch.where(small, torch.ones_like(x), x)
    tiny = 1e-300
    b = xl + 1
    c = torch.full_like(x, 1 / tiny)
    dd = 1 / b
    h = dd.clone()
    for i in range(1, 80):
        an = -float(i * i)
        b = b + 2
        dd = 1 / (an * dd + b)
        c = b + an / c
        h = h * (c * dd)
    log_e1_large = -xl + h.log()
    return torch.where(small, e1_small.log(), log_e1_large)
