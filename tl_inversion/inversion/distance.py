"""Distances between activations, and the best-position rule of preimage membership.

InversionView (Huang et al. 2024, arXiv 2405.17653, Sec. 2) calls an input ``x`` a member
of the epsilon-preimage of a query activation ``z_q`` when some position of ``x`` gives an
activation ``z`` with ``D(z, z_q) <= epsilon``, where

* ``"l2"`` (the default): ``D(z, z_q) = ||z - z_q||_2 / ||z_q||_2``. It is normalised by
  the *query's* norm only, so it is not symmetric: ``D(a, b) != D(b, a)`` in general. It is
  unitless: ``0.1`` means "within 10 % of the query's length".
* ``"cosine"``: ``D(z, z_q) = 1 - cos(z, z_q)``, in ``[0, 2]`` (the paper's metric for
  factual recall).

Membership ignores positions that hold special tokens (BOS, EOS, PAD): their activations
carry no information about the input (BOS's is input-independent), so matching there
would be meaningless (:func:`best_position`).

Degenerate cases (documented behaviour, never an exception):

* ``||z_q|| = 0``: D is undefined (nothing is "close relative to nothing"), so both
  metrics return ``inf`` for that query, whatever ``z`` is. Callers that build a whole
  query around one ``z_q`` (:func:`tl_inversion.sampling.sample_preimage`) refuse such a
  query with a clear error instead.
* ``||z|| = 0`` with ``||z_q|| > 0``: ``"l2"`` gives 1 (exact), ``"cosine"`` gives 1
  (the cosine of a zero vector is taken as 0).
* NaN in ``z`` or ``z_q`` gives NaN from :func:`distance`; :func:`best_position` treats NaN
  as ``inf`` (never matched).

All functions are pure tensor code: no model, no hooks, no device moves. Distances are
computed in at least float32 (half-precision inputs are upcast).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float, Int, Shaped
from torch import Tensor

from tl_inversion.errors import InputTypeError, InputValueError

__all__ = [
    "METRICS",
    "EPSILON_L2",
    "EPSILON_COSINE",
    "FAITHFULNESS_EPSILON",
    "default_epsilon",
    "check_metric",
    "distance",
    "best_position",
]

#: Metrics understood by :func:`distance`.
METRICS = ("l2", "cosine")

#: The paper's epsilon with the L2 metric (its small tasks and IOI, Sec. 4; a task says
#: which metric and epsilon it is studied with: ``task.default_metric`` / ``default_epsilon``).
EPSILON_L2 = 0.1
#: The paper's epsilon for factual recall on GPT-2 XL, with the cosine metric (Sec. 4.4).
EPSILON_COSINE = 0.25
#: Threshold of the paper's per-site faithfulness rate: a temperature-1 sample counts as
#: faithful when its membership distance is strictly below it (Sec. 3 / App.).
FAITHFULNESS_EPSILON = 0.1


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is known.

    Raises:
        ValueError: ``metric`` is not one of :data:`METRICS`.
    """
    if metric not in METRICS:
        raise InputValueError(f"unknown distance metric {metric!r}; valid metrics: {', '.join(map(repr, METRICS))}")
    return metric


def default_epsilon(metric: str) -> float:
    """The paper's epsilon for a metric: 0.1 for ``"l2"``, 0.25 for ``"cosine"``.

    Raises:
        ValueError: unknown metric.
    """
    return EPSILON_L2 if check_metric(metric) == "l2" else EPSILON_COSINE


def _float(t: Tensor) -> Tensor:
    if not t.is_floating_point():
        raise InputTypeError(f"activations must be floating-point tensors, got dtype {t.dtype}")
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def distance(
    z: Shaped[Tensor, "*#batch d"],
    z_q: Shaped[Tensor, "*#batch _d"],
    metric: str = "l2",
) -> Float[Tensor, "*#batch"]:
    """Distance of activations ``z`` from a query activation ``z_q`` (InversionView Sec. 2).

    ``"l2"``: ``||z - z_q||_2 / ||z_q||_2`` (normalised by the query only, not symmetric);
    ``"cosine"``: ``1 - cos(z, z_q)``. Both are unitless. Leading dimensions broadcast
    (e.g. ``z [N, pos, d]`` against ``z_q [N, 1, d]``); the last dimension is the vector.

    Dtypes and widths are checked here, with clear errors (so the annotations leave them
    unchecked: ``Shaped`` and the ``_``-prefixed axis name ``_d``).

    Args:
        z: candidate activations ``[*batch, d]``, floating point (half precision is upcast).
        z_q: query activations ``[*batch, d]`` (broadcastable against ``z``), floating
            point, same device.
        metric: ``"l2"`` or ``"cosine"``.

    Returns:
        ``[*batch]`` distances, float32 (float64 if an input is float64). ``inf`` where
        ``||z_q|| = 0`` (D is undefined there); NaN where an input has NaN.

    Raises:
        ValueError: unknown metric, or last dimensions that differ.
        TypeError: non-floating-point inputs.
    """
    check_metric(metric)
    z, z_q = _float(z), _float(z_q)
    if z.shape[-1] != z_q.shape[-1]:
        raise InputValueError(
            f"activation widths differ: z has {z.shape[-1]} components, z_q has {z_q.shape[-1]}; "
            "compare activations of the same site"
        )
    q_norm = torch.linalg.vector_norm(z_q, dim=-1)
    if metric == "l2":
        d = torch.linalg.vector_norm(z - z_q, dim=-1) / q_norm
    else:
        z_norm = torch.linalg.vector_norm(z, dim=-1)
        cos = (z * z_q).sum(-1) / (z_norm * q_norm)
        cos = torch.where(z_norm == 0, torch.zeros_like(cos), cos)
        d = 1.0 - cos.clamp(-1.0, 1.0)
    zero_q = q_norm == 0
    if zero_q.any():
        d = torch.where(zero_q, torch.full_like(d, math.inf), d)
    return d


def best_position(
    acts: Float[Tensor, "..."],
    z_q: Float[Tensor, "_N _d"] | Float[Tensor, " _d"],
    special_mask: Bool[Tensor, "_N _pos"] | None = None,
    metric: str = "l2",
) -> tuple[Float[Tensor, " N"], Int[Tensor, " N"]]:
    """Minimum distance over a row's positions, special positions excluded (Sec. 2).

    For each row ``n``: ``dist[n] = min_t D(acts[n, t], z_q[n])`` over positions ``t`` with
    ``special_mask[n, t] == False``, and ``pos[n]`` the arg-min (the first one on ties). This
    is the membership rule of InversionView: the probed model is never told where the
    query came from, so a sample matches wherever its activation is closest.

    The shapes are checked here, with errors that name the expected shape (so the
    annotations leave them unchecked: ``"..."`` and ``_``-prefixed axis names).

    Args:
        acts: activations of candidate inputs at one site, ``[N, pos, d]``.
        z_q: the query activation, one per row ``[N, d]`` or shared ``[d]``; same device.
        special_mask: ``[N, pos]`` bool, True at positions to ignore (BOS, EOS, PAD);
            ``None`` ignores nothing.
        metric: ``"l2"`` or ``"cosine"`` (see :func:`distance`).

    Returns:
        ``(dist [N], pos [N])``: float distances (unitless, relative to ``||z_q||`` for
        ``"l2"``) and int64 positions on ``acts``'s device. A row with no usable position
        (all masked, ``||z_q|| = 0``, or only NaN) gets ``inf`` and ``-1``.

    Raises:
        ValueError: unknown metric, or shapes that do not fit together.
        TypeError: non-floating-point activations.
    """
    check_metric(metric)
    if acts.ndim != 3:
        raise InputValueError(f"acts must have shape [N, pos, d], got {tuple(acts.shape)}")
    n, n_pos, width = acts.shape
    if z_q.ndim == 1:
        z_q = z_q.expand(n, -1)
    if z_q.ndim != 2 or z_q.shape[0] != n or z_q.shape[1] != width:
        raise InputValueError(
            f"z_q must have shape [N={n}, d={width}] or [d={width}] to match acts {tuple(acts.shape)}, "
            f"got {tuple(z_q.shape)}"
        )
    d = distance(acts, z_q[:, None, :], metric)  # [N, pos]
    d = d.masked_fill(torch.isnan(d), math.inf)
    if special_mask is not None:
        if special_mask.shape != (n, n_pos):
            raise InputValueError(
                f"special_mask must have shape [N={n}, pos={n_pos}], got {tuple(special_mask.shape)}"
            )
        d = d.masked_fill(special_mask.to(device=d.device, dtype=torch.bool), math.inf)
    if n_pos == 0:
        return torch.full((n,), math.inf, device=d.device, dtype=d.dtype), torch.full(
            (n,), -1, dtype=torch.long, device=d.device
        )
    pos = d.argmin(dim=-1)
    dist = d.gather(-1, pos[:, None]).squeeze(-1)
    pos = torch.where(torch.isinf(dist), torch.full_like(pos, -1), pos)
    return dist, pos
