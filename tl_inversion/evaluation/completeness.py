"""Completeness as numbers: does the decoder cover the TRUE preimage of a query?

InversionView (Huang et al. 2024, arXiv 2405.17653, Sec. 3 / App.) checks completeness
only as a picture, for addition: over all 810,000 inputs, the decoder's log p(x | z_q)
against the distance D(x). Where the input space can be enumerated (addition's 810,000
inputs, a counting split, any candidate set) this module computes the true
epsilon-preimage by brute force and reports

* **AUROC** of the decoder's sequence log-probability ``log p(x | z_q)`` (sum of
  :meth:`~tl_inversion.decoder.Decoder.token_logprobs`) for separating preimage members
  from non-members (Mann-Whitney U with average ranks for ties; 1 = every member is more
  likely than every non-member, 0.5 = chance);
* **recall**: the fraction of distinct true-preimage members (or of their task-level
  classes, given ``class_fn``) that appear among ``n_samples`` decoder samples;
* the paper's scatter, distance vs log-probability, is drawn by
  :func:`tl_inversion.evaluation.plots.plot_completeness`.

Cost and memory: distances need one probed forward per ``batch_size`` candidates, stopped
after the site's layer (cheap); memory is ``[batch_size, n_ctx, d_site]`` per batch plus
``[n_queries, N]`` floats (``auroc_ideal`` re-reads the scored candidates in batches of
``batch_size``, with a float64 copy of each batch's activations). Decoder scoring is the
heavy part (one teacher-forced decoder pass per candidate and query), so
``max_candidates`` caps the number of candidates scored per query: all members (up to
``max_candidates // 2``) plus a uniform random sample of non-members fill the cap. AUROC
does not depend on the class proportions, so sampling within each class leaves it unbiased;
recall always uses the full member set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_inversion.errors import InputValueError
from tl_inversion.inversion.decode import decode_to_task
from tl_inversion.inversion.distance import best_position, check_metric, default_epsilon
from tl_inversion.inversion.pool import LOGIT_BUDGET
from tl_inversion.inversion.verify import membership, special_mask_of
from tl_inversion.model.activations import activations_at, harvest, model_device
from tl_inversion.model.sites import SiteLike, validate_site
from tl_inversion.training.noise import kernel_log_posterior

__all__ = [
    "auroc",
    "preimage_distances",
    "preimage_distances_by_site",
    "decoder_logprobs",
    "completeness",
    "CompletenessResult",
]


def auroc(
    scores: Sequence[float | int] | Tensor | np.ndarray, labels: Sequence[int | bool] | Tensor | np.ndarray
) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (1 = positive), ties counted half.

    Computed with the Mann-Whitney U statistic on average ranks:
    ``AUROC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` where ``R_pos`` is the sum of
    the positives' ranks; equal to ``P(s_pos > s_neg) + 0.5 P(s_pos = s_neg)``.

    Args:
        scores: ``[N]`` real scores (higher = more positive); ``-inf`` is allowed.
        labels: ``[N]`` 0/1 or bool.

    Returns:
        AUROC in ``[0, 1]``; NaN when one class is empty.

    Raises:
        ValueError: shapes differ, labels other than 0/1, or NaN scores.
    """
    s = np.asarray(
        torch.as_tensor(scores).double().cpu() if isinstance(scores, Tensor) else scores, dtype=np.float64
    ).reshape(-1)
    y = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).reshape(-1)
    if s.shape != y.shape:
        raise InputValueError(f"scores and labels must have the same length, got {s.shape[0]} and {y.shape[0]}")
    if np.isnan(s).any():
        raise InputValueError("scores contain NaN")
    if not np.isin(y, [0, 1]).all():
        raise InputValueError("labels must be 0/1 or bool")
    y = y.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average rank (1-based) of each block of equal scores
    starts = np.r_[0, np.flatnonzero(sorted_s[1:] != sorted_s[:-1]) + 1]
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def preimage_distances(
    model: Any,
    candidates: Int[Tensor, "N n_ctx"],
    site: SiteLike,
    z_q: Float[Tensor, "Q d"] | Float[Tensor, " d"],
    special_ids: Sequence[int],
    *,
    metric: str = "l2",
    batch_size: int = 4096,
    progress: bool = True,
) -> tuple[Float[Tensor, "Q N"], Int[Tensor, "Q N"]]:
    """Membership distance of every candidate to every query, one probed forward per batch.

    The same rule as :func:`tl_inversion.verify.membership` (minimum over non-special
    positions), vectorised over queries: each batch of candidates is harvested once and
    compared with all ``Q`` query activations.

    Args:
        model: the probed model.
        candidates: ``[N, n_ctx]`` token ids (e.g. all 810,000 addition inputs).
        site: the site.
        z_q: ``[Q, d_site]`` query activations (or one ``[d_site]``).
        special_ids: ids whose positions are ignored (BOS, EOS, PAD).
        metric: ``"l2"`` or ``"cosine"``.
        batch_size: candidates per forward.
        progress: tqdm bar over batches.

    Returns:
        ``(dist [Q, N] float32, matched_pos [Q, N] int64)`` on CPU.

    Raises:
        SiteError: the site does not fit the model. ValueError: bad metric or widths.
    """
    return preimage_distances_by_site(
        model, candidates, {site: z_q}, special_ids, metric=metric, batch_size=batch_size, progress=progress
    )[site]


def preimage_distances_by_site(
    model: Any,
    candidates: Int[Tensor, "N n_ctx"],
    z_by_site: dict[Any, Float[Tensor, "Q d"]],
    special_ids: Sequence[int],
    *,
    metric: str = "l2",
    batch_size: int = 4096,
    progress: bool = True,
) -> dict[Any, tuple[Float[Tensor, "Q N"], Int[Tensor, "Q N"]]]:
    """:func:`preimage_distances` for several sites from ONE probed forward per batch.

    Args:
        model: the probed model (as in :func:`preimage_distances`).
        candidates: ``[N, n_ctx]`` candidate inputs.
        special_ids: token ids never matched (as in :func:`preimage_distances`).
        metric: ``"l2"`` or ``"cosine"``.
        batch_size: candidates per probed forward.
        progress: tqdm bars.
        z_by_site: ``{site: [Q_s, d_site] query activations}`` (each ``[d_site]`` allowed);
            a site is a :class:`~tl_inversion.sites.Site` or its string.

    Returns:
        ``{site: (dist [Q_s, N] float32, matched_pos [Q_s, N] int64)}`` on CPU, keyed as
        ``z_by_site``. Memory: 12 bytes per query, candidate
        and site (addition's 810,000 inputs, 16 queries, 13 sites: about 2 GB).

    Raises:
        SiteError: a site does not fit the model. ValueError: bad metric or widths.
    """
    check_metric(metric)
    device = model_device(model)
    valid = {key: validate_site(key, model) for key in z_by_site}
    zs = {key: (z[None] if z.ndim == 1 else z).detach().to(device) for key, z in z_by_site.items()}
    n = candidates.shape[0]
    out = {
        key: (torch.empty(z.shape[0], n, dtype=torch.float32), torch.empty(z.shape[0], n, dtype=torch.long))
        for key, z in zs.items()
    }
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="true preimage", unit="batch"):
        batch = candidates[start : start + batch_size]
        acts = harvest(model, batch, list(dict.fromkeys(valid.values())), validate=False)
        mask = special_mask_of(batch, special_ids).to(device)
        for key, zq in zs.items():
            a = acts[valid[key]]
            if a.shape[-1] != zq.shape[-1]:
                raise InputValueError(f"z_q has width {zq.shape[-1]} but site {valid[key]} gives width {a.shape[-1]}")
            dist, pos = out[key]
            with torch.inference_mode():
                for i in range(zq.shape[0]):
                    d, p = best_position(a, zq[i], mask, metric)
                    dist[i, start : start + batch.shape[0]] = d.float().cpu()
                    pos[i, start : start + batch.shape[0]] = p.cpu()
    return out


def decoder_logprobs(
    bank: Any,
    site: SiteLike,
    z_q: Float[Tensor, " d"],
    candidates: Int[Tensor, "N n_ctx"],
    *,
    batch_size: int = 1024,
    progress: bool = False,
    blurred: Any = None,  # True, False or None; checked here with a clear message
) -> Float[Tensor, " N"]:
    """Sequence log-probability ``log p(x | z_q)`` (nats) of each candidate under the site's decoder.

    Teacher-forced sum of :meth:`~tl_inversion.decoder.Decoder.token_logprobs` (PAD
    targets count 0), in calls of at most ``batch_size`` candidates (fewer where
    ``rows x n_ctx x vocab`` would pass :data:`~tl_inversion.inversion.pool.LOGIT_BUDGET`).
    ``blurred``: the noise flag of the condition (:meth:`~tl_inversion.bank.DecoderBank.pad`);
    ``None`` means blurred exactly when the bank has a noise flag (its blurred posterior is
    the one trained towards the epsilon-preimage).

    Returns:
        ``[N]`` float32 on CPU (``<= 0``).

    Raises:
        SiteError: the bank has no decoder for ``site``.
        ValueError: ``blurred=True`` for a bank without a noise flag.
        TypeError: ``blurred`` is not None, True or False.
    """
    dec, idx = bank.lookup(site)
    z = bank.pad(z_q.reshape(1, -1), site, blurred=_blurred(bank, blurred))
    out = torch.empty(candidates.shape[0], dtype=torch.float32)
    was_training = dec.training
    dec.eval()
    # rows per call also bounded by the logits' size (a GPT-2-sized vocabulary: about 127 rows of 21 ids)
    batch_size = max(1, min(batch_size, LOGIT_BUDGET // (candidates.shape[-1] * dec.cfg.vocab_size)))
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, candidates.shape[0], batch_size), disable=not progress, desc="decoder log p"):
                x = bank.to_decoder_tokens(candidates[start : start + batch_size].to(bank.device))
                lp = dec.token_logprobs(x, z.expand(x.shape[0], -1), idx)
                out[start : start + x.shape[0]] = lp.sum(-1).float().cpu()
    finally:
        dec.train(was_training)
    return out


@dataclass
class CompletenessResult:
    """Result of :func:`completeness`.

    Attributes:
        summary: one row per query: ``query`` (index), ``text``, ``position``,
            ``n_candidates``, ``n_members`` (true epsilon-preimage size),
            ``members_at_query_position`` (fraction of members whose closest position, the
            arg-min of the membership distance, is the query's own position: low values mean
            most of the preimage matches z_q somewhere else in the input), ``n_scored``
            (candidates scored by the decoder), ``auroc``, ``auroc_at_query_position`` and
            ``auroc_elsewhere`` (the scored members matching at the query's position, resp.
            at another one, each against all scored non-members: which kind of member the
            decoder misses; NaN where a group is empty), ``auroc_ideal`` (the AUROC, on the
            same scored candidates, of the posterior a perfectly trained decoder would give:
            :func:`tl_inversion.noise.kernel_log_posterior` of the kernel the condition was
            trained with, over the task's training positions; a decoder can beat it only
            by its errors; 1 by construction for the ``"preimage"`` kernel at epsilon; NaN
            when it does not apply: the site's decoder was trained on exact activations only
            (``train_noise`` 0), or the bank does not record how the site was trained),
            ``blurred`` (the noise flag the decoder was conditioned with), ``n_samples``,
            ``n_distinct_samples``, ``sample_faithfulness`` (fraction of samples inside
            epsilon), ``recall`` (distinct members found among the samples / members) and,
            with ``class_fn``, ``n_member_classes`` and ``class_recall``.
        scores: one row per scored (query, candidate): ``query``, ``candidate`` (index into
            the candidate set), ``distance``, ``matched_position`` (the arg-min position),
            ``logp`` (nats), ``member`` (bool).
        epsilon: the threshold used; metric: ``"l2"`` or ``"cosine"``.
    """

    summary: pd.DataFrame
    scores: pd.DataFrame
    epsilon: float
    metric: str


def _blurred(bank: Any, blurred: Any) -> bool:
    """The condition asked for: ``None`` means blurred exactly when the bank has a noise flag."""
    return bank.noise_flag if blurred is None else bank.check_blurred(blurred)


def _auroc_by_match(logp: np.ndarray, member: np.ndarray, at_query: np.ndarray) -> dict[str, float]:
    """AUROC of the members matching at the query's position, and of those matching
    elsewhere, each against all scored non-members (NaN where a group is empty).
    """
    out = {}
    for name, group in (("auroc_at_query_position", member & at_query), ("auroc_elsewhere", member & ~at_query)):
        keep = group | ~member
        out[name] = auroc(logp[keep], group[keep])
    return out


def _training_kernel(bank: Any, site: Any, blurred: bool) -> tuple[str | None, float] | None:
    """The kernel the condition was trained with: ``(shape, level)``, ``(None, 0)`` for the exact
    rows of a bank with a noise flag (flag 0), ``None`` when ``auroc_ideal`` does not apply: the
    bank does not record how the site was trained, or the site was trained on exact
    activations only (``train_noise`` 0, as the paper: a point-mass kernel ranks only inputs
    with numerically identical activations, a number that says nothing about the decoder).
    Without a noise flag every row had the run's ``train_noise``.
    """
    cfg = bank.training_config(site)
    if cfg is None or not cfg.get("train_noise"):
        return None
    if bank.noise_flag and not blurred:
        return None, 0.0
    return cfg.get("train_noise_shape", "gaussian"), float(cfg["train_noise"])


def _ideal_logp(
    model: Any, task: Any, site: Any, z_q: Tensor, scored: Tensor, kernel: tuple[str | None, float], batch_size: int
) -> np.ndarray:
    """:func:`~tl_inversion.noise.kernel_log_posterior` of ``scored`` inputs, batch by batch,
    over the positions training draws from (the task's training positions).
    """
    out = []
    for i in range(0, scored.shape[0], batch_size):
        x = scored[i : i + batch_size]
        acts = harvest(model, x, [site], validate=False)[site]
        out.append(kernel_log_posterior(z_q, acts, ~task.train_position_mask(x).bool().cpu(), *kernel).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _row_keys(tokens: Tensor) -> list[bytes]:
    return [r.tobytes() for r in tokens.cpu().numpy().astype(np.int64)]


def _classes(class_fn: Callable[[Tensor], Any], tokens: Tensor) -> list[Hashable]:
    c = class_fn(tokens)
    if isinstance(c, Tensor):
        c = c.cpu()
        return [tuple(r) for r in c.tolist()] if c.ndim > 1 else c.tolist()
    return list(c)


def completeness(
    model: Any,
    bank: Any,
    task: Any,
    site: SiteLike,
    queries: Int[Tensor, "Q n_ctx"],
    positions: Int[Tensor, " Q"] | int | str,
    candidates: Int[Tensor, "N n_ctx"],
    *,
    epsilon: float | None = None,
    metric: str = "l2",
    max_candidates: int | None = 20000,
    n_samples: int = 256,
    temperature: float = 1.0,
    class_fn: Callable[[Tensor], Any] | None = None,
    seed: int = 0,
    batch_size: int = 4096,
    decoder_batch_size: int = 1024,
    progress: bool = True,
    blurred: Any = None,  # True, False or None; checked here with a clear message
    distances: tuple[Tensor, Tensor] | None = None,
) -> CompletenessResult:
    """Completeness of a decoder against the brute-force true preimage (numbers, not a picture).

    For each query ``(queries[i], positions[i])``: read ``z_q`` at ``site``; compute every
    candidate's membership distance (min over non-special positions; true preimage =
    distance ``<= epsilon``); score a capped set of candidates with the decoder's
    ``log p(x | z_q)`` and report the AUROC separating members from non-members; draw
    ``n_samples`` decoder samples at ``temperature`` and report recall of the distinct
    members (and of their classes under ``class_fn``).

    Args:
        model: the probed model.
        bank: the decoders (must cover ``site``).
        task: gives ``special_ids``, named positions and ``decode``.
        site: the site.
        queries: ``[Q, n_ctx]`` query inputs.
        positions: per query ``[Q]`` absolute indices, or one index / task-named position.
        candidates: ``[N, n_ctx]`` the enumerated input space (e.g.
            ``addition.paper_split("all")``, 810,000 rows).
        epsilon: preimage threshold; ``None``: the paper's (0.1 for l2, 0.25 for cosine).
        metric: ``"l2"`` or ``"cosine"``.
        max_candidates: most candidates scored by the decoder per query (all members up
            to half of it, the rest uniform non-members); ``None`` scores all ``N`` (on CPU,
            810,000 rows take minutes per query). Recall always uses every member.
        n_samples: decoder samples per query for recall (0 skips recall).
        temperature: sampling temperature for recall.
        class_fn: ``fn(tokens [n, n_ctx]) -> n classes`` (a list or a ``[n]``/``[n, k]``
            tensor), e.g. counting's (query letter, count); enables ``class_recall``.
        seed: seed of the subsample and of the samples.
        batch_size: candidates per probed forward.
        decoder_batch_size: candidates per decoder pass.
        progress: tqdm bars.
        blurred: the noise flag of the condition for scoring and sampling (banks trained
            with ``train_noise_flag``; :meth:`~tl_inversion.bank.DecoderBank.pad`);
            ``None``: blurred exactly when the bank has a noise flag. Recorded in the
            summary's ``blurred`` column.
        distances: ``(dist [Q, N], matched_pos [Q, N])`` of these queries at this site, as
            :func:`preimage_distances_by_site` gives them for many sites at once; ``None``
            computes them here (one probed pass over the candidates).

    Returns:
        :class:`CompletenessResult` with ``summary`` and ``scores`` DataFrames.

    Raises:
        SiteError: the site fits neither the model nor the bank.
        ValueError: candidates and queries of different widths, a bad metric,
            ``max_candidates < 2``, negative ``n_samples``, or ``blurred=True`` for a bank
            without a noise flag.
        PositionError: a position the task does not define.
    """
    check_metric(metric)
    eps = default_epsilon(metric) if epsilon is None else float(epsilon)
    site = validate_site(site, model)
    bank.lookup(site)  # a site the bank lacks fails here, before the brute force
    blurred = _blurred(bank, blurred)  # a condition the bank lacks fails here, before the brute force
    queries = queries[None] if queries.ndim == 1 else queries
    if queries.shape[-1] != candidates.shape[-1]:
        raise InputValueError(f"queries have {queries.shape[-1]} positions but candidates {candidates.shape[-1]}")
    if max_candidates is not None and max_candidates < 2:
        raise InputValueError(f"max_candidates must be >= 2 or None, got {max_candidates}")
    if n_samples < 0:
        raise InputValueError(f"n_samples must be >= 0, got {n_samples}")
    if isinstance(positions, (int, str)):
        positions = task.resolve_position(queries, positions)
    positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    z_q = activations_at(model, queries, positions, [site], validate=False)[site]
    if distances is None:
        dist, matched = preimage_distances(
            model, candidates, site, z_q, task.special_ids, metric=metric, batch_size=batch_size, progress=progress
        )
    else:
        dist, matched = distances
        if tuple(dist.shape) != (queries.shape[0], candidates.shape[0]) or dist.shape != matched.shape:
            raise InputValueError(
                f"distances must be two [{queries.shape[0]}, {candidates.shape[0]}] tensors (queries x "
                f"candidates), got {list(dist.shape)} and {list(matched.shape)}"
            )
    kernel = _training_kernel(bank, site, blurred)
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=bank.device).manual_seed(seed)
    n = candidates.shape[0]
    summaries, score_frames = [], []
    for qi in tqdm(range(queries.shape[0]), disable=not progress, desc="completeness", unit="query"):
        d = dist[qi].numpy()
        member = d <= eps
        members = np.flatnonzero(member)
        if max_candidates is None or max_candidates >= n:
            chosen = np.arange(n)
        else:
            keep_m = (
                members
                if len(members) <= max_candidates // 2
                else rng.choice(members, max_candidates // 2, replace=False)
            )
            non = np.flatnonzero(~member)
            k = min(len(non), max_candidates - len(keep_m))
            chosen = np.sort(np.r_[keep_m, rng.choice(non, k, replace=False)]).astype(np.int64)
        lp = decoder_logprobs(
            bank,
            site,
            z_q[qi],
            candidates[torch.from_numpy(chosen)],
            blurred=blurred,
            batch_size=decoder_batch_size,
            progress=progress and len(chosen) > 10 * decoder_batch_size,
        )
        at = matched[qi].numpy()
        ideal = float("nan")
        if kernel is not None:
            ideal = auroc(
                _ideal_logp(model, task, site, z_q[qi], candidates[torch.from_numpy(chosen)], kernel, batch_size),
                member[chosen],
            )
        score_frames.append(
            pd.DataFrame(
                {
                    "query": qi,
                    "candidate": chosen,
                    "distance": d[chosen],
                    "matched_position": at[chosen],
                    "logp": lp.numpy(),
                    "member": member[chosen],
                }
            )
        )
        row: dict[str, Any] = {
            "query": qi,
            "text": task.decode(queries[qi]),
            "position": int(positions[qi]),
            "n_candidates": n,
            "n_members": int(len(members)),
            "members_at_query_position": float((at[members] == int(positions[qi])).mean())
            if len(members)
            else float("nan"),
            "n_scored": int(len(chosen)),
            "auroc": auroc(lp.numpy(), member[chosen]),
            **_auroc_by_match(lp.numpy(), member[chosen], at[chosen] == int(positions[qi])),
            "auroc_ideal": ideal,
            "blurred": blurred,
        }
        if n_samples:
            samples = decode_to_task(
                bank,
                site,
                z_q[qi].reshape(1, -1).expand(n_samples, -1),
                temperature=temperature,
                generator=gen,
                blurred=blurred,
            )
            s_dist, _ = membership(model, samples, site, z_q[qi], task.special_ids, metric, batch_size)
            keys = _row_keys(candidates[torch.from_numpy(members)]) if len(members) else []
            sample_keys = _row_keys(samples) if samples.shape[-1] == candidates.shape[-1] else []
            found = set(keys) & set(sample_keys)
            row.update(
                {
                    "n_samples": n_samples,
                    "n_distinct_samples": len(set(sample_keys)),
                    "sample_faithfulness": float((s_dist <= eps).float().mean()),
                    "recall": len(found) / len(keys) if keys else float("nan"),
                }
            )
            if class_fn is not None:
                member_classes = (
                    set(_classes(class_fn, candidates[torch.from_numpy(members)])) if len(members) else set()
                )
                inside = samples[s_dist <= eps]
                sample_classes = set(_classes(class_fn, inside)) if inside.shape[0] else set()
                row["n_member_classes"] = len(member_classes)
                row["class_recall"] = (
                    len(member_classes & sample_classes) / len(member_classes) if member_classes else float("nan")
                )
        summaries.append(row)
    return CompletenessResult(pd.DataFrame(summaries), pd.concat(score_frames, ignore_index=True), eps, metric)
