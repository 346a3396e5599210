"""IOI task: prompts, positions by hand, resolution from tokens, paper sites, a tiny model."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import HAS_BRIDGE, HAS_HOOKED
from model_files import write_gpt2

from tl_inversion.inversion.verify import membership
from tl_inversion.model.activations import harvest
from tl_inversion.model.sites import ioi_paper_sites
from tl_inversion.tasks import PositionError
from tl_inversion.tasks.ioi import NAMES, OBJECTS, PLACES, POSITION_NAMES, TEMPLATES, IOITask

SPECIALS = ["[BOS]", "[EOS]", "[PAD]"]


def _word_tokenizer():
    """Word-level tokenizer over the template words, names, places and objects (no hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = set()
    for t in TEMPLATES:
        words |= set(re.findall(r"\w+|[^\w\s]+", re.sub(r"\[\w+\]", " ", t)))
    words |= set(NAMES) | set(PLACES) | set(OBJECTS)
    vocab = {w: i for i, w in enumerate(SPECIALS + sorted(words) + ["[UNK]"])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   unk_token="[UNK]", add_bos_token=True, padding_side="right",
                                   name_or_path="tl-inversion/ioi-words")


@pytest.fixture(scope="module")
def task():
    return IOITask(_word_tokenizer())


def test_one_prompt_by_hand(task):
    tok = task.tokenizer
    rec, row, pos = task.prompt(0, "BABA", io="Mary", s="John", place="store", obj="drink")
    assert rec.text == "Then, John and Mary went to the store. John gave a drink to"
    words = ["Then", ",", "John", "and", "Mary", "went", "to", "the", "store", ".", "John", "gave", "a", "drink", "to"]
    assert row[: len(words) + 2] == [task.bos_id] + tok.convert_tokens_to_ids(words) + [task.eos_id]
    assert all(t == task.pad_id for t in row[len(words) + 2:]) and len(row) == task.n_ctx
    # BOS at 0: Then 1 , 2 John 3 and 4 Mary 5 ... John 11 ... to 15
    assert pos == {"S1": 3, "S1+1": 4, "S2": 11, "IO": 5, "END": 15}
    rec, row, pos = task.prompt(0, "ABBA", io="Mary", s="John", place="store", obj="drink")
    assert rec.text == "Then, Mary and John went to the store. John gave a drink to"
    assert pos == {"S1": 5, "S1+1": 6, "S2": 11, "IO": 3, "END": 15}
    with pytest.raises(ValueError, match="different names"):
        task.prompt(0, "ABBA", io="Mary", s="Mary", place="store", obj="drink")


def test_build_positions_resolve_from_tokens(task):
    b = task.build(24, seed=1)
    assert b.tokens.shape == (24, task.n_ctx)
    assert {p.order for p in b.prompts} == {"ABBA", "BABA"}
    for name in POSITION_NAMES:
        assert torch.equal(task.resolve_position(b.tokens, name), b.positions[name]), name
    rows = torch.arange(24)
    assert torch.equal(b.tokens[rows, b.positions["S1"]], b.s_ids)
    assert torch.equal(b.tokens[rows, b.positions["S2"]], b.s_ids)
    assert torch.equal(b.tokens[rows, b.positions["IO"]], b.io_ids)
    assert (b.tokens[rows, b.positions["END"] + 1] == task.eos_id).all()
    # a word-level tokenizer without a decoder joins tokens with spaces: compare like with like
    tok = task.tokenizer
    assert task.decode(b.tokens) == [tok.decode(tok(p.text, add_special_tokens=False)["input_ids"]) for p in b.prompts]
    assert task.is_valid(b.tokens).all()
    assert torch.equal(task.encode([p.text for p in b.prompts]), b.tokens)
    broken = b.tokens[:1].clone()
    broken[0, b.positions["S2"][0]] = task.tokenizer.convert_tokens_to_ids("the")
    assert task.is_valid(broken).tolist() == [False]
    with pytest.raises(PositionError, match="not an IOI prompt"):
        task.resolve_position(broken, "S2")
    with pytest.raises(PositionError, match=r"'S1\+1'"):
        task.resolve_position(b.tokens, "S3")
    m = task.train_position_mask(b.tokens)
    assert int(m[0].sum()) == int(b.positions["END"][0])  # every prompt token, not BOS/EOS/PAD


def test_paper_sites():
    sites = ioi_paper_sites()
    assert len(sites) == 26 and len(set(sites)) == 26
    assert str(sites[0]) == "blocks.7.attn.hook_result[3]" and str(sites[-1]) == "blocks.4.attn.hook_result[11]"
    assert {s.layer for s in sites} == {0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}


@pytest.mark.parametrize("model_class", [c for c, ok in (("hooked", HAS_HOOKED), ("bridge", HAS_BRIDGE)) if ok])
def test_tiny_model_harvest_and_membership(task, model_class, tmp_path):
    from tl_inversion.model.loading import load_hf_gpt2

    write_gpt2(tmp_path, d_vocab=task.d_vocab, n_ctx=task.n_ctx, d_model=16, n_layers=2, n_heads=2)
    model = load_hf_gpt2(tmp_path, model_class, "default" if model_class == "hooked" else "compat")
    b = task.build(6, seed=2)
    site = "blocks.1.attn.hook_result[0]"
    acts = harvest(model, b.tokens, [site])
    a = next(iter(acts.values()))
    z = a[torch.arange(6), b.positions["S2"]]
    dist, pos = membership(model, b.tokens, site, z, task.special_ids)
    assert torch.allclose(dist, torch.zeros(6), atol=1e-5)
    # the matched position is never special
    assert not task.special_mask(b.tokens)[torch.arange(6), pos].any()
