"""The demo task: addition and subtraction of numbers with up to 3 digits, in the R1 format.

The embedded demo model (build/demo_model/, trained by scripts/train_demo_model.py) learned this
task; `fathom demo`, the quality report and the accuracy eval ask it held-out problems and grade
the answers the way the model card grades AIME: the last `\\boxed{...}` of the output.

A worked solution is the text the model writes after the prompt's `<think>\\n`: the operands
right-aligned to three digits, then one fixed-width line per column from the units up (the two
digits, the carry or borrow coming in, the digit written and the carry or borrow going out),
then `</think>` and the answer sentence:

    457+068
    7+8+0: 5 carry 1
    5+6+1: 2 carry 1
    4+0+1: 5 carry 0
    </think>

    The answer is \\boxed{525}.

Fixed-width lines keep every digit the model needs at a fixed distance, which is what lets a
model of a few hundred thousand parameters learn the task in minutes on a CPU.
Train and held-out problems are disjoint by construction: a hash of (op, a, b) picks the split.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from fathom.build.errors import FathomError

from .eval.answers import extract_boxed

# The model card's evaluation instruction (docs/REFERENCE.md, Evaluation protocol).
PROMPT_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
MAX_DIGITS = 3
SPLITS = ("train", "heldout")
HELDOUT_PER_MILLE = 100  # 10% of all (op, a, b) triples are held out
OPS = ("+", "-")
_WORDS = {"+": "carry", "-": "borrow"}


@dataclass(frozen=True)
class Problem:
    question: str  # "What is 457 + 68?"
    answer: str  # "525"
    op: str  # "+" | "-"
    a: int
    b: int

    @property
    def user_message(self) -> str:
        """The user turn: the question and the model card's suffix."""
        return f"{self.question} {PROMPT_SUFFIX}"


def make_problem(op: str, a: int, b: int) -> Problem:
    if op not in OPS:
        raise FathomError(f"arith: op {op!r}, expected one of {OPS}")
    limit = 10 ** MAX_DIGITS
    if not (0 <= a < limit and 0 <= b < limit):
        raise FathomError(f"arith: operands {a}, {b}, expected integers in [0, {limit - 1}]")
    if op == "-" and a < b:
        raise FathomError(f"arith: {a} - {b} is negative; subtraction problems have a >= b")
    value = a + b if op == "+" else a - b
    return Problem(f"What is {a} {op} {b}?", str(value), op, a, b)


def split_of(op: str, a: int, b: int) -> str:
    """'heldout' or 'train', from a hash of the problem (stable across Python versions and runs)."""
    digest = hashlib.sha256(f"{op}|{a}|{b}".encode()).digest()
    return "heldout" if int.from_bytes(digest[:4], "little") % 1000 < HELDOUT_PER_MILLE else "train"


def _random_operand(rng: random.Random) -> int:
    # Digit count uniform in 1..3, so short operands (which need padding) are common enough to learn.
    digits = rng.randint(1, MAX_DIGITS)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10 ** digits - 1)


def make_problems(n: int, seed: int, split: str, distinct: bool = True) -> list[Problem]:
    """n problems of one split, deterministic for (n, seed, split); half + and half - on average.

    distinct=False draws with replacement: training data then keeps the sampling distribution
    (only ~145 one-digit pairs exist, so a distinct draw of 10^5 problems starves short operands).
    """
    if split not in SPLITS:
        raise FathomError(f"arith: split {split!r}, expected one of {SPLITS}")
    if n < 0:
        raise FathomError(f"arith: n = {n}, expected >= 0")
    rng = random.Random(f"{seed}|{split}")
    seen: set[tuple[str, int, int]] = set()
    problems = []
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise FathomError(f"arith: could not draw {n} distinct {split} problems")
        op = rng.choice(OPS)
        a, b = _random_operand(rng), _random_operand(rng)
        if op == "-" and a < b:
            a, b = b, a
        key = (op, a, b)
        if (distinct and key in seen) or split_of(*key) != split:
            continue
        seen.add(key)
        problems.append(make_problem(op, a, b))
    return problems


def column_steps(problem: Problem) -> list[tuple[int, int, int, int, int]]:
    """(a digit, b digit, carry/borrow in, digit written, carry/borrow out) per column, units first."""
    steps = []
    carry = 0
    for col in range(MAX_DIGITS):
        x = problem.a // 10 ** col % 10
        y = problem.b // 10 ** col % 10
        if problem.op == "+":
            total = x + y + carry
            out, digit = divmod(total, 10)
        else:
            total = x - y - carry
            out, digit = (1, total + 10) if total < 0 else (0, total)
        steps.append((x, y, carry, digit, out))
        carry = out
    return steps


def worked_solution(problem: Problem) -> str:
    """What the model writes after `<think>\\n`: the trace, `</think>`, and the boxed answer."""
    op, word = problem.op, _WORDS[problem.op]
    width = MAX_DIGITS
    lines = [f"{problem.a:0{width}d}{op}{problem.b:0{width}d}"]
    for x, y, carry, digit, out in column_steps(problem):
        lines.append(f"{x}{op}{y}{op}{carry}: {digit} {word} {out}")
    trace = "\n".join(lines)
    return f"{trace}\n</think>\n\nThe answer is \\boxed{{{problem.answer}}}."


def normalize_answer(answer: str) -> str:
    """Integers compare by value ('+0525 ' == '525'); anything else by its whitespace-free text."""
    compact = "".join(answer.split()).replace(",", "")
    try:
        return str(int(compact))
    except ValueError:
        return compact


def is_correct(text: str, problem: Problem) -> bool:
    boxed = extract_boxed(text)
    return boxed is not None and normalize_answer(boxed) == normalize_answer(problem.answer)
