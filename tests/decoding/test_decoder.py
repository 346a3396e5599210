"""Tests of tl_inversion.decoder: architecture, KV cache, objective, sampling, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tl_inversion.decoding.decoder import Decoder, DecoderConfig

BOS, EOS, PAD = 9, 10, 11


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add contention (10x slower on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_cfg(**kw) -> DecoderConfig:
    base = dict(
        vocab_size=12, n_ctx=10, d_act=6, bos_id=BOS, eos_id=EOS, pad_id=PAD,
        n_sites=3, d_model=32, n_layers=2, n_heads=4, n_cond_blocks=2,
    )
    base.update(kw)
    return DecoderConfig(**base)


def randomized(cfg: DecoderConfig | None = None, seed: int = 0, scale: float = 0.3) -> Decoder:
    """A decoder with large random weights, so every path visibly moves the logits."""
    torch.manual_seed(seed)
    model = Decoder(cfg or small_cfg())
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, scale)
            else:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def inputs(cfg: DecoderConfig, batch: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, cfg.d_act, generator=g)
    site = torch.randint(0, cfg.n_sites, (batch,), generator=g)
    tokens = torch.randint(0, 9, (batch, cfg.n_ctx), generator=g)
    tokens[:, 0] = cfg.bos_id
    return tokens, z, site


def reference_logits(model: Decoder, tokens, z, site):
    """Naive re-derivation of the architecture from the spec: explicit per-query loops."""
    cfg = model.cfg
    H, dh, d = cfg.n_heads, cfg.d_head, cfg.d_model
    a = torch.cat([z, model.site_embedding.weight[site]], dim=-1)
    for blk in model.cond_blocks:
        h = F.layer_norm(a, (cfg.d_cond,), blk.ln.weight, blk.ln.bias)
        a = a + (torch.relu(h @ blk.w1.weight.T + blk.w1.bias) @ blk.w2.weight.T + blk.w2.bias)
    a = F.layer_norm(a, (cfg.d_cond,), model.cond_ln.weight, model.cond_ln.bias)
    B, T = tokens.shape
    x = model.tok_embed.weight[tokens] + model.pos_embed.weight[:T]
    for blk in model.blocks:
        W, bias = blk.qkv.weight, blk.qkv.bias
        Wq, Wk, Wv = W[:d], W[d:2 * d], W[2 * d:]
        bq, bk, bv = bias[:d], bias[d:2 * d], bias[2 * d:]
        c = F.layer_norm(a @ blk.cond_proj.weight.T + blk.cond_proj.bias, (d,),
                         blk.cond_ln.weight, blk.cond_ln.bias)            # [B, d]
        h = F.layer_norm(x, (d,), blk.ln1.weight, blk.ln1.bias)          # [B, T, d]
        seq = torch.cat([c[:, None], h], dim=1)                          # slot first
        K = (seq @ Wk.T + bk).view(B, T + 1, H, dh)
        V = (seq @ Wv.T + bv).view(B, T + 1, H, dh)
        Q = (h @ Wq.T + bq).view(B, T, H, dh)
        att = torch.zeros(B, T, H, dh)
        for i in range(T):
            keys = K[:, : i + 2]      # condition slot + tokens 0..i
            vals = V[:, : i + 2]
            s = torch.einsum("bhd,bkhd->bhk", Q[:, i], keys) / math.sqrt(dh)
            att[:, i] = torch.einsum("bhk,bkhd->bhd", s.softmax(-1), vals)
        x = x + att.reshape(B, T, d) @ blk.attn_out.weight.T + blk.attn_out.bias
        h2 = F.layer_norm(x, (d,), blk.ln2.weight, blk.ln2.bias)
        m = F.gelu(h2 @ blk.mlp_in.weight.T + blk.mlp_in.bias, approximate="tanh")
        x = x + m @ blk.mlp_out.weight.T + blk.mlp_out.bias
    x = F.layer_norm(x, (d,), model.ln_f.weight, model.ln_f.bias)
    return x @ model.unembed.weight.T + model.unembed.bias


# ----------------------------------------------------------------- config


def test_config_roundtrip_and_defaults():
    cfg = small_cfg(d_mlp=None, dropout=0.1)
    assert cfg.d_mlp == 4 * cfg.d_model
    assert cfg.d_cond == cfg.d_act + cfg.n_sites
    back = DecoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    paper = DecoderConfig(vocab_size=20, n_ctx=14, d_act=32, bos_id=10, eos_id=13, pad_id=14)
    assert (paper.d_model, paper.n_layers, paper.n_heads, paper.n_cond_blocks) == (256, 2, 4, 6)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(eos_id=BOS), "three different special ids"),
        (dict(pad_id=12), r"0\.\.11"),
        (dict(n_heads=5), "must divide d_model"),
        (dict(dropout=1.0), r"\[0, 1\)"),
        (dict(n_ctx=1), "n_ctx must be an int >= 2"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        small_cfg(**kw)


def test_from_dict_unknown_key():
    d = small_cfg().to_dict()
    d["d_modle"] = 3
    with pytest.raises(ValueError, match="d_modle"):
        DecoderConfig.from_dict(d)


# ----------------------------------------------------------- architecture


def test_forward_matches_naive_reference():
    model = randomized()
    tokens, z, site = inputs(model.cfg)
    with torch.no_grad():
        got = model(tokens, z, site)
        want = reference_logits(model, tokens, z, site)
    assert got.shape == (4, model.cfg.n_ctx, model.cfg.vocab_size)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_condition_shape_and_site_embedding_shape():
    model = randomized()
    _, z, site = inputs(model.cfg)
    assert model.site_embedding.weight.shape == (3, 3)
    assert model.condition(z, site).shape == (4, model.cfg.d_act + 3)


def test_kv_cache_steps_match_teacher_forcing():
    model = randomized()
    tokens, z, site = inputs(model.cfg, batch=5)
    with torch.no_grad():
        full = model(tokens, z, site)
        cache = model._init_cache(model.condition(z, site), model.cfg.n_ctx)
        for i in range(model.cfg.n_ctx):
            step = model._step(tokens[:, i], cache)
            torch.testing.assert_close(step, full[:, i], atol=1e-5, rtol=0)


def test_changing_z_or_site_changes_logits():
    model = randomized()
    tokens, z, site = inputs(model.cfg)
    with torch.no_grad():
        base = model(tokens, z, site)
        other_z = model(tokens, z + torch.randn_like(z), site)
        other_site = model(tokens, z, (site + 1) % 3)
    assert (base - other_z).abs().amax() > 1e-2
    assert (base - other_site).abs().amax() > 1e-2


def test_condition_enters_only_through_the_slot():
    model = randomized()
    tokens, z, site = inputs(model.cfg)
    with torch.no_grad():
        before = model(tokens, z, site)
        for blk in model.blocks:
            blk.cond_proj.weight.zero_()
        a = model(tokens, z, site)
        b = model(tokens, torch.randn_like(z) * 5, (site + 2) % 3)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # the (now constant) slot is still attended: the logits changed when it changed
    assert (before - a).abs().amax() > 1e-2


def test_causality():
    model = randomized()
    tokens, z, site = inputs(model.cfg)
    with torch.no_grad():
        base = model(tokens, z, site)
        for i in range(model.cfg.n_ctx - 1):
            changed = tokens.clone()
            changed[:, i + 1:] = (changed[:, i + 1:] + 3) % 9
            out = model(changed, z, site)
            # float32 rounding of differently shaped kernels stays near 1e-6; a leak is > 1e-4
            torch.testing.assert_close(out[:, : i + 1], base[:, : i + 1], atol=1e-5, rtol=0)
            assert (out[:, i + 1:] - base[:, i + 1:]).abs().amax() > 1e-4


def test_shorter_sequence_equals_prefix():
    model = randomized()
    tokens, z, site = inputs(model.cfg)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens[:, :4], z, site), model(tokens, z, site)[:, :4],
                                   atol=1e-5, rtol=0)  # rounding only (a later token leaking in is far larger)


# -------------------------------------------------------------- objective


def padded_batch(cfg):
    tokens, z, site = inputs(cfg)
    tokens[0, 5] = EOS
    tokens[0, 6:] = PAD
    tokens[1, 2] = EOS
    tokens[1, 3:] = PAD
    tokens[2, -1] = EOS
    return tokens, z, site


def test_loss_equals_hand_cross_entropy():
    model = randomized()
    tokens, z, site = padded_batch(model.cfg)
    logits = model(tokens, z, site)
    logp = F.log_softmax(logits[:, :-1], dim=-1)
    total, count = 0.0, 0
    for b in range(tokens.shape[0]):
        for i in range(tokens.shape[1] - 1):
            target = int(tokens[b, i + 1])
            if target == PAD:
                continue
            total -= float(logp[b, i, target].detach())
            count += 1
    assert count == 4 * 9 - 4 - 7
    loss = model.loss(tokens, z, site)
    assert loss.ndim == 0 and loss.requires_grad
    assert math.isclose(float(loss.detach()), total / count, rel_tol=1e-5)


def test_token_logprobs():
    model = randomized()
    tokens, z, site = padded_batch(model.cfg)
    with torch.no_grad():
        lp = model.token_logprobs(tokens, z, site)
        logits = model(tokens, z, site)
    assert lp.shape == (4, model.cfg.n_ctx - 1)
    for b in range(4):
        for i in range(model.cfg.n_ctx - 1):
            target = int(tokens[b, i + 1])
            want = 0.0 if target == PAD else float(logits[b, i].log_softmax(-1)[target])
            assert math.isclose(float(lp[b, i]), want, abs_tol=1e-5)
    assert (lp[1, 2:] == 0).all() and (lp[1, :2] < 0).all()


# ------------------------------------------------------------- generation


def biased(model: Decoder, bos_pad=8.0, eos=0.0) -> Decoder:
    """Make BOS and PAD the most likely tokens, so an unmasked sampler would pick them."""
    with torch.no_grad():
        model.unembed.bias[BOS] += bos_pad
        model.unembed.bias[PAD] += bos_pad
        model.unembed.bias[EOS] += eos
    return model


def check_well_formed(out, cfg):
    assert out.shape[1] == cfg.n_ctx and out.dtype == torch.long
    assert (out[:, 0] == cfg.bos_id).all()
    for row in out.tolist():
        body = row[1:]
        end = body.index(cfg.eos_id) if cfg.eos_id in body else len(body)
        assert cfg.bos_id not in body[:end] and cfg.pad_id not in body[:end]
        assert all(t == cfg.pad_id for t in body[end + 1:])


def test_generate_shape_special_tokens_and_reproducible():
    model = biased(randomized(), eos=1.5)
    cfg = model.cfg
    _, z, site = inputs(cfg, batch=32)
    out = model.generate(z, site, generator=torch.Generator().manual_seed(3))
    assert out.shape == (32, cfg.n_ctx)
    check_well_formed(out, cfg)
    has_eos = (out == EOS).any(1)
    assert has_eos.any() and (~has_eos).any()   # both cases exercised
    again = model.generate(z, site, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    other = model.generate(z, site, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(out, other)


def test_generate_greedy_is_stepwise_argmax_of_forward():
    model = biased(randomized(), eos=1.0)
    cfg = model.cfg
    _, z, site = inputs(cfg, batch=16)
    out = model.generate(z, site, temperature=0.0)
    check_well_formed(out, cfg)
    with torch.no_grad():
        logits = model(out, z, site)
    logits[..., [BOS, PAD]] = float("-inf")
    for b in range(out.shape[0]):
        for i in range(cfg.n_ctx - 1):
            assert int(out[b, i + 1]) == int(logits[b, i].argmax())
            if int(out[b, i + 1]) == EOS:
                break


def test_per_row_temperature():
    model = biased(randomized(), eos=1.0)
    _, z, site = inputs(model.cfg, batch=8)
    greedy = model.generate(z, site, temperature=0.0)
    temp = torch.tensor([0.0, 1.0] * 4)
    mixed = model.generate(z, site, temperature=temp, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mixed[temp == 0], greedy[temp == 0])
    check_well_formed(mixed, model.cfg)


def test_generate_max_len_and_early_stop(monkeypatch):
    model = biased(randomized())
    cfg = model.cfg
    _, z, site = inputs(cfg, batch=6)
    out = model.generate(z, site, max_len=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, cfg.n_ctx)
    assert (out[:, 4:] == PAD).all() and (out[:, 1:4] != PAD).any()

    calls = []
    real_step = model._step
    monkeypatch.setattr(model, "_step", lambda *a: calls.append(1) or real_step(*a))
    model.generate(z, site, temperature=0.0)
    assert len(calls) <= cfg.n_ctx - 1            # one step per token, prefix never recomputed
    with torch.no_grad():
        model.unembed.bias[EOS] += 100.0          # every row ends at once
    calls.clear()
    out = model.generate(z, site)
    assert (out[:, 1] == EOS).all() and (out[:, 2:] == PAD).all()
    assert len(calls) == 1


def test_generate_ignores_dropout_mode():
    model = randomized(small_cfg(dropout=0.5))
    _, z, site = inputs(model.cfg, batch=4)
    a = model.eval().generate(z, site, generator=torch.Generator().manual_seed(1))
    b = model.train().generate(z, site, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_overfit_two_conditions():
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=8, n_ctx=8, d_act=4, bos_id=5, eos_id=6, pad_id=7,
                        n_sites=1, d_model=32, n_layers=1, n_heads=2)
    model = Decoder(cfg)
    z = torch.randn(2, 4)
    site = torch.zeros(2, dtype=torch.long)
    target = torch.tensor([[5, 1, 2, 3, 4, 6, 7, 7],
                           [5, 4, 4, 0, 6, 7, 7, 7]])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(200):
        opt.zero_grad()
        loss = model.loss(target, z, site)
        loss.backward()
        opt.step()
    model.eval()
    assert float(loss.detach()) < 0.05
    out = model.generate(z, site, temperature=0.0)
    assert torch.equal(out, target)


# ------------------------------------------------------------- site init


def test_init_site_embedding():
    model = randomized()
    before = model.site_embedding.weight.detach().clone()
    model.init_site_embedding(1, mean=0.5, std=2.0)
    row = model.site_embedding.weight[1].detach()
    assert math.isclose(float(row.mean()), 0.5, abs_tol=1e-5)
    assert math.isclose(float(row.std(correction=0)), 2.0, rel_tol=1e-5)
    assert torch.equal(model.site_embedding.weight[[0, 2]].detach(), before[[0, 2]])
    with pytest.raises(ValueError, match=r"0\.\.2"):
        model.init_site_embedding(3, 0.0, 1.0)
    one = Decoder(small_cfg(n_sites=1))
    one.init_site_embedding(0, mean=-1.25, std=3.0)
    assert float(one.site_embedding.weight[0, 0].detach()) == -1.25


# ----------------------------------------------------------------- errors


def test_errors_name_the_valid_values():
    model = randomized()
    tokens, z, site = inputs(model.cfg)
    with pytest.raises(ValueError, match="d_act=6"):
        model(tokens, torch.randn(4, 5), site)
    with pytest.raises(ValueError, match="d_act=6"):
        model.generate(torch.randn(4, 7), site)
    with pytest.raises(ValueError, match=r"valid site indices are 0\.\.2"):
        model(tokens, z, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match=r"valid site indices are 0\.\.2"):
        model.generate(z, -1)
    with pytest.raises(ValueError, match="n_ctx=10"):
        model(torch.full((4, 11), 1), z, site)
    with pytest.raises(ValueError, match=r"0\.\.11"):
        model.loss(torch.full((4, 5), 12), z, site)
    with pytest.raises(ValueError, match=r"\[batch=4\]"):
        model(tokens, z, site[:3])
    with pytest.raises(ValueError, match="batch"):
        model(tokens[:3], z, site)
    with pytest.raises(ValueError, match="at least 2"):
        model.loss(tokens[:, :1], z, site)
    with pytest.raises(ValueError, match=">= 0"):
        model.generate(z, site, temperature=-1.0)
    with pytest.raises(ValueError, match=r"1\.\.10"):
        model.generate(z, site, max_len=11)
    with pytest.raises(ValueError, match="NaN"):
        model(tokens, z * float("nan"), site)
