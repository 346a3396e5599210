"""Verification: is a decoded input really in the preimage of a query activation?

InversionView (Huang et al. 2024, arXiv 2405.17653, Sec. 2-3) never trusts the decoder:
every sample ``x`` is re-run through the probed model, its activation at the query's site is
compared with the query activation ``z_q`` at every non-special position, and the smallest
distance decides membership (:func:`tl_inversion.distance.best_position`).

* :func:`membership` scores many candidate inputs, each against its own ``z_q`` (or one
  shared ``z_q``), with ONE probed forward per batch (stopped after the site's layer by
  :func:`tl_inversion.harvest`).
* :func:`measure_faithfulness` is the paper's per-site faithfulness rate (the one
  implementation: training logs it, evaluation reports it): one temperature-1 sample per
  held-out activation; the rate is the fraction whose membership distance is below epsilon
  (0.1).
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int, Shaped
from torch import Tensor

from tl_inversion.errors import InputTypeError, InputValueError, SiteError
from tl_inversion.inversion.batching import last_kept, length_chunks
from tl_inversion.inversion.decode import decode_to_task
from tl_inversion.inversion.distance import FAITHFULNESS_EPSILON, best_position, check_metric
from tl_inversion.inversion.queries import resolve_query_positions
from tl_inversion.model.activations import activations_at, harvest, model_device
from tl_inversion.model.checks import check_padding
from tl_inversion.model.sites import Site, SiteLike, parse_site, validate_site, validate_sites

__all__ = ["membership", "measure_faithfulness", "FaithfulnessResult", "special_mask_of", "query_activations"]

#: Default rows per probed forward in :func:`membership`.
VERIFY_BATCH = 1024


def special_mask_of(tokens: Int[Tensor, "N pos"], special_ids: Sequence[int] | Tensor) -> Tensor:
    """Positions holding special tokens.

    Args:
        tokens: token ids ``[N, pos]``.
        special_ids: the ids to mask (BOS, EOS, PAD), e.g. ``task.special_ids``.

    Returns:
        ``[N, pos]`` bool mask on ``tokens``'s device, True where ``tokens`` is one of
        ``special_ids``.
    """
    ids = torch.as_tensor(list(special_ids) if not isinstance(special_ids, Tensor) else special_ids, dtype=torch.long)
    return torch.isin(tokens, ids.to(tokens.device))


def _as_tokens(tokens: Any, name: str = "tokens") -> Tensor:
    if not isinstance(tokens, Tensor):
        raise InputTypeError(f"{name} must be an integer torch.Tensor [N, n_ctx], got {type(tokens).__name__}")
    if tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise InputTypeError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise InputValueError(f"{name} must have shape [N, n_ctx], got {tuple(tokens.shape)}")
    return tokens.long()


def membership(
    model: Any,
    tokens: Shaped[Tensor, "_N _n_ctx"] | Shaped[Tensor, " _n_ctx"],
    site: SiteLike,
    z_q: Float[Tensor, "_N _d"] | Float[Tensor, " _d"],
    special_ids: Sequence[int] | Tensor,
    metric: str = "l2",
    batch_size: int = VERIFY_BATCH,
) -> tuple[Float[Tensor, " N"], Int[Tensor, " N"]]:
    """Membership distance of candidate inputs to query activations (InversionView Sec. 2).

    Runs the probed model on ``tokens`` (one forward per chunk of at most ``batch_size``
    rows, stopped after the site's layer, no hooks left behind; rows sorted by length and
    each chunk cut after its last non-special column, which cannot change a causal model's
    activations at the kept positions), reads the site's activation at
    every position and returns, per row, the minimum distance to that row's ``z_q`` over
    positions that do not hold a special token, and where it was reached.

    The dtype of ``tokens`` and the shapes of ``tokens`` and ``z_q`` (rows, width) are
    checked here, with errors that name what is expected (so the annotations leave them
    unchecked: ``Shaped`` and ``_``-prefixed axis names).

    Args:
        model: the probed ``HookedTransformer`` or ``TransformerBridge`` (any device).
        tokens: candidate inputs ``[N, n_ctx]`` (``[n_ctx]`` is one row), any device; ids
            must be valid for the probed model.
        site: the site the query was read from (e.g. ``"blocks.0.attn.hook_result[0]"``).
        z_q: query activations: one per row ``[N, d_site]`` (e.g. faithfulness, where every
            held-out activation has its own sample) or one for all rows ``[d_site]``.
        special_ids: token ids whose positions are ignored (BOS, EOS, PAD; e.g.
            ``task.special_ids``).
        metric: ``"l2"`` (``||z - z_q|| / ||z_q||``) or ``"cosine"`` (``1 - cos``).
        batch_size: rows per probed forward.

    Returns:
        ``(dist [N], matched_pos [N])`` on CPU: float32 unitless distances and int64
        positions. A row with no non-special position, or whose ``z_q`` has zero norm,
        gets ``inf`` and ``-1`` (see :mod:`tl_inversion.distance`).

    Raises:
        SiteError: the site does not fit the model.
        ValueError: unknown metric, ``z_q`` of the wrong shape or width, token ids outside
            the model's vocabulary, or a non-positive ``batch_size``.
        TypeError: non-integer tokens or non-float ``z_q``.
    """
    check_metric(metric)
    site = validate_site(site, model)
    tokens = _as_tokens(tokens)
    n = tokens.shape[0]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(z_q, Tensor) or not z_q.is_floating_point():
        raise InputTypeError("z_q must be a floating-point tensor of shape [N, d_site] or [d_site]")
    if z_q.ndim not in (1, 2) or (z_q.ndim == 2 and z_q.shape[0] != n):
        raise InputValueError(f"z_q must have shape [N={n}, d_site] or [d_site], got {tuple(z_q.shape)}")
    d_vocab = getattr(model.cfg, "d_vocab", None)
    if n and d_vocab is not None:
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= d_vocab:
            raise InputValueError(
                f"token ids {lo}..{hi} include ids outside the probed model's vocabulary 0..{d_vocab - 1}; "
                "map decoder-only ids (e.g. extra BOS/EOS/PAD) to the model's before verifying"
            )
    dist = torch.empty(n, dtype=torch.float32)
    pos = torch.empty(n, dtype=torch.long)
    if n == 0:
        return dist, pos
    device = model_device(model)
    z_q = z_q.detach().to(device)
    mask_all = special_mask_of(tokens, special_ids)
    # length-sorted chunks, each cut after its last non-special column (causal model: exact)
    for rows, width in length_chunks(last_kept(mask_all), batch_size):
        batch = tokens[rows, :width].to(device)
        acts = harvest(model, batch, [site], validate=False)[site]
        if acts.shape[-1] != z_q.shape[-1]:
            raise InputValueError(
                f"z_q has width {z_q.shape[-1]} but site {site} gives vectors of width {acts.shape[-1]}"
            )
        q = z_q if z_q.ndim == 1 else z_q[rows.to(device)]
        with torch.inference_mode():
            d, p = best_position(acts, q, mask_all[rows, :width].to(device), metric)
        dist[rows] = d.float().cpu()
        pos[rows] = p.cpu()
    return dist, pos


def query_activations(
    model: Any,
    tokens: Int[Tensor, "N n_ctx"],
    positions: Int[Tensor, " N"],
    site: SiteLike,
    batch_size: int = VERIFY_BATCH,
) -> Float[Tensor, "N d_site"]:
    """Activations ``f_site(tokens[n])[positions[n]]``, one probed forward per batch.

    Args:
        model: the probed model.
        tokens: inputs ``[N, n_ctx]``.
        positions: absolute position per row ``[N]``.
        site: the site.
        batch_size: rows per forward.

    Returns:
        ``[N, d_site]`` on the model's device.

    Raises:
        SiteError: the site does not fit the model.
    """
    site = validate_site(site, model)
    tokens = _as_tokens(tokens)
    positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1).cpu()
    n, n_ctx = tokens.shape
    if positions.shape[0] != n:
        raise InputValueError(f"got {positions.shape[0]} positions for {n} inputs")
    if n and (int(positions.min()) < 0 or int(positions.max()) >= n_ctx):
        raise InputValueError(f"positions must be absolute indices in 0..{n_ctx - 1}, got {positions.tolist()[:8]}...")
    out = [activations_at(model, tokens[start : start + batch_size], positions[start : start + batch_size],
                                 [site], validate=False)[site] for start in range(0, tokens.shape[0], batch_size)]
    return torch.cat(out)


class FaithfulnessResult(pd.DataFrame):
    """What :func:`measure_faithfulness` returns: one row per site, and every sample's distance.

    A ``pandas.DataFrame`` indexed by site string with columns ``faithfulness`` (fraction of
    samples with distance ``< epsilon``, in ``[0, 1]``; NaN for no samples),
    ``mean_distance`` (over finite distances; ``inf`` when none is finite),
    ``median_distance``, ``valid`` (fraction of samples obeying the task grammar) and ``n``
    (samples), so it prints, filters (``.loc``) and concatenates like any table (derived
    tables are plain DataFrames). It also carries:

    Attributes:
        distances: ``{site string: [N] float32 CPU tensor}`` membership distance of each
            sample (unitless, see :mod:`tl_inversion.inversion.distance`; ``inf`` where the
            query has zero norm: unfaithful).
        epsilon: the threshold used; metric: the distance used (``"l2"`` or ``"cosine"``).
    """

    _metadata = ["distances", "epsilon", "metric"]

    @property
    def _constructor(self) -> type[pd.DataFrame]:
        return pd.DataFrame  # a filtered or reshaped table no longer matches `distances`

    def rate(self, site: SiteLike) -> float:
        """The faithfulness rate of one site (a fraction in ``[0, 1]``).

        Raises:
            SiteError: the result has no row for ``site`` (the message lists its sites).
        """
        key = str(parse_site(site))
        if key not in self.index:
            raise SiteError(f"no faithfulness measured for site {key}; measured: {', '.join(self.index)}")
        return float(self.loc[key, "faithfulness"])


def _positions_for(task: Any, tokens: Tensor, positions: Any) -> Tensor:
    if isinstance(positions, (int, str)) and not isinstance(positions, bool):
        positions = resolve_query_positions(task, tokens, positions)  # negative: from each row's real end
    positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1).cpu()
    if positions.shape[0] != tokens.shape[0]:
        raise InputValueError(f"positions has {positions.shape[0]} entries for {tokens.shape[0]} inputs; "
                              "give one position per input, or one int / named position for all")
    return positions


def measure_faithfulness(
    bank: Any,
    model: Any,
    task: Any,
    tokens: Int[Tensor, "N n_ctx"],
    positions: Int[Tensor, " _N"] | int | str,
    *,
    sites: Sequence[SiteLike] | None = None,
    epsilon: float = FAITHFULNESS_EPSILON,
    metric: str = "l2",
    seed: int | None = 0,
    temperature: float = 1.0,
    batch_size: int = 512,
) -> FaithfulnessResult:
    """The paper's per-site faithfulness rate on held-out activations.

    For each held-out ``(tokens[n], positions[n])`` and each site: read the query
    ``z_q = f_site(tokens[n])[positions[n]]``, draw ONE sample from the site's decoder at
    ``temperature`` (1 in the paper), re-run the sample through the probed model and take
    its membership distance to ``z_q`` (best non-special position, :func:`membership`); the
    sample is faithful when that distance is strictly below ``epsilon``. Batched: one
    probed forward per batch reads every site's queries, one ``generate`` call per batch and
    site, one probed forward (stopped after the site's layer) per batch and site verifies.

    Each site draws from its own generator seeded with ``seed``, so a site's rate does not
    depend on which other sites are measured. Decoders are sampled in eval mode and put
    back in the mode they were in. The bank is not checked against the model (the caller,
    e.g. training, owns both).

    Args:
        bank: a :class:`~tl_inversion.decoding.bank.DecoderBank`.
        model: the probed ``HookedTransformer`` or ``TransformerBridge``.
        task: the task (``special_ids``, ``is_valid``, named positions).
        tokens: held-out inputs ``[N, n_ctx]`` (token ids, any device).
        positions: absolute position per row ``[N]`` (its length is checked here), or one
            int / task-named position for all rows (a negative int counts from each row's
            last non-PAD token).
        sites: the sites to measure (default: every site of the bank).
        epsilon: membership threshold (paper 0.1; unitless, see
            :mod:`tl_inversion.inversion.distance`).
        metric: ``"l2"`` or ``"cosine"``.
        seed: seed of each site's decoder samples; ``None`` draws from the global RNG.
        temperature: sampling temperature (paper 1).
        batch_size: rows per decoder call and per probed forward.

    Returns:
        :class:`FaithfulnessResult`: a DataFrame indexed by site (``faithfulness``,
        ``mean_distance``, ``median_distance``, ``valid``, ``n``) carrying each sample's
        distance in ``.distances``.

    Raises:
        SiteError: a site the bank or the model lacks.
        PositionError: a position name or index the task does not know.
        InputValueError: unknown metric, a negative or non-finite ``epsilon``, positions
            that do not match ``tokens``, a non-positive ``batch_size``, left-padded rows.
        InputTypeError: tokens that are not an integer tensor.

    Source: InversionView Sec. 3 and App. C ("faithfulness rate").
    """
    check_metric(metric)
    epsilon = float(epsilon)
    if not epsilon >= 0 or epsilon == float("inf"):
        raise InputValueError(f"epsilon must be a finite distance >= 0 (the paper: 0.1), got {epsilon}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputValueError(f"batch_size must be a positive int, got {batch_size!r}")
    use = list(bank.sites) if sites is None else [parse_site(s) for s in sites]
    for s in use:
        bank.lookup(s)  # SiteError listing the bank's sites
    use = validate_sites(use, model)
    tokens = _as_tokens(tokens)
    check_padding(tokens, getattr(task, "pad_id", None), bos_id=getattr(task, "bos_id", None), name="tokens")
    positions = _positions_for(task, tokens, positions)
    n = tokens.shape[0]
    gens = {s: None if seed is None else torch.Generator(device=bank.device).manual_seed(int(seed)) for s in use}
    dists: dict[Site, list[Tensor]] = {s: [] for s in use}
    valid: dict[Site, list[Tensor]] = {s: [] for s in use}
    for start in range(0, n, batch_size):
        rows, where = tokens[start : start + batch_size], positions[start : start + batch_size]
        z_by_site = activations_at(model, rows, where, use, validate=False)
        for s in use:
            z_q = z_by_site[s]
            samples = decode_to_task(bank, s, z_q, temperature=temperature, generator=gens[s])
            d, _ = membership(model, samples, s, z_q, task.special_ids, metric, batch_size)
            dists[s].append(d)
            valid[s].append(task.is_valid(samples.cpu()).float())
    table, by_site = [], {}
    for s in use:
        d = torch.cat(dists[s]) if dists[s] else torch.empty(0)
        v = torch.cat(valid[s]) if valid[s] else torch.empty(0)
        finite = d[d.isfinite()]
        by_site[str(s)] = d
        table.append({
            "site": str(s),
            "faithfulness": float((d < epsilon).float().mean()) if n else float("nan"),
            "mean_distance": float(finite.mean()) if finite.numel() else float("inf"),
            "median_distance": float(d.median()) if n else float("nan"),
            "valid": float(v.mean()) if n else float("nan"),
            "n": int(n),
        })
    result = FaithfulnessResult(pd.DataFrame(table).set_index("site"))
    result.distances, result.epsilon, result.metric = by_site, epsilon, metric
    return result
