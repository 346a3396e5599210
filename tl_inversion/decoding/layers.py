"""The decoder's building blocks: conditioning MLP blocks, pre-LN transformer blocks with one
conditioning key/value slot, masked attention and the preallocated KV cache.

Private to :mod:`tl_inversion.decoding`; :class:`~tl_inversion.decoding.decoder.Decoder`
assembles them (InversionView, Huang et al. 2024, Sec. 3 / App.).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tl_inversion.decoding.config import DecoderConfig


class _CondBlock(nn.Module):
    """One residual MLP block of the conditioning network: ``a + W2 relu(W1 LN(a))``."""

    def __init__(self, d_cond: int, d_hidden: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d_cond)
        self.w1 = nn.Linear(d_cond, d_hidden)
        self.w2 = nn.Linear(d_hidden, d_cond)

    def forward(self, a: Tensor) -> Tensor:
        return a + self.w2(F.relu(self.w1(self.ln(a))))


class _Block(nn.Module):
    """Pre-LN transformer block whose attention has one prepended condition slot."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.d_head = cfg.d_head
        self.p_drop = cfg.dropout
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp_in = nn.Linear(d, cfg.d_mlp)
        self.mlp_out = nn.Linear(cfg.d_mlp, d)
        self.cond_proj = nn.Linear(cfg.d_cond, d)
        self.cond_ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        # True: attention as explicit matmul + masked softmax instead of the fused kernel
        # (set by tl_inversion.stacking: under torch.func.vmap the fused CUDA kernel rejects
        # the batched mask's alignment, "attn_bias is not correctly aligned")
        self.explicit_attention = False

    def cond_kv(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """Keys/values of the condition slot, each ``[batch, n_heads, 1, d_head]``."""
        d = self.n_heads * self.d_head
        c = self.cond_ln(self.cond_proj(a))
        kv = F.linear(c, self.qkv.weight[d:], self.qkv.bias[d:])
        kv = kv.view(a.shape[0], 2, self.n_heads, 1, self.d_head)
        return kv[:, 0], kv[:, 1]

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, _ = x.shape
        qkv = self.qkv(self.ln1(x)).view(b, t, 3, self.n_heads, self.d_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [b, h, t, d_head]
        return q, k, v

    def _finish(self, x: Tensor, y: Tensor, dropout: bool) -> Tensor:
        b, _, t, _ = y.shape
        y = y.transpose(1, 2).reshape(b, t, self.n_heads * self.d_head)
        if dropout:
            x = x + self.drop(self.attn_out(y))
            return x + self.drop(self.mlp_out(F.gelu(self.mlp_in(self.ln2(x)), approximate="tanh")))
        x = x + self.attn_out(y)
        return x + self.mlp_out(F.gelu(self.mlp_in(self.ln2(x)), approximate="tanh"))

    def forward(self, x: Tensor, a: Tensor, mask: Tensor) -> Tensor:
        """Full teacher-forced pass; ``mask`` is bool ``[t, 1 + t]`` (True = may attend)."""
        q, k, v = self._qkv(x)
        ck, cv = self.cond_kv(a)
        k = torch.cat([ck, k], dim=2)
        v = torch.cat([cv, v], dim=2)
        p = self.p_drop if self.training else 0.0
        if self.explicit_attention:
            y = _masked_attention(q, k, v, mask, p, self.training)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self._finish(x, y, dropout=self.training and self.p_drop > 0)

    def step(self, x: Tensor, k_cache: Tensor, v_cache: Tensor, slot: int) -> Tensor:
        """One-token pass: writes this token's K/V at ``slot`` and attends to ``[0, slot]``."""
        q, k, v = self._qkv(x)
        k_cache[:, :, slot] = k[:, :, 0]
        v_cache[:, :, slot] = v[:, :, 0]
        # one query row: two small batched matmuls (no fused kernel to pick; cuDNN's fails
        # for 100,000-row bf16 batches on an H200)
        k_all, v_all = k_cache[:, :, : slot + 1], v_cache[:, :, : slot + 1]
        scores = (q @ k_all.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
        y = scores.float().softmax(dim=-1).to(v_all.dtype) @ v_all
        return self._finish(x, y, dropout=False)


def _masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, p_drop: float, training: bool) -> Tensor:
    """softmax(q k^T / sqrt(d_head) masked) v, written out (the fused kernel's mathematics)."""
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    if training and p_drop > 0:
        weights = F.dropout(weights, p_drop)
    return weights @ v


class _KVCache:
    """Per-layer key/value buffers ``[n_layers, batch, n_heads, 1 + length, d_head]``.

    Slot 0 holds the condition slot; slot ``1 + i`` holds token position ``i``.
    """

    def __init__(self, k: Tensor, v: Tensor) -> None:
        self.k = k
        self.v = v
        self.pos = 0  # next token position to be written

    @property
    def capacity(self) -> int:
        """Number of token positions the buffers can hold."""
        return self.k.shape[3] - 1
