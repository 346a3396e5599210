"""The batched steps of preimage sampling: draw candidates, colour them, assemble the tables.

Private helpers of :mod:`tl_inversion.inversion.sampling` (InversionView, arXiv 2405.17653,
Sec. 3). Work is shared across queries and schedule settings: one ``generate`` call per
``max_batch`` rows with per-row temperature and noise; the colour's teacher-forced passes
run on distinct candidates sorted by length, each chunk cut to its longest row (causal
decoder, right padding: the cut columns cannot change the kept ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from tl_inversion.inversion.batching import last_kept, length_chunks
from tl_inversion.inversion.decode import decode_to_task
from tl_inversion.inversion.result import COLUMNS

#: Most logit entries one teacher-forced call may hold (2**27: 512 MiB of float32), so that a
#: GPT-2-sized vocabulary is scored 127 rows of 21 tokens at a time whatever ``max_batch`` is.
LOGIT_BUDGET = 2**27


@dataclass
class Draw:
    """One round of candidates (rows of several queries and settings), on the CPU.

    Attributes:
        qidx: query of each row ``[n]``; tokens: decoder ids ``[n, n_ctx_dec]``;
        temps/noise: the row's setting ``[n]`` (float64); sample: index of the row in its
        query's pool ``[n]``; gen_lp: ``log p(token | prefix, z)`` from generation
        ``[n, n_ctx_dec - 1]`` (equals the colour's z_q term where noise is 0) or None.
    """

    qidx: Tensor
    tokens: Tensor
    temps: np.ndarray
    noise: np.ndarray
    sample: np.ndarray
    gen_lp: Tensor | None


def draw_round(bank: Any, site: Any, z_q: Tensor, queries: Tensor, settings: list[tuple[float, float]],
               n_repeats: int, batch_size: int, first_sample: int, gen: torch.Generator | None, max_batch: int,
               logprobs: bool, compile_step: bool) -> Draw:
    """Generate ``n_repeats x settings x batch_size`` candidates for each of ``queries``.

    Args:
        bank: the decoder bank.
        site: the site.
        z_q: ``[Q, d]`` clean query activations.
        queries: indices into ``z_q`` of the queries drawing this round ``[A]``.
        settings: ``(temperature, noise)`` pairs.
        n_repeats: repeats of ``settings`` (repeat-major order).
        batch_size: rows per setting and repeat.
        first_sample: the ``sample`` index of each query's first row this round.
        gen: the generator of noise and generation.
        max_batch: rows per decoder call.
        logprobs: keep the generation's log-probabilities.
        compile_step: ``torch.compile`` the generation step.

    Returns:
        A :class:`Draw` with ``A * n_repeats * len(settings) * batch_size`` rows.
    """
    decoder, _ = bank.lookup(site)
    dec_device = next(decoder.parameters()).device
    per_setting = [st for _ in range(n_repeats) for st in settings]
    temps_np = np.repeat(np.array([t for t, _ in per_setting], dtype=np.float64), batch_size)
    noise_np = np.repeat(np.array([s for _, s in per_setting], dtype=np.float64), batch_size)
    per_q = temps_np.shape[0]
    n_a = queries.shape[0]
    qidx = queries.repeat_interleave(per_q)
    temps = torch.from_numpy(temps_np).float().repeat(n_a)
    noise = torch.from_numpy(noise_np).float().repeat(n_a)
    zq_dec = z_q.to(dec_device)
    std = torch.nan_to_num(zq_dec.std(dim=-1), nan=0.0)  # std over z_q's components
    q_dev = qidx.to(dec_device)
    z_rows = zq_dec[q_dev]
    noisy = torch.nonzero(noise > 0).flatten()
    if noisy.numel():
        idx = noisy.to(dec_device)
        eps_noise = torch.randn(idx.shape[0], z_rows.shape[1], generator=gen, device=dec_device)
        scale = (std[q_dev[idx]] * noise[noisy].to(dec_device))[:, None]
        z_rows[idx] = z_rows[idx] + eps_noise * scale
    out = decode_to_task(bank, site, z_rows, temperature=temps, generator=gen, max_batch=max_batch,
                         task_ids=False, return_logprobs=logprobs, compile_step=compile_step)
    tokens, gen_lp = out if logprobs else (out, None)
    sample = np.tile(np.arange(first_sample, first_sample + per_q), n_a)
    return Draw(qidx, tokens, np.tile(temps_np, n_a), np.tile(noise_np, n_a), sample, gen_lp)


def teacher_forced_probs(decoder: Any, site_idx: int, tokens: Tensor, z: Tensor, pad_id: int,
                         max_batch: int) -> Tensor:
    """``p(tokens[:, i + 1] | tokens[:, :i + 1], z)`` ``[n, n_ctx - 1]`` (CPU), 0 at PAD targets.

    Rows are sorted by length and run in chunks of at most ``max_batch`` rows (fewer where
    ``rows x n_ctx x vocab`` would pass :data:`LOGIT_BUDGET`), each cut after its longest
    row (the decoder is causal and rows are right-padded, so this is exact;
    :func:`~tl_inversion.inversion.batching.length_chunks`).

    Args:
        decoder: the site's decoder.
        site_idx: the site's index in the decoder.
        tokens: decoder ids ``[n, n_ctx]`` (CPU).
        z: padded conditions ``[n, d_act]``.
        pad_id: the decoder's PAD id.
        max_batch: rows per call.
    """
    n, n_ctx = tokens.shape
    out = torch.zeros(n, n_ctx - 1)
    if n == 0:
        return out
    dev = next(decoder.parameters()).device
    # rows per call also bounded by the logits' size: [rows, n_ctx, vocab] floats (GPT-2's 50,257 ids)
    cap = max(1, min(max_batch, LOGIT_BUDGET // (n_ctx * decoder.cfg.vocab_size)))
    for rows, width in length_chunks(last_kept(tokens == pad_id), cap):
        width = max(width, 2)
        lp = decoder.token_logprobs(tokens[rows, :width].to(dev), z[rows.to(z.device)].to(dev), site_idx)
        p = lp.exp().float().cpu()
        out[rows, : width - 1] = p.masked_fill(tokens[rows, 1:width] == pad_id, 0.0)  # token_logprobs gives 0 = log 1
    return out


def colour_values(bank: Any, site: Any, u_tok: Tensor, u_q: Tensor, z_q: Tensor, z_bos: Tensor,
                  gen_p: Tensor, from_gen: Tensor, max_batch: int) -> Tensor:
    """``p(tok | prefix, z_q) - p(tok | prefix, z_BOS)`` ``[n, n_ctx_dec - 1]`` per distinct candidate.

    Args:
        bank: the bank.
        site: the site.
        u_tok: distinct candidates (decoder ids, CPU) ``[n, n_ctx_dec]``.
        u_q: their query ``[n]``.
        z_q: ``[Q, d]`` query activations.
        z_bos: ``[Q, d]`` the site's activations at BOS.
        gen_p: ``p(tok | prefix, z_q)`` taken from generation ``[n, n_ctx_dec - 1]``.
        from_gen: ``[n]`` rows whose ``gen_p`` is valid (generated from the exact ``z_q``);
            the others are scored by a teacher-forced pass.
        max_batch: rows per decoder call.
    """
    decoder, site_idx = bank.lookup(site)
    pad_id = decoder.cfg.pad_id
    zq_pad = bank.pad(z_q, site)
    zb_pad = bank.pad(z_bos, site)
    need = torch.nonzero(~from_gen).flatten()
    p_q = gen_p.clone()
    if need.numel():
        p_q[need] = teacher_forced_probs(decoder, site_idx, u_tok[need], zq_pad[u_q[need].to(zq_pad.device)],
                                         pad_id, max_batch)
    p_b = teacher_forced_probs(decoder, site_idx, u_tok, zb_pad[u_q.to(zb_pad.device)], pad_id, max_batch)
    return p_q - p_b


def ragged_rows(values: Tensor, src: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Row ``r`` of the result is ``values[src[r], :lengths[r]].tolist()``, one fresh list per row.

    Rows of equal length are cut and converted together (one ``tolist`` per length), so each
    output row costs one list: the per-row way (convert whole rows, slice, copy for every
    occurrence) made three and took 2.8x as long for 102,400 rows of up to 34 ids.

    Args:
        values: ``[u, width]`` (CPU).
        src: ``[n]`` row of ``values`` for each output row.
        lengths: ``[n]`` entries to keep per output row (``0 .. width``).

    Returns:
        ``[n]`` object array of lists.
    """
    n = src.shape[0]
    out = np.empty(n, dtype=object)
    src_t = torch.from_numpy(np.ascontiguousarray(src, dtype=np.int64))
    for k in np.unique(lengths).tolist():
        rows = np.nonzero(lengths == k)[0]
        block = values[src_t[torch.from_numpy(rows)], :k].tolist()
        out[rows] = np.fromiter(block, dtype=object, count=rows.shape[0])
    return out


def frames(columns: dict[str, Any], n_q: int, eps: float) -> list[pd.DataFrame]:
    """One table per query, each sorted by distance (stable: ties keep sample order).

    The whole pool is ordered once (by query, then distance) and cut into the queries'
    tables. Each row gets its own lists of token ids and colour values (:func:`ragged_rows`).

    Args:
        columns: per-row arrays of the whole pool in generation order (``qidx``, ``dist``,
            ``mpos``, ``inverse`` into the distinct candidates, ``valid``, ``temps``,
            ``noise``, ``count``, ``duplicate``, ``sample``) and the distinct candidates'
            ``u_text`` (list of str), ``u_ids`` (``[u, n_ctx]`` task ids), ``u_len`` (``[u]``
            ids kept per candidate: trailing PAD dropped) and ``u_colour`` (``[u, n_ctx - 1]``
            colour values, or None).
        n_q: number of queries (``qidx`` in ``0 .. n_q - 1``).
        eps: the membership threshold.
    """
    order = np.lexsort((columns["dist"], columns["qidx"]))  # stable: ties keep generation (= sample) order
    inv = columns["inverse"][order]
    n_ids = columns["u_len"].numpy()[inv]
    u_text = np.empty(len(columns["u_text"]), dtype=object)
    u_text[:] = columns["u_text"]
    colour = columns["u_colour"]
    dist = columns["dist"][order]
    table = {
        "text": u_text[inv],
        "tokens": ragged_rows(columns["u_ids"], inv, n_ids),
        "distance": dist,
        "matched_pos": columns["mpos"][order],
        "in_preimage": dist <= eps,
        "valid": columns["valid"][order],
        "temperature": columns["temps"][order],
        "noise": columns["noise"][order],
        "count": columns["count"][order],
        "duplicate": columns["duplicate"][order],
        "sample": columns["sample"][order],
        "colour": np.full(len(inv), None, dtype=object) if colour is None else ragged_rows(colour, inv, n_ids - 1),
    }
    bounds = np.searchsorted(columns["qidx"][order], np.arange(n_q + 1)).tolist()
    return [pd.DataFrame({k: v[a:b] for k, v in table.items()}, columns=list(COLUMNS))
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
