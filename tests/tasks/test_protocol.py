"""Every built-in task satisfies the Task protocol: members exist (isinstance) and each
method has the protocol's call signature (parameter names, kinds and defaults)."""

from __future__ import annotations

import inspect

import pytest
import torch

from tl_inversion.tasks import addition, counting
from tl_inversion.tasks.custom import TextTask
from tl_inversion.tasks.plan import EvalPlan, default_plan
from tl_inversion.tasks.protocol import TASK_ATTRIBUTES, TASK_METHODS, Task


def _ioi():
    from test_ioi import _word_tokenizer  # noqa: PLC0415 - same folder, the word-level tokenizer

    from tl_inversion.tasks.ioi import IOITask

    return IOITask(_word_tokenizer())


def _text():
    return TextTask.from_tokens(torch.tensor([[0, 3, 4, 1, 2], [0, 5, 1, 2, 2]]), bos_id=0, eos_id=1, pad_id=2,
                                d_vocab=6)


BUILT_IN = {"counting": counting.make_task, "addition": addition.make_task, "ioi": _ioi, "text": _text}


@pytest.fixture(scope="module", params=sorted(BUILT_IN))
def task(request):
    return BUILT_IN[request.param]()


def test_isinstance(task):
    assert isinstance(task, Task)
    assert not isinstance(object(), Task)


def test_members_exist_with_the_protocol_signatures(task):
    # the lists of members agree with the protocol class itself
    declared = {n for n in vars(Task) if not n.startswith("_")} | set(Task.__annotations__)
    assert declared == set(TASK_METHODS) | set(TASK_ATTRIBUTES)
    for name in TASK_ATTRIBUTES:
        assert hasattr(task, name), name
    assert isinstance(task.n_ctx, int) and isinstance(task.d_vocab, int) and isinstance(task.name, str)
    assert len(task.vocab) == task.d_vocab
    assert set(task.special_ids) == {task.bos_id, task.eos_id, task.pad_id}
    for name in TASK_METHODS:
        want = list(inspect.signature(getattr(Task, name)).parameters.values())[1:]  # without self
        got = list(inspect.signature(getattr(task, name)).parameters.values())
        assert [(p.name, p.kind, p.default) for p in got] == [(p.name, p.kind, p.default) for p in want], name


def test_members_behave_as_documented(task):
    rows = _example(task)
    if task.name in ("counting", "addition"):  # character tasks: text round trip
        assert torch.equal(task.encode(task.decode(rows)), rows)
    assert rows.dtype == torch.long and rows.shape[1] == task.n_ctx
    assert bool(task.is_valid(rows).all())
    special = task.special_mask(rows)
    assert torch.equal(special, torch.isin(rows, torch.tensor(task.special_ids)))  # by hand
    assert not bool((task.train_position_mask(rows) & special).any())  # training never draws special positions
    assert task.resolve_position(rows, -1).tolist() == [task.n_ctx - 1] * rows.shape[0]
    plan = task.default_plan()
    assert plan is None or isinstance(plan, EvalPlan)


def _example(task):
    if task.name == "counting":
        return counting.paper_split("test")[:3]
    if task.name == "addition":
        return task.encode(["615+861=1476", "101+539=640"])
    if task.name == "ioi":
        return task.build(2, seed=0).tokens
    return task.tokens


def test_default_plans_are_the_tasks_own():
    plan = default_plan("addition")
    assert plan.positions == ["+", "=", "A1", "A2", "A3", "A4"]
    assert default_plan(counting.make_task()).positions == ["c", ":"]
    # the features compute what their names say, on inputs whose values are known by hand
    t = addition.make_task().encode(["615+861=1476", "101+539=640", "556+280=836"])
    f = plan.features
    assert f["a_hundreds"](t).tolist() == [6, 1, 5] and f["b_ones"](t).tolist() == [1, 9, 0]
    assert f["carry_to_tens"](t).tolist() == [0, 1, 0]  # 5+1=6, 1+9=10, 6+0=6
    assert f["carry_to_hundreds"](t).tolist() == [0, 0, 1]  # 15+61=76, 01+39=40, 56+80=136
    assert f["sum_length"](t).tolist() == [4, 3, 3]
    assert plan.class_fn(t).tolist() == [1476, 640, 836]
    c = counting.make_task()
    rows = c.encode(["aabca|a:3", "bcbb|b:3"])
    cf = default_plan("counting").features
    assert cf["query_count"](rows).tolist() == [3, 3] and cf["string_length"](rows).tolist() == [5, 4]
    assert cf["query_letter"](rows).tolist() == [c.chars.index("a"), c.chars.index("b")]
    for name in ("ioi", "text"):
        with pytest.raises(ValueError, match="no default evaluation plan"):
            default_plan(BUILT_IN[name]())
