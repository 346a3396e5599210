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

How the work is batched: all candidates of all settings (and, in :func:`sample_many`, of
all queries) go through the decoder in calls of up to ``max_batch`` rows, with a per-row
temperature; identical candidates are verified and coloured once (their rows share the
result); the probed model runs once per ``max_batch`` distinct candidates, stopped after
the site's layer. Everything runs under ``torch.inference_mode()``; the decoder and the
probed model may live on different devices.

The result is a :class:`PreimageResult`: a pandas DataFrame with one row per candidate plus
the query, rendering itself as coloured HTML in a notebook (:mod:`tl_inversion.viewer`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from tl_inversion.model.activations import eval_mode, harvest
from tl_inversion.inversion.distance import check_metric, default_epsilon
from tl_inversion.model.sites import Site, SiteLike, validate_site
from tl_inversion.tasks import as_task
from tl_inversion.inversion.verify import membership
from tl_inversion.errors import InputTypeError, InputValueError, ModelMismatchError, SiteError, TLInversionWarning

__all__ = [
    "PAPER_SCHEDULE",
    "PreimageResult",
    "UntrainedPositionWarning",
    "sample_preimage",
    "sample_many",
]

#: The paper's sampling settings ``(temperature, noise)`` (InversionView Sec. 3 / App.).
PAPER_SCHEDULE: tuple[tuple[float, float], ...] = ((0.5, 0.0), (1.0, 0.0), (2.0, 0.0), (2.0, 0.1))

#: Columns of :attr:`PreimageResult.df`, in order.
COLUMNS = (
    "text",
    "tokens",
    "distance",
    "matched_pos",
    "in_preimage",
    "valid",
    "temperature",
    "noise",
    "count",
    "duplicate",
    "sample",
    "colour",
)


class UntrainedPositionWarning(TLInversionWarning):
    """The queried position is one the task's decoders were not trained on (or special)."""


@dataclass
class PreimageResult:
    """Verified samples of one query's preimage (InversionView Sec. 3).

    Args:
        df: one row per candidate, sorted by ``distance`` (stable: ties keep generation
            order). Columns:

            * ``text`` (str): ``task.decode`` of the candidate (no BOS, cut at EOS).
            * ``tokens`` (list[int]): the candidate's ids, ``BOS .. EOS`` (trailing PAD
              dropped); ``matched_pos`` and ``colour`` index into it.
            * ``distance`` (float): membership distance to the clean ``z_q`` (unitless,
              relative to ``||z_q||`` for ``"l2"``); ``inf`` if no position is usable.
            * ``matched_pos`` (int): the non-special position where it is reached; -1 if none.
            * ``in_preimage`` (bool): ``distance <= epsilon``.
            * ``valid`` (bool): the task's grammar accepts the candidate (``task.is_valid``).
            * ``temperature``, ``noise`` (float): the setting that generated the row.
            * ``count`` (int): how often this exact token sequence occurs in the pool.
            * ``duplicate`` (bool): True for every occurrence but the first (in generation
              order); ``df[~df.duplicate]`` is the pool of distinct inputs. All rows are
              kept, so fractions over ``df`` are fractions of the pool as sampled.
            * ``sample`` (int): index of the row in generation order.
            * ``colour`` (list[float] or None): ``p(tok | prefix, z_q) - p(tok | prefix,
              z_BOS)`` for each of ``tokens[1:]`` (EOS included), probabilities in
              ``[-1, 1]``; None when sampling ran with ``colour=False``.
        query_text: ``task.decode`` of the query input.
        query_tokens: the query's ids (``n_ctx`` of them, padding included).
        site: the queried site.
        position: absolute index of the queried position.
        z_q_norm: ``||z_q||_2`` in the probed model's units.
        epsilon: the membership threshold used for ``in_preimage``.
        metric: ``"l2"`` or ``"cosine"``.
        vocab: token strings by id (for rendering).
        special_ids: ids ignored by membership (BOS, EOS, PAD).
        z_q: the query activation ``[d_site]`` (CPU, float32).
        seed: the seed sampling used.
        settings: ``(temperature, noise)`` schedule, ``n_repeats`` and ``batch_size`` used.
        is_display: True when ``df`` is a :meth:`display_sample` subset of the pool.
    """

    df: pd.DataFrame
    query_text: str
    query_tokens: list[int]
    site: Site
    position: int
    z_q_norm: float
    epsilon: float
    metric: str
    vocab: list[str] = field(default_factory=list, repr=False)
    special_ids: tuple[int, ...] = ()
    z_q: Tensor | None = field(default=None, repr=False)
    seed: int | None = None
    settings: dict[str, Any] = field(default_factory=dict, repr=False)
    is_display: bool = False

    # summaries ----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Headline numbers of the pool (or of the display sample, if this is one).

        Returns:
            ``{"query", "site", "position", "metric", "epsilon", "z_q_norm",
            "n_candidates", "n_distinct", "in_preimage_fraction", "valid_fraction",
            "n_distinct_in_preimage", "min_distance", "median_distance"}``; fractions are
            over all rows (duplicates included); ``n_distinct*`` count distinct token
            sequences.
        """
        df = self.df
        keys = df["tokens"].map(tuple) if len(df) else pd.Series([], dtype=object)
        inside = df["in_preimage"].astype(bool) if len(df) else pd.Series([], dtype=bool)
        return {
            "query": self.query_text,
            "site": str(self.site),
            "position": self.position,
            "metric": self.metric,
            "epsilon": self.epsilon,
            "z_q_norm": self.z_q_norm,
            "n_candidates": int(len(df)),
            "n_distinct": int(keys.nunique()),
            "in_preimage_fraction": float(inside.mean()) if len(df) else math.nan,
            "valid_fraction": float(df["valid"].mean()) if len(df) else math.nan,
            "n_distinct_in_preimage": int(keys[inside].nunique()),
            "min_distance": float(df["distance"].min()) if len(df) else math.nan,
            "median_distance": float(df["distance"].median()) if len(df) else math.nan,
        }

    def by_setting(self) -> pd.DataFrame:
        """Per ``(temperature, noise)`` setting: rows, in-preimage and valid fractions, distinct inputs."""
        df = self.df.assign(_key=self.df["tokens"].map(tuple))
        return (
            df.groupby(["temperature", "noise"], sort=True)
            .agg(
                n=("distance", "size"),
                in_preimage_fraction=("in_preimage", "mean"),
                valid_fraction=("valid", "mean"),
                n_distinct=("_key", "nunique"),
                median_distance=("distance", "median"),
            )
            .reset_index()
        )

    def display_sample(
        self,
        k: int = 100,
        target_in: tuple[float, float] = (0.6, 0.8),
        *,
        distinct: bool = True,
        seed: int = 0,
    ) -> "PreimageResult":
        """The paper's display: ``k`` rows of the pool, about 60-80 % inside epsilon, by D.

        InversionView (Sec. 3 / App.) shows 100 samples drawn from the 1024-candidate pool so
        that about 60-80 % lie inside epsilon, sorted by distance. Here the inside share is
        the pool's own share clamped into ``target_in``; rows are drawn at random (seeded)
        from the inside and outside parts. When one part is too small, the other fills up
        (so the share can leave ``target_in``); when the pool has fewer than ``k`` rows,
        all are shown.

        Args:
            k: number of rows to show.
            target_in: ``(low, high)`` share of rows inside epsilon, ``0 <= low <= high <= 1``.
            distinct: draw from distinct inputs only (the first row of each token
                sequence; its ``count`` says how often it was sampled). Our choice for
                readability; ``False`` draws from the pool with its duplicates, as sampled.
            seed: seed of the draw.

        Returns:
            A :class:`PreimageResult` with ``is_display=True`` whose ``df`` holds the chosen
            rows sorted by distance (it renders as HTML in a notebook).

        Raises:
            ValueError: ``k < 0`` or an invalid ``target_in``.
        """
        low, high = (float(x) for x in target_in)
        if not 0.0 <= low <= high <= 1.0:
            raise InputValueError(f"target_in must be (low, high) with 0 <= low <= high <= 1, got {target_in!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise InputValueError(f"k must be an int >= 0, got {k!r}")
        pool = self.df
        if distinct:
            pool = pool[~pool["tokens"].map(tuple).duplicated(keep="first")]
        inside = pool[pool["in_preimage"].astype(bool)]
        outside = pool[~pool["in_preimage"].astype(bool)]
        k = min(k, len(pool))
        if k == 0:
            chosen = pool.iloc[:0]
        else:
            share = min(max(len(inside) / len(pool), low), high)
            k_in = min(int(round(share * k)), len(inside))
            k_out = min(k - k_in, len(outside))
            k_in = min(k - k_out, len(inside))
            rng = np.random.default_rng(seed)
            pick_in = rng.choice(len(inside), size=k_in, replace=False) if k_in else np.array([], dtype=int)
            pick_out = rng.choice(len(outside), size=k_out, replace=False) if k_out else np.array([], dtype=int)
            chosen = pd.concat([inside.iloc[np.sort(pick_in)], outside.iloc[np.sort(pick_out)]])
        chosen = chosen.sort_values("distance", kind="stable").reset_index(drop=True)
        return dataclasses.replace(self, df=chosen, is_display=True)

    # rendering -----------------------------------------------------------------------------
    def to_html_fragment(self, max_rows: int | None = 100) -> str:
        """HTML of the query and its samples (see :func:`tl_inversion.viewer.render_preimage`).

        A pool larger than ``max_rows`` is shown through :meth:`display_sample` ``(k=max_rows)``;
        ``max_rows=None`` shows every row.
        """
        from tl_inversion.viewer import render_preimage

        shown, note = self, ""
        if max_rows is not None and len(self.df) > max_rows and not self.is_display:
            shown = self.display_sample(k=max_rows)
            pool_in = float(self.df["in_preimage"].mean())
            note = (
                f"Showing {len(shown.df)} of {len(self.df)} candidates, drawn as in the paper so that about "
                f"60-80% lie inside epsilon; in the whole pool {pool_in:.0%} lie inside epsilon and "
                f"{float(self.df['valid'].mean()):.0%} are well-formed (the full pool is in .df)"
            )
        return render_preimage(shown, note=note)

    def _repr_html_(self) -> str:
        """Notebook display: :meth:`to_html_fragment` with at most 100 rows."""
        return self.to_html_fragment()

    def to_html(self, path: str | Path, max_rows: int | None = 100) -> Path:
        """Write a standalone HTML page of the query and its samples.

        Args:
            path: the file to write (parent folders are created).
            max_rows: as :meth:`to_html_fragment`.

        Returns:
            The path written.
        """
        from tl_inversion.viewer import html_page

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        title = f"InversionView preimage: {self.site} @ {self.position}"
        path.write_text(html_page(self.to_html_fragment(max_rows), title=title), encoding="utf-8")
        return path


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


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _query_tokens(task: Any, queries: Any) -> Tensor:
    if isinstance(queries, str):
        return task.encode(queries)
    if isinstance(queries, (list, tuple)) and queries and all(isinstance(q, str) for q in queries):
        return task.encode(list(queries))
    if isinstance(queries, Tensor):
        if queries.is_floating_point() or queries.dtype == torch.bool:
            raise InputTypeError(f"query tokens must be integer ids, got dtype {queries.dtype}")
        q = queries[None] if queries.ndim == 1 else queries
        if q.ndim != 2 or q.shape[0] == 0:
            raise InputValueError(f"query tokens must have shape [n_ctx] or [Q, n_ctx], got {tuple(queries.shape)}")
        return q.detach().long().cpu()
    raise InputTypeError(
        f"a query is a text (encoded by the task) or a token tensor [n_ctx] / [Q, n_ctx], got {type(queries).__name__}"
    )


def _resolve_positions(task: Any, tokens: Tensor, positions: Any) -> Tensor:
    q, n_ctx = tokens.shape
    if isinstance(positions, (int, str)) and not isinstance(positions, bool):
        pos = task.resolve_position(tokens, positions)
    elif isinstance(positions, Tensor) and positions.ndim == 0:
        pos = task.resolve_position(tokens, int(positions))
    else:
        items = positions.tolist() if isinstance(positions, Tensor) else list(positions)
        if len(items) != q:
            raise InputValueError(f"got {len(items)} positions for {q} queries; give one per query or one for all")
        pos = torch.cat([task.resolve_position(tokens[i : i + 1], p) for i, p in enumerate(items)])
    pos = torch.as_tensor(pos, dtype=torch.long).reshape(-1).cpu()
    if q and (int(pos.min()) < 0 or int(pos.max()) >= n_ctx):
        from tl_inversion.tasks.base import PositionError

        raise PositionError(f"resolved positions {pos.tolist()[:8]} fall outside the inputs (0..{n_ctx - 1})")
    return pos


def check_query_positions(task: Any, tokens: Int[Tensor, "Q n_ctx"], pos: Int[Tensor, " Q"]) -> None:
    """Warn about queries whose position cannot or was not trained to be inverted.

    Args:
        task: the task (``special_mask``; ``train_position_mask`` if it restricts positions).
        tokens: query rows ``[Q, n_ctx]``; pos: one absolute position per query ``[Q]``.

    Warns:
        UntrainedPositionWarning: at most three per kind: the position holds BOS/EOS/PAD
        (membership never compares those), or it is not a trained position (InversionView
        App. C: decoders see only the task's trained positions and BOS).
    """
    rows = torch.arange(tokens.shape[0])
    special = task.special_mask(tokens)[rows, pos]
    for i in torch.nonzero(special).flatten().tolist()[:3]:
        warnings.warn(
            f"query {i}: position {int(pos[i])} holds a special token (BOS/EOS/PAD): decoders are not trained "
            "on such activations, and membership compares samples only at their own non-special positions "
            "(so the query is not in its own preimage)",
            UntrainedPositionWarning,
            stacklevel=3,
        )
    mask_fn = getattr(task, "train_position_mask", None)
    if mask_fn is None:
        return
    trained = mask_fn(tokens)[rows, pos] | special
    for i in torch.nonzero(~trained).flatten().tolist()[:3]:
        names = getattr(task, "train_position_names", None)
        warnings.warn(
            f"query {i}: position {int(pos[i])} is not one the {getattr(task, 'name', 'task')} decoders are trained on"
            + (f" (positions {', '.join(map(repr, names))})" if names else "")
            + "; its samples come from an untrained condition",
            UntrainedPositionWarning,
            stacklevel=3,
        )


def _trim(row: list[int], pad_id: int) -> list[int]:
    end = len(row)
    while end > 1 and row[end - 1] == pad_id:
        end -= 1
    return row[:end]


# the pipeline --------------------------------------------------------------------------------
class QueryFormatWarning(TLInversionWarning):
    """A query does not follow the task's grammar (named positions may then be wrong)."""


def _check_query_format(task: Any, qtok: Tensor) -> None:
    """Refuse token ids outside the vocabulary; warn on queries the task's grammar rejects."""
    d_vocab = getattr(task, "d_vocab", None)
    if d_vocab is not None and bool(((qtok < 0) | (qtok >= d_vocab)).any()):
        raise InputValueError(f"query token ids must lie in 0..{d_vocab - 1} (the {getattr(task, 'name', 'task')} vocabulary)")
    is_valid = getattr(task, "is_valid", None)
    if is_valid is None:
        return
    ok = is_valid(qtok.cpu())
    if not bool(ok.all()):
        bad = [task.decode(qtok[i].cpu()) for i in (~ok).nonzero().flatten().tolist()[:3]]
        warnings.warn(
            f"{int((~ok).sum())} quer{'y does' if int((~ok).sum()) == 1 else 'ies do'} not follow the "
            f"{getattr(task, 'name', 'task')} format (e.g. {bad}); named positions are found by the format "
            "and may point at the wrong token",
            QueryFormatWarning,
            stacklevel=3,
        )


def sample_many(
    bank: Any,
    model: Any,
    task: Any,
    queries: Int[Tensor, "Q n_ctx"] | Sequence[str] | str,
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
        schedule, n_repeats, batch_size, epsilon, metric, seed, colour, allow_mismatch,
            max_batch: as :func:`sample_preimage`.
        warn_positions: warn (:class:`UntrainedPositionWarning`) about special or untrained
            query positions (callers that warned once already pass ``False``).

    Returns:
        One :class:`PreimageResult` per query, in order.

    Raises:
        As :func:`sample_preimage`.
    """
    task = as_task(task)
    metric = check_metric(metric)
    eps = default_epsilon(metric) if epsilon is None else float(epsilon)
    if not eps > 0:
        raise InputValueError(f"epsilon must be a positive distance (paper: 0.1 for l2, 0.25 for cosine), got {epsilon}")
    settings = _check_schedule(schedule)
    n_repeats = _positive_int("n_repeats", n_repeats)
    batch_size = _positive_int("batch_size", batch_size)
    max_batch = _positive_int("max_batch", max_batch)
    decoder, site_idx = bank.lookup(site)
    site = validate_site(site, model)
    bank.check_model(model, allow_mismatch=allow_mismatch)
    bank.check_task(task)
    qtok = _query_tokens(task, queries)
    _check_query_format(task, qtok)
    pos = _resolve_positions(task, qtok, positions)
    if warn_positions:
        check_query_positions(task, qtok, pos)
    n_q, n_ctx = qtok.shape
    dec_device = next(decoder.parameters()).device
    pad_id = decoder.cfg.pad_id
    if seed is None:
        gen = None
    else:
        gen = torch.Generator(device=dec_device).manual_seed(int(seed))

    with torch.inference_mode(), eval_mode(decoder):
        # 1. query activations z_q and z_BOS (one probed forward per max_batch queries)
        z_q_parts, z_bos_parts = [], []
        for s in range(0, n_q, max_batch):
            acts = harvest(model, qtok[s : s + max_batch], [site], validate=False)[site]
            rows = torch.arange(acts.shape[0], device=acts.device)
            z_q_parts.append(acts[rows, pos[s : s + max_batch].to(acts.device)].float())
            z_bos_parts.append(acts[:, 0].float())
        z_q = torch.cat(z_q_parts)  # [Q, d] on the model's device
        z_bos = torch.cat(z_bos_parts)
        norms = torch.linalg.vector_norm(z_q, dim=-1).cpu()
        zero = torch.nonzero(norms == 0).flatten().tolist()
        if zero:
            raise InputValueError(
                f"query {zero[0]}: the activation of {site} at position {int(pos[zero[0]])} is the zero vector; "
                "the distance ||z - z_q|| / ||z_q|| is undefined, so its preimage cannot be sampled"
            )

        # 2. candidates: per query, n_repeats x schedule x batch_size rows
        per_setting = [st for _ in range(n_repeats) for st in settings]
        temps_np = np.array([t for t, _ in per_setting for _ in range(batch_size)], dtype=np.float64)
        noise_np = np.array([s for _, s in per_setting for _ in range(batch_size)], dtype=np.float64)
        per_q = temps_np.shape[0]
        total = n_q * per_q
        qidx = torch.arange(n_q).repeat_interleave(per_q)
        temps = torch.from_numpy(temps_np).float().repeat(n_q)
        noise = torch.from_numpy(noise_np).float().repeat(n_q)

        zq_dec = z_q.to(dec_device)
        std = torch.nan_to_num(zq_dec.std(dim=-1), nan=0.0)  # std over z_q's components
        z_rows = zq_dec[qidx.to(dec_device)]
        noisy = noise > 0
        if bool(noisy.any()):
            idx = torch.nonzero(noisy).flatten().to(dec_device)
            eps_noise = torch.randn(idx.shape[0], z_rows.shape[1], generator=gen, device=dec_device)
            scale = (std[qidx[noisy].to(dec_device)] * noise[noisy].to(dec_device))[:, None]
            z_rows[idx] = z_rows[idx] + eps_noise * scale
        z_cond = bank.pad(z_rows, site).to(dec_device)
        cands = []
        for s in range(0, total, max_batch):
            cands.append(
                decoder.generate(
                    z_cond[s : s + max_batch], site_idx, temperature=temps[s : s + max_batch].to(dec_device), generator=gen
                ).cpu()
            )
        tokens = torch.cat(cands)  # [total, n_ctx_dec]

        # 3. distinct (query, candidate) pairs: verified and coloured once
        keyed = torch.cat([qidx[:, None], tokens], dim=1)
        uniq, inverse, counts = torch.unique(keyed, dim=0, return_inverse=True, return_counts=True)
        u_q, u_tok = uniq[:, 0], uniq[:, 1:].contiguous()
        first = torch.full((uniq.shape[0],), total, dtype=torch.long).scatter_reduce(
            0, inverse, torch.arange(total), reduce="amin"
        )
        duplicate = torch.arange(total) != first[inverse]
        # u_tok is in the decoders' ids (for colour); the probed model and the task read u_task
        u_task = bank.to_task_tokens(u_tok)
        u_dist, u_pos = membership(model, u_task, site, z_q[u_q.to(z_q.device)], task.special_ids, metric, max_batch)
        u_valid = task.is_valid(u_task)
        u_text = task.decode(u_task)
        remap = bank.meta.get("decoder_ids") or {}
        back = {remap["eos"]: remap["task_eos"], remap["pad"]: remap["task_pad"]} if remap else {}
        u_tokens = [[back.get(t, t) for t in _trim(r, pad_id)] for r in u_tok.tolist()]

        # 4. colour: p(tok | prefix, z_q) - p(tok | prefix, z_BOS), teacher-forced
        u_colour: list[list[float] | None] = [None] * uniq.shape[0]
        if colour:
            zq_pad = bank.pad(z_q, site).to(dec_device)
            zb_pad = bank.pad(z_bos, site).to(dec_device)
            diffs = []
            for s in range(0, uniq.shape[0], max_batch):
                tok_b = u_tok[s : s + max_batch].to(dec_device)
                qi = u_q[s : s + max_batch].to(dec_device)
                lp_q = decoder.token_logprobs(tok_b, zq_pad[qi], site_idx)
                lp_b = decoder.token_logprobs(tok_b, zb_pad[qi], site_idx)
                diffs.append((lp_q.exp() - lp_b.exp()).cpu())
            diff = torch.cat(diffs).tolist()
            u_colour = [d[: len(t) - 1] for d, t in zip(diff, u_tokens)]

    z_q_cpu = z_q.detach().cpu().clone()
    inv = inverse.tolist()
    dist = u_dist[inverse]
    mpos = u_pos[inverse]
    results = []
    for q in range(n_q):
        sl = slice(q * per_q, (q + 1) * per_q)
        rows = inv[sl]
        df = pd.DataFrame(
            {
                "text": [u_text[i] for i in rows],
                "tokens": [list(u_tokens[i]) for i in rows],
                "distance": dist[sl].numpy().astype(np.float64),
                "matched_pos": mpos[sl].numpy(),
                "in_preimage": (dist[sl] <= eps).numpy(),
                "valid": u_valid[inverse[sl]].numpy(),
                "temperature": temps_np,
                "noise": noise_np,
                "count": counts[inverse[sl]].numpy(),
                "duplicate": duplicate[sl].numpy(),
                "sample": np.arange(per_q),
                "colour": [None if u_colour[i] is None else list(u_colour[i]) for i in rows],
            },
            columns=list(COLUMNS),
        )
        df = df.sort_values("distance", kind="stable").reset_index(drop=True)
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
                settings={"schedule": settings, "n_repeats": n_repeats, "batch_size": batch_size},
            )
        )
    return results


def sample_preimage(
    bank: Any,
    model: Any,
    task: Any,
    query: Int[Tensor, " n_ctx"] | Int[Tensor, "1 n_ctx"] | str,
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
    )
    return result
