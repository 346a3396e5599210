"""The InversionView decoder: a small causal LM that generates inputs given an activation.

InversionView (Huang et al. 2024, arXiv 2405.17653, Sec. 3 and App.) reads the information
in an activation ``z`` by sampling its *preimage*: the inputs ``x`` whose activation at some
position is close to ``z``. The preimage is sampled from a decoder language model trained to
generate whole inputs ``[BOS] input [EOS]`` (right-padded with PAD) conditioned on ``z`` and
on the *site* (hook point) ``z`` was read from.

Conditioning, as in the paper:

1. ``a = concat(z, site_embedding[site])``. The site embedding is an ``n_sites x n_sites``
   table (one row per site, as many columns as sites), so ``d_cond = d_act + n_sites``.
   Its rows are meant to be rescaled at init to the mean and std of the site's activations
   (:meth:`Decoder.init_site_embedding`), so ``z`` and the site code start on one scale.
2. ``n_cond_blocks`` residual MLP blocks ``a = a + W2 relu(W1 LN(a))`` (hidden width
   ``d_act``), then a final LayerNorm.
3. Each decoder layer ``l`` projects ``a`` to its width (``Linear + LayerNorm``) and
   prepends the result to that layer's attention input as ONE extra key/value slot. The
   slot has no position embedding and issues no query; every token attends to it, and the
   causal mask applies only among token positions. Keys and values of the slot come from
   the layer's own fused qkv projection (the slot plays the role of an already
   layer-normalised token), so the slot is at "position -1" of every layer.

Everything else is a GPT-2-style pre-LN causal transformer: token + learned position
embeddings, ``n_layers`` blocks (attention, GELU MLP), final LayerNorm, an untied unembed.

Conventions the caller must follow:

* Sequences are ``[BOS] x_1 .. x_n [EOS] PAD .. PAD`` (right padding). PAD targets are
  ignored by :meth:`Decoder.loss` and get log-probability 0 in
  :meth:`Decoder.token_logprobs`; EOS is a target. Because attention is causal and padding
  is on the right, PAD never influences a non-PAD position.
* ``bos_id``, ``eos_id`` and ``pad_id`` must be three different ids. Probed vocabularies
  that reuse one token for all three (GPT-2's ``<|endoftext|>``) need extra ids appended
  to the decoder vocabulary (``vocab_size`` larger than the probed model's):
  :meth:`tl_inversion.bank.DecoderBank.create` does this and translates at the boundary.
* Activations narrower than ``d_act`` (e.g. a per-head ``hook_z`` next to a residual
  site) must be zero-padded to ``d_act`` by the caller.
* The checked methods (:meth:`Decoder.forward`, :meth:`Decoder.loss`,
  :meth:`Decoder.generate`, ...) take their batch size from ``z`` and check ``tokens`` and
  ``site`` against it with errors that name both sizes; their annotations spell those axes
  ``_batch`` (jaxtyping's named but unchecked axis) so that check is the one a caller meets.

Generation (:meth:`Decoder.generate`) is KV-cached: one forward step per new token, never
re-running the prefix; it masks BOS and PAD out of the sampling distribution and is
reproducible through an explicit ``torch.Generator``.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from tl_inversion.decoding.config import DecoderConfig
from tl_inversion.decoding.generation import sample_loop, step_logits
from tl_inversion.decoding.layers import _Block, _CondBlock, _KVCache
from tl_inversion.decoding.precision import inference_autocast
from tl_inversion.errors import InputTypeError, InputValueError

__all__ = ["DecoderConfig", "Decoder"]

_SOURCE = "InversionView, Huang et al. 2024, Sec. 3 / App."


class Decoder(nn.Module):
    """InversionView decoder: a causal LM over inputs, conditioned on (activation, site).

    See the module docstring for the architecture (InversionView, Huang et al. 2024,
    Sec. 3 / App.).

    Args:
        cfg: the decoder's :class:`DecoderConfig`.

    Raises:
        TypeError: if ``cfg`` is not a :class:`DecoderConfig`.
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        if not isinstance(cfg, DecoderConfig):
            raise InputTypeError(f"Decoder expects a DecoderConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.site_embedding = nn.Embedding(cfg.n_sites, cfg.n_sites)
        self.cond_blocks = nn.ModuleList(
            [_CondBlock(cfg.d_cond, cfg.d_act) for _ in range(cfg.n_cond_blocks)]
        )
        self.cond_ln = nn.LayerNorm(cfg.d_cond)
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList([_Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.embed_drop = nn.Dropout(cfg.dropout)
        # mask[i, 0] = condition slot (always visible), mask[i, 1 + j] = (j <= i).
        causal = torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool).tril()
        mask = torch.cat([torch.ones(cfg.n_ctx, 1, dtype=torch.bool), causal], dim=1)
        self.register_buffer("_mask", mask, persistent=False)
        self._init_weights()

    # ------------------------------------------------------------------ init

    def _init_weights(self) -> None:
        resid_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = resid_std if name.endswith(("attn_out", "mlp_out")) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding) and module is not self.site_embedding:
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        nn.init.normal_(self.site_embedding.weight, mean=0.0, std=1.0)

    @torch.no_grad()
    def init_site_embedding(self, site_index: int, mean: float, std: float) -> None:
        """Rescale one site-embedding row to a given mean and standard deviation.

        The paper rescales each site's row at init to the mean and std of that site's
        activations, so the site code and ``z`` enter the conditioning network on one
        scale (InversionView, Huang et al. 2024, Sec. 3 / App.). The row is standardised
        and then mapped to ``mean + std * row``; the std is the population std over the
        row's ``n_sites`` entries. With ``n_sites == 1`` the row has one entry, which is
        set to ``mean``.

        Args:
            site_index: row to rescale, in ``0 .. n_sites - 1``.
            mean: target mean (in the units of the site's activations).
            std: target standard deviation, ``>= 0``.

        Raises:
            ValueError: if ``site_index`` is out of range, or ``mean``/``std`` are not
                finite or ``std < 0``.
        """
        n = self.cfg.n_sites
        valid_int = isinstance(site_index, int) and not isinstance(site_index, bool)
        if not valid_int or not 0 <= site_index < n:
            raise InputValueError(
                f"site_index={site_index!r} is out of range; valid site indices are 0..{n - 1} "
                f"(n_sites={n})"
            )
        mean, std = float(mean), float(std)
        if not (math.isfinite(mean) and math.isfinite(std)) or std < 0:
            raise InputValueError(
                f"init_site_embedding needs a finite mean and a finite std >= 0, got "
                f"mean={mean}, std={std}"
            )
        row = self.site_embedding.weight[site_index]
        if n == 1:
            row.fill_(mean)
            return
        centred = row - row.mean()
        scale = centred.pow(2).mean().sqrt()
        if scale.item() == 0.0:
            centred = torch.randn_like(row)
            centred = centred - centred.mean()
            scale = centred.pow(2).mean().sqrt()
        row.copy_(mean + std * centred / scale)

    # ------------------------------------------------------------ validation

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        w = self.tok_embed.weight
        return w.device, w.dtype

    def _check_inputs(
        self,
        z: Tensor,
        site: Tensor | int,
        tokens: Tensor | None = None,
        min_len: int = 1,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Validate shapes (free) and values (one device sync); move to the model device."""
        cfg = self.cfg
        device, dtype = self._device_dtype()
        self._check_z(z)
        batch = z.shape[0]
        site = self._site_rows(site, batch, device)
        z = z.to(device=device, dtype=dtype)
        flags = [site.min() < 0, site.max() >= cfg.n_sites, ~torch.isfinite(z).all()]
        if tokens is not None:
            tokens = self._check_tokens(tokens, batch, min_len, device)
            flags += [tokens.min() < 0, tokens.max() >= cfg.vocab_size]
        self._raise_bad_values(torch.stack(flags).tolist(), site, tokens)
        return z, site, tokens

    def _check_z(self, z: Tensor) -> None:
        cfg = self.cfg
        if not isinstance(z, Tensor):
            raise InputTypeError(
                f"z must be a torch.Tensor of shape [batch, {cfg.d_act}], got {type(z).__name__}"
            )
        if not z.is_floating_point():
            raise InputTypeError(f"z must be a floating-point tensor, got dtype {z.dtype}")
        if z.ndim != 2:
            raise InputValueError(
                f"z must have shape [batch, d_act={cfg.d_act}], got shape {tuple(z.shape)}"
            )
        if z.shape[1] != cfg.d_act:
            raise InputValueError(
                f"z has width {z.shape[1]} but this decoder expects d_act={cfg.d_act}; "
                f"zero-pad narrower activations to {cfg.d_act}"
            )
        if z.shape[0] == 0:
            raise InputValueError("z has an empty batch; pass at least one activation")

    def _site_rows(self, site: Tensor | int, batch: int, device: torch.device) -> Tensor:
        cfg = self.cfg
        if isinstance(site, bool):
            raise InputTypeError("site must be an int or an integer tensor, got a bool")
        if isinstance(site, int):
            if not 0 <= site < cfg.n_sites:
                raise InputValueError(
                    f"site index {site} is out of range; valid site indices are "
                    f"0..{cfg.n_sites - 1} (n_sites={cfg.n_sites})"
                )
            site = torch.full((batch,), site, dtype=torch.long, device=device)
        elif isinstance(site, Tensor):
            if site.is_floating_point() or site.is_complex() or site.dtype == torch.bool:
                raise InputTypeError(f"site must be an integer tensor, got dtype {site.dtype}")
            if site.ndim == 0:
                site = site.expand(batch)
            if site.shape != (batch,):
                raise InputValueError(
                    f"site must have shape [batch={batch}] (one site index per row of z), "
                    f"got shape {tuple(site.shape)}"
                )
            site = site.to(device=device, dtype=torch.long)
        else:
            raise InputTypeError(f"site must be an int or an integer tensor, got {type(site).__name__}")
        return site

    def _check_tokens(self, tokens: Tensor, batch: int, min_len: int, device: torch.device) -> Tensor:
        cfg = self.cfg
        if not isinstance(tokens, Tensor):
            raise InputTypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise InputTypeError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
        if tokens.ndim != 2:
            raise InputValueError(
                f"tokens must have shape [batch, seq], got shape {tuple(tokens.shape)}"
            )
        if tokens.shape[0] != batch:
            raise InputValueError(
                f"tokens have batch {tokens.shape[0]} but z has batch {batch}; they must match"
            )
        seq = tokens.shape[1]
        if seq > cfg.n_ctx:
            raise InputValueError(
                f"tokens have length {seq} but this decoder handles at most "
                f"n_ctx={cfg.n_ctx} positions (BOS and EOS included)"
            )
        if seq < min_len:
            raise InputValueError(f"tokens must have at least {min_len} positions, got {seq}")
        return tokens.to(device=device, dtype=torch.long)

    def _raise_bad_values(self, bad: list[bool], site: Tensor, tokens: Tensor | None) -> None:
        cfg = self.cfg
        if bad[0] or bad[1]:
            wrong = sorted(set(site[(site < 0) | (site >= cfg.n_sites)].tolist()))
            raise InputValueError(
                f"site indices {wrong[:10]} are out of range; valid site indices are "
                f"0..{cfg.n_sites - 1} (n_sites={cfg.n_sites})"
            )
        if bad[2]:
            raise InputValueError("z contains NaN or infinite values")
        if tokens is not None and (bad[3] or bad[4]):
            wrong = sorted(set(tokens[(tokens < 0) | (tokens >= cfg.vocab_size)].tolist()))
            raise InputValueError(
                f"token ids {wrong[:10]} are out of range; valid ids are "
                f"0..{cfg.vocab_size - 1} (vocab_size={cfg.vocab_size})"
            )

    # --------------------------------------------------------------- forward

    def _condition(self, z: Tensor, site: Tensor) -> Tensor:
        a = torch.cat([z, self.site_embedding(site)], dim=-1)
        for block in self.cond_blocks:
            a = block(a)
        return self.cond_ln(a)

    def condition(
        self, z: Float[Tensor, "batch d_act"], site: Int[Tensor, " _batch"] | Int[Tensor, ""] | int
    ) -> Float[Tensor, "batch d_cond"]:
        """Compute the conditioning vector ``a`` from an activation and its site.

        ``a = LN(blocks(concat(z, site_embedding[site])))`` with ``n_cond_blocks`` residual
        MLP blocks ``a + W2 relu(W1 LN(a))`` of hidden width ``d_act``
        (InversionView, Huang et al. 2024, Sec. 3 / App.).

        Args:
            z: activations, ``[batch, d_act]`` float, in the probed model's units
                (zero-padded to ``d_act`` by the caller). Moved to the decoder's device.
            site: site index per row, ``[batch]`` integer tensor (a 0-d tensor or a
                Python int is broadcast to every row), each in ``0 .. n_sites - 1``.

        Returns:
            ``[batch, d_cond]`` with ``d_cond = d_act + n_sites``.

        Raises:
            ValueError: if ``z`` is not ``[batch, d_act]``, is empty or non-finite, or a
                site index is outside ``0 .. n_sites - 1``.
            TypeError: if ``z`` is not a float tensor or ``site`` not an integer.
        """
        z, site, _ = self._check_inputs(z, site)
        return self._condition(z, site)

    def _logits(self, tokens: Tensor, a: Tensor) -> Tensor:
        t = tokens.shape[1]
        pos = torch.arange(t, device=tokens.device)
        x = self.tok_embed(tokens) + self.pos_embed(pos)
        if self.training and self.cfg.dropout > 0:
            x = self.embed_drop(x)
        mask = self._mask[:t, : t + 1]
        for block in self.blocks:
            x = block(x, a, mask)
        return self.unembed(self.ln_f(x))

    def forward(
        self,
        tokens: Int[Tensor, "_batch seq"],
        z: Float[Tensor, "batch d_act"],
        site: Int[Tensor, " _batch"] | Int[Tensor, ""] | int,
    ) -> Float[Tensor, "batch seq vocab"]:
        """Teacher-forced logits of every next token.

        ``logits[:, i]`` is the (unnormalised, natural-log scale) distribution of
        ``tokens[:, i + 1]`` given ``tokens[:, : i + 1]``, ``z`` and the site
        (InversionView, Huang et al. 2024, Sec. 3 / App.).

        Args:
            tokens: ``[batch, seq]`` integer ids, ``1 <= seq <= n_ctx``, normally
                ``[BOS] x [EOS] PAD..`` (right padding).
            z: ``[batch, d_act]`` activations.
            site: ``[batch]`` site indices (or one int or 0-d tensor for all rows).

        Returns:
            ``[batch, seq, vocab_size]`` logits.

        Raises:
            ValueError: on a wrong shape, ``seq > n_ctx``, token ids outside
                ``0 .. vocab_size - 1``, site indices outside ``0 .. n_sites - 1``, a batch
                mismatch, or non-finite ``z``.
            TypeError: on wrong dtypes.
        """
        z, site, tokens = self._check_inputs(z, site, tokens)
        return self._logits(tokens, self._condition(z, site))

    def _target_logprobs(self, tokens: Tensor, z: Tensor, site: Tensor) -> Tensor:
        logits = self._logits(tokens[:, :-1], self._condition(z, site))
        return logits.float().log_softmax(dim=-1)

    def loss(
        self,
        tokens: Int[Tensor, "_batch seq"],
        z: Float[Tensor, "batch d_act"],
        site: Int[Tensor, " _batch"] | Int[Tensor, ""] | int,
    ) -> Float[Tensor, ""]:
        """Mean next-token cross-entropy (nats per target token), PAD targets ignored.

        The paper's training objective (InversionView, Huang et al. 2024, Sec. 3 / App.):
        targets are ``tokens[:, 1:]``; EOS is a target, PAD is not. The mean is over all
        non-PAD targets of the batch (a batch with no such target gives NaN).

        Args:
            tokens: ``[batch, seq]`` integer ids with ``2 <= seq <= n_ctx``.
            z: ``[batch, d_act]`` activations.
            site: ``[batch]`` site indices (or one int or 0-d tensor for all rows).

        Returns:
            A scalar float32 tensor (differentiable).

        Raises:
            ValueError: as :meth:`forward`, and if ``seq < 2``.
            TypeError: on wrong dtypes.
        """
        z, site, tokens = self._check_inputs(z, site, tokens, min_len=2)
        return self.unchecked_loss(tokens, z, site)

    def unchecked_loss(
        self,
        tokens: Int[Tensor, "batch seq"],
        z: Float[Tensor, "batch d_act"],
        site: Int[Tensor, " batch"],
    ) -> Float[Tensor, ""]:
        """:meth:`loss` without input validation: no host sync, traceable by ``torch.func``.

        For training loops whose inputs are valid by construction (``tokens`` on this
        decoder's device, ``2 <= seq <= n_ctx``, ids in range; ``site`` a ``[batch]`` long
        tensor). Wrong inputs give wrong numbers or an indexing error, not a clear message.
        """
        logits = self._logits(tokens[:, :-1], self._condition(z, site))
        return F.cross_entropy(
            logits.float().flatten(0, 1),
            tokens[:, 1:].flatten(),
            ignore_index=self.cfg.pad_id,
        )

    def token_logprobs(
        self,
        tokens: Int[Tensor, "_batch seq"],
        z: Float[Tensor, "batch d_act"],
        site: Int[Tensor, " _batch"] | Int[Tensor, ""] | int,
    ) -> Float[Tensor, "batch seq_minus_1"]:
        """Log-probability of each next token under teacher forcing.

        ``out[:, i] = log p(tokens[:, i + 1] | tokens[:, : i + 1], z, site)`` in nats, from
        the full softmax over the vocabulary (the distribution :meth:`loss` trains; note
        that :meth:`generate` renormalises after masking BOS and PAD). Entries whose
        target is PAD are 0, so ``out.sum(-1)`` is ``log p(x | z)`` of the whole sequence.
        Used for the paper's token colouring ``p(. | z_q) - p(. | z_BOS)`` and its
        completeness check (InversionView, Huang et al. 2024, Sec. 3 / App.). In eval mode
        on CUDA the pass runs under bf16 autocast (:mod:`tl_inversion.decoding.precision`).

        Args:
            tokens: ``[batch, seq]`` integer ids with ``2 <= seq <= n_ctx``.
            z: ``[batch, d_act]`` activations.
            site: ``[batch]`` site indices (or one int or 0-d tensor for all rows).

        Returns:
            ``[batch, seq - 1]`` float32 log-probabilities (``<= 0``).

        Raises:
            ValueError: as :meth:`forward`, and if ``seq < 2``.
            TypeError: on wrong dtypes.
        """
        z, site, tokens = self._check_inputs(z, site, tokens, min_len=2)
        with inference_autocast(z.device) if not self.training else contextlib.nullcontext():
            logp = self._target_logprobs(tokens, z, site)
        targets = tokens[:, 1:]
        out = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return out.masked_fill(targets == self.cfg.pad_id, 0.0)

    # ------------------------------------------------------------ generation

    def _init_cache(self, a: Tensor, length: int) -> _KVCache:
        """Allocate a cache for ``length`` token positions and fill the condition slots."""
        cfg = self.cfg
        b = a.shape[0]
        shape = (cfg.n_layers, b, cfg.n_heads, 1 + length, cfg.d_head)
        conds = [block.cond_kv(a) for block in self.blocks]
        dtype = conds[0][0].dtype  # bf16 under inference autocast: the cache holds what attention reads
        k = torch.empty(shape, device=a.device, dtype=dtype)
        v = torch.empty(shape, device=a.device, dtype=dtype)
        for layer, (ck, cv) in enumerate(conds):
            k[layer, :, :, :1] = ck
            v[layer, :, :, :1] = cv
        return _KVCache(k, v)

    def _step(self, token: Tensor, cache: _KVCache) -> Tensor:
        """Feed one token per row at the cache's next position; return ``[batch, vocab]``.

        Equivalent to ``forward(prefix + token)[:, -1]`` without recomputing the prefix.
        No dropout is applied, whatever the module's train/eval mode.
        """
        pos = cache.pos
        if pos >= cache.capacity:
            raise InputValueError(f"KV cache is full ({cache.capacity} positions)")
        logits = step_logits(self, token, cache.k, cache.v, pos)
        cache.pos = pos + 1
        return logits

    @torch.no_grad()
    def generate(
        self,
        z: Float[Tensor, "batch d_act"],
        site: Int[Tensor, " _batch"] | Int[Tensor, ""] | int,
        temperature: float | Float[Tensor, " _batch"] | Float[Tensor, ""] = 1.0,
        max_len: int | None = None,
        generator: torch.Generator | None = None,
        *,
        return_logprobs: bool = False,
        check_every: int | None = None,
        compile: bool = False,
    ) -> Int[Tensor, "batch n_ctx"] | tuple[Int[Tensor, "batch n_ctx"], Float[Tensor, "batch n_ctx_minus_1"]]:
        """Sample inputs ``[BOS] x [EOS] PAD..`` conditioned on activations (KV-cached).

        Starts every row from BOS and samples one token per step from
        ``softmax(logits / temperature)`` with BOS and PAD masked out (drawn by Gumbel-max,
        one uniform per step, row and id: a row's sample does not depend on the other rows
        of the batch), feeding each new token through a
        preallocated key/value cache (one forward step per position, the prefix is never
        recomputed). A row is finished after it emits EOS; everything after its EOS is
        ``pad_id``. Generation stops once every row is finished, checked every
        ``check_every`` steps (finished rows are then dropped from the batch when a quarter
        of them are done). A row that reaches ``max_len`` without EOS is returned truncated
        (no EOS): callers that need well-formed inputs should check for EOS. Dropout is
        never applied, so results depend only on the weights, the inputs and ``generator``.
        On CUDA the decoder runs under bf16 autocast, as trained
        (:mod:`tl_inversion.decoding.precision`)
        (InversionView, Huang et al. 2024, Sec. 3 / App.; loop in
        :mod:`tl_inversion.decoding.generation`).

        Args:
            z: ``[batch, d_act]`` activations (zero-padded to ``d_act`` by the caller).
            site: ``[batch]`` site indices (or one int or 0-d tensor for all rows).
            temperature: softmax temperature, a float for all rows or a ``[batch]`` tensor
                (one per row); ``0`` means greedy argmax for that row. Must be finite and
                ``>= 0``.
            max_len: longest sequence to produce, BOS and EOS included, in
                ``1 .. n_ctx``; ``None`` means ``n_ctx``. The output still has ``n_ctx``
                columns (PAD beyond ``max_len``).
            generator: random generator of the sampling noise; must live on the decoder's
                device. ``None`` uses the global RNG. Same seed, same output.
            return_logprobs: also return ``log p(token | prefix, z)`` (nats) of every
                emitted token under the full softmax (no temperature, nothing masked; 0
                where the token is PAD), as :meth:`token_logprobs` of the output would give
                up to float rounding.
            check_every: steps between "all rows finished?" checks (each one host
                synchronisation); ``None``: every step on the CPU, every 8 on an accelerator.
                Does not change the output.
            compile: run the per-token step through ``torch.compile`` (dynamic shapes;
                the first call compiles).

        Returns:
            ``[batch, n_ctx]`` int64 token ids on the decoder's device; column 0 is BOS.
            With ``return_logprobs``: ``(tokens, logprobs [batch, n_ctx - 1] float32)``.

        Raises:
            ValueError: on invalid ``z``/``site`` (as :meth:`condition`), a negative,
                non-finite or wrongly shaped ``temperature``, ``max_len`` outside
                ``1 .. n_ctx``, or ``check_every < 1``.
        """
        cfg = self.cfg
        z, site, _ = self._check_inputs(z, site)
        device = z.device
        batch = z.shape[0]
        length = cfg.n_ctx if max_len is None else max_len
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= cfg.n_ctx:
            raise InputValueError(
                f"max_len={max_len!r} is invalid; valid values are None or an int in "
                f"1..{cfg.n_ctx} (n_ctx)"
            )
        if isinstance(temperature, Tensor):
            temp = temperature.to(device=device, dtype=torch.float32)
            if temp.ndim == 0:
                temp = temp.expand(batch)
            if temp.shape != (batch,):
                raise InputValueError(
                    f"temperature tensor must have shape [batch={batch}] or be 0-d, got "
                    f"shape {tuple(temperature.shape)}"
                )
        else:
            temp = torch.full((batch,), float(temperature), device=device)
        bad_temp = (~torch.isfinite(temp)) | (temp < 0)
        if bad_temp.any().item():
            raise InputValueError(
                "temperature must be finite and >= 0 (0 = greedy), got "
                f"{temp[bad_temp][:5].tolist()}"
            )
        if check_every is not None and (isinstance(check_every, bool) or not isinstance(check_every, int)
                                        or check_every < 1):
            raise InputValueError(f"check_every must be a positive int or None, got {check_every!r}")
        if length == 1:
            out = torch.full((batch, cfg.n_ctx), cfg.pad_id, dtype=torch.long, device=device)
            out[:, 0] = cfg.bos_id
            return (out, torch.zeros(batch, cfg.n_ctx - 1, device=device)) if return_logprobs else out
        with inference_autocast(device):
            tokens, logprobs = sample_loop(self, self._condition(z, site), temp, length, generator,
                                           check_every=check_every, logprobs=return_logprobs, compile_step=compile)
        return (tokens, logprobs) if return_logprobs else tokens

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (all, or only those with ``requires_grad``).

        Args:
            trainable_only: count only parameters with ``requires_grad=True``.

        Returns:
            The parameter count.
        """
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
