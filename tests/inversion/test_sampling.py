"""Preimage sampling on the counting task with an untrained bank (InversionView Sec. 3).

An untrained decoder samples near-random inputs, which is all these tests need: they check
the bookkeeping (pool size, columns, settings), that distances are the probed model's
(recomputed independently with ``run_with_cache``), reproducibility, the noise rule, the
colour values, the paper's display draw, the HTML, errors and hook hygiene.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import HAS_BRIDGE, HAS_HOOKED, TINY_CFG, build_hf_gpt2

from tl_inversion.decoding.bank import DecoderBank, ModelMismatchError
from tl_inversion.inversion.queries import UntrainedPositionWarning
from tl_inversion.inversion.result import COLUMNS, PreimageResult
from tl_inversion.inversion.sampling import PAPER_SCHEDULE, sample_many, sample_preimage
from tl_inversion.model import fingerprints
from tl_inversion.model.activations import harvest, site_width
from tl_inversion.model.sites import Site, SiteError
from tl_inversion.tasks.base import PositionError
from tl_inversion.tasks.counting import make_task

TASK = make_task()
SITE = "blocks.1.hook_resid_post"
HEAD_SITE = "blocks.0.attn.hook_result[1]"
QUERY = "abcab|b:2"
SMALL = dict(schedule=((1.0, 0.0), (2.0, 0.1)), n_repeats=1, batch_size=16)
VARIANTS = (["hooked"] if HAS_HOOKED else []) + (["bridge"] if HAS_BRIDGE else [])


def _counting_tokenizer():
    """One token per counting character; built so TransformerBridge never reaches a hub."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(TASK.chars)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="P"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.post_processor = processors.TemplateProcessing(single="B:0 $A:0", special_tokens=[("B", vocab["B"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="B", eos_token="E", pad_token="P", unk_token="P",
        add_bos_token=True, padding_side="right", model_max_length=TASK.n_ctx,
        name_or_path="tl-inversion/counting-chars",
    )


def _counting_model(variant: str, seed: int = 0):
    cfg = dict(TINY_CFG, n_ctx=TASK.n_ctx, d_vocab=TASK.d_vocab)
    if variant == "hooked":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return HookedTransformer(HookedTransformerConfig(**cfg, seed=seed)).eval()
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(
        "tl-inversion-counting-tiny", hf_model=build_hf_gpt2(cfg, seed), tokenizer=_counting_tokenizer(),
        device="cpu", dtype=torch.float32,
    ).eval()


def _bank(model):
    torch.manual_seed(0)
    sites = [SITE, HEAD_SITE]
    return DecoderBank.create(
        sites, {s: site_width(model, s) for s in sites}, vocab_size=TASK.d_vocab, n_ctx=TASK.n_ctx,
        bos_id=TASK.bos_id, eos_id=TASK.eos_id, pad_id=TASK.pad_id,
        meta={"fingerprint": fingerprints.fingerprint(model), "probe": fingerprints.probe_signature(model, sites)},
        d_model=32, n_layers=1, n_heads=2, d_mlp=64, n_cond_blocks=1,
    ).eval()


@pytest.fixture(scope="module", params=VARIANTS or [None])
def setup(request):
    if request.param is None:
        pytest.skip("no TransformerLens model class available")
    model = _counting_model(request.param)
    bank = _bank(model)
    result = sample_preimage(bank, model, TASK, QUERY, SITE, ":")
    return model, bank, result


@pytest.fixture(scope="module")
def one():
    """Model and bank of the first variant only (for the cheaper, class-independent tests)."""
    if not VARIANTS:
        pytest.skip("no TransformerLens model class available")
    model = _counting_model(VARIANTS[0])
    return model, _bank(model)


def _acts_by_run_with_cache(model, tokens: list[int], site: str) -> np.ndarray:
    """[pos, d] activations of one input, read by exact key from run_with_cache."""
    row = torch.tensor(tokens + [TASK.pad_id] * (TASK.n_ctx - len(tokens)))[None]
    with torch.inference_mode():
        _, cache = model.run_with_cache(row)
        if site == HEAD_SITE:
            value = cache["blocks.0.attn.hook_z"][0, :, 1] @ model.blocks[0].attn.W_O[1]
        else:
            value = cache[site][0]
    return value.double().numpy()


# the default pool -----------------------------------------------------------------------------


def test_default_pool_has_the_papers_shape(setup):
    _, _, res = setup
    df = res.df
    assert len(df) == 4 * 4 * 64 == 1024
    assert list(df.columns) == list(COLUMNS)
    assert (df["distance"].diff().dropna() >= 0).all(), "sorted by distance"
    assert sorted(df["sample"]) == list(range(1024))
    per_setting = df.groupby(["temperature", "noise"]).size().to_dict()
    assert per_setting == {(0.5, 0.0): 256, (1.0, 0.0): 256, (2.0, 0.0): 256, (2.0, 0.1): 256}
    assert (df["in_preimage"] == (df["distance"] <= res.epsilon)).all()
    assert res.epsilon == 0.1 and res.metric == "l2" and res.site == Site(SITE)
    assert res.position == TASK.resolve_position(TASK.encode(QUERY), ":").item() == 8
    assert res.query_text == QUERY and res.query_tokens == TASK.encode(QUERY)[0].tolist()
    assert res.z_q_norm == pytest.approx(float(res.z_q.norm()), rel=1e-6)


def test_row_bookkeeping_is_consistent(setup):
    _, _, res = setup
    df = res.df
    keys = df["tokens"].map(tuple)
    for tokens, text, colour, pos in zip(df["tokens"], df["text"], df["colour"], df["matched_pos"]):
        assert tokens[0] == TASK.bos_id and tokens[-1] != TASK.pad_id
        assert text == TASK.decode(torch.tensor(tokens))
        assert len(colour) == len(tokens) - 1 and all(-1 <= c <= 1 for c in colour)
        assert pos == -1 or (0 < pos < len(tokens) and tokens[pos] not in TASK.special_ids)
    padded = torch.tensor([t + [TASK.pad_id] * (TASK.n_ctx - len(t)) for t in df["tokens"]])
    assert df["valid"].tolist() == TASK.is_valid(padded).tolist()
    assert (df["count"] == keys.map(keys.value_counts())).all()
    assert (~df["duplicate"]).sum() == keys.nunique()
    assert df.loc[~df["duplicate"], "tokens"].map(tuple).is_unique
    s = res.summary()
    assert s["n_candidates"] == 1024 and s["n_distinct"] == keys.nunique()
    assert s["in_preimage_fraction"] == pytest.approx(df["in_preimage"].mean())
    assert s["valid_fraction"] == pytest.approx(df["valid"].mean())
    assert s["n_distinct_in_preimage"] == keys[df["in_preimage"]].nunique()
    assert res.by_setting()["n"].sum() == 1024


def test_distances_match_an_independent_recomputation(setup):
    model, _, res = setup
    z_q = _acts_by_run_with_cache(model, res.query_tokens, SITE)[res.position]
    np.testing.assert_allclose(z_q, res.z_q.double().numpy(), rtol=1e-5, atol=1e-6)
    rows = res.df.iloc[[0, 1, 500, 1023]]
    for tokens, dist, pos in zip(rows["tokens"], rows["distance"], rows["matched_pos"]):
        acts = _acts_by_run_with_cache(model, tokens, SITE)
        d = [
            np.linalg.norm(acts[t] - z_q) / np.linalg.norm(z_q)
            for t in range(len(tokens))
            if tokens[t] not in TASK.special_ids
        ]
        if not d:
            assert math.isinf(dist) and pos == -1
            continue
        valid_t = [t for t in range(len(tokens)) if tokens[t] not in TASK.special_ids]
        assert dist == pytest.approx(min(d), rel=1e-4, abs=1e-6)
        assert pos == valid_t[int(np.argmin(d))]


def test_the_query_itself_is_at_distance_zero(one):
    from tl_inversion.inversion.verify import membership

    model, _ = one
    tokens = TASK.encode(QUERY)
    z = harvest(model, tokens, [SITE])[Site(SITE)][0, 8]
    dist, pos = membership(model, tokens, SITE, z, TASK.special_ids)
    assert dist.item() <= 1e-6 and pos.item() == 8


def test_no_hooks_left_and_modes_restored(setup):
    model, bank, _ = setup
    assert sum(len(getattr(hp, "_forward_hooks", {})) for hp in model.hook_dict.values()) == 0
    assert not model.training
    decoder, _ = bank.lookup(SITE)
    decoder.train()
    try:
        sample_preimage(bank, model, TASK, QUERY, SITE, ":", **SMALL)
        assert decoder.training, "the decoder's mode is restored"
    finally:
        decoder.eval()
    assert sum(len(getattr(hp, "_forward_hooks", {})) for hp in model.hook_dict.values()) == 0


# reproducibility, noise, colour ----------------------------------------------------------------


def test_same_seed_same_pool_other_seed_other_pool(one):
    model, bank = one
    a = sample_preimage(bank, model, TASK, QUERY, HEAD_SITE, "c", seed=3, **SMALL)
    b = sample_preimage(bank, model, TASK, TASK.encode(QUERY)[0], HEAD_SITE, "c", seed=3, **SMALL)
    c = sample_preimage(bank, model, TASK, QUERY, HEAD_SITE, "c", seed=4, **SMALL)
    pd.testing.assert_frame_equal(a.df, b.df)
    assert a.df["tokens"].tolist() != c.df["tokens"].tolist()
    assert len(a.df) == 2 * 16 and a.position == 7


def test_noise_zero_uses_z_q_exactly_and_noise_scales_with_std(one, monkeypatch):
    model, bank = one
    decoder, _ = bank.lookup(SITE)
    seen = []
    real = decoder.generate

    def spy(z, site, temperature=1.0, max_len=None, generator=None):
        seen.append((z.clone(), temperature.clone()))
        return real(z, site, temperature=temperature, max_len=max_len, generator=generator)

    monkeypatch.setattr(decoder, "generate", spy)
    res = sample_preimage(
        bank, model, TASK, QUERY, SITE, ":", schedule=((1.0, 0.0), (0.5, 0.5)), n_repeats=2, batch_size=200,
        colour=False,
    )
    z = torch.cat([s[0] for s in seen])
    temps = torch.cat([s[1] for s in seen])
    assert z.shape[0] == 800 and len(seen) == 1, "one generate call for all settings"
    z_q = res.z_q
    clean = temps == 1.0
    assert (z[clean] == z_q).all(), "noise 0 leaves z_q untouched"
    noisy = z[~clean] - z_q
    assert (noisy.abs().sum(-1) > 0).all()
    # N(0, I) * std(z_q) * 0.5: the perturbation's per-component std is about 0.5 * std(z_q)
    assert noisy.std().item() == pytest.approx(0.5 * z_q.std().item(), rel=0.1)
    assert res.df["colour"].isna().all()


def test_colour_is_the_probability_difference(one):
    model, bank = one
    res = sample_preimage(bank, model, TASK, QUERY, SITE, ":", **SMALL)
    decoder, idx = bank.lookup(SITE)
    acts = harvest(model, TASK.encode(QUERY), [SITE])[Site(SITE)][0]
    row = res.df.iloc[3]
    tokens = torch.tensor(row["tokens"])[None]
    with torch.no_grad():
        p_q = decoder.token_logprobs(tokens, acts[8][None], idx).exp()[0]
        p_b = decoder.token_logprobs(tokens, acts[0][None], idx).exp()[0]
    np.testing.assert_allclose(row["colour"], (p_q - p_b).numpy(), rtol=1e-4, atol=1e-6)


def test_sample_many_batches_queries(one):
    model, bank = one
    single = sample_preimage(bank, model, TASK, QUERY, SITE, ":", seed=1, **SMALL)
    (again,) = sample_many(bank, model, TASK, [QUERY], SITE, ":", seed=1, **SMALL)
    pd.testing.assert_frame_equal(single.df, again.df)
    texts = [QUERY, "aaab|a:3"]
    results = sample_many(bank, model, TASK, TASK.encode(texts), SITE, [":", "c"], **SMALL)
    assert [r.query_text for r in results] == texts
    assert [r.position for r in results] == [8, 6]
    for r in results:
        assert len(r.df) == 32
        z = harvest(model, TASK.encode(r.query_text), [SITE])[Site(SITE)][0, r.position]
        torch.testing.assert_close(r.z_q, z.float())


# display and HTML ------------------------------------------------------------------------------


def _synthetic(n: int, n_in: int, vocab=None) -> PreimageResult:
    dist = np.concatenate([np.linspace(0, 0.1, n_in), np.linspace(0.11, 1.0, n - n_in)])
    vocab = vocab or list(TASK.chars)
    df = pd.DataFrame(
        {
            "text": [f"t{i}" for i in range(n)],
            "tokens": [[TASK.bos_id, i % 26, (i // 26) % 26, TASK.eos_id] for i in range(n)],
            "distance": dist,
            "matched_pos": [1] * n,
            "in_preimage": dist <= 0.1,
            "valid": [True] * n,
            "temperature": [1.0] * n,
            "noise": [0.0] * n,
            "count": [1] * n,
            "duplicate": [False] * n,
            "sample": range(n),
            "colour": [[0.5, -0.5, 0.0]] * n,
        }
    )
    return PreimageResult(
        df=df, query_text="ab|a:1", query_tokens=TASK.encode("ab|a:1")[0].tolist(), site=Site(SITE), position=4,
        z_q_norm=1.0, epsilon=0.1, metric="l2", vocab=vocab, special_ids=TASK.special_ids,
    )


@pytest.mark.parametrize(
    "n, n_in, k, want_in",
    [
        (600, 540, 100, 80),  # 90 % inside -> clamped to 80 %
        (600, 60, 100, 60),  # 10 % inside -> raised to 60 %
        (600, 420, 100, 70),  # 70 % inside -> kept
        (600, 20, 100, 20),  # too few inside: all of them, the rest outside
        (600, 595, 100, 95),  # too few outside: all of them, the rest inside
        (50, 10, 100, 10),  # pool smaller than k: everything
    ],
)
def test_display_sample_proportions(n, n_in, k, want_in):
    shown = _synthetic(n, n_in).display_sample(k=k)
    assert shown.is_display and len(shown.df) == min(k, n)
    assert int(shown.df["in_preimage"].sum()) == want_in
    assert shown.df["distance"].is_monotonic_increasing
    assert shown.df["text"].is_unique


def test_display_sample_distinct_and_errors():
    res = _synthetic(300, 200)
    res.df["tokens"] = [[TASK.bos_id, i % 50, TASK.eos_id] for i in range(300)]  # 50 distinct
    assert len(res.display_sample(k=100).df) == 50
    assert len(res.display_sample(k=100, distinct=False).df) == 100
    with pytest.raises(ValueError, match="target_in"):
        res.display_sample(target_in=(0.9, 0.1))
    with pytest.raises(ValueError, match="k must be"):
        res.display_sample(k=-1)


def test_html_escapes_and_has_one_row_per_sample(tmp_path):
    vocab = list(TASK.chars)
    vocab[0] = "<b>&"  # token id 0 renders as a string that needs escaping
    res = _synthetic(30, 20, vocab=vocab)
    html = res._repr_html_()
    assert html.count('<tr class="tli-sample') == 30
    assert "&lt;b&gt;&amp;" in html and "<b>&<" not in html
    assert 'class="tli-tok tli-qpos"' in html and "tli-match" in html
    assert "rgba(220, 38, 38, 0.500)" in html and "rgba(37, 99, 235, 0.500)" in html
    path = res.to_html(tmp_path / "sub" / "page.html")
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count('<tr class="tli-sample') == 30
    assert re.search(r"<title>[^<]*blocks\.1\.hook_resid_post", page)


def test_html_of_a_full_pool_shows_the_display_sample(setup):
    _, _, res = setup
    html = res._repr_html_()
    assert html.count('<tr class="tli-sample') == 100
    assert "full pool is in .df" in html
    pool_in = round(100 * float(res.df["in_preimage"].mean()))
    assert f"in the whole pool {pool_in}% lie inside epsilon" in html
    assert res.to_html_fragment(max_rows=None).count('<tr class="tli-sample') == 1024


# errors and warnings ---------------------------------------------------------------------------


def test_unknown_site_lists_the_bank_sites(one):
    model, bank = one
    with pytest.raises(SiteError, match=r"this bank covers: blocks\.1\.hook_resid_post, blocks\.0\.attn"):
        sample_preimage(bank, model, TASK, QUERY, "blocks.0.hook_resid_mid", ":")


def test_bad_positions_raise_position_error(one):
    model, bank = one
    with pytest.raises(PositionError, match="named positions"):
        sample_preimage(bank, model, TASK, QUERY, SITE, "colon")
    with pytest.raises(PositionError, match="out of range"):
        sample_preimage(bank, model, TASK, QUERY, SITE, 99)


def test_other_model_is_refused_unless_allowed(one):
    model, bank = one
    other = _counting_model(VARIANTS[0], seed=1)
    with pytest.raises(ModelMismatchError):
        sample_preimage(bank, other, TASK, QUERY, SITE, ":", **SMALL)
    with pytest.warns(UserWarning, match="another probed model"):
        sample_preimage(bank, other, TASK, QUERY, SITE, ":", allow_mismatch=True, **SMALL)


def test_argument_errors_and_position_warnings(one):
    model, bank = one
    with pytest.raises(ValueError, match="sample_many"):
        sample_preimage(bank, model, TASK, TASK.encode([QUERY, QUERY]), SITE, ":")
    with pytest.raises(ValueError, match="schedule"):
        sample_preimage(bank, model, TASK, QUERY, SITE, ":", schedule=((1.0, -0.1),))
    with pytest.raises(ValueError, match="metric"):
        sample_preimage(bank, model, TASK, QUERY, SITE, ":", metric="dot")
    with pytest.raises(ValueError, match="not input characters"):
        sample_preimage(bank, model, TASK, "ab|a:1<", SITE, ":")
    with pytest.warns(UntrainedPositionWarning, match="not one the counting decoders are trained on"):
        sample_preimage(bank, model, TASK, QUERY, SITE, 2, **SMALL)
    with pytest.warns(UntrainedPositionWarning, match="special token"):
        sample_preimage(bank, model, TASK, QUERY, SITE, 0, **SMALL)
    with pytest.raises(ValueError, match="queries is empty"):
        sample_many(bank, model, TASK, [], SITE, ":")
    with pytest.raises(TypeError, match="item 1 is int"):
        sample_many(bank, model, TASK, [QUERY, 5], SITE, ":")
    with pytest.raises(ValueError, match=f"rows are {TASK.n_ctx} ids long .* got rows of 10"):
        sample_preimage(bank, model, TASK, TASK.encode(QUERY)[0, :10], SITE, ":")
    with pytest.raises(ValueError, match=re.escape("n_repeats must be >= 1 (an int), got 0")):
        sample_preimage(bank, model, TASK, QUERY, SITE, ":", n_repeats=0)
    with pytest.raises(TypeError, match="n_repeats"):  # a str, not a bad count (jaxtyping's hook words it in CI)
        sample_preimage(bank, model, TASK, QUERY, SITE, ":", n_repeats="2")
    # 4 settings x 10**12 x 64 rows: refused before any work (it used to hang building the schedule)
    with pytest.raises(ValueError, match=re.escape("= 256,000,000,000,000 candidates per query; at most 16,777,216")):
        sample_preimage(bank, model, TASK, QUERY, SITE, ":", n_repeats=10**12)
    cos = sample_preimage(bank, model, TASK, QUERY, SITE, ":", metric="cosine", **SMALL)
    assert cos.epsilon == 0.25 and (cos.df["in_preimage"] == (cos.df["distance"] <= 0.25)).all()
    assert PAPER_SCHEDULE == ((0.5, 0.0), (1.0, 0.0), (2.0, 0.0), (2.0, 0.1))


def test_repr_is_one_short_line():
    r = _synthetic(600, 420)
    text = repr(r)
    assert "\n" not in text and len(text) < 300  # not the DataFrame
    for part in ("query='ab|a:1'", f"site='{SITE}'", "position=4", "600 candidates: 420 in preimage, 180 out",
                 "600 distinct", "epsilon=0.1", "metric='l2'"):
        assert part in text, part
    # the rows are one attribute away
    assert len(r.df) == 600 and int(r.df["in_preimage"].sum()) == 420
    shown = r.display_sample(k=10)
    assert "display sample of 10 candidates: 7 in preimage, 3 out" in repr(shown)


# early stop, negative positions, padding (issues 16.1, 19.1, 19.2) ----------------------------
def test_min_in_preimage_stops_after_the_first_repeat_that_reaches_it(one):
    model, bank = one
    kw = dict(schedule=((1.0, 0.0), (2.0, 0.1)), n_repeats=3, batch_size=8)
    # epsilon huge: every sample is in the preimage, the first repeat (2 settings x 8) suffices
    easy = sample_preimage(bank, model, TASK, QUERY, SITE, ":", epsilon=1e6, min_in_preimage=1, **kw)
    assert len(easy.df) == 16 and easy.settings["repeats_drawn"] == 1
    assert sorted(easy.df["sample"]) == list(range(16))
    # epsilon tiny: nothing is in the preimage, all 3 repeats are drawn
    hard = sample_preimage(bank, model, TASK, QUERY, SITE, ":", epsilon=1e-12, min_in_preimage=1, **kw)
    assert len(hard.df) == 48 and hard.settings["repeats_drawn"] == 3
    assert sorted(hard.df["sample"]) == list(range(48))
    # the verification is the same as without early stop: distances from the probed model
    for tokens, dist in zip(hard.df["tokens"][:5], hard.df["distance"][:5], strict=True):
        acts = _acts_by_run_with_cache(model, tokens, SITE)
        real = [i for i, t in enumerate(tokens) if t not in TASK.special_ids]
        z_q = hard.z_q.numpy()
        best = min(np.linalg.norm(acts[i] - z_q) / np.linalg.norm(z_q) for i in real) if real else math.inf
        assert dist == pytest.approx(best, rel=1e-4, abs=1e-5)
    with pytest.raises(ValueError, match="min_in_preimage"):
        sample_preimage(bank, model, TASK, QUERY, SITE, ":", min_in_preimage=0, **kw)


def test_negative_positions_count_from_each_rows_last_real_token(one):
    from tl_inversion.inversion.queries import resolve_query_positions

    # "abcab|b:2": B a b c a b | b : 2 E -> EOS at index 10; "aab|a:2": EOS at index 8
    tokens = TASK.encode([QUERY, "aab|a:2"])
    assert resolve_query_positions(TASK, tokens, -1).tolist() == [10, 8]
    assert resolve_query_positions(TASK, tokens, -3).tolist() == [8, 6]  # the ':' of each row
    assert resolve_query_positions(TASK, tokens, [-2, "-4"]).tolist() == [9, 5]
    assert resolve_query_positions(TASK, tokens, -9).tolist() == [2, 0]
    with pytest.raises(PositionError, match="fewer than 10 real tokens"):
        resolve_query_positions(TASK, tokens, -10)  # the second row has only 9 tokens
    model, bank = one
    res = sample_preimage(bank, model, TASK, QUERY, SITE, -3, **SMALL)
    assert res.position == 8 == sample_preimage(bank, model, TASK, QUERY, SITE, ":", **SMALL).position
    with pytest.warns(UntrainedPositionWarning, match="special token"):
        sample_preimage(bank, model, TASK, QUERY, SITE, -1, **SMALL)  # EOS: warned as before


def test_left_padded_queries_are_refused(one):
    model, bank = one
    row = TASK.encode(QUERY)[0]
    left = torch.cat([torch.tensor([TASK.pad_id]), row[:-1]])
    with pytest.raises(ValueError, match="left-padded"):
        sample_preimage(bank, model, TASK, left, SITE, 3, **SMALL)


def test_counts_accept_any_integer_type():
    from tl_inversion.inversion.sampling import _positive_int

    assert _positive_int("n_repeats", np.int64(3)) == 3 and type(_positive_int("n_repeats", np.int64(3))) is int
    for bad in (True, 2.0, "2", None):
        with pytest.raises(TypeError, match="n_repeats must be an int >= 1"):
            _positive_int("n_repeats", bad)
