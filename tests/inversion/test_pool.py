"""ragged_rows against a row-by-row reading of its definition."""

from __future__ import annotations

import numpy as np
import torch

from tl_inversion.inversion.pool import ragged_rows


def test_ragged_rows_is_each_rows_prefix_as_its_own_list():
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 50, (40, 9), generator=g)
    rng = np.random.default_rng(0)
    src = rng.integers(0, 40, size=300)  # repeats: several output rows share a source row
    lengths = rng.integers(0, 10, size=300)
    out = ragged_rows(values, src, lengths)
    assert out.dtype == object and out.shape == (300,)
    for r in range(300):
        assert out[r] == [int(v) for v in values[src[r]][: lengths[r]]]
        assert type(out[r]) is list and all(type(v) is int for v in out[r])
    same = [r for r in range(1, 300) if src[r] == src[0] and lengths[r] == lengths[0]]
    assert same and all(out[r] is not out[0] for r in same)  # no list is shared between rows


def test_ragged_rows_of_floats_and_of_nothing():
    values = torch.tensor([[0.5, 0.25, 1.0]])
    assert ragged_rows(values, np.array([0, 0]), np.array([3, 1])).tolist() == [[0.5, 0.25, 1.0], [0.5]]
    assert ragged_rows(values, np.array([], dtype=np.int64), np.array([], dtype=np.int64)).shape == (0,)


def test_teacher_forced_probs_are_the_same_in_logit_budget_sized_chunks(monkeypatch):
    """A budget small enough to force one row per call gives the same numbers as one big call,
    and no call holds more rows than the budget allows."""
    from tl_inversion.decoding.decoder import Decoder, DecoderConfig
    from tl_inversion.inversion import pool

    torch.manual_seed(0)
    dec = Decoder(DecoderConfig(vocab_size=12, n_ctx=8, d_act=5, bos_id=9, eos_id=10, pad_id=11, n_sites=1,
                                d_model=16, n_layers=1, n_heads=2, d_mlp=32, n_cond_blocks=1)).eval()
    tokens = torch.tensor([[9, 1, 2, 10, 11, 11, 11, 11], [9, 3, 10, 11, 11, 11, 11, 11], [9, 4, 4, 4, 5, 6, 10, 11]])
    z = torch.randn(3, 5)
    whole = pool.teacher_forced_probs(dec, 0, tokens, z, 11, max_batch=64)
    assert (whole[tokens[:, 1:] == 11] == 0).all()  # PAD targets: 0, as documented
    assert (whole[tokens[:, 1:] != 11] > 0).all()
    seen = []
    real = dec.token_logprobs
    monkeypatch.setattr(dec, "token_logprobs", lambda t, zz, s: seen.append(t.shape[0]) or real(t, zz, s))
    monkeypatch.setattr(pool, "LOGIT_BUDGET", 8 * 12)  # one row of n_ctx x vocab
    small = pool.teacher_forced_probs(dec, 0, tokens, z, 11, max_batch=64)
    assert max(seen) == 1 and sum(seen) == 3
    torch.testing.assert_close(small, whole, atol=1e-6, rtol=0)
