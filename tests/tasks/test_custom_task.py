"""TextTask: the user's own data, tokenised with the model's tokenizer; trains decoders."""

from __future__ import annotations

import pytest
import torch
from helpers import SPECIAL_ID, TINY_CFG, build_tokenizer, build_variant, model_variants

from tl_inversion.tasks import PositionError
from tl_inversion.tasks.custom import TextTask

P = SPECIAL_ID  # BOS = EOS = PAD = 10 in the tiny tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_from_strings_layout(tok):
    task = TextTask.from_strings(["1 2 3", "4 5", "6"], tok)
    assert task.n_ctx == 5  # BOS + 3 + EOS
    assert task.tokens.tolist() == [[P, 1, 2, 3, P], [P, 4, 5, P, P], [P, 6, P, P, P]]
    assert task.special_ids == (P,)
    assert task.d_vocab == 11 and task.chars is None
    assert task.handling["add_bos"] and task.handling["padding_side"] == "right"
    assert task.decode(task.tokens) == [tok.decode([1, 2, 3]), tok.decode([4, 5]), tok.decode([6])]
    assert task.is_valid(task.tokens).tolist() == [True, True, True]
    assert task.is_valid(torch.tensor([[P, 1, P, 3, P], [1, 2, 3, P, P], [P, P, P, P, P]])).tolist() == [False] * 3


def test_fixed_n_ctx_truncation_and_errors(tok):
    task = TextTask.from_strings(["1 2"], tok, n_ctx=6)
    assert task.tokens.tolist() == [[P, 1, 2, P, P, P]]
    with pytest.raises(ValueError, match="truncate=True"):
        TextTask.from_strings(["1 2 3 4 5"], tok, n_ctx=4)
    t = TextTask.from_strings(["1 2 3 4 5"], tok, n_ctx=4, truncate=True)
    assert t.tokens.tolist() == [[P, 1, 2, P]]
    with pytest.raises(ValueError, match="no input"):
        TextTask.from_strings([], tok)
    assert torch.equal(task.encode("7 8"), torch.tensor([[P, 7, 8, P, P, P]]))


def test_explicit_special_ids_and_no_eos(tok):
    with pytest.warns(UserWarning, match="special id"):
        TextTask.from_strings(["1 0 2"], tok, bos_id=10, eos_id=0, pad_id=9)
    task = TextTask.from_strings(["1 2", "3"], tok, bos_id=0, eos_id=9, pad_id=10)
    assert task.tokens.tolist() == [[0, 1, 2, 9], [0, 3, 9, 10]]
    assert task.special_ids == (0, 9, 10)
    no_eos = TextTask.from_strings(["1 2", "3"], tok, add_eos=False)
    assert no_eos.tokens.tolist() == [[P, 1, 2], [P, 3, P]]
    assert no_eos.is_valid(no_eos.tokens).tolist() == [True, True]


def test_file_iterator_tokens(tok, tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("1 2\n\n3 4 5\n")
    a = TextTask.from_file(f, tok)
    b = TextTask.from_iterator(iter(["1 2", "3 4 5", "6"]), tok, limit=2)
    assert torch.equal(a.tokens, b.tokens)
    c = TextTask.from_tokens(a.tokens, bos_id=P, eos_id=P, pad_id=P, d_vocab=11)
    assert c.decode(c.tokens) == ["1 2", "3 4 5"]
    with pytest.raises(ValueError, match="0..10"):
        TextTask.from_tokens(torch.tensor([[P, 11, P]]), bos_id=P, eos_id=P, pad_id=P, d_vocab=11)
    assert c.vocab_hash() == TextTask.from_tokens(a.tokens, bos_id=P, eos_id=P, pad_id=P, d_vocab=11).vocab_hash()
    assert c.vocab_hash() != a.vocab_hash()  # vocabulary strings differ (ids vs tokenizer strings)


def test_positions(tok):
    task = TextTask.from_strings(["1 2 3", "4"], tok)
    t = task.tokens
    assert task.resolve_position(t, "first").tolist() == [1, 1]
    assert task.resolve_position(t, "last").tolist() == [3, 1]
    assert task.resolve_position(t, -1).tolist() == [4, 4]
    assert task.resolve_position(t, "2").tolist() == [2, 2]
    with pytest.raises(PositionError, match="'first', 'last'"):
        task.resolve_position(t, "END")
    with pytest.raises(PositionError, match="out of range"):
        task.resolve_position(t, 5)
    assert task.train_position_mask(t).tolist() == [[False, True, True, True, False], [False, True] + [False] * 3]
    tr, te = task.split(0.5, seed=0)
    assert tr.shape == (1, 5) and te.shape == (1, 5)


def test_training_runs_two_steps_with_a_text_task(tok):
    from tl_inversion.training.config import TrainConfig
    from tl_inversion.training.trainer import train

    variant = model_variants()[0]
    model = build_variant(variant, TINY_CFG)
    g = torch.Generator().manual_seed(0)
    # the decoders need three different special ids: BOS 10, EOS "0", PAD "9" (texts use 1..8)
    texts = [" ".join(str(int(d)) for d in torch.randint(1, 9, (int(n),), generator=g))
             for n in torch.randint(2, 9, (40,), generator=g)]
    task = TextTask.from_strings(texts, tok, n_ctx=TINY_CFG["n_ctx"], name="digits", eos_id=0, pad_id=9)
    tr, te = task.split(0.75)
    cfg = TrainConfig(
        sites=["blocks.0.hook_resid_post"], steps=2, batch_size=4, eval_every=100, eval_n=4, checkpoint_every=100,
        decoder={"d_model": 16, "n_layers": 1, "n_heads": 2, "n_cond_blocks": 1}, device="cpu",
    )
    res = train(model, task, tr, te, cfg, progress=False)
    assert res.bank.meta["task"]["name"] == "digits"
    assert res.bank.meta["special_ids"] == {"bos": P, "eos": 0, "pad": 9}
    assert len(res.history) >= 1


def test_gpt2_like_special_ids_train_and_sample(tok):
    """One token for BOS, EOS and PAD (as GPT-2's <|endoftext|>): the decoders get two extra ids
    and everything the probed model or the task sees is in the task's own ids."""
    from tl_inversion.inversion.sampling import sample_preimage
    from tl_inversion.training.config import TrainConfig
    from tl_inversion.training.trainer import train

    model = build_variant(model_variants()[0], TINY_CFG)
    g = torch.Generator().manual_seed(1)
    texts = [" ".join(str(int(d)) for d in torch.randint(0, 10, (int(n),), generator=g))
             for n in torch.randint(2, 9, (40,), generator=g)]
    task = TextTask.from_strings(texts, tok, n_ctx=TINY_CFG["n_ctx"], name="digits")
    assert task.bos_id == task.eos_id == task.pad_id == P
    tr, te = task.split(0.75)
    cfg = TrainConfig(sites=["blocks.0.hook_resid_post"], steps=2, batch_size=4, eval_every=100, eval_n=4,
                      checkpoint_every=100, decoder={"d_model": 16, "n_layers": 1, "n_heads": 2, "n_cond_blocks": 1},
                      device="cpu")
    bank = train(model, task, tr, te, cfg, progress=False).bank
    v = TINY_CFG["d_vocab"]
    assert bank.meta["decoder_ids"] == {"bos": P, "eos": v, "pad": v + 1, "task_bos": P, "task_eos": P, "task_pad": P}
    assert bank.decoders[0].cfg.vocab_size == v + 2
    # by hand: [P 3 4 P P] -> [P 3 4 EOS PAD] and back
    row = torch.tensor([[P, 3, 4, P, P]])
    assert bank.to_decoder_tokens(row).tolist() == [[P, 3, 4, v, v + 1]]
    assert torch.equal(bank.to_task_tokens(bank.to_decoder_tokens(row)), row)
    res = sample_preimage(bank, model, task, tr[0], "blocks.0.hook_resid_post", 1, n_repeats=1, batch_size=4)
    for toks in res.df["tokens"]:
        assert max(toks) < v and toks[0] == P  # only the task's ids leave the sampler
    assert res.df["distance"].notna().all()


def test_one_string_is_refused(tok):
    with pytest.raises(TypeError, match="got one string"):
        TextTask.from_strings("1 2 3", tok)


def test_words_outside_the_vocabulary_are_reported():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[BOS]", "[EOS]", "[PAD]", "the", "cat", "sat", "[UNK]"])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    words = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                    unk_token="[UNK]")
    with pytest.warns(UserWarning, match=r"1 of 2 texts hold the tokenizer's unknown token '\[UNK\]' \(id 6\)"):
        task = TextTask.from_strings(["the cat sat", "the dog sat"], words)
    assert task.tokens[1, 2] == 6  # 'dog' became [UNK], as the warning says
    with pytest.warns(UserWarning, match="unknown token"):
        task.encode("a cat")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task.encode("the cat")  # every word known: silent


def test_a_raw_tokenizers_object_is_refused_clearly():
    from tokenizers import Tokenizer, models

    raw = Tokenizer(models.WordLevel(vocab={"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(TypeError, match="Hugging Face transformers tokenizer.*got Tokenizer"):
        TextTask.from_strings(["a a"], raw)
