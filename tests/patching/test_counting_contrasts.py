"""Counting contrast builders: checked by recounting from the decoded strings."""

from __future__ import annotations

import random
import string

import pytest
import torch

from tl_inversion.tasks.contrast_set import ContrastSet
from tl_inversion.tasks.counting import make_task
from tl_inversion.tasks.counting_contrasts import counting_flip_contrasts, counting_random_contrasts

TASK = make_task()


def _counting_texts(n: int, seed: int = 0, lengths: tuple[int, int] = (1, 9)) -> list[str]:
    """Random counting examples in the paper's grammar, built here independently."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        letters = rng.sample(string.ascii_lowercase, 3)
        counts = [rng.randint(*lengths) for _ in letters]
        chars = [c for c, k in zip(letters, counts) for _ in range(k)]
        rng.shuffle(chars)
        q = rng.choice(letters)
        out.append(f"{''.join(chars)}|{q}:{chars.count(q)}")
    return out


def _parse(text: str) -> tuple[str, str, int]:
    s, rest = text.split("|")
    c, n = rest.split(":")
    return s, c, int(n)


def _valid_flips(text: str) -> set[str]:
    """Every string S' one valid flip away from S (brute force over positions and letters)."""
    s, c, _ = _parse(text)
    out = set()
    for i, x in enumerate(s):
        for r in set(s) - {x}:
            s2 = s[:i] + r + s[i + 1 :]
            if all(1 <= s2.count(y) <= 9 for y in set(s)) and s2.count(c) != s.count(c):
                out.add(s2)
    return out


@pytest.fixture(scope="module")
def counting_tokens() -> torch.Tensor:
    texts = _counting_texts(3000)
    texts += ["abc|a:1", "bca|c:1", "a" * 9 + "b" * 9 + "c" * 9 + "|b:9"]  # |S| = 3 and 27
    return TASK.encode(texts)


def test_flip_changes_one_char_and_the_count(counting_tokens):
    cs = counting_flip_contrasts(counting_tokens, generator=0)
    clean_txt = TASK.decode(cs.clean_tokens)
    con_txt = TASK.decode(cs.contrast_tokens)
    assert cs.n == len(clean_txt) > 2900
    deltas = set()
    for a, b, ans, cans in zip(clean_txt, con_txt, cs.clean_answers.tolist(), cs.contrast_answers.tolist()):
        s, c, n = _parse(a)
        s2, c2, n2 = _parse(b)
        assert len(s2) == len(s) and c2 == c  # length and query letter unchanged
        assert sum(x != y for x, y in zip(s, s2)) == 1  # exactly one character flipped
        assert set(s2) == set(s)  # into another letter of the string; no letter vanishes
        assert all(1 <= s2.count(x) <= 9 for x in set(s2))  # counts stay in 1..9
        assert s2.count(c) != s.count(c) and abs(s2.count(c) - s.count(c)) == 1
        assert n2 == s2.count(c) and n == s.count(c)  # the contrast's answer token was rewritten
        assert ans == TASK.chars.index(str(n)) and cans == TASK.chars.index(str(n2))
        deltas.add(n2 - n)
    assert deltas == {-1, 1}
    assert bool(TASK.is_valid(cs.contrast_tokens).all())
    # positions relative to EOS are the same in clean and contrast
    assert torch.equal(TASK.resolve_position(cs.clean_tokens, ":"), TASK.resolve_position(cs.contrast_tokens, ":"))
    texts = TASK.decode(counting_tokens)
    n_extreme = sum(len(_parse(t)[0]) in (3, 27) for t in texts)
    assert n_extreme >= 3 and cs.info["n_excluded_length"] == n_extreme and cs.info["n_no_flip"] == 0
    assert cs.n == len(texts) - n_extreme
    assert cs.answer_position == ":" and cs.positions is not None
    # unpacks as the documented 5-tuple
    clean, contrast, a, b, info = cs
    assert clean is cs.clean_tokens and info["kind"] == "counting_flip"


def test_flip_without_length_filter_drops_rows_that_have_no_flip(counting_tokens):
    cs = counting_flip_contrasts(counting_tokens, generator=0, exclude_lengths=())
    no_flip = sum(not _valid_flips(t) for t in TASK.decode(counting_tokens))
    assert no_flip >= 3 and cs.info["n_excluded_length"] == 0 and cs.info["n_no_flip"] == no_flip


def test_flip_is_deterministic_and_seed_dependent(counting_tokens):
    a = counting_flip_contrasts(counting_tokens[:500], generator=1)
    b = counting_flip_contrasts(counting_tokens[:500], generator=torch.Generator().manual_seed(1))
    c = counting_flip_contrasts(counting_tokens[:500], generator=2)
    assert torch.equal(a.contrast_tokens, b.contrast_tokens)
    assert not torch.equal(a.contrast_tokens, c.contrast_tokens)
    # chunking does not change the result
    d = counting_flip_contrasts(counting_tokens[:500], generator=1, chunk_size=7)
    assert d.n == a.n


def test_flip_covers_every_valid_flip():
    """For one string, the sampler reaches each valid (position, letter) pair."""
    text = "aabbbc|a:2"
    valid = _valid_flips(text)
    assert len(valid) == 7  # a->b or a->c at 2 places (n-1), b->a at 3 places (n+1); c->a would empty c
    seen = set()
    toks = TASK.encode([text] * 400)
    cs = counting_flip_contrasts(toks, generator=0, exclude_lengths=())
    for t in TASK.decode(cs.contrast_tokens):
        seen.add(_parse(t)[0])
    assert seen == valid


def test_random_contrast_has_other_answer(counting_tokens):
    cs = counting_random_contrasts(counting_tokens, generator=0)
    clean_txt = TASK.decode(cs.clean_tokens)
    con_txt = TASK.decode(cs.contrast_tokens)
    for a, b, ans, cans in zip(clean_txt, con_txt, cs.clean_answers.tolist(), cs.contrast_answers.tolist()):
        s, c, _ = _parse(a)
        s2, c2, _ = _parse(b)
        assert s.count(c) != s2.count(c2)
        assert ans == TASK.chars.index(str(s.count(c))) and cans == TASK.chars.index(str(s2.count(c2)))
        assert len(s) not in (3, 27)
    # contrasts are rows of the pool (here: the input, excluded lengths included)
    pool_rows = {tuple(r) for r in counting_tokens.tolist()}
    assert all(tuple(r) in pool_rows for r in cs.contrast_tokens.tolist())
    assert torch.equal(counting_tokens[cs.info["contrast_index"]], cs.contrast_tokens)
    assert torch.equal(counting_tokens[cs.info["clean_index"]], cs.clean_tokens)
    lengths = {len(_parse(t)[0]) for t in con_txt}
    assert len(lengths) > 10  # lengths differ: positions must be matched by name
    again = counting_random_contrasts(counting_tokens, generator=0)
    assert torch.equal(again.contrast_tokens, cs.contrast_tokens)


def test_random_contrast_from_a_separate_pool(counting_tokens):
    pool = counting_tokens[:100]
    cs = counting_random_contrasts(counting_tokens[100:400], generator=3, pool=pool)
    assert bool((cs.info["contrast_index"] < 100).all())


def test_counting_builders_refuse_bad_tokens():
    with pytest.raises(ValueError, match=r"\[n, 33\]"):
        counting_flip_contrasts(torch.zeros(3, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="EOS"):
        counting_random_contrasts(torch.zeros(3, 33, dtype=torch.long))
    with pytest.raises(TypeError, match="seed"):
        counting_flip_contrasts(TASK.encode(["aab|a:2"]), generator="x")


def test_contrast_set_subset_and_swap(counting_tokens):
    cs = counting_flip_contrasts(counting_tokens[:50], generator=0)
    sub = cs.subset(slice(0, 10))
    assert sub.n == 10 and sub.info["flip_position"].shape[0] == 10
    sw = cs.swapped()
    assert torch.equal(sw.clean_tokens, cs.contrast_tokens) and torch.equal(sw.contrast_answers, cs.clean_answers)
    with pytest.raises(ValueError, match="rows"):
        ContrastSet(cs.clean_tokens, cs.contrast_tokens[:3], cs.clean_answers, cs.contrast_answers)
