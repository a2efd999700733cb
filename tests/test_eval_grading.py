"""Answer extraction, the strict and fathom-r1 graders, and the accuracy metrics of fathom eval."""

from __future__ import annotations

import math
import signal
import threading
import time
from itertools import combinations

import pytest

from fathom.build.errors import FathomError
from fathom.runtime.eval.answers import extract_boxed
from fathom.runtime.eval.graders import GRADER_NAMES, get_grader
from fathom.runtime.eval.metrics import (ProblemSamples, k_values, majority_answer, pass_at_k,
                                         summarize)

EXTRACTION_CASES = [
    ("The answer is \\boxed{70}.", "70"),
    ("nested \\boxed{\\frac{\\sqrt{3}}{2}} done", "\\frac{\\sqrt{3}}{2}"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("<think>so it is \\boxed{12} ... wait", "12"),
    ("<think>draft \\boxed{5}</think> final \\boxed{6}", "6"),
    ("so the answer is \\boxed 70.", "70"),
    ("$\\boxed 70$", "70"),
    ("so \\boxed70", "70"),
    ("$\\boxed70$.", "70"),
    ("\\boxed{5.}", "5"),
    ("\\boxed{: 12}", "12"),
    ("\\boxed{3/}", "3"),
    ("\\boxed 5/.", "5"),
    ("\\boxedfoo{1}", None),
    ("spaced \\boxed {  42 }", "42"),
    ("a set \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("no box: the answer is 70", None),
    ("empty \\boxed{}", None),
    ("cut off \\boxed{\\frac{1}{2", None),
    ("\\boxed{3} then cut off \\boxed{\\frac{1", None),
]


@pytest.mark.parametrize("text, expected", EXTRACTION_CASES)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


# answer, gold, strict, fathom-r1
EQUIVALENCE_CASES = [
    ("70", "70", True, True),
    ("070", "70", True, True),
    ("71", "70", False, False),
    ("\\dfrac{1}{2}", "\\frac12", True, True),
    ("1/2", "\\frac{1}{2}", True, True),
    ("0.5", "\\frac{1}{2}", True, True),
    ("0.33333", "\\frac{1}{3}", False, True),  # fathom-r1: absolute tolerance 1e-4
    ("0.3", "\\frac{1}{3}", False, False),
    ("\\frac{\\pi-2}{\\pi}", "1-\\frac{2}{\\pi}", True, True),
    ("2\\sqrt{2}", "\\sqrt{8}", True, True),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True, True),
    ("\\sqrt{3}", "\\sqrt{2}", False, False),
    ("3, 1, 2", "1,2,3", True, True),
    ("1, 2", "1, 2, 3", False, False),
    ("(1,2)", "(2,1)", False, False),
    ("\\pm 2", "2,-2", True, True),
    ("\\pm\\sqrt{2}", "\\sqrt{2},-\\sqrt{2}", True, True),
    ("30^\\circ", "30", True, True),
    ("30^{\\circ}", "30", True, True),
    ("5\\text{ cm}", "5", True, True),
    ("\\$18.90", "18.90", True, True),
    ("1,000", "1000", True, True),
    ("50", "0.5", False, True),  # fathom-r1: a number also accepted at 100x and 1/100
    ("6300", "63", False, True),
    ("12345678901234567891", "12345678901234567890", False, False),  # compared exactly
    ("2^{25} \\cdot 26! + 1", "2^{25} \\cdot 26!", False, False),
    ("x=5", "5", True, True),
    ("x=1, y=2", "1, 2", True, True),
    ("y=2, x=1", "x=1, y=2", True, True),
    ("x=1, y=3", "1, 2", False, False),
    ("30\u00b0", "30", True, True),
    ("45^\\circ", "30\u00b0", False, False),
    ("\\text{no}", "5", False, False),
    (None, "70", False, False),
    ("", "70", False, False),
]


@pytest.mark.parametrize("answer, gold, strict, fathom_r1", EQUIVALENCE_CASES)
def test_graders_on_tricky_cases(answer, gold, strict, fathom_r1):
    assert get_grader("strict").equivalent(answer, gold) is strict
    assert get_grader("fathom-r1").equivalent(answer, gold) is fathom_r1


def test_grader_names_and_unknown_grader():
    assert GRADER_NAMES == ("strict", "fathom-r1")
    assert [get_grader(name).name for name in GRADER_NAMES] == list(GRADER_NAMES)
    with pytest.raises(FathomError, match="--grader 'exact': expected one of strict, fathom-r1"):
        get_grader("exact")


def test_strict_votes_on_value_fathom_r1_on_raw_string():
    strict, card = get_grader("strict"), get_grader("fathom-r1")
    assert strict.vote_key("\\frac12") == strict.vote_key("0.5") == strict.vote_key("1/2")
    assert strict.vote_key("070") == strict.vote_key("70")
    assert strict.vote_key("3, 1, 2") == strict.vote_key("1,2,3")
    assert strict.vote_key("71") != strict.vote_key("70")
    assert strict.vote_key("12345678901234567891") != strict.vote_key("12345678901234567890")
    assert strict.vote_key("2^{25} \\cdot 26!") == "13532215908553332190020108288000000"
    assert strict.vote_key("2^{25} \\cdot 26! + 1") != strict.vote_key("2^{25} \\cdot 26!")
    assert card.vote_key("\\frac12") == "\\frac12" != card.vote_key("0.5")


def test_a_comparison_that_runs_out_of_time_is_not_equivalent_and_is_counted():
    grader = get_grader("strict", timeout_s=1)
    assert grader.equivalent("2^{2^{2^{30}}}", "5") is False
    assert grader.timeouts == 1
    assert grader.equivalent("5", "5") is True
    assert grader.timeouts == 1


class _SlowClock:
    """time.monotonic for the graders: every reading 0.6 s after the previous one."""

    def __init__(self):
        self.now_s = 0.0

    def monotonic(self) -> float:
        self.now_s += 0.6
        return self.now_s


def test_the_timeout_bounds_the_whole_comparison_not_each_step(monkeypatch):
    import fathom.runtime.eval.graders as graders

    monkeypatch.setattr(graders, "time", _SlowClock())
    grader = get_grader("strict", timeout_s=1)
    # each parse step alone fits in 1 s; the second starts after the comparison's second is up
    assert grader.equivalent("5", "5") is False
    assert grader.timeouts == 1
    assert grader.vote_key("0.50") == "0.50"  # out of time: the answer's own text votes
    assert get_grader("fathom-r1", timeout_s=1).equivalent("\\sqrt{4}", "2") is False


def _stuck_past_its_alarm(deadline) -> bool:
    signal.signal(signal.SIGALRM, signal.SIG_IGN)  # as a step stuck in C code would
    time.sleep(60)
    return True


def test_a_worker_stuck_past_its_timeout_is_killed_and_replaced():
    grader = get_grader("strict", timeout_s=1)
    results = []

    def grade():
        results.append(grader._run(_stuck_past_its_alarm, False))
        results.append(grader.equivalent("0.5", "\\frac12"))

    worker = threading.Thread(target=grade)
    worker.start()
    worker.join()
    assert results == [False, True]
    assert grader.timeouts == 1


def test_graders_work_off_the_main_thread():
    grader = get_grader("strict")
    results = []
    worker = threading.Thread(target=lambda: results.append(
        (grader.equivalent("0.5", "\\frac12"), grader.equivalent("71", "70"))))
    worker.start()
    worker.join()
    assert results == [(True, False)]


def test_bad_timeout():
    with pytest.raises(FathomError, match="timeout_s 0: expected whole seconds >= 1"):
        get_grader("strict", timeout_s=0)


# --- pass@k ----------------------------------------------------------------------------------


def _pass_at_k_by_enumeration(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    draws = list(combinations(samples, k))
    return sum(any(draw) for draw in draws) / len(draws)


@pytest.mark.parametrize("n, c, k", [(n, c, k) for n in (1, 2, 5, 8) for c in range(n + 1)
                                     for k in range(1, n + 1)])
def test_pass_at_k_matches_enumeration_of_all_draws(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_by_enumeration(n, c, k), abs=1e-12)


def test_pass_at_k_closed_form_corners():
    assert pass_at_k(64, 64, 1) == 1.0
    assert pass_at_k(64, 64, 64) == 1.0
    assert pass_at_k(64, 0, 64) == 0.0
    assert pass_at_k(64, 17, 1) == pytest.approx(17 / 64)
    assert pass_at_k(64, 1, 64) == 1.0
    assert pass_at_k(64, 3, 2) == pytest.approx(1 - math.comb(61, 2) / math.comb(64, 2))


@pytest.mark.parametrize("n, c, k, message", [
    (4, 1, 8, "pass@k k=8: expected 1 <= k <= samples per problem \\(4\\)"),
    (4, 1, 0, "pass@k k=0"),
    (4, 5, 1, "c=5, n=4"),
    (0, 0, 1, "c=0, n=0"),
])
def test_pass_at_k_bad_input(n, c, k, message):
    with pytest.raises(FathomError, match=message):
        pass_at_k(n, c, k)


def test_k_values_are_powers_of_two_then_n():
    assert k_values(64) == [1, 2, 4, 8, 16, 32, 64]
    assert k_values(6) == [1, 2, 4, 6]
    assert k_values(1) == [1]


# --- cons@n ----------------------------------------------------------------------------------


def test_majority_ties_go_to_the_first_seen_answer():
    card = get_grader("fathom-r1")
    assert majority_answer(["7", "8", "8", "7"], card) == "7"
    assert majority_answer(["8", "7", "7", "8"], card) == "8"
    assert majority_answer(["7", "8", "8"], card) == "8"


def test_majority_skips_missing_answers():
    card = get_grader("fathom-r1")
    assert majority_answer([None, None, "3"], card) == "3"
    assert majority_answer([None, None], card) is None
    assert majority_answer([], card) is None


def test_majority_groups_equivalent_answers_under_strict_only():
    answers = ["1/3", "0.5", "\\frac12", "1/3"]
    assert majority_answer(answers, get_grader("strict")) == "1/3"  # tie 2-2: first seen group
    assert majority_answer(["0.5", "1/3", "\\frac12", "1/3"], get_grader("strict")) == "0.5"
    assert majority_answer(["0.5", "1/3", "\\frac12", "1/3"], get_grader("fathom-r1")) == "1/3"


# --- summarize -------------------------------------------------------------------------------


def _problems() -> list[ProblemSamples]:
    return [
        ProblemSamples("1", "70", ["70", "070", "71", None], [True, True, False, False],
                       [10, 20, 30, 40], [False, False, False, True]),
        ProblemSamples("2", "\\frac12", ["0.5", "1/3", "1/3", "\\frac12"],
                       [True, False, False, True], [5, 5, 5, 5], [False] * 4),
        ProblemSamples("3", "9", ["8", "8", None, "9"], [False, False, False, True],
                       [100, 100, 100, 100], [False, False, True, False]),
    ]


def test_summarize_on_a_hand_made_set():
    summary = summarize(_problems(), get_grader("strict"))
    assert list(summary) == ["problems", "samples", "pass@1", "pass@1_ci95", "pass@k", "cons@n",
                             "per_problem", "tokens", "grader_timeouts"]
    assert summary["problems"] == 3
    assert summary["samples"] == 12
    assert summary["pass@1"] == pytest.approx(5 / 12)
    assert list(summary["pass@k"]) == ["1", "2", "4"]
    assert summary["pass@k"]["1"] == pytest.approx(5 / 12)
    assert summary["pass@k"]["2"] == pytest.approx((5 / 6 + 5 / 6 + 1 / 2) / 3)
    assert summary["pass@k"]["4"] == 1.0
    assert summary["cons@n"] == pytest.approx(2 / 3)
    assert summary["per_problem"] == [
        {"id": "1", "gold": "70", "correct": 2, "samples": 4, "majority": "70",
         "majority_correct": True},
        {"id": "2", "gold": "\\frac12", "correct": 2, "samples": 4, "majority": "0.5",
         "majority_correct": True},
        {"id": "3", "gold": "9", "correct": 1, "samples": 4, "majority": "8",
         "majority_correct": False},
    ]
    assert summary["tokens"] == {"mean": pytest.approx(520 / 12), "p50": 25.0,
                                 "p90": 100.0, "truncated_share": pytest.approx(2 / 12)}
    assert summary["grader_timeouts"] == 0


def test_summarize_reports_the_graders_timeouts():
    grader = get_grader("strict", timeout_s=1)
    assert grader.equivalent("2^{2^{2^{30}}}", "5") is False
    problems = [ProblemSamples("1", "5", ["7", "5", "5"], [False, True, True], [1, 1, 1],
                               [False] * 3)]
    assert summarize(problems, grader)["grader_timeouts"] == 1


def test_summarize_fathom_r1_votes_on_raw_strings():
    summary = summarize(_problems(), get_grader("fathom-r1"))
    assert [row["majority"] for row in summary["per_problem"]] == ["70", "1/3", "8"]
    assert summary["cons@n"] == pytest.approx(1 / 3)


def test_pass_at_1_ci95_over_problems():
    summary = summarize(_problems(), get_grader("strict"))
    accuracies = [0.5, 0.5, 0.25]
    mean = sum(accuracies) / 3
    sd = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / 2)
    lo, hi = summary["pass@1_ci95"]
    assert lo == pytest.approx(mean - 1.959964 * sd / math.sqrt(3))
    assert hi == pytest.approx(mean + 1.959964 * sd / math.sqrt(3))


def _wilson95(correct: int, samples: int) -> list[float]:
    z = 1.959964
    share = correct / samples
    centre = (share + z * z / (2 * samples)) / (1 + z * z / samples)
    half = z / (1 + z * z / samples) * math.sqrt(share * (1 - share) / samples
                                                 + z * z / (4 * samples * samples))
    return [centre - half, centre + half]


def test_pass_at_1_ci95_without_spread_over_problems_is_wilson_over_samples():
    every_sample_right = [ProblemSamples(str(i), "1", ["1"] * 2, [True] * 2, [1, 1], [False] * 2)
                          for i in range(3)]
    lo, hi = summarize(every_sample_right, get_grader("fathom-r1"))["pass@1_ci95"]
    assert hi == pytest.approx(1.0)
    assert lo == pytest.approx(_wilson95(6, 6)[0]) and lo < 0.7  # 6 of 6: not a point
    one_problem = summarize(_problems()[:1], get_grader("fathom-r1"))["pass@1_ci95"]
    assert one_problem == pytest.approx(_wilson95(2, 4))
    assert one_problem[0] < 0.5 < one_problem[1]
    same_accuracy = [ProblemSamples(str(i), "1", ["1", "2", "2"], [True, False, False], [1] * 3,
                                    [False] * 3) for i in range(3)]
    lo, hi = summarize(same_accuracy, get_grader("fathom-r1"))["pass@1_ci95"]
    assert [lo, hi] == pytest.approx(_wilson95(3, 9)) and lo < 1 / 3 < hi


def test_pass_at_k_stops_at_the_fewest_samples():
    problems = _problems()
    problems[2] = ProblemSamples("3", "9", ["9", "8"], [True, False], [1, 1], [False, False])
    summary = summarize(problems, get_grader("fathom-r1"))
    assert list(summary["pass@k"]) == ["1", "2"]
    assert summary["samples"] == 10


@pytest.mark.parametrize("problems, message", [
    ([], "eval: no problems to summarize"),
    ([ProblemSamples("p1", "1", ["1"], [True, False], [1], [False])], "problem p1: expected"),
    ([ProblemSamples("p1", "1", [], [], [], [])], "problem p1: expected"),
])
def test_summarize_bad_input(problems, message):
    with pytest.raises(FathomError, match=message):
        summarize(problems, get_grader("strict"))
