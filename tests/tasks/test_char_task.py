"""CharTask.decode / is_valid on whole tensors against a per-row reading of the layout rule.

The reference below reads each row as a string, the way the task's docstring states the rule
(``BOS text EOS PAD...``, grammar on the text), independently of the tensor code.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tl_inversion.errors import InputTypeError, InputValueError, TLInversionError, TokenIdError
from tl_inversion.tasks import addition, counting


def _reference_valid(task, row: list[int]) -> bool:
    s = "".join(task.chars[i] for i in row)
    if not s.startswith(task.bos) or task.eos not in s:
        return False
    inner, rest = s[1:].split(task.eos, 1)
    if set(rest) - {task.pad} or task.bos in inner or task.pad in inner:
        return False
    return task.grammar is None or task.grammar(inner)


def _reference_text(task, row: list[int]) -> str:
    s = "".join(task.chars[i] for i in row)
    return s[1:].split(task.eos, 1)[0].replace(task.pad, "") if s.startswith(task.bos) else \
        s.split(task.eos, 1)[0].replace(task.pad, "")


TASKS = {"counting": counting.make_task(), "addition": addition.make_task()}


@st.composite
def _rows(draw, name: str):
    """Rows that are mostly well laid out (so the grammar is reached), with random damage."""
    task = TASKS[name]
    n_ctx = task.n_ctx
    body = draw(st.lists(st.sampled_from(range(len(task.chars))), min_size=0, max_size=n_ctx - 2))
    row = [task.bos_id, *body, task.eos_id]
    row += [task.pad_id] * (n_ctx - len(row))
    for _ in range(draw(st.integers(0, 2))):
        row[draw(st.integers(0, n_ctx - 1))] = draw(st.sampled_from(range(len(task.chars))))
    return row


@pytest.mark.parametrize("name", sorted(TASKS))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_is_valid_and_decode_match_the_row_by_row_rule(name, data):
    task = TASKS[name]
    rows = data.draw(st.lists(_rows(name), min_size=1, max_size=12))
    tokens = torch.tensor(rows)
    assert task.is_valid(tokens).tolist() == [_reference_valid(task, r) for r in rows]
    assert task.decode(tokens) == [_reference_text(task, r) for r in rows]
    assert task.decode(tokens, keep_special=True) == ["".join(task.chars[i] for i in r) for r in rows]
    assert task.decode(tokens[0]) == _reference_text(task, rows[0])
    assert task.decode(rows[0]) == _reference_text(task, rows[0])  # a list of ids, as in PreimageResult.df.tokens


def test_well_formed_counting_rows_are_valid_and_damaged_ones_not():
    task = TASKS["counting"]
    good = task.encode(["aab|a:2", "xyzx|z:1"])
    assert task.is_valid(good).tolist() == [True, True]
    wrong_count = task.encode(["aab|a:3"])
    assert task.is_valid(wrong_count).tolist() == [False]
    second_eos = good.clone()
    second_eos[0, -1] = task.eos_id  # PAD after EOS turned into another EOS
    no_bos = good.clone()
    no_bos[1, 0] = task.pad_id
    assert task.is_valid(torch.cat([second_eos[:1], no_bos[1:]])).tolist() == [False, False]


def test_decode_refuses_ids_outside_the_vocabulary():
    task = TASKS["counting"]
    with pytest.raises(IndexError, match="outside the vocabulary"):
        task.decode(torch.tensor([[task.bos_id, len(task.chars)]]))


def test_lists_and_arrays_read_as_the_tensor_does():
    task = TASKS["counting"]
    rows = task.encode(["aab|a:2", "xyzx|z:1", "ab|a:3"])
    expected_valid = [True, True, False]  # hand-checked: the third row's count is wrong
    for form in (rows, rows.tolist(), rows.numpy(), tuple(map(tuple, rows.tolist()))):
        assert task.is_valid(form).tolist() == expected_valid
        assert task.decode(form) == ["aab|a:2", "xyzx|z:1", "ab|a:3"]


def test_empty_and_zero_width_inputs():
    task = TASKS["counting"]
    assert task.decode(torch.zeros(0, task.n_ctx, dtype=torch.long)) == []
    assert task.decode([]) == ""  # one row of no ids: the empty text
    assert task.decode(torch.zeros(2, 0, dtype=torch.long)) == ["", ""]
    assert task.is_valid(torch.zeros(2, 0, dtype=torch.long)).tolist() == [False, False]
    assert task.is_valid(torch.zeros(0, task.n_ctx, dtype=torch.long)).tolist() == []


@pytest.mark.parametrize("bad, err, words", [
    ([37, 0.9, 38], InputTypeError, "got float64 values"),
    ([True, False], InputTypeError, "got bool values"),
    (torch.tensor([[37.5, 38.0]]), InputTypeError, "torch.float32 tensor"),
    (torch.tensor([[True, False]]), InputTypeError, "torch.bool tensor"),
    (torch.tensor(5), InputValueError, "got one number"),
    ([[37, 38], [37]], InputValueError, "one length"),
    (torch.zeros(1, 34, dtype=torch.long), InputValueError, "at most n_ctx = 33 ids long, got rows of 34"),
    (torch.zeros(1, 33, dtype=torch.long, device="meta"), InputValueError, "meta device"),
    ([37, 40], TokenIdError, "token id 40 is outside the vocabulary 0..39"),
    ([37, -1], TokenIdError, "token id -1 is outside"),
])
@pytest.mark.parametrize("method", ["decode", "is_valid"])
def test_bad_ids_get_a_clear_error(method, bad, err, words):
    task = TASKS["counting"]
    with pytest.raises(err, match=re.escape(words)) as info:
        getattr(task, method)(bad)
    assert isinstance(info.value, TLInversionError)
    assert method in str(info.value)


def test_out_of_vocabulary_ids_are_refused_even_after_eos():
    task = TASKS["counting"]
    row = task.encode(["aab|a:2"])
    row[0, -1] = len(task.chars) + 5  # in the padding, where the text no longer reads
    for method in (task.decode, task.is_valid):
        with pytest.raises(IndexError, match="outside the vocabulary"):
            method(row)


def test_is_valid_refuses_more_than_two_dimensions():
    task = TASKS["counting"]
    with pytest.raises(InputValueError, match=re.escape("got shape [2, 3, 33]")):
        task.is_valid(torch.zeros(2, 3, 33, dtype=torch.long))
    nested = task.decode(torch.stack([task.encode(["ab|a:1", "abc|c:1"])] * 2))
    assert nested == [["ab|a:1", "abc|c:1"]] * 2


def test_unusual_id_containers():
    task = TASKS["counting"]
    rows = task.encode(["aab|a:2", "ab|a:3"])
    frozen = rows.numpy().copy()
    frozen.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "array is not writable" warning from torch
        assert task.is_valid(frozen).tolist() == [True, False]
    reversed_rows = rows.numpy()[::-1]  # negative strides
    assert task.is_valid(reversed_rows).tolist() == [False, True]
    assert task.decode(reversed_rows) == ["ab|a:3", "aab|a:2"]
    assert task.decode(torch.empty(0)) == ""  # an empty row of any dtype is the empty text, like []
    assert task.decode(rows.to(torch.uint8)) == ["aab|a:2", "ab|a:3"]
    assert task.decode(np.array(rows.tolist(), dtype=object)) == ["aab|a:2", "ab|a:3"]  # Python ints in an array


@pytest.mark.parametrize("bad, err, words", [
    ([2**63], TokenIdError, f"token id {2**63} is outside"),
    (np.array([2**64 - 1], dtype=np.uint64), TokenIdError, f"token id {2**64 - 1} is outside"),
    ([5, 2**70], TokenIdError, f"token id {2**70} is outside"),
    ([-(2**70), 5], TokenIdError, f"token id {-(2**70)} is outside"),
    ("abc", InputTypeError, "got a str; encode texts with counting.encode"),
    (None, InputTypeError, "got a NoneType"),
    ({0: 1}, InputTypeError, "got a dict"),
    (torch.tensor([[1, 2]]).to_sparse(), InputTypeError, "dense integer tensor"),
])
def test_more_bad_containers(bad, err, words):
    task = TASKS["counting"]
    for method in (task.decode, task.is_valid):
        with pytest.raises(err, match=re.escape(words)) as info:
            method(bad)
        assert isinstance(info.value, TLInversionError)


def test_keep_special_must_be_a_bool():
    with pytest.raises(TypeError, match="keep_special"):  # InputTypeError; jaxtyping's hook words it in CI
        TASKS["counting"].decode([37, 0, 38], keep_special="no")
