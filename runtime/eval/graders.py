"""Answer equivalence: is an extracted answer the gold answer? Two graders, chosen by name.

`strict` (the default) asks math-verify (github.com/huggingface/Math-Verify, `parse` and
`verify`), which parses both sides to sympy and compares them as numbers, expressions, sets,
intervals or equations: integers with leading zeros, `\\dfrac`/`a/b`/decimals, symbolic forms
(`\\frac{\\pi-2}{\\pi}` = `1-\\frac{2}{\\pi}`), `\\sqrt` forms, unordered answer lists, `\\pm`,
units and degree signs. Its majority vote groups answers by a canonical form of the parsed value,
so `\\frac12` and `0.5` vote together.

`fathom-r1` follows the rules of the Fathom-R1-14B model card's evaluation
(github.com/FractalAIResearchLabs/Fathom-R1, eval/), so scores compare with its table. Answers
are normalized (spacing, `\\left`/`\\right`, `\\dfrac`, `$`, `%`, degree signs, a trailing
`\\text{unit}`, a leading `x=` on each comma-separated item), then they match when they are
equal ignoring case; or, when both contain top-level commas, as unordered lists item by item;
or, when both are plain numbers, within an absolute 1e-4 (compared exactly, not in floating
point), the answer also being accepted at 100x and 1/100 of the gold; otherwise, parsed as
LaTeX, when their difference simplifies to 0 or evaluates within 1e-4 of it. Its majority vote
counts the raw answer strings.

Where the two differ:
- percentages: fathom-r1 accepts 50 for a gold of 0.5 (and 0.5 for 50); strict does not.
- tolerance: fathom-r1 accepts any number within 1e-4 of the gold (0.33333 for 1/3); strict
  compares rounded to 6 decimals, so 0.33333 is not 1/3.
- lists: fathom-r1 splits on top-level commas only when both sides have them and matches the
  items in any order; strict compares parsed sets and tuples, so ordered pairs `(1,2)` and
  `(2,1)` differ while sets `\\{1,2\\}` and answer lists `1, 2` do not.
- voting: fathom-r1 counts `\\frac12` and `0.5` as two different votes; strict merges them.

Each comparison (an `equivalent` or a strict `vote_key`) is bounded by `timeout_s` as a whole:
its parse, verify and simplify steps share that budget, each step given what is left (rounded up
to whole seconds, since math-verify's `signal.alarm` counts whole seconds, so the last step may
end up to a second late). A comparison that runs out of time is not equivalent (a vote key falls
back to the answer's own text) and is added to `timeouts`. `signal.alarm` only works on the main
thread, so a call from any other thread runs in a worker process, on its main thread, and is
waited for at most 2 * timeout_s + 1 s; past that (a step stuck in C code ignores the alarm) the
worker is killed, the comparison counted as timed out, and the next call starts a fresh worker.
"""

from __future__ import annotations

import math
import multiprocessing
import re
import threading
import time
from fractions import Fraction
from itertools import product
from typing import Callable, Protocol

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException
from math_verify.utils import timeout

from ...build.errors import FathomError

GRADER_NAMES = ("strict", "fathom-r1")
DEFAULT_TIMEOUT_S = 5
_WORKER_SLACK_S = 1  # the worker's wait beyond 2 * timeout_s: pickling and the pipe
_WORKER_START_S = 120  # a fresh worker process imports sympy and math-verify


class Grader(Protocol):
    name: str
    timeouts: int  # comparisons that ran out of time so far

    def equivalent(self, answer: str | None, gold: str) -> bool: ...

    def vote_key(self, answer: str) -> str: ...


def get_grader(name: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> Grader:
    """A fresh grader (its own timeout count) by --grader word."""
    if name == "strict":
        return StrictGrader(timeout_s)
    if name == "fathom-r1":
        return FathomR1Grader(timeout_s)
    raise FathomError(f"--grader {name!r}: expected one of {', '.join(GRADER_NAMES)}")


class _TimedGrader:
    """Runs comparisons under a timeout and counts the ones that ran out of time."""

    def __init__(self, timeout_s: int):
        if not isinstance(timeout_s, int) or timeout_s < 1:
            raise FathomError(f"grader timeout_s {timeout_s!r}: expected whole seconds >= 1")
        self.timeout_s = timeout_s
        self.timeouts = 0
        self._lock = threading.Lock()
        self._worker: multiprocessing.pool.Pool | None = None

    def _run(self, comparison: Callable[..., object], fallback, *args):
        """comparison(*args, deadline) bounded by timeout_s; `fallback` when out of time."""
        if threading.current_thread() is threading.main_thread():
            value, timed_out = _bounded(comparison, fallback, args, self.timeout_s)
        else:
            value, timed_out = self._run_in_worker(comparison, fallback, args)
        if timed_out:
            with self._lock:
                self.timeouts += 1
        return value

    def _run_in_worker(self, comparison: Callable[..., object], fallback, args) -> tuple:
        # One comparison at a time, so killing a stuck one loses no other caller's work.
        with self._lock:
            if self._worker is None:
                self._worker = _start_worker()
            call = self._worker.apply_async(_bounded, (comparison, fallback, args, self.timeout_s))
            try:
                return call.get(2 * self.timeout_s + _WORKER_SLACK_S)
            except multiprocessing.TimeoutError:
                self._worker.terminate()
                self._worker = None
                return fallback, True


class _Deadline:
    """The time left to one comparison, handed out to its steps in whole seconds."""

    def __init__(self, timeout_s: int):
        self.end_s = time.monotonic() + timeout_s

    def step_s(self) -> int:
        left_s = self.end_s - time.monotonic()
        if left_s <= 0:
            raise TimeoutException("grader comparison ran out of time")
        return math.ceil(left_s)


def _bounded(comparison: Callable[..., object], fallback, args: tuple, timeout_s: int) -> tuple:
    """(comparison(*args, deadline), False), or (fallback, True) when it ran out of time."""
    try:
        return comparison(*args, _Deadline(timeout_s)), False
    except TimeoutException:
        return fallback, True


def _start_worker() -> multiprocessing.pool.Pool:
    worker = multiprocessing.get_context("spawn").Pool(processes=1)
    try:
        worker.apply_async(_worker_ready).get(_WORKER_START_S)
    except multiprocessing.TimeoutError:
        worker.terminate()
        message = f"grader worker process: not started within {_WORKER_START_S} s"
        raise FathomError(message) from None
    return worker


def _worker_ready() -> bool:
    return True


class StrictGrader(_TimedGrader):
    name = "strict"

    def equivalent(self, answer: str | None, gold: str) -> bool:
        if answer is None or not answer.strip():
            return False
        return self._run(_strict_equivalent, False, answer, gold)

    def vote_key(self, answer: str) -> str:
        return self._run(_strict_vote_key, "".join(answer.split()), answer)


class FathomR1Grader(_TimedGrader):
    name = "fathom-r1"

    def equivalent(self, answer: str | None, gold: str) -> bool:
        if answer is None or not answer.strip():
            return False
        return self._run(_card_equivalent, False, answer, gold)

    def vote_key(self, answer: str) -> str:
        return answer


# --- strict: math-verify -------------------------------------------------------------------

# Both sides are given to math-verify inside \boxed{}, its highest-priority LaTeX anchor; plain
# expressions (`1/2`) are read as well.
_MATH_VERIFY_EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
_VOTE_DIGITS = 12
_DEGREE_SIGN = "\u00b0"


def _parse_boxed(latex: str, deadline: _Deadline) -> list:
    """math-verify's parse of `latex` (sympy values, then the string); [] when it fails. A
    Unicode degree sign is read as `^\\circ`, which math-verify drops."""
    latex = latex.replace(_DEGREE_SIGN, "^\\circ")
    try:
        return parse(f"\\boxed{{{latex}}}", _MATH_VERIFY_EXTRACTION,
                     parsing_timeout=deadline.step_s(), raise_on_error=True)
    except Exception:  # unparseable: nothing to compare (TimeoutException is not an Exception)
        return []


def _strict_equivalent(answer: str, gold: str, deadline: _Deadline) -> bool:
    golds, answers = _parse_boxed(gold, deadline), _parse_boxed(answer, deadline)
    for parsed_gold, parsed_answer in product(golds, answers):
        step_s = deadline.step_s()
        try:
            if verify(parsed_gold, parsed_answer, timeout_seconds=step_s, raise_on_error=True):
                return True
        except Exception:  # sympy cannot compare these two: not an equivalence
            continue
    return False


def _strict_vote_key(answer: str, deadline: _Deadline) -> str:
    plain = "".join(answer.split())
    value = _first_value(_parse_boxed(answer, deadline))
    if value is None:
        return plain
    step_s = deadline.step_s()
    try:
        return timeout(step_s)(_canonical)(value)
    except Exception:  # no canonical form (sympy raised): the answer's own text votes
        return plain


def _canonical(value) -> str:
    """One string per value: integers exact (`2^{25} \\cdot 26!` too, not rounded), other
    numbers to 12 significant digits, sets sorted, anything else simplified."""
    import sympy

    if isinstance(value, sympy.FiniteSet):
        return "{" + ",".join(sorted(_canonical(v) for v in value.args)) + "}"
    if isinstance(value, sympy.Tuple):
        return "(" + ",".join(_canonical(v) for v in value.args) + ")"
    if isinstance(value, sympy.Integer) or (value.is_number and value.is_integer):
        return str(sympy.Integer(value))
    if getattr(value, "is_number", False):
        return str(sympy.N(value, _VOTE_DIGITS))
    return str(sympy.simplify(value))


# --- fathom-r1: the model card's rules ----------------------------------------------------

_CARD_ABS_TOL = Fraction(1, 10_000)
_CARD_PERCENT_SCALES = (Fraction(1), Fraction(100), Fraction(1, 100))
_CARD_REMOVED = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "^{\\circ}", "^\\circ",
                 _DEGREE_SIGN, "\\%", "%", "\\$", "$")
_TRAILING_UNIT = re.compile(r"\\(?:text|mbox|mathrm)\{[^{}]*\}$")
_TEXT_WRAPPER = re.compile(r"\\(?:text|mbox|mathrm|textbf|mathbf)\{([^{}]*)\}")
_SHORT_LHS = re.compile(r"^[A-Za-z]\w?\s*=(?!=)")
_FRAC_DIGITS = re.compile(r"\\frac(\d)(\d)")
_SQRT_DIGIT = re.compile(r"\\sqrt(\d)")
_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")


def _card_normalize(text: str) -> str:
    text = text.strip().replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for token in _CARD_REMOVED:
        text = text.replace(token, "")
    without_unit = _TRAILING_UNIT.sub("", text).strip()
    text = without_unit or text
    text = _TEXT_WRAPPER.sub(r"\1", text)
    text = ",".join(_SHORT_LHS.sub("", item.strip()) for item in _top_level_items(text))
    text = _FRAC_DIGITS.sub(r"\\frac{\1}{\2}", text)
    text = _SQRT_DIGIT.sub(r"\\sqrt{\1}", text)
    return "".join(text.split()).rstrip(".")


def _card_number(text: str) -> Fraction | None:
    """The exact value of a plain decimal number (`1,000` included); None for anything else."""
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def _top_level_items(text: str) -> list[str]:
    """`text` split on commas outside (), [] and {}."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


def _card_equivalent(answer: str, gold: str, deadline: _Deadline) -> bool:
    return _card_match(_card_normalize(answer), _card_normalize(gold), deadline, as_list=True)


def _card_match(answer: str, gold: str, deadline: _Deadline, as_list: bool) -> bool:
    if answer.lower() == gold.lower():
        return True
    answer_items, gold_items = _top_level_items(answer), _top_level_items(gold)
    if as_list and len(answer_items) > 1 and len(answer_items) == len(gold_items):
        unmatched = list(gold_items)
        for item in answer_items:
            match = None
            for candidate in unmatched:
                if _card_match(item, candidate, deadline, as_list=False):
                    match = candidate
                    break
            if match is None:
                break
            unmatched.remove(match)
        if not unmatched:
            return True
    answer_number, gold_number = _card_number(answer), _card_number(gold)
    if answer_number is not None and gold_number is not None:
        close = any(abs(answer_number - gold_number * scale) <= _CARD_ABS_TOL
                    for scale in _CARD_PERCENT_SCALES)
        return close
    return _card_symbolic(answer, gold, deadline)


def _card_symbolic(answer: str, gold: str, deadline: _Deadline) -> bool:
    answer_value = _first_value(_parse_boxed(answer, deadline))
    gold_value = _first_value(_parse_boxed(gold, deadline))
    if answer_value is None or gold_value is None:
        return False
    step_s = deadline.step_s()
    try:
        return timeout(step_s)(_same_value)(answer_value, gold_value)
    except Exception:  # sympy cannot compare these two: not an equivalence
        return False


def _first_value(parsed: list):
    return next((p for p in parsed if not isinstance(p, str)), None)


def _same_value(answer, gold) -> bool:
    import sympy

    if answer == gold or sympy.simplify(answer - gold) == 0:
        return True
    return abs(complex(sympy.N(answer - gold))) <= _CARD_ABS_TOL
