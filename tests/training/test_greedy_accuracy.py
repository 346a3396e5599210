"""greedy_accuracy: the paper's greedy-generation test, against oracles built by hand."""

from __future__ import annotations

import pytest
import torch

from tl_inversion.errors import InputValueError
from tl_inversion.tasks import addition
from tl_inversion.training.probed import greedy_accuracy


def _rows():
    task = addition.make_task()
    rows = task.encode(["123+456=579", "999+999=1998", "500+500=1000", "101+202=303"])
    return task, rows


def _oracle(rows, wrong_row=None, vocab=15):
    """Logits that put all mass on the true next token of the row whose prefix matches."""

    def fn(x):
        out = torch.full((x.shape[0], x.shape[1], vocab), -10.0)
        for b in range(x.shape[0]):
            match = next((i for i in range(rows.shape[0]) if torch.equal(rows[i, : x.shape[1]], x[b])), None)
            if match is None:  # a prefix no row has (after a wrong digit): predict digit 0
                out[b, :, 0] = 10.0
                continue
            for t in range(x.shape[1]):
                nxt = int(rows[match, t + 1]) if t + 1 < rows.shape[1] else int(rows[match, -1])
                if match == wrong_row and t == x.shape[1] - 1 and t + 1 == 9:
                    nxt = (nxt + 1) % 10  # first answer digit wrong
                out[b, t, nxt] = 10.0
        return out

    return fn


def test_a_perfect_oracle_scores_one_and_one_wrong_digit_costs_one_row():
    task, rows = _rows()
    start = 9  # "B123+456=" : the first answer digit sits at index 9
    assert greedy_accuracy(_oracle(rows), rows, start, task.eos_id, task.pad_id) == 1.0
    assert greedy_accuracy(_oracle(rows, wrong_row=2), rows, start, task.eos_id, task.pad_id) == pytest.approx(0.75)


def test_bad_arguments_are_named():
    task, rows = _rows()
    with pytest.raises(InputValueError, match="answer_start"):
        greedy_accuracy(_oracle(rows), rows, 0, task.eos_id, task.pad_id)
