"""Decode activations into task inputs: the one place that turns conditions into token rows.

Every consumer of a decoder (preimage sampling, faithfulness, completeness recall, the BOS
baseline of evaluation) needs the same steps: look up the site's decoder, condition it on
``bank.pad(z)`` (zero-padded to the decoder's width, with the noise flag where the bank has
one) on the decoder's device, generate in eval mode (dropout off, mode restored after),
map the decoder's ids back to the task's (banks may remap EOS/PAD when the task's special
ids coincide, as in GPT-2) and pad the rows to the task's ``n_ctx``. :func:`decode_to_task`
does exactly that.

Source: InversionView (arXiv 2405.17653) Sec. 3 (sampling from ``p(x | z_q)``).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_inversion.errors import InputValueError
from tl_inversion.model.activations import eval_mode
from tl_inversion.model.sites import SiteLike

__all__ = ["decode_to_task"]


def decode_to_task(
    bank: Any,
    site: SiteLike,
    z: Float[Tensor, "n d_site"],
    *,
    temperature: float | Tensor = 1.0,
    generator: torch.Generator | None = None,
    blurred: bool = False,
    max_batch: int | None = None,
    task_ids: bool = True,
    n_ctx: int | None = None,
    pad_id: int | None = None,
    return_logprobs: bool = False,
    compile_step: bool = False,
) -> Int[Tensor, "n n_ctx"] | tuple[Int[Tensor, "n n_ctx"], Float[Tensor, "n n_ctx_minus_1"]]:
    """Generate one input per activation row with the site's decoder.

    Args:
        bank: the :class:`~tl_inversion.decoding.bank.DecoderBank` covering ``site``.
        site: the site ``z`` was read from.
        z: ``[n, d_site]`` activations (any device; moved to the decoder's).
        temperature: one sampling temperature for all rows, or ``[n]`` per row (0: greedy).
        generator: a ``torch.Generator`` on the decoder's device (``None``: global RNG).
        blurred: the noise flag of the condition (banks with ``train_noise_flag``; False:
            the exact condition).
        max_batch: most rows per decoder call (``None``: all at once).
        task_ids: map the decoder's ids to the task's (``bank.to_task_tokens``); False
            keeps the decoder's own ids (needed to score the rows with the decoder again).
        n_ctx: right-pad rows shorter than ``n_ctx`` (give ``pad_id`` too, or neither).
        pad_id: the id to pad with.
        return_logprobs: also return each emitted token's ``log p(token | prefix, z)``
            (nats, full softmax, 0 for PAD; see ``Decoder.generate``), ``[n, n_ctx_dec - 1]``
            on the CPU, in the decoder's columns (not padded to ``n_ctx``).
        compile_step: run the decoder's per-token step through ``torch.compile``.

    Returns:
        ``[n, n_ctx]`` int64 token ids on the CPU (the decoder's length when ``n_ctx`` is
        not given); with ``return_logprobs``, ``(tokens, logprobs)``.

    Raises:
        SiteError: the bank has no decoder for ``site``.
        InputValueError: ``z`` is not 2-D, a per-row temperature of the wrong length,
            ``max_batch < 1``, or only one of ``n_ctx`` / ``pad_id``.
    """
    if z.ndim != 2:
        raise InputValueError(f"z must be [n, d_site] activation rows, got shape {tuple(z.shape)}")
    if (n_ctx is None) != (pad_id is None):
        raise InputValueError("give both n_ctx and pad_id (to pad rows) or neither")
    if max_batch is not None and max_batch < 1:
        raise InputValueError(f"max_batch must be >= 1 (or None), got {max_batch}")
    n = z.shape[0]
    per_row = isinstance(temperature, Tensor) and temperature.ndim > 0
    if per_row and temperature.shape[0] != n:
        raise InputValueError(f"temperature has {temperature.shape[0]} entries for {n} rows")
    decoder, site_idx = bank.lookup(site)
    dec_device = next(decoder.parameters()).device
    step = n if max_batch is None else max_batch
    parts, lps = [], []
    extra = {"return_logprobs": True} if return_logprobs else {}
    if compile_step:
        extra["compile"] = True
    with eval_mode(decoder):
        cond = bank.pad(z, site, blurred=blurred).to(dec_device)
        for s in range(0, n, max(step, 1)):
            t = temperature[s : s + step].to(dec_device) if per_row else temperature
            got = decoder.generate(cond[s : s + step], site_idx, temperature=t, generator=generator, **extra)
            if return_logprobs:
                got, lp = got
                lps.append(lp.cpu())
            parts.append(got.cpu())
    tokens = torch.cat(parts) if parts else torch.zeros(0, decoder.cfg.n_ctx, dtype=torch.long)
    if task_ids:
        tokens = bank.to_task_tokens(tokens)
    if n_ctx is not None and tokens.shape[-1] < n_ctx:
        tokens = torch.nn.functional.pad(tokens, (0, n_ctx - tokens.shape[-1]), value=pad_id)
    if return_logprobs:
        return tokens, (torch.cat(lps) if lps else torch.zeros(0, decoder.cfg.n_ctx - 1))
    return tokens
