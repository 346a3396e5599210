"""Addition task: the paper's data set and split, positions, grammar, answer mask, registry."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tl_inversion.model.sites import paper_addition_sites
from tl_inversion.tasks import PositionError, addition, get_task, task_data, task_names


@pytest.fixture(scope="module")
def task():
    return addition.make_task()


def test_vocabulary_ids(task):
    assert task.d_vocab == 15
    assert [task.chars.index(c) for c in "B+=EP"] == [10, 11, 12, 13, 14]
    assert task.special_ids == (10, 13, 14)
    assert task.n_ctx == 14


def test_dataset_sizes_partition_and_sums(task):
    tr, te = addition.paper_split("train"), addition.paper_split("test")
    assert tr.shape == (607_500, 14) and te.shape == (202_500, 14)
    pairs_tr, pairs_te = addition.paper_pairs("train"), addition.paper_pairs("test")
    both = np.concatenate([pairs_tr, pairs_te])
    assert both.min() == 100 and both.max() == 999
    key = np.sort((both[:, 0] - 100) * 900 + (both[:, 1] - 100))
    assert np.array_equal(key, np.arange(810_000))  # disjoint and complete
    # every row: parse the text and add with Python ints (independent of the encoder)
    for data in (tr, te):
        texts = task.decode(data[::97])
        for t in texts:
            lhs, s = t.split("=")
            a, b = lhs.split("+")
            assert len(a) == len(b) == 3 and int(a) + int(b) == int(s) and not s.startswith("0")
    # the full split, vectorised: answer digits == a + b
    for data in (tr, te):
        a, b = addition.operands(data)
        m = task.answer_mask(data)
        n_dig = m.sum(-1)
        assert set(n_dig.unique().tolist()) == {3, 4}
        digits = torch.where(m, data, torch.zeros_like(data))
        val = torch.zeros(data.shape[0], dtype=torch.long)
        for p in range(9, 13):
            take = m[:, p]
            val = torch.where(take, val * 10 + digits[:, p], val)
        assert torch.equal(val, a + b)
        assert bool(task.is_valid(data[:2000]).all())


def test_split_follows_the_authors_shuffle():
    # independent re-statement of the authors' make_dataset: global random, list of tuples
    state = random.getstate()
    try:
        random.seed(0)
        pts = [(i, j) for i in range(100, 1000) for j in range(100, 1000)]
        random.shuffle(pts)
    finally:
        random.setstate(state)
    train = addition.paper_pairs("train")
    test = addition.paper_pairs("test")
    assert [tuple(map(int, p)) for p in train[:50]] == pts[:50]
    assert [tuple(map(int, p)) for p in test[-50:]] == pts[-50:]
    assert tuple(map(int, test[0])) == pts[607_500]


def test_positions_by_hand(task):
    toks = task.encode(["123+456=579", "999+999=1998"])
    assert task.decode(toks, keep_special=True) == ["B123+456=579EP", "B999+999=1998E"]
    assert toks.tolist()[0] == [10, 1, 2, 3, 11, 4, 5, 6, 12, 5, 7, 9, 13, 14]
    assert toks.tolist()[1] == [10, 9, 9, 9, 11, 9, 9, 9, 12, 1, 9, 9, 8, 13]
    assert task.resolve_position(toks, "+").tolist() == [4, 4]
    assert task.resolve_position(toks, "=").tolist() == [8, 8]
    assert task.resolve_position(toks, "A1").tolist() == [9, 9]
    assert task.resolve_position(toks, "A3").tolist() == [11, 11]
    assert task.resolve_position(toks[1:], "A4").tolist() == [12]
    with pytest.raises(PositionError, match="A4"):
        task.resolve_position(toks, "A4")
    with pytest.raises(PositionError, match="'A1'"):
        task.resolve_position(toks, "A5")
    m = task.answer_mask(toks)
    assert m[0].nonzero().flatten().tolist() == [9, 10, 11]
    assert m[1].nonzero().flatten().tolist() == [9, 10, 11, 12]
    tp = task.train_position_mask(toks)
    assert tp[0].nonzero().flatten().tolist() == list(range(1, 12))
    assert torch.equal(addition.encode_pairs([123, 999], [456, 999]), toks)


def test_grammar(task):
    good = task.encode(["123+456=579", "500+500=1000"])
    bad = task.encode(["123+456=578", "25+517=542", "123+456=0579", "023+456=479", "123456=579", "123+456="])
    assert task.is_valid(good).tolist() == [True, True]
    assert task.is_valid(bad).tolist() == [False] * 6
    broken = good.clone()
    broken[0, 13] = 5  # junk after EOS
    assert task.is_valid(broken).tolist() == [False, True]


def test_registry_and_sites():
    assert {"addition", "counting"} <= set(task_names())
    assert get_task("addition").name == "addition"
    assert task_data("addition", "test").shape == (202_500, 14)
    sites = [str(s) for s in paper_addition_sites()]
    assert len(sites) == 13 and sites[0] == "blocks.0.hook_resid_pre"


def test_probed_recipe_runs_a_few_steps(tmp_path):
    from tl_inversion.training.probed import ProbedConfig, train_probed_model

    task = addition.make_task()
    tr, te = addition.paper_split("train")[:512], addition.paper_split("test")[:256]
    cfg = ProbedConfig(n_layers=2, n_heads=4, d_model=32, steps=3, batch_size=64, warmup_steps=1, device="cpu")
    info = train_probed_model(task, tr, te, task.answer_mask, cfg, tmp_path / "m", progress=False)
    assert 0.0 <= info["test_accuracy"] <= 1.0
    assert (tmp_path / "m" / "config.json").exists()


def test_plan_completeness_rows_are_queries_by_position():
    from tl_inversion.tasks.plan import default_plan

    plan = default_plan("addition")
    queries, positions, names = plan.completeness_rows(addition.make_task())
    # four queries at = A1 A2 A3, position-major; [BOS] 6 1 5 + 8 6 1 = 1 4 7 6: '=' is index 8
    assert names == ["="] * 4 + ["A1"] * 4 + ["A2"] * 4 + ["A3"] * 4
    assert positions.tolist() == [8] * 4 + [9] * 4 + [10] * 4 + [11] * 4
    assert torch.equal(queries[0], queries[4]) and torch.equal(queries[3], queries[15])
    assert addition.make_task().decode(queries[:4]) == ["615+861=1476", "925+398=1323", "101+539=640", "556+280=836"]


def test_plan_completeness_rows_resolve_each_query_and_refuse_bad_plans():
    """Counting queries of different lengths: each row's own index, counted by hand on
    'B d d k d k k x d k | k : 4' (':' at 12, the query letter at 11) and
    'B q q z q z b q | q : 4' (':' at 10, the letter at 9)."""
    from tl_inversion.tasks import counting
    from tl_inversion.tasks.plan import EvalPlan

    task = counting.make_task()
    plan = EvalPlan(positions=[":"], completeness_queries=["ddkdkkxdk|k:4", "qqzqzbq|q:4"],
                    completeness_positions=[":", "c"])
    queries, positions, names = plan.completeness_rows(task)
    assert positions.tolist() == [12, 10, 11, 9] and names == [":", ":", "c", "c"]
    assert task.decode(queries) == ["ddkdkkxdk|k:4", "qqzqzbq|q:4"] * 2
    with pytest.raises(TypeError, match=r"must be a list, got the string 'A1'; write \['A1'\]"):
        EvalPlan(positions=["="], completeness_queries=["615+861=1476"], completeness_positions="A1").completeness_rows(
            addition.make_task())
    with pytest.raises(ValueError, match="needs completeness_queries and completeness_positions, got 1 queries and 0"):
        EvalPlan(positions=["="], completeness_queries=["615+861=1476"]).completeness_rows(addition.make_task())
    with pytest.raises(TypeError, match="task must be a task object"):
        plan.completeness_rows("counting")

