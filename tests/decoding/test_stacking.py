"""Stacked (vmapped) decoders compute exactly what the decoders compute one by one."""

from __future__ import annotations

import pytest
import torch

from tl_inversion.decoding.decoder import Decoder, DecoderConfig
from tl_inversion.decoding.stacking import StackedDecoders, stack_same_shaped

CFG = DecoderConfig(vocab_size=12, n_ctx=9, d_act=6, bos_id=9, eos_id=10, pad_id=11, d_model=16, n_layers=2,
                    n_heads=2, n_cond_blocks=2)


def _batch(seed=0, n=3, batch=5):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 9, (batch, 9), generator=g)
    tokens[:, 0] = 9
    tokens[:, 6] = 10
    tokens[:, 7:] = 11  # EOS then PAD: PAD targets are ignored
    return tokens, torch.randn(n, batch, 6, generator=g)


def test_losses_and_gradients_equal_the_decoders_one_by_one():
    torch.manual_seed(0)
    decs = [Decoder(CFG) for _ in range(3)]
    tokens, z = _batch()
    stack = StackedDecoders(decs)
    losses = stack.loss(tokens, z)
    losses.sum().backward()
    for i, d in enumerate(decs):
        ref = d.loss(tokens, z[i], 0)  # the checked, public loss
        ref.backward()
        assert torch.allclose(losses[i], ref, atol=1e-6)
        for name, p in d.named_parameters():
            assert torch.allclose(stack.params[name].grad[i], p.grad, atol=1e-6), name


def test_clip_equals_torch_clip_per_decoder():
    torch.manual_seed(1)
    decs = [Decoder(CFG) for _ in range(2)]
    tokens, z = _batch(n=2)
    stack = StackedDecoders(decs)
    (stack.loss(tokens, z) * torch.tensor([1.0, 50.0])).sum().backward()  # decoder 1 gets a large gradient
    for i, d in enumerate(decs):
        (d.loss(tokens, z[i], 0) * [1.0, 50.0][i]).backward()
    norms = stack.clip_grad_norm_(0.5)
    for i, d in enumerate(decs):
        ref_norm = torch.nn.utils.clip_grad_norm_(d.parameters(), 0.5)
        assert torch.allclose(norms[i], ref_norm, rtol=1e-5)
        for name, p in d.named_parameters():
            assert torch.allclose(stack.params[name].grad[i], p.grad, atol=1e-6), name


def test_push_pull_and_grouping():
    torch.manual_seed(2)
    decs = [Decoder(CFG) for _ in range(2)] + [Decoder(DecoderConfig(**{**CFG.to_dict(), "d_model": 8}))]
    stacks, singles = stack_same_shaped(decs)
    assert len(stacks) == 1 and stacks[0].decoders == decs[:2] and singles == [decs[2]]
    with torch.no_grad():
        stacks[0].params["unembed.bias"][1].fill_(3.0)
    stacks[0].push()
    assert torch.equal(decs[1].unembed.bias, torch.full_like(decs[1].unembed.bias, 3.0))
    with torch.no_grad():
        decs[0].unembed.bias.fill_(-1.0)
    stacks[0].pull()
    assert torch.equal(stacks[0].params["unembed.bias"][0], torch.full((12,), -1.0))
    with pytest.raises(ValueError, match="one DecoderConfig"):
        StackedDecoders(decs[1:])
    with pytest.raises(ValueError, match="at least two"):
        StackedDecoders(decs[:1])
