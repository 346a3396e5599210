"""The decoder's sampling loop: KV-cached, few host synchronisations, finished rows dropped.

Private to :mod:`tl_inversion.decoding`; :meth:`~tl_inversion.decoding.decoder.Decoder.generate`
checks the arguments and calls :func:`sample_loop` (InversionView, Huang et al. 2024, Sec. 3:
candidates are sampled from ``p(x | z)`` token by token).

How a token is drawn: Gumbel-max, ``argmax(logits / T + g)`` with ``g = -log(-log(u))``,
``u ~ U[0, 1)``, which is an exact draw from ``softmax(logits / T)`` (banned ids have logit
``-inf`` and are never drawn). Each step draws one ``u`` per (row of the whole batch,
vocabulary id), finished rows included, and a live row takes its own: a row's sample depends
only on its own noise, so dropping finished rows from the batch (compaction) never changes
what a row draws. Noise is drawn step by step, ``batch x vocab`` at a time: drawn up front
for 33 steps it would take 1.1 GB for 256 rows over GPT-2's 50,257 ids.

Host synchronisation: the loop asks "are all rows finished?" (and compacts the batch to the
unfinished rows when at least a quarter of them finished) only every ``check_every`` steps:
every step on the CPU, where a check costs nothing and compaction saves work, every 8 steps
on an accelerator, where a check stalls the queue. Between checks, finished rows keep
stepping and emit PAD, which is discarded.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

#: Steps between "all rows finished?" checks on an accelerator (CPU: every step).
ACCELERATOR_CHECK_EVERY = 8

_COMPILED: dict[int, Callable[..., Tensor]] = {}


def step_logits(decoder: Any, token: Tensor, k: Tensor, v: Tensor, pos: int) -> Tensor:
    """Logits ``[rows, vocab]`` of the token after ``token`` at position ``pos``.

    Writes the token's keys/values into ``k``/``v`` (``[n_layers, rows, heads, 1 + len,
    d_head]``) at slot ``pos + 1`` (slot 0 is the condition).
    """
    x = decoder.tok_embed(token).unsqueeze(1) + decoder.pos_embed.weight[pos]
    for layer, block in enumerate(decoder.blocks):
        x = block.step(x, k[layer], v[layer], pos + 1)
    return decoder.unembed(decoder.ln_f(x[:, 0]))


def compiled_step(decoder: Any) -> Callable[..., Tensor]:
    """:func:`step_logits` through ``torch.compile`` (dynamic shapes), one per decoder."""
    key = id(decoder)
    fn = _COMPILED.get(key)
    if fn is None:
        fn = torch.compile(lambda token, k, v, pos: step_logits(decoder, token, k, v, pos), dynamic=True)
        _COMPILED[key] = fn
    return fn


def _gumbel(batch: int, vocab: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """One step's Gumbel noise ``[batch, vocab]``: ``-log(-log(u))``, ``u ~ U[0, 1)`` (``u = 0`` gives ``-inf``)."""
    u = torch.rand(batch, vocab, generator=generator, device=device)
    return -torch.log(-torch.log(u))


def sample_loop(
    decoder: Any,
    a: Tensor,
    temp: Tensor,
    length: int,
    generator: torch.Generator | None,
    *,
    check_every: int | None = None,
    logprobs: bool = False,
    compile_step: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Sample ``[batch, n_ctx]`` rows from conditioning vectors ``a`` (see the module docstring).

    Args:
        decoder: the :class:`~tl_inversion.decoding.decoder.Decoder`.
        a: conditioning vectors ``[batch, d_cond]`` on the decoder's device.
        temp: per-row temperature ``[batch]`` (0: greedy), checked by the caller.
        length: longest sequence, BOS and EOS included (``2 .. n_ctx``).
        generator: the ``torch.Generator`` of the uniforms (``None``: the global RNG).
        check_every: steps between finished-row checks (``None``: 1 on CPU, 8 elsewhere).
        logprobs: also return ``log p(token | prefix, z)`` of every emitted token under the
            full softmax (no temperature, nothing masked; 0 for PAD), ``[batch, n_ctx - 1]``.
        compile_step: run the per-token step through ``torch.compile``.

    Returns:
        ``(tokens [batch, n_ctx] int64, logprobs [batch, n_ctx - 1] float32 or None)``.
    """
    cfg = decoder.cfg
    device = a.device
    batch = a.shape[0]
    if check_every is None:
        check_every = 1 if device.type == "cpu" else ACCELERATOR_CHECK_EVERY
    out = torch.full((batch, cfg.n_ctx), cfg.pad_id, dtype=torch.long, device=device)
    out[:, 0] = cfg.bos_id
    lp_out = torch.zeros(batch, cfg.n_ctx - 1, device=device) if logprobs else None
    greedy = temp == 0
    inv_temp = torch.where(greedy, torch.ones_like(temp), temp).reciprocal()[:, None]
    sampled = (~greedy).float()[:, None]  # greedy rows get no Gumbel noise: argmax of the logits
    all_greedy = bool(greedy.all())  # then nothing is drawn: the RNG is left untouched
    banned = torch.zeros(cfg.vocab_size, dtype=torch.bool, device=device)
    banned[[cfg.bos_id, cfg.pad_id]] = True

    cache = decoder._init_cache(a, length - 1)
    step = decoder._step
    if compile_step:
        fn = compiled_step(decoder)

        def step(token: Tensor, c: Any) -> Tensor:
            logits = fn(token, c.k, c.v, c.pos)
            c.pos += 1
            return logits

    rows = torch.arange(batch, device=device)  # original index of each live row
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    token = out[:, 0]
    for pos in range(1, length):
        raw = step(token, cache).float()
        logits = raw.masked_fill(banned, float("-inf"))
        if not all_greedy:
            logits = logits * inv_temp + sampled * _gumbel(batch, cfg.vocab_size, generator, device)[rows]
        nxt = logits.argmax(dim=-1)
        nxt = nxt.masked_fill(finished, cfg.pad_id)
        out[rows, pos] = nxt
        if lp_out is not None:
            lp = F.log_softmax(raw, dim=-1).gather(1, nxt[:, None])[:, 0]
            lp_out[rows, pos - 1] = lp.masked_fill(nxt == cfg.pad_id, 0.0)
        finished = finished | (nxt == cfg.eos_id)
        token = nxt
        if pos + 1 >= length or pos % check_every:
            continue
        n_live = int((~finished).sum())
        if n_live == 0:
            break
        if n_live <= 0.75 * rows.shape[0]:  # compact: drop finished rows from the batch
            keep = torch.nonzero(~finished).flatten()
            rows, finished, token = rows[keep], finished[keep], token[keep]
            inv_temp, sampled = inv_temp[keep], sampled[keep]
            cache.k, cache.v = cache.k[:, keep], cache.v[:, keep]
    return out, lp_out
