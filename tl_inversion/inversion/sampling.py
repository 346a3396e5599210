"""Sampling the preimage of a query activation (InversionView, arXiv 2405.17653, Sec. 3).

A query is ``(input x_q, site s, position t)`` with activation ``z_q = f_s(x_q)[t]``. The
decoder trained for ``s`` generates a pool of candidate inputs conditioned on ``z_q``, under
the paper's schedule of ``(temperature, noise)`` settings ``(0.5, 0), (1, 0), (2, 0),
(2, 0.1)``, each repeated 4 times with 64 samples: 1024 candidates. ``noise`` perturbs the
condition, ``z = z_q + N(0, I) * std(z_q) * noise``, to reach further around the preimage.
Every candidate is then re-run through the probed model and scored against the *clean*
``z_q`` at its best non-special position (:func:`tl_inversion.verify.membership`); it is in
the epsilon-preimage when that distance is ``<= epsilon``.

Each sampled token is also given the paper's colour value
``p(token | prefix, z_q) - p(token | prefix, z_BOS)`` under teacher forcing, where
``z_BOS`` is the same site's activation at position 0 (input-independent): positive where
the activation, rather than the decoder's prior, decided the token.

How the work is batched (:mod:`tl_inversion.inversion.pool`): all candidates of all
settings (and, in :func:`sample_many`, of all queries) go through the decoder in calls of up
to ``max_batch`` rows, with a per-row temperature and noise; identical candidates are
verified and coloured once (their rows share the result); the probed model and the colour's
teacher-forced passes run on distinct candidates sorted by length, each chunk cut after its
longest row (:mod:`tl_inversion.inversion.batching`; exact for causal models), the probed
model stopped after the site's layer. The colour's ``p(tok | prefix, z_q)`` of candidates
generated from the exact ``z_q`` (noise 0) comes from generation itself; only noisy ones
and the ``z_BOS`` term need a teacher-forced pass. Everything runs under
``torch.inference_mode()``; the decoder and the probed model may live on different devices.
Generation draws by Gumbel-max from noise drawn up front (:mod:`tl_inversion.decoding.generation`):
the candidates of a fixed seed differ from those of versions before this one (same
distribution). ``min_in_preimage`` stops drawing repeats of the schedule early.

The result is a :class:`~tl_inversion.inversion.result.PreimageResult`: a pandas DataFrame
with one row per candidate plus the query, rendering itself as coloured HTML in a notebook
(:mod:`tl_inversion.viewer`). Generation goes through
:func:`tl_inversion.inversion.decode.decode_to_task`.

Checking the bank against the model (a hash of all weights and a probe forward) is done
once per :func:`sample_many` call; callers that already checked the pair
(:class:`~tl_inversion.evaluation.inverter.Inverter`, :func:`tl_inversion.evaluation.evaluate`)
use :func:`sample_checked`, which skips it.
"""

from __future__ import annotations

import contextlib
import gc
import math
import numbers
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from tl_inversion.errors import InputTypeError, InputValueError
from tl_inversion.inversion.batching import UniqueRows, last_kept, unique_rows
from tl_inversion.inversion.distance import check_metric, default_epsilon
from tl_inversion.inversion.pool import Draw, colour_values, draw_round, frames
from tl_inversion.inversion.queries import (
    check_query_format,
    check_query_positions,
    query_tokens,
    resolve_query_positions,
)
from tl_inversion.inversion.result import PreimageResult
from tl_inversion.inversion.verify import membership
from tl_inversion.model.activations import eval_mode, harvest
from tl_inversion.model.checks import check_padding
from tl_inversion.model.sites import SiteLike, validate_site
from tl_inversion.tasks import as_task

__all__ = [
    "PAPER_SCHEDULE",
    "sample_checked",
    "sample_preimage",
    "sample_many",
]

#: The paper's sampling settings ``(temperature, noise)`` (InversionView Sec. 3 / App.).
PAPER_SCHEDULE: tuple[tuple[float, float], ...] = ((0.5, 0.0), (1.0, 0.0), (2.0, 0.0), (2.0, 0.1))

# helpers -----------------------------------------------------------------------------------
def _check_schedule(schedule: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    out = []
    try:
        for item in schedule:
            t, s = item
            t, s = float(t), float(s)
            if not (math.isfinite(t) and t >= 0 and math.isfinite(s) and s >= 0):
                raise ValueError
            out.append((t, s))
    except (TypeError, ValueError):
        raise InputValueError(
            f"schedule must be a sequence of (temperature, noise) pairs of finite floats >= 0, "
            f"e.g. {PAPER_SCHEDULE}; got {schedule!r}"
        ) from None
    if not out:
        raise InputValueError("schedule is empty: give at least one (temperature, noise) setting")
    return out


#: Most candidates one query's pool may hold (settings x n_repeats x batch_size): 2**24 rows of
#: 33 ids are already 4.4 GB of int64 tokens; larger requests are refused before any work.
MAX_POOL = 2**24


def _positive_int(name: str, value: Any) -> int:
    """``value`` as an int if it is an integer >= 1 (numpy's too; worded as
    :class:`~.config.SampleConfig` words it).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{name} must be an int >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise InputValueError(f"{name} must be >= 1 (an int), got {value!r}")
    return int(value)


def _check_settings(metric: str, epsilon: float | None, schedule: Sequence[tuple[float, float]], n_repeats: Any,
                    batch_size: Any, max_batch: Any, min_in_preimage: Any
                    ) -> tuple[str, float, list[tuple[float, float]]]:
    """``(metric, epsilon, schedule)`` checked (epsilon defaulted); raises on a bad count."""
    metric = check_metric(metric)
    eps = default_epsilon(metric) if epsilon is None else float(epsilon)
    if not eps > 0:
        raise InputValueError(
            f"epsilon must be a positive distance (paper: 0.1 for l2, 0.25 for cosine), got {epsilon}")
    settings = _check_schedule(schedule)
    for name, value in (("n_repeats", n_repeats), ("batch_size", batch_size), ("max_batch", max_batch)):
        _positive_int(name, value)
    if min_in_preimage is not None:
        _positive_int("min_in_preimage", min_in_preimage)
    pool = len(settings) * int(n_repeats) * int(batch_size)
    if pool > MAX_POOL:
        raise InputValueError(
            f"{len(settings)} settings x n_repeats {n_repeats} x batch_size {batch_size} = {pool:,} candidates per "
            f"query; at most {MAX_POOL:,} fit one pool (the paper draws 1,024)")
    return metric, eps, settings


# the pipeline --------------------------------------------------------------------------------
def sample_many(
    bank: Any,
    model: Any,
    task: Any,
    queries: Int[Tensor, "Q n_ctx"] | Int[Tensor, " n_ctx"] | Sequence[Any] | str,  # a list of texts; checked here
    site: SiteLike,
    positions: Int[Tensor, " Q"] | Sequence[int | str] | int | str,
    *,
    schedule: Sequence[tuple[float, float]] = PAPER_SCHEDULE,
    n_repeats: int = 4,
    batch_size: int = 64,
    epsilon: float | None = None,
    metric: str = "l2",
    seed: int | None = 0,
    colour: bool = True,
    allow_mismatch: bool = False,
    max_batch: int = 1024,
    warn_positions: bool = True,
    min_in_preimage: int | None = None,
    compile: bool = False,
) -> list[PreimageResult]:
    """Sample and verify the preimages of many queries at one site, batched across queries.

    Same procedure as :func:`sample_preimage` (see there and the module docstring); the
    candidates of all queries share decoder calls and probed forwards. Results are
    reproducible for the same arguments and ``seed``, but the random streams of a query
    differ from a single-query :func:`sample_preimage` call unless ``Q == 1``.

    Args:
        bank: a :class:`~tl_inversion.bank.DecoderBank` covering ``site``.
        model: the probed model (any device; the decoders may be on another).
        task: the task or its registered name (encoding, named positions, grammar, special ids).
        queries: texts (encoded by ``task``) or token ids ``[Q, n_ctx]`` / ``[n_ctx]``.
        site: the queried site.
        positions: one position for all queries (int or task-named, e.g. ``":"``) or one per
            query (sequence or ``[Q]`` tensor).
        schedule: as :func:`sample_preimage`.
        n_repeats: as :func:`sample_preimage`.
        batch_size: as :func:`sample_preimage`.
        epsilon: as :func:`sample_preimage`.
        metric: as :func:`sample_preimage`.
        seed: as :func:`sample_preimage`.
        colour: as :func:`sample_preimage`.
        allow_mismatch: as :func:`sample_preimage`.
        max_batch: as :func:`sample_preimage`.
        min_in_preimage: as :func:`sample_preimage`.
        compile: as :func:`sample_preimage`.
        warn_positions: warn (:class:`UntrainedPositionWarning`) about special or untrained
            query positions (callers that warned once already pass ``False``).

    Returns:
        One :class:`PreimageResult` per query, in order.

    Raises:
        As :func:`sample_preimage`.
    """
    task = as_task(task)
    _check_settings(metric, epsilon, schedule, n_repeats, batch_size, max_batch, min_in_preimage)  # cheap errors first
    bank.lookup(site)  # SiteError listing the bank's sites, before the model check
    validate_site(site, model)
    bank.check_model(model, allow_mismatch=allow_mismatch)
    bank.check_task(task)
    return sample_checked(bank, model, task, queries, site, positions, schedule=schedule, n_repeats=n_repeats,
                          batch_size=batch_size, epsilon=epsilon, metric=metric, seed=seed, colour=colour,
                          max_batch=max_batch, warn_positions=warn_positions, min_in_preimage=min_in_preimage,
                          compile=compile)


def sample_checked(
    bank: Any,
    model: Any,
    task: Any,
    queries: Int[Tensor, "Q n_ctx"] | Int[Tensor, " n_ctx"] | Sequence[Any] | str,  # a list of texts; checked here
    site: SiteLike,
    positions: Int[Tensor, " Q"] | Sequence[int | str] | int | str,
    *,
    schedule: Sequence[tuple[float, float]] = PAPER_SCHEDULE,
    n_repeats: int = 4,
    batch_size: int = 64,
    epsilon: float | None = None,
    metric: str = "l2",
    seed: int | None = 0,
    colour: bool = True,
    max_batch: int = 1024,
    warn_positions: bool = True,
    min_in_preimage: int | None = None,
    compile: bool = False,
) -> list[PreimageResult]:
    """:func:`sample_many` for a (bank, model, task) the caller has already checked.

    Skips ``bank.check_model`` (a hash of every weight and a probe forward) and
    ``bank.check_task``; everything else (arguments, site, positions, query format) is
    checked as in :func:`sample_many`. For callers that sample many times from one checked
    pair: :class:`~tl_inversion.evaluation.inverter.Inverter` and
    :func:`~tl_inversion.evaluation.evaluate`.

    Args:
        bank: as :func:`sample_many`.
        model: as :func:`sample_many`.
        task: as :func:`sample_many`.
        queries: as :func:`sample_many`.
        site: as :func:`sample_many`.
        positions: as :func:`sample_many`.
        schedule: as :func:`sample_many`.
        n_repeats: as :func:`sample_many`.
        batch_size: as :func:`sample_many`.
        epsilon: as :func:`sample_many`.
        metric: as :func:`sample_many`.
        seed: as :func:`sample_many`.
        colour: as :func:`sample_many`.
        max_batch: as :func:`sample_many`.
        warn_positions: as :func:`sample_many`.
        min_in_preimage: as :func:`sample_many`.
        compile: as :func:`sample_many`.

    Returns:
        One :class:`~tl_inversion.inversion.result.PreimageResult` per query, in order.

    Raises:
        As :func:`sample_preimage`, except ModelMismatchError.
    """
    task = as_task(task)
    metric, eps, settings = _check_settings(metric, epsilon, schedule, n_repeats, batch_size, max_batch,
                                            min_in_preimage)
    decoder, _ = bank.lookup(site)
    site = validate_site(site, model)
    qtok = query_tokens(task, queries)
    check_padding(qtok, getattr(task, "pad_id", None), bos_id=getattr(task, "bos_id", None), name="query tokens")
    check_query_format(task, qtok)
    pos = resolve_query_positions(task, qtok, positions)
    if warn_positions:
        check_query_positions(task, qtok, pos)
    n_q = qtok.shape[0]
    dec_device = next(decoder.parameters()).device
    gen = None if seed is None else torch.Generator(device=dec_device).manual_seed(int(seed))

    with torch.inference_mode(), eval_mode(decoder):
        z_q, z_bos, norms = _query_activations(model, qtok, pos, site, max_batch)
        draws, dists, mpos, distinct = _draw_and_verify(bank, model, task, site, z_q, settings, n_repeats, batch_size,
                                                        gen, metric, eps, max_batch, colour, min_in_preimage, compile)
        with _collector_paused():
            pool = _distinct_pool(bank, task, site, draws, distinct, z_q, z_bos, colour, max_batch)
    pool.update(dist=dists.numpy().astype(np.float64), mpos=mpos.numpy())
    shown = {"schedule": settings, "n_repeats": n_repeats, "batch_size": batch_size}
    z_q_cpu = z_q.detach().cpu()
    results = []
    with _collector_paused():
        tables = frames(pool, n_q, eps)
    for q, df in enumerate(tables):
        extra = {}
        if min_in_preimage is not None:
            extra = {"min_in_preimage": min_in_preimage, "repeats_drawn": len(df) // (len(settings) * batch_size)}
        results.append(
            PreimageResult(
                df=df,
                query_text=task.decode(qtok[q]),
                query_tokens=qtok[q].tolist(),
                site=site,
                position=int(pos[q]),
                z_q_norm=float(norms[q]),
                epsilon=eps,
                metric=metric,
                vocab=list(task.vocab),
                special_ids=tuple(int(i) for i in task.special_ids),
                z_q=z_q_cpu[q].clone(),
                seed=seed,
                settings={**shown, **extra},
            )
        )
    return results


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while the pool's lists are built.

    The tables hold a list of token ids and one of colour values per row (200,000 lists for
    100 queries of 1,024); the collector would walk the growing heap many times while they
    are made (measured: 2-3x the time of building them). The lists hold no cycles; the
    collector's previous state is restored.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _distinct_pool(bank: Any, task: Any, site: Any, draws: list[Draw], distinct: UniqueRows | None, z_q: Tensor,
                   z_bos: Tensor, colour: bool, max_batch: int) -> dict[str, Any]:
    """The pool's per-row arrays and its distinct (query, candidate) pairs, each decoded and coloured once.

    ``distinct`` is the round's :func:`unique_rows` when there was one round (reused), else None.
    Returns the ``columns`` of :func:`~tl_inversion.inversion.pool.frames` but ``dist``/``mpos``.
    """
    qidx = torch.cat([d.qidx for d in draws])
    tokens = torch.cat([d.tokens for d in draws])
    noise_np = np.concatenate([d.noise for d in draws])
    total = qidx.shape[0]
    if distinct is None:
        distinct = unique_rows(torch.cat([qidx[:, None], tokens], dim=1))
    uniq, inverse, counts, first = distinct
    u_q, u_tok = uniq[:, 0], uniq[:, 1:].contiguous()
    arange = torch.arange(total)
    u_task = bank.to_task_tokens(u_tok)
    pad_id = bank.lookup(site)[0].cfg.pad_id
    u_colour = None
    if colour:
        # a clean (noise 0) occurrence carries p(tok | prefix, z_q) from generation
        noisy = torch.from_numpy(noise_np > 0)
        rep = torch.full((uniq.shape[0],), 2 * total, dtype=torch.long).scatter_reduce(
            0, inverse, arange + total * noisy.long(), reduce="amin")
        gen_p = torch.cat([d.gen_lp for d in draws])[rep % total].exp()
        u_colour = colour_values(bank, site, u_tok, u_q, z_q, z_bos, gen_p, rep < total, max_batch)
    inv = inverse.numpy()
    return {
        "qidx": qidx.numpy(), "inverse": inv, "valid": task.is_valid(u_task).numpy()[inv],
        "temps": np.concatenate([d.temps for d in draws]), "noise": noise_np, "count": counts.numpy()[inv],
        "duplicate": (arange != first[inverse]).numpy(), "sample": np.concatenate([d.sample for d in draws]),
        "u_text": task.decode(u_task), "u_ids": u_task, "u_len": last_kept(u_tok == pad_id), "u_colour": u_colour,
    }


def _query_activations(model: Any, qtok: Tensor, pos: Tensor, site: Any, max_batch: int
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """``(z_q [Q, d], z_BOS [Q, d])`` on the model's device and ``||z_q||`` ``[Q]`` (CPU)."""
    z_q_parts, z_bos_parts = [], []
    for s in range(0, qtok.shape[0], max_batch):
        acts = harvest(model, qtok[s : s + max_batch], [site], validate=False)[site]
        rows = torch.arange(acts.shape[0], device=acts.device)
        z_q_parts.append(acts[rows, pos[s : s + max_batch].to(acts.device)].float())
        z_bos_parts.append(acts[:, 0].float())
    z_q = torch.cat(z_q_parts)
    norms = torch.linalg.vector_norm(z_q, dim=-1).cpu()
    zero = torch.nonzero(norms == 0).flatten().tolist()
    if zero:
        raise InputValueError(
            f"query {zero[0]}: the activation of {site} at position {int(pos[zero[0]])} is the zero vector; "
            "the distance ||z - z_q|| / ||z_q|| is undefined, so its preimage cannot be sampled"
        )
    return z_q, torch.cat(z_bos_parts), norms


def _draw_and_verify(bank: Any, model: Any, task: Any, site: Any, z_q: Tensor, settings: list[tuple[float, float]],
                     n_repeats: int, batch_size: int, gen: torch.Generator | None, metric: str, eps: float,
                     max_batch: int, colour: bool, min_in_preimage: int | None, compile_step: bool
                     ) -> tuple[list[Draw], Tensor, Tensor, UniqueRows | None]:
    """Draw every round and verify its distinct candidates; ``(draws, dist [n], matched_pos [n], distinct)``.

    Without ``min_in_preimage`` there is one round (all repeats of all queries). With it,
    one round per repeat of the schedule; after each, queries with at least
    ``min_in_preimage`` in-preimage rows stop drawing. ``distinct`` is the one round's
    :func:`~tl_inversion.inversion.batching.unique_rows` of ``(query, tokens)``, or None
    after several rounds.
    """
    n_q = z_q.shape[0]
    rounds = [n_repeats] if min_in_preimage is None else [1] * n_repeats
    active = torch.arange(n_q)
    found = torch.zeros(n_q, dtype=torch.long)
    draws, dists, mpos = [], [], []
    drawn = 0
    for reps in rounds:
        d = draw_round(bank, site, z_q, active, settings, reps, batch_size, drawn * len(settings) * batch_size,
                       gen, max_batch, colour, compile_step)
        drawn += reps
        keyed = torch.cat([d.qidx[:, None], d.tokens], dim=1)
        distinct = unique_rows(keyed)
        uniq, inverse = distinct.rows, distinct.inverse
        u_task = bank.to_task_tokens(uniq[:, 1:].contiguous())
        u_dist, u_pos = membership(model, u_task, site, z_q[uniq[:, 0].to(z_q.device)], task.special_ids, metric,
                                   max_batch)
        draws.append(d)
        dists.append(u_dist[inverse])
        mpos.append(u_pos[inverse])
        if min_in_preimage is not None:
            found += torch.bincount(d.qidx, weights=(dists[-1] <= eps).double(), minlength=n_q).long()
            active = torch.nonzero(found < min_in_preimage).flatten()
            if active.numel() == 0:
                break
    return draws, torch.cat(dists), torch.cat(mpos), distinct if len(draws) == 1 else None


def sample_preimage(
    bank: Any,
    model: Any,
    task: Any,
    query: Int[Tensor, " n_ctx"] | Int[Tensor, "rows n_ctx"] | str,
    site: SiteLike,
    position: int | str,
    *,
    schedule: Sequence[tuple[float, float]] = PAPER_SCHEDULE,
    n_repeats: int = 4,
    batch_size: int = 64,
    epsilon: float | None = None,
    metric: str = "l2",
    seed: int | None = 0,
    colour: bool = True,
    allow_mismatch: bool = False,
    max_batch: int = 1024,
    min_in_preimage: int | None = None,
    compile: bool = False,
) -> PreimageResult:
    """Sample, verify and colour the preimage of one query (InversionView Sec. 3).

    Steps: check the bank against the model; read ``z_q = f_site(query)[position]`` and
    ``z_BOS = f_site(query)[0]`` (one probed forward); for each ``(temperature, noise)`` in
    ``schedule``, repeated ``n_repeats`` times, generate ``batch_size`` candidates from
    ``z = z_q + N(0, I) * std(z_q) * noise`` (std over ``z_q``'s components, unbiased;
    ``noise = 0`` uses ``z_q`` exactly); verify every distinct candidate against the clean
    ``z_q`` (:func:`~tl_inversion.verify.membership`); colour each token by
    ``p(tok | prefix, z_q) - p(tok | prefix, z_BOS)``. The defaults give the paper's 1024
    candidates.

    Args:
        bank: a :class:`~tl_inversion.bank.DecoderBank` covering ``site``.
        model: the probed model the bank was trained on (any device).
        task: the task or its registered name (encoding, named positions, grammar, special ids).
        query: a text (encoded by ``task``) or token ids ``[n_ctx]`` / ``[1, n_ctx]``.
        site: the queried site, e.g. ``"blocks.0.attn.hook_result[0]"``.
        position: an absolute index (negative counts from the end) or a position name the
            task defines (e.g. ``":"`` for counting).
        schedule: ``(temperature, noise)`` settings; temperature 0 means greedy.
        n_repeats: times the schedule is repeated.
        batch_size: candidates per setting and repeat (the paper: 64).
        epsilon: membership threshold (``in_preimage`` is ``distance <= epsilon``);
            ``None`` means the paper's value for ``metric`` (0.1 for ``"l2"``, 0.25 for
            ``"cosine"``).
        metric: ``"l2"`` (``||z - z_q|| / ||z_q||``) or ``"cosine"`` (``1 - cos``).
        seed: seeds a ``torch.Generator`` on the decoder's device for generation and
            noise (same seed and arguments, same result); ``None`` uses the global RNG.
        colour: compute the per-token colour values (two teacher-forced decoder passes
            over the distinct candidates).
        allow_mismatch: warn instead of raising when the model is not the one the bank
            was trained on.
        max_batch: most rows per decoder call and per probed forward.
        min_in_preimage: stop early: draw the schedule one repeat at a time (all settings
            of a repeat, in schedule order, are drawn together) and stop once the query has
            at least this many in-preimage rows (duplicates counted); ``None`` draws all
            ``n_repeats``. The pool then has ``repeats_drawn x len(schedule) x batch_size``
            rows (``result.settings["repeats_drawn"]``).
        compile: run the decoder's per-token step through ``torch.compile`` (off by
            default; the first call compiles).

    Returns:
        A :class:`PreimageResult` (DataFrame sorted by distance; renders as HTML).

    Raises:
        SiteError: the bank has no decoder for ``site`` (the message lists the bank's
            sites), or the site does not fit the model.
        ModelMismatchError: the model differs from the bank's training model and
            ``allow_mismatch`` is False.
        PositionError: ``position`` is out of range or not a name the task defines.
        ValueError: a query of more than one row, a zero query activation, an invalid
            schedule or count, an unknown metric, or a text the task cannot encode.

    Warns:
        UntrainedPositionWarning: the position is special (BOS/EOS/PAD) or not one the
            task's decoders are trained on.
    """
    task = as_task(task)
    if isinstance(query, Tensor) and query.ndim == 2 and query.shape[0] != 1:
        raise InputValueError(f"sample_preimage takes one query, got {query.shape[0]} rows; use sample_many")
    if not isinstance(query, (str, Tensor)):
        raise InputTypeError(f"query must be a text or a token tensor [n_ctx] / [1, n_ctx], got {type(query).__name__}")
    if not isinstance(position, (int, str)) or isinstance(position, bool):
        raise InputTypeError(f"position must be an int or a task position name, got {type(position).__name__}")
    (result,) = sample_many(
        bank,
        model,
        task,
        query,
        site,
        position,
        schedule=schedule,
        n_repeats=n_repeats,
        batch_size=batch_size,
        epsilon=epsilon,
        metric=metric,
        seed=seed,
        colour=colour,
        allow_mismatch=allow_mismatch,
        max_batch=max_batch,
        min_in_preimage=min_in_preimage,
        compile=compile,
    )
    return result
