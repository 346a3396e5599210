"""Train several same-shaped decoders as one vectorised module (``torch.func.vmap``).

Per-hook training runs one decoder per site on the same batch of inputs. Run one after
another, every decoder pays the fixed cost of its own kernel launches and Python dispatch;
at the batch sizes where decoders learn fastest per input (a few hundred to a thousand
inputs) that fixed cost, not arithmetic, sets the step time (``benchmarks/recipe_sweep.sh``
measured 64 ms per step for four decoders at batch 512 on an H200). Stacking the
decoders' parameters along a new leading axis and mapping the loss over it with
``torch.func.vmap`` issues each operation once for all decoders.

The mathematics is unchanged: every decoder sees its own activations, has its own loss,
its own gradient-norm clip and (AdamW being elementwise) its own optimizer update, so a
stacked run equals a sequential one up to floating-point summation order. The stacked
tensors are the trained parameters; :meth:`StackedDecoders.push` copies them into the
:class:`~tl_inversion.decoder.Decoder` objects (for evaluation and checkpoints) and
:meth:`StackedDecoders.pull` copies back (after a checkpoint is loaded).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from tl_inversion.decoding.decoder import Decoder
from tl_inversion.errors import InputValueError

__all__ = ["StackedDecoders", "stack_same_shaped"]


class _LossCore(nn.Module):
    """``forward`` = the decoder's training loss without input checks (traceable by vmap)."""

    def __init__(self, dec: Decoder) -> None:
        super().__init__()
        self.dec = dec

    def forward(self, tokens: Tensor, z: Tensor, site: Tensor) -> Tensor:
        return self.dec.unchecked_loss(tokens, z, site)


class StackedDecoders:
    """Decoders with identical :class:`~tl_inversion.decoder.DecoderConfig`, trained as one.

    Args:
        decoders: two or more decoders of one config (on one device).

    Raises:
        ValueError: fewer than two decoders, or different configs.
    """

    def __init__(self, decoders: Sequence[Decoder]) -> None:
        decoders = list(decoders)
        if len(decoders) < 2:
            raise InputValueError(f"stacking needs at least two decoders, got {len(decoders)}")
        if any(d.cfg != decoders[0].cfg for d in decoders[1:]):
            raise InputValueError("stacked decoders must share one DecoderConfig")
        self.decoders = decoders
        params, buffers = stack_module_state(decoders)
        self.params: dict[str, Tensor] = params  # leaf tensors [n, *shape], requires_grad
        self.buffers: dict[str, Tensor] = buffers
        base = copy.deepcopy(decoders[0]).to("meta")
        for block in base.blocks:
            block.explicit_attention = True  # vmap-safe attention (see decoder._Block)
        self._core = _LossCore(base)
        self._loss = vmap(self._one, in_dims=(0, 0, 0, None, None), randomness="different")

    def compile(self) -> None:
        """Compile the vmapped loss (forward and backward) with ``torch.compile``."""
        self._loss = torch.compile(self._loss, dynamic=False)

    def __len__(self) -> int:
        return len(self.decoders)

    def _one(self, params: dict[str, Tensor], buffers: dict[str, Tensor], z: Tensor, tokens: Tensor,
             site: Tensor) -> Tensor:
        state = {f"dec.{k}": v for k, v in params.items()}
        state.update({f"dec.{k}": v for k, v in buffers.items()})
        return functional_call(self._core, state, (tokens, z, site))

    def loss(self, tokens: Int[Tensor, "batch seq"], z: Float[Tensor, "n batch d_act"]) -> Float[Tensor, " n"]:
        """Each decoder's mean next-token cross-entropy (nats) on the same ``tokens``.

        Args:
            tokens: ``[batch, seq]`` ids shared by all decoders (checked by the caller).
            z: ``[n, batch, d_act]``: decoder ``i`` is conditioned on ``z[i]`` (site row 0).

        Returns:
            ``[n]`` losses (differentiable with respect to :attr:`params`).
        """
        site = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        return self._loss(self.params, self.buffers, z, tokens, site)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: weight decay on what was a matrix in each decoder, none on vectors."""
        decay = [p for p in self.params.values() if p.dim() >= 3]
        rest = [p for p in self.params.values() if p.dim() < 3]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        """Clip each decoder's gradient to total L2 norm ``max_norm`` (as
        ``torch.nn.utils.clip_grad_norm_`` does per decoder); returns the ``[n]`` norms.
        """
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        if not grads:
            return torch.zeros(len(self))
        norms = torch.stack([g.flatten(1).float().norm(dim=1) for g in grads]).norm(dim=0)
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
        return norms

    @torch.no_grad()
    def push(self) -> None:
        """Copy the stacked parameters into the decoder objects."""
        for i, dec in enumerate(self.decoders):
            for name, p in dec.named_parameters():
                p.copy_(self.params[name][i])

    @torch.no_grad()
    def pull(self) -> None:
        """Copy the decoder objects' parameters into the stacked tensors (e.g. after loading)."""
        for i, dec in enumerate(self.decoders):
            for name, p in dec.named_parameters():
                self.params[name][i].copy_(p)


def stack_same_shaped(decoders: Sequence[Decoder]) -> tuple[list[StackedDecoders], list[Decoder]]:
    """Group decoders by config: groups of two or more become :class:`StackedDecoders`.

    Returns:
        ``(stacks, singles)``: the stacks, in order of first appearance, and the decoders
        whose config no other decoder shares.
    """
    groups: dict[str, list[Decoder]] = {}
    for d in decoders:
        groups.setdefault(repr(sorted(d.cfg.to_dict().items())), []).append(d)
    stacks = [StackedDecoders(g) for g in groups.values() if len(g) >= 2]
    singles = [g[0] for g in groups.values() if len(g) == 1]
    return stacks, singles
