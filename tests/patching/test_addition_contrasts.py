"""Addition contrast builders: checked against strings and sums computed here by hand."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from tl_inversion.tasks.addition_contrasts import (
    addition_contrast_tokens,
    addition_operands,
    addition_resample_digits,
    addition_tokens,
)
from tl_inversion.tasks.contrast_set import ContrastDropWarning

# Addition -------------------------------------------------------------------------------

ADD_CHARS = "0123456789B+=EP"


def _add_text(row: list[int]) -> str:
    return "".join(ADD_CHARS[i] for i in row)


def _add_parse(row: list[int]) -> tuple[int, int, str]:
    text = _add_text(row)
    assert text[0] == "B"
    body = text[1:].split("E")[0]
    a, rest = body.split("+")
    b, s = rest.split("=")
    return int(a), int(b), s


@pytest.fixture(scope="module")
def addition_rows() -> torch.Tensor:
    rng = random.Random(0)
    a = [rng.randint(100, 999) for _ in range(2000)]
    b = [rng.randint(100, 999) for _ in range(2000)]
    return addition_tokens(a, b)


def test_addition_tokens_format(addition_rows):
    for row in addition_rows[:200].tolist():
        a, b, s = _add_parse(row)
        assert s == str(a + b) and len(row) == 14
        text = _add_text(row)
        assert text == f"B{a}+{b}={a + b}E".ljust(14, "P")
    a, b = addition_operands(addition_rows)
    assert int(a.min()) >= 100 and int(b.max()) <= 999


@pytest.mark.parametrize("digits", [["a2"], ["a0", "b0"], ["a1", "b1", "b2"]])
def test_addition_resample_changes_only_chosen_digits(addition_rows, digits):
    cs = addition_resample_digits(addition_rows, digits, generator=0, must_change=True, answer_must_change=False)
    slots = {"a0": 1, "a1": 2, "a2": 3, "b0": 5, "b1": 6, "b2": 7}
    chosen = {slots[d] for d in digits}
    assert cs.n == addition_rows.shape[0]  # no filter: nothing dropped
    leading_zero = 0
    for c_row, k_row in zip(cs.clean_tokens.tolist(), cs.contrast_tokens.tolist()):
        for i in (1, 2, 3, 5, 6, 7):
            assert (c_row[i] != k_row[i]) == (i in chosen)  # must_change: every chosen digit differs
        a, b, s = _add_parse(k_row)
        assert s == str(a + b) and 0 <= a <= 999 and 0 <= b <= 999  # sum rewritten without leading zeros
        leading_zero += k_row[1] == 0 or k_row[5] == 0
    assert (leading_zero > 0) == bool(chosen & {1, 5})  # leading digits may become 0
    assert cs.answer_position == 8
    assert torch.equal(cs.clean_answers, cs.clean_tokens[:, 9])


def test_addition_sum_length_filters(addition_rows):
    with pytest.warns(ContrastDropWarning):
        cs = addition_resample_digits(addition_rows, ["a0", "b0"], generator=1, same_sum_length=True)
    for c_row, k_row in zip(cs.clean_tokens.tolist(), cs.contrast_tokens.tolist()):
        assert len(_add_parse(c_row)[2]) == len(_add_parse(k_row)[2])
    with pytest.warns(ContrastDropWarning, match="by clean_sum_lengths"):
        four = addition_resample_digits(
            addition_rows, ["a0"], generator=1, clean_sum_lengths=[3], contrast_sum_lengths=[4]
        )
    assert four.n > 0
    assert all(len(_add_parse(r)[2]) == 3 for r in four.clean_tokens.tolist())
    assert all(len(_add_parse(r)[2]) == 4 for r in four.contrast_tokens.tolist())
    assert four.info["n_filtered_clean"] == sum(len(_add_parse(r)[2]) != 3 for r in addition_rows.tolist())
    # a ones digit change can never make a 3-digit sum of 100+100 have 4 digits: dropped
    with pytest.warns(ContrastDropWarning, match="dropped 1 of 1 rows"):
        impossible = addition_resample_digits(
            addition_tokens([100], [100]), ["a2"], contrast_sum_lengths=[4], max_tries=5
        )
    assert impossible.n == 0 and impossible.info["n_no_contrast"] == 1


def test_addition_answer_digit_and_change(addition_rows):
    with pytest.warns(ContrastDropWarning):
        cs = addition_resample_digits(addition_rows, ["a2", "b2"], generator=2, answer_digit=3, answer_must_change=True)
    assert cs.answer_position == 11
    for c_row, k_row, ans, cans in zip(
        cs.clean_tokens.tolist(), cs.contrast_tokens.tolist(), cs.clean_answers.tolist(), cs.contrast_answers.tolist()
    ):
        assert ans == c_row[12] and cans == k_row[12] and ans != cans  # 4th sum digit or E


def test_addition_is_deterministic(addition_rows):
    a = addition_resample_digits(addition_rows, ["b1"], generator=5)
    b = addition_resample_digits(addition_rows, ["b1"], generator=5)
    assert torch.equal(a.contrast_tokens, b.contrast_tokens)


def test_addition_errors(addition_rows):
    with pytest.raises(ValueError, match="a0, a1, a2, b0, b1, b2"):
        addition_resample_digits(addition_rows, ["c1"])
    with pytest.raises(ValueError, match="answer_digit"):
        addition_resample_digits(addition_rows, ["a1"], answer_digit=4)
    with pytest.raises(ValueError, match="B ddd"):
        addition_operands(torch.zeros(2, 14, dtype=torch.long))
    with pytest.raises(ValueError, match="3-digit"):
        addition_tokens([99], [100])


def _hand_row(a: int, b: int) -> str:
    """An addition row written by hand: three digits per operand, sum without leading zeros."""
    return f"B{a:03d}+{b:03d}={a + b}E".ljust(14, "P")


def test_contrast_tokens_write_leading_zeros():
    rows = addition_contrast_tokens([23, 0, 999, 123], [456, 7, 999, 456])
    assert [_add_text(r) for r in rows.tolist()] == [
        _hand_row(23, 456),
        _hand_row(0, 7),
        _hand_row(999, 999),
        _hand_row(123, 456),
    ]
    assert _hand_row(0, 7) == "B000+007=7EPPP"
    with pytest.raises(ValueError, match="3-digit"):
        addition_tokens([23], [456])


def _draw_counts(clean_a: int, clean_b: int, digits, answer_digit: int, reps: int = 4000, **kw) -> Counter:
    rows = addition_tokens([clean_a] * reps, [clean_b] * reps)
    cs = addition_resample_digits(rows, digits, generator=3, answer_digit=answer_digit, **kw)
    assert cs.n == reps  # every row finds a contrast: none dropped
    return Counter(_add_text(r) for r in cs.contrast_tokens.tolist()), cs


def test_paper_recipe_default_enumerated_by_hand():
    # a = 123 + b = 456 = 579, redraw a's hundreds digit x in 0..9 (leading zero allowed):
    # contrast sums x23 + 456 = 479, 579 (x = 1, the clean row), 679, 779, 879, 979, 1079, ...
    # The first answer token (answer_digit 0) is 4, 5, 6, 7, 8, 9, 1, 1, 1, 1: only x = 1 keeps '5'.
    expected = {_hand_row(100 * x + 23, 456) for x in range(10) if x != 1}
    counts, cs = _draw_counts(123, 456, ["a0"], 0)
    assert set(counts) == expected and len(expected) == 9
    # uniform over the 9 valid draws (rejection of x = 1 keeps the others uniform): 4000 / 9 each
    assert all(abs(c - 4000 / 9) < 5 * (4000 / 9) ** 0.5 for c in counts.values())
    assert "B023+456=479EP" in counts  # a leading zero in the contrast
    assert cs.answer_position == 8 and set(cs.contrast_answers.tolist()) == {4, 6, 7, 8, 9, 1}
    assert (cs.clean_answers == 5).all()


def test_answer_filter_on_the_eos_answer_token_enumerated_by_hand():
    # 105 + 102 = 207; redraw both hundreds digits (x, y): sum = 100 (x + y) + 7.
    # answer_digit 1 predicts the 2nd answer token: '0' for the clean 207, and for the contrast:
    # x + y = 0 -> sum 7 -> tokens '7' 'E': the 2nd token is E (an answer: the end), it differs;
    # x + y in 1..9 -> '0' (unchanged, rejected); x + y >= 10 -> '1' then digit x + y - 10: differs
    # unless x + y = 10.
    expected = {_hand_row(100 * x + 5, 100 * y + 2) for x in range(10) for y in range(10) if x + y == 0 or x + y >= 11}
    counts, cs = _draw_counts(105, 102, ["a0", "b0"], 1, reps=6000)
    assert set(counts) == expected
    assert (
        "B005+002=7EPPP" in counts
        and (cs.contrast_answers[cs.contrast_tokens[:, 1] + cs.contrast_tokens[:, 5] == 0] == 13).all()
    )


def test_a_contrast_without_an_answer_token_is_redrawn():
    # 105 + 102 = 207, answer_digit 2 (3rd token, '7'). A contrast 005 + 002 = 7 has P there:
    # no answer, so it is never drawn; 3-digit sums x0y..: 3rd token '7' (unchanged) -> rejected;
    # 4-digit sums 1(x+y-10)07: 3rd token '0' -> kept. So exactly x + y >= 10.
    expected = {_hand_row(100 * x + 5, 100 * y + 2) for x in range(10) for y in range(10) if x + y >= 10}
    counts, _ = _draw_counts(105, 102, ["a0", "b0"], 2, reps=6000)
    assert set(counts) == expected


def test_dropped_rows_are_reported_in_a_warning():
    rows = addition_tokens([195, 100], [804, 100])
    # 195 + 804 = 999: a's ones digit x gives 994 + x, whose first token changes ('9' -> '1') for x >= 6;
    # 100 + 100 = 200: 10x + 100 -> 200..209, the first token '2' never changes: dropped
    with pytest.warns(ContrastDropWarning, match="dropped 1 of 2 rows: 0 by clean_sum_lengths, 1 with no contrast"):
        cs = addition_resample_digits(rows, ["a2"], max_tries=30)
    assert cs.n == 1 and cs.info["n_no_contrast"] == 1 and cs.info["clean_index"].tolist() == [0]
    assert _add_text(cs.contrast_tokens[0].tolist()) in {_hand_row(190 + x, 804) for x in range(6, 10)}
