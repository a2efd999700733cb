import re

import pytest

from fathom.build.errors import FathomError
from fathom.runtime import arith

LINE = re.compile(r"^(\d)([+-])(\d)\2([01]): (\d) (carry|borrow) ([01])$")


def test_prompt_suffix_is_the_model_cards_exact_sentence():
    assert arith.PROMPT_SUFFIX == "Please reason step by step, and put your final answer within \\boxed{}."
    p = arith.make_problem("+", 457, 68)
    assert p.question == "What is 457 + 68?"
    assert p.user_message == "What is 457 + 68? " + arith.PROMPT_SUFFIX


def test_is_correct_compares_integers_by_value():
    p = arith.make_problem("-", 600, 75)
    assert arith.is_correct("The answer is \\boxed{525}.", p)
    assert arith.is_correct("\\boxed{ 0525 }", p)
    assert not arith.is_correct("\\boxed{524}", p)
    assert not arith.is_correct("525", p)


def test_splits_are_disjoint_and_deterministic():
    train = arith.make_problems(3000, 0, "train") + arith.make_problems(3000, 7, "train")
    heldout = arith.make_problems(600, 0, "heldout") + arith.make_problems(600, 7, "heldout")
    key = lambda p: (p.op, p.a, p.b)  # noqa: E731
    assert not {key(p) for p in train} & {key(p) for p in heldout}
    assert all(arith.split_of(*key(p)) == "heldout" for p in heldout)
    assert arith.make_problems(50, 3, "heldout") == arith.make_problems(50, 3, "heldout")
    assert arith.make_problems(50, 3, "heldout") != arith.make_problems(50, 4, "heldout")
    assert len({key(p) for p in arith.make_problems(600, 0, "heldout")}) == 600


def test_problems_cover_both_ops_and_all_operand_lengths():
    problems = arith.make_problems(2000, 0, "train")
    assert {p.op for p in problems} == {"+", "-"}
    assert {len(str(p.b)) for p in problems} == {1, 2, 3}
    assert all(p.a >= p.b for p in problems if p.op == "-")


@pytest.mark.parametrize("split", arith.SPLITS)
def test_worked_solution_trace_is_valid_arithmetic_and_boxes_the_right_answer(split):
    for p in arith.make_problems(1500, 11, split):
        text = arith.worked_solution(p)
        expected = p.a + p.b if p.op == "+" else p.a - p.b
        assert arith.is_correct(text, p)
        trace, answer = text.split("\n</think>\n\n")
        assert answer == f"The answer is \\boxed{{{expected}}}."
        header, *lines = trace.split("\n")
        assert header == f"{p.a:03d}{p.op}{p.b:03d}"
        assert len(lines) == arith.MAX_DIGITS
        carry, digits = 0, []
        for col, line in enumerate(lines):
            x, op, y, c_in, d, word, c_out = LINE.match(line).groups()
            x, y, c_in, d, c_out = map(int, (x, y, c_in, d, c_out))
            assert (x, y, c_in) == (p.a // 10 ** col % 10, p.b // 10 ** col % 10, carry)
            sign = 1 if op == "+" else -1
            assert x + sign * (y + c_in) == d + sign * 10 * c_out
            assert word == ("carry" if op == "+" else "borrow")
            carry = c_out
            digits.append(d)
        assert int("".join(map(str, [carry, *reversed(digits)]))) == expected


def test_bad_problems_are_refused():
    with pytest.raises(FathomError, match="negative"):
        arith.make_problem("-", 3, 5)
    with pytest.raises(FathomError, match="operands"):
        arith.make_problem("+", 1000, 5)
    with pytest.raises(FathomError, match="op"):
        arith.make_problem("*", 3, 5)
    with pytest.raises(FathomError, match="split"):
        arith.make_problems(3, 0, "test")
