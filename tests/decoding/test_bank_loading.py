"""Loader against Hugging Face, bank save/load, refusal of another model, the paper's accuracy."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from helpers import HAS_BRIDGE, HAS_HOOKED
from model_files import load_counting_shaped, write_gpt2

from tl_inversion.decoding.bank import DecoderBank, ModelMismatchError
from tl_inversion.model import fingerprints
from tl_inversion.model.activations import logits as model_logits
from tl_inversion.model.activations import site_width
from tl_inversion.model.loading import _read_hf_gpt2, load_hf_gpt2
from tl_inversion.model.sites import SiteError
from tl_inversion.tasks import counting

CLASSES = [c for c, ok in (("hooked", HAS_HOOKED), ("bridge", HAS_BRIDGE)) if ok]


@pytest.mark.parametrize("model_class", CLASSES)
@pytest.mark.parametrize("processing", ["none", "default"])
def test_loader_logits_equal_hugging_face(tmp_path, model_class, processing):
    write_gpt2(tmp_path, seed=3)
    model = load_hf_gpt2(tmp_path, model_class, processing)
    hf = _read_hf_gpt2(tmp_path)
    tokens = torch.randint(0, 40, (4, 33), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(tokens).logits
    got = model_logits(model, tokens)
    # centring the unembedding shifts all logits of a position by one constant
    torch.testing.assert_close(got.log_softmax(-1), ref.log_softmax(-1), atol=1e-4, rtol=1e-4)
    if processing == "none":
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def _bank_for(model, sites=("blocks.1.hook_resid_post", "blocks.0.attn.hook_result[0]")):
    task = counting.make_task()
    widths = {s: site_width(model, s) for s in sites}
    meta = {"fingerprint": fingerprints.fingerprint(model), "probe": fingerprints.probe_signature(model, list(sites))}
    return DecoderBank.create(list(sites), widths, vocab_size=40, n_ctx=33, bos_id=task.bos_id, eos_id=task.eos_id,
                              pad_id=task.pad_id, meta=meta, d_model=16, n_layers=1, n_heads=2, n_cond_blocks=1)


@pytest.mark.parametrize("topology", ["per_hook", "shared"])
def test_bank_save_load_round_trip(tmp_path, topology):
    model = load_counting_shaped(tmp_path / "m", CLASSES[0])
    bank = _bank_for(model)
    if topology == "shared":
        bank = DecoderBank.create(bank.sites, bank.widths, topology="shared", vocab_size=40, n_ctx=33, bos_id=37,
                                  eos_id=38, pad_id=39, meta=bank.meta, d_model=16, n_layers=1, n_heads=2)
    bank.save(tmp_path / "bank")
    loaded = DecoderBank.load(tmp_path / "bank", model)
    assert [str(s) for s in loaded.sites] == [str(s) for s in bank.sites]
    for k, v in bank.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    dec, idx = loaded.lookup("blocks.0.attn.hook_result[0]")
    assert idx == (0 if topology == "per_hook" else 1)
    with pytest.raises(SiteError, match="this bank covers: blocks.1.hook_resid_post"):
        loaded.lookup("blocks.0.hook_resid_pre")


def test_bank_refuses_another_model(tmp_path):
    model = load_counting_shaped(tmp_path / "a", CLASSES[0], seed=0)
    other = load_counting_shaped(tmp_path / "b", CLASSES[0], seed=1)
    _bank_for(model).save(tmp_path / "bank")
    with pytest.raises(ModelMismatchError, match="activations differ"):
        DecoderBank.load(tmp_path / "bank", other)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        DecoderBank.load(tmp_path / "bank", other, allow_mismatch=True)
    assert any("trained on another probed model" in str(x.message) for x in w)


def test_bank_refuses_other_weight_processing(tmp_path):
    processed = load_counting_shaped(tmp_path / "a", CLASSES[0], processing="default")
    raw = load_counting_shaped(tmp_path / "a", CLASSES[0], processing="none")
    bank = _bank_for(processed)
    with pytest.raises(ModelMismatchError):
        bank.check_model(raw)
    bank.check_model(processed)  # same model: no error


@pytest.mark.skipif(not (HAS_HOOKED and HAS_BRIDGE), reason="needs both model classes (TL 3.x)")
def test_hooked_default_and_bridge_compat_are_interchangeable(tmp_path):
    ht = load_counting_shaped(tmp_path / "a", "hooked", processing="default")
    br = load_counting_shaped(tmp_path / "a", "bridge", processing="compat")
    _bank_for(ht).check_model(br)  # same activations: accepted


def test_loader_defaults_pick_the_class_this_version_has(tmp_path):
    # TL < 4 has HookedTransformer (default processing); TL 4 only the bridge (compat mode)
    model = load_hf_gpt2(write_gpt2(tmp_path / "m"))
    expected = "HookedTransformer" if HAS_HOOKED else "TransformerBridge"
    assert type(model).__name__ == expected
    explicit = load_counting_shaped(tmp_path / "m", "hooked" if HAS_HOOKED else "bridge")
    _bank_for(explicit).check_model(model)  # same activations as the explicit call


@pytest.mark.paper
@pytest.mark.skipif(
    os.environ.get("TL_INVERSION_ENV") not in (None, "tl39"),
    reason="the full 390,000-input accuracy is measured once, in the tl39 environment (CPU time); "
    "loader equivalence across model classes and versions is tested above",
)
def test_paper_counting_accuracy(paper_counting_dir):
    """The paper's checkpoint through our loader reaches its test accuracy 0.9953 (+-0.0005)."""
    model = load_hf_gpt2(paper_counting_dir, CLASSES[0], "default" if CLASSES[0] == "hooked" else "compat")
    task = counting.make_task()
    tokens = counting.paper_split("test")
    assert tokens.shape == (390_000, 33)
    colon = task.resolve_position(tokens, ":")
    # causal model: positions after ':' cannot change the logits at ':', so each batch of
    # equal-length rows is cut right after ':' (same numbers, about 1.6x less compute)
    correct = 0
    for length in colon.unique().tolist():
        rows_of_len = tokens[colon == length]
        for i in range(0, rows_of_len.shape[0], 16384):
            x = rows_of_len[i : i + 16384]
            logits = model_logits(model, x[:, : length + 1])[:, length]
            correct += int((logits.argmax(-1) == x[:, length + 1]).sum())
    assert correct / tokens.shape[0] == pytest.approx(0.9953, abs=0.0005)


def test_merge_keeps_each_decoder_and_survives_a_round_trip(tmp_path):
    """Banks trained separately (split here from the demo bank) merge into one that decodes
    exactly as the originals did, before and after save/load."""
    import pytest

    from tl_inversion.decoding.bank import DecoderBank
    from tl_inversion.demo import load_demo

    model, bank = load_demo()
    first = str(bank.groups[0][0])
    parts = [DecoderBank(bank.decoders[:1], bank.groups[:1], {first: bank.widths[first]}, dict(bank.meta)),
             DecoderBank(bank.decoders[1:], bank.groups[1:],
                         {str(g[0]): bank.widths[str(g[0])] for g in bank.groups[1:]}, dict(bank.meta))]
    merged = DecoderBank.merge(parts, model=model)
    assert [str(s) for s in merged.sites] == [str(s) for s in bank.sites]
    DecoderBank.merge(parts).save(tmp_path / "m")
    loaded = DecoderBank.load(tmp_path / "m", model)
    # both parts are pieces of the demo's one training run (same config and steps): one run
    assert loaded.meta["topology"] == "per_hook" and len(loaded.meta["merged_from"]) == 1
    assert loaded.meta["merged_from"][0]["sites"] == [str(s) for s in bank.sites]
    z = torch.randn(5, bank.decoders[0].cfg.d_act)
    for site in bank.sites:
        for other in (merged, loaded):
            a = bank.lookup(site)[0].generate(z, 0, generator=torch.Generator().manual_seed(3))
            b = other.lookup(site)[0].generate(z, 0, generator=torch.Generator().manual_seed(3))
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="disjoint"):
        DecoderBank.merge([parts[0], parts[0]])
    with pytest.raises(ValueError, match="at least two"):
        DecoderBank.merge(parts[:1])
    other_task = DecoderBank(parts[1].decoders, parts[1].groups, parts[1].widths,
                             {**parts[1].meta, "task": {"name": "addition"}})
    with pytest.raises(ValueError, match="another task"):
        DecoderBank.merge([parts[0], other_task])
    # banks blurred differently merge, with a warning (their log-probabilities differ in kind)
    blurred = DecoderBank(parts[1].decoders, parts[1].groups, parts[1].widths,
                          {**parts[1].meta,
                           "train_config": {**parts[1].meta.get("train_config", {}), "train_noise": 0.1}})
    with pytest.warns(UserWarning, match=r"different noise .*\(0.1, 'gaussian'\)"):
        DecoderBank.merge([parts[0], blurred])


def test_loader_errors_name_the_problem(tmp_path):
    import json

    from tl_inversion.model.loading import LoadError

    folder = write_gpt2(tmp_path / "m")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            load_hf_gpt2(folder, device="cuda")
    with pytest.raises(ValueError, match="unknown device 'nonsense'"):
        load_hf_gpt2(folder, device="nonsense")
    cfg = json.loads((folder / "config.json").read_text())
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(LoadError, match="holds a 'llama' checkpoint"):
        load_hf_gpt2(other)
    (other / "config.json").write_text("{not json")
    with pytest.raises(LoadError, match="config.json is not valid JSON"):
        load_hf_gpt2(other)


@pytest.mark.skipif(not HAS_BRIDGE, reason="needs TransformerBridge")
def test_bridge_refuses_an_in_memory_tokenizer_clearly(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from tl_inversion.model.loading import LoadError

    vocab = {f"t{i}": i for i in range(40)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0")),
                                  bos_token="t1", eos_token="t2")
    with pytest.raises(LoadError, match="save_pretrained"):
        load_hf_gpt2(write_gpt2(tmp_path / "m"), "bridge", tokenizer=tok)


SEVEN = ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_result[0]", "blocks.0.attn.hook_result[1]",
         "blocks.0.hook_resid_mid", "blocks.1.attn.hook_result[0]", "blocks.1.attn.hook_result[1]",
         "blocks.1.hook_resid_post"]


def _demo_parts(noise=(0.0, 0.1)):
    """A tiny per-hook bank of seven sites and the same decoders as two banks (3 + 4 sites),
    recorded as two training runs."""
    torch.manual_seed(0)
    bank = DecoderBank.create(SEVEN, {s: 8 for s in SEVEN}, vocab_size=40, n_ctx=33, bos_id=37, eos_id=38, pad_id=39,
                              meta={"task": {"name": "counting"}}, d_model=16, n_layers=1, n_heads=2, n_cond_blocks=1)
    parts = []
    for lo, hi, level in ((0, 3, noise[0]), (3, 7, noise[1])):
        groups = bank.groups[lo:hi]
        meta = {**bank.meta, "train_config": {"train_noise": level, "train_noise_shape": "ball"},
                "steps": 100 + lo, "faithfulness": {str(g[0]): 0.5 + 0.01 * i for i, g in enumerate(groups)}}
        parts.append(DecoderBank(bank.decoders[lo:hi], groups, {str(g[0]): 8 for g in groups}, meta))
    return None, bank, parts


def test_select_keeps_or_drops_sites_and_their_records(tmp_path):
    """select hands back the very decoders of the kept sites, in the bank's order, with the
    per-site records and training runs of those sites only (expected lists built by hand)."""
    _, bank, parts = _demo_parts()
    names = [str(s) for s in bank.sites]
    with pytest.warns(UserWarning, match="different noise"):
        merged = DecoderBank.merge(parts)
    dropped = [names[0], names[4]]
    sel = merged.select(drop=dropped)
    assert [str(s) for s in sel.sites] == [n for n in names if n not in dropped]
    for site in sel.sites:
        assert sel.lookup(site)[0] is merged.lookup(site)[0]
    assert set(sel.widths) == set(names) - set(dropped)
    assert set(sel.meta["faithfulness"]) == set(names) - set(dropped)
    assert [p["sites"] for p in sel.meta["merged_from"]] == [names[1:3], names[3:4] + names[5:]]
    assert [p["steps"] for p in sel.meta["merged_from"]] == [100, 103]
    # keeping one site of the first run leaves that run alone in the record
    one = merged.select([names[1]])
    assert [str(s) for s in one.sites] == [names[1]]
    assert one.training_runs() == [{**merged.meta["merged_from"][0], "sites": [names[1]]}]
    # an unmerged bank is one training run: its own config
    assert parts[1].training_runs() == [
        {"sites": names[3:], "train_config": parts[1].meta["train_config"], "steps": 103}]
    # a selection saves and loads, and decodes exactly as the original decoders
    sel.save(tmp_path / "sel")
    loaded = DecoderBank.load(tmp_path / "sel")
    z = torch.randn(4, 8)
    for site in loaded.sites:
        a = bank.lookup(site)[0].generate(z, 0, generator=torch.Generator().manual_seed(1))
        b = loaded.lookup(site)[0].generate(z, 0, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b)


def test_merge_of_a_selection_keeps_every_training_run():
    """Replacing two sites of a merged bank by a third run: merged_from lists the three runs,
    the noise warning sees all three settings and the report counts sites per setting."""
    from tl_inversion.evaluation.report import _training_noise

    _, bank, parts = _demo_parts()
    names = [str(s) for s in bank.sites]
    with pytest.warns(UserWarning, match="different noise"):
        merged = DecoderBank.merge(parts)
    swap = [names[1], names[6]]
    new = DecoderBank([bank.lookup(s)[0] for s in swap], [[bank.sites[names.index(s)]] for s in swap],
                      {s: bank.widths[s] for s in swap},
                      {**bank.meta, "train_config": {"train_noise": 0.2, "train_noise_shape": "ball"}, "steps": 7})
    with pytest.warns(UserWarning, match=r"\(0.0, None\), \(0.1, 'ball'\), \(0.2, 'ball'\)"):
        combined = DecoderBank.merge([merged.select(drop=swap), new])
    assert [p["sites"] for p in combined.meta["merged_from"]] == [
        [names[0], names[2]], [n for n in names[3:] if n != names[6]], swap]
    assert [p["steps"] for p in combined.meta["merged_from"]] == [100, 103, 7]
    # each site's own run: the swapped ones the third run's config, the others their part's
    assert combined.training_config(names[6]) == {"train_noise": 0.2, "train_noise_shape": "ball"}
    assert combined.training_config(names[3]) == parts[1].meta["train_config"]
    assert combined.training_config(names[0]) == parts[0].meta["train_config"]
    combined.training_config(names[6])["train_noise"] = 9.0  # a copy: the bank's record is unchanged
    assert combined.training_config(names[6])["train_noise"] == 0.2
    with pytest.raises(SiteError, match="this bank covers"):
        combined.training_config("blocks.1.hook_resid_pots")
    said = _training_noise(combined.training_runs())
    assert said == (f"exact activations (train_noise 0, as the paper) (2 sites: {names[0]}, {names[2]}) and "
                    f"activations blurred by train_noise 0.1 (ball) (3 sites: {', '.join(names[3:6])}) and "
                    f"activations blurred by train_noise 0.2 (ball) (2 sites: {names[1]}, {names[6]})")


def test_select_refusals_name_the_problem(tmp_path):
    _, bank, parts = _demo_parts()
    names = [str(s) for s in bank.sites]
    with pytest.raises(ValueError, match="not both or neither"):
        bank.select()
    with pytest.raises(ValueError, match="not both or neither"):
        bank.select(names[:1], drop=names[1:2])
    with pytest.raises(SiteError, match="closest: 'blocks.1.hook_resid_post'.*this bank covers"):
        bank.select(["blocks.1.hook_resid_pots"])
    with pytest.raises(SiteError, match="no decoder for site 'blocks.1.hook_mlp_out'"):
        bank.select(drop=["blocks.1.hook_mlp_out"])
    with pytest.raises(ValueError, match="removes every site"):
        bank.select(drop=names)
    shared = DecoderBank.create(names[:3], {n: bank.widths[n] for n in names[:3]}, topology="shared", vocab_size=40,
                                n_ctx=33, bos_id=37, eos_id=38, pad_id=39, d_model=16, n_layers=1, n_heads=2)
    with pytest.raises(ValueError, match="share one decoder .*keep all of them or none"):
        shared.select(names[:2])
    assert [str(s) for s in shared.select(names[:3]).sites] == names[:3]


def test_select_and_merge_details():
    """Pieces of one run merge back into one run; a site string works as a list of one; the
    copy's records are its own; a selection of a mixed merge names its topology; banks of
    different probed models do not merge."""
    _, bank, parts = _demo_parts()
    names = [str(s) for s in bank.sites]
    with pytest.warns(UserWarning, match="different noise"):
        merged = DecoderBank.merge(parts)
    back = DecoderBank.merge([merged.select(drop=[names[1], names[4]]), merged.select([names[1], names[4]])])
    assert [sorted(r["sites"]) for r in back.training_runs()] == [sorted(names[:3]), sorted(names[3:])]
    assert [str(s) for s in merged.select(names[2]).sites] == [names[2]]
    with pytest.raises(ValueError, match=r"sites=\[\] keeps no site"):
        merged.select([])
    with pytest.raises(TypeError, match="a site string or a list of them, got int"):
        merged.select(3)
    sel = merged.select(drop=names[0])
    sel.meta["merged_from"][0]["train_config"]["train_noise"] = 9.0
    sel.meta["faithfulness"][names[1]] = -1.0
    assert merged.meta["merged_from"][0]["train_config"]["train_noise"] == 0.0
    assert merged.meta["faithfulness"][names[1]] == 0.5 + 0.01
    shared = DecoderBank.create(["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"], {"blocks.0.hook_mlp_out": 8,
                                "blocks.1.hook_mlp_out": 8}, topology="shared", vocab_size=40, n_ctx=33, bos_id=37,
                                eos_id=38, pad_id=39, meta=dict(parts[0].meta), d_model=16, n_layers=1, n_heads=2)
    mixed = DecoderBank.merge([parts[0], shared])
    assert mixed.topology == "mixed"
    assert mixed.select(names[:2]).topology == "per_hook"
    assert mixed.select(["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]).topology == "shared"
    with pytest.raises(ValueError, match="share one decoder"):
        mixed.select(drop="blocks.1.hook_mlp_out")
    other = DecoderBank(parts[1].decoders, parts[1].groups, parts[1].widths,
                        {**parts[1].meta, "fingerprint": {"architecture": None, "weights_sha256": "0123abcd"}})
    with pytest.raises(ValueError, match=r"another probed model \(weights differ"):
        DecoderBank.merge([parts[0], other])


def test_a_negative_head_counts_from_the_last_head():
    """As the README says for sites: [-1] is the probed model's last head (the demo model has
    one head per layer, so [-1] is [0]); [-2] does not exist there."""
    from tl_inversion.demo import load_demo

    _, bank = load_demo()
    assert bank.meta["fingerprint"]["architecture"]["n_heads"] == 1
    assert bank.lookup("blocks.1.attn.hook_result[-1]") == bank.lookup("blocks.1.attn.hook_result[0]")
    assert [str(s) for s in bank.select("blocks.0.attn.hook_result[-1]").sites] == ["blocks.0.attn.hook_result[0]"]
    with pytest.raises(SiteError, match=r"no decoder for site 'blocks.1.attn.hook_result\[-2\]'"):
        bank.lookup("blocks.1.attn.hook_result[-2]")
