"""Generation loop: Gumbel-max draws follow softmax(logits / T), checks do not change samples,
generation log-probabilities equal teacher-forced ones (InversionView Sec. 3)."""

from __future__ import annotations

import pytest
import torch

from tl_inversion.decoding.decoder import Decoder, DecoderConfig
from tl_inversion.errors import InputValueError

BOS, EOS, PAD = 9, 10, 11


def _model(seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=12, n_ctx=10, d_act=6, bos_id=BOS, eos_id=EOS, pad_id=PAD, n_sites=2,
                        d_model=16, n_layers=2, n_heads=2, d_mlp=32, n_cond_blocks=1)
    model = Decoder(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        model.unembed.bias[EOS] += 1.0  # rows of different lengths
    return model


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_first_token_frequencies_follow_softmax_of_forward(temperature):
    model = _model()
    n = 20000
    z = torch.randn(1, 6).expand(n, 6).contiguous()
    out = model.generate(z, 0, temperature=temperature, max_len=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(torch.tensor([[BOS]]), z[:1], 0)[0, 0]
    logits[[BOS, PAD]] = float("-inf")
    expected = torch.softmax(logits / temperature, dim=-1)
    freq = torch.bincount(out[:, 1], minlength=12).double() / n
    assert freq[BOS] == 0 and freq[PAD] == 0
    # 5 binomial standard deviations per id
    sd = (expected * (1 - expected) / n).sqrt().double()
    assert ((freq - expected.double()).abs() <= 5 * sd + 1e-4).all(), (freq, expected)


def test_check_every_and_compaction_do_not_change_samples():
    model = _model()
    z = torch.randn(64, 6)
    temps = torch.tensor([0.0, 0.5, 1.0, 2.0]).repeat(16)
    a = model.generate(z, 1, temperature=temps, generator=torch.Generator().manual_seed(5), check_every=1)
    b = model.generate(z, 1, temperature=temps, generator=torch.Generator().manual_seed(5), check_every=1000)
    assert torch.equal(a, b)
    ends = (a == EOS).float().argmax(1)
    assert ends.min() < ends.max(), "rows of different lengths, so compaction happened"


def test_generation_logprobs_equal_teacher_forced_logprobs():
    model = _model()
    z = torch.randn(32, 6)
    tokens, lp = model.generate(z, 0, temperature=1.5, generator=torch.Generator().manual_seed(2),
                                return_logprobs=True)
    ref = model.token_logprobs(tokens, z, 0)
    torch.testing.assert_close(lp, ref, atol=1e-5, rtol=0)
    assert (lp[tokens[:, 1:] == PAD] == 0).all()


def test_greedy_generation_leaves_the_global_rng_alone():
    model = _model()
    z = torch.randn(4, 6)
    torch.manual_seed(0)
    model.generate(z, 0, temperature=0.0)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))


@pytest.mark.parametrize("bad", [0, -1, True])
def test_check_every_must_be_a_positive_int(bad):
    model = _model()
    with pytest.raises(InputValueError, match="check_every"):
        model.generate(torch.randn(2, 6), 0, check_every=bad)


def test_inference_autocast_runs_generation_and_scoring_in_bf16(monkeypatch):
    """With an autocast policy for the CPU (CUDA's in production), generation and teacher
    forcing run in bf16 and still agree with each other; the float32 results differ."""
    from tl_inversion.decoding import precision

    model = _model()
    z = torch.randn(32, 6)
    kw = dict(temperature=1.0, generator=None, return_logprobs=True)
    monkeypatch.setitem(precision.INFERENCE_AUTOCAST, "cpu", torch.bfloat16)
    seen = []
    monkeypatch.setattr(model, "_init_cache", lambda a, n, f=model._init_cache: seen.append(f(a, n)) or seen[-1])
    tok16, lp16 = model.generate(z, 0, **{**kw, "generator": torch.Generator().manual_seed(3)})
    assert seen[0].k.dtype == torch.bfloat16  # the KV cache holds bf16 keys/values
    assert lp16.dtype == torch.float32
    ref16 = model.token_logprobs(tok16, z, 0)
    torch.testing.assert_close(lp16, ref16, atol=0.05, rtol=0)  # bf16 rounding, not float32's 1e-5
    monkeypatch.delitem(precision.INFERENCE_AUTOCAST, "cpu")
    ref32 = model.token_logprobs(tok16, z, 0)
    assert (ref16 - ref32).abs().max() > 1e-4  # teacher forcing did run in bf16
    torch.testing.assert_close(ref16, ref32, atol=0.05, rtol=0)
