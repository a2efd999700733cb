"""Accuracy metrics over graded samples: pass@1 with its 95% interval, pass@k, cons@n, tokens.

- pass@1 = the mean over problems of correct samples / samples (with the same number of samples
  per problem, correct samples / all samples, as the model card reports it).
- pass@1_ci95: mean +- 1.96 standard errors of the per-problem accuracies (normal approximation
  over problems, since samples of one problem are not independent), clipped to [0, 1]. When the
  problems give no spread (one problem, or every problem at the same accuracy, e.g. all samples
  right) that interval has no width; then it is the Wilson score interval over all samples
  (E. B. Wilson 1927, "Probable inference, the law of succession, and statistical inference"),
  which treats samples as independent and so is narrower than the truth when problems differ.
- pass@k: the unbiased estimator of Chen et al. 2021, "Evaluating Large Language Models Trained
  on Code" (arXiv:2107.03374, section 2.1): 1 - C(n-c, k) / C(n, k), averaged over problems, for
  k = 1, 2, 4, ... up to n and n itself (n = the fewest samples any problem has).
- cons@n: a problem counts when the majority answer over its samples is correct; answers vote by
  the grader's `vote_key`, no answer does not vote, ties go to the answer seen first.
- tokens: output tokens per sample (mean, p50, p90) and the share of samples cut off at the
  token limit.
- grader_timeouts: the grader's comparisons that ran out of time (counted as wrong, or as a vote
  on the answer's own text), over everything that grader has graded, the votes here included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...build.errors import FathomError
from ..metrics import percentile

if TYPE_CHECKING:
    from .graders import Grader

_Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass
class ProblemSamples:
    """Every sample of one problem, graded: one entry per sample in each list."""

    problem_id: str
    gold: str
    answers: list[str | None]
    correct: list[bool]
    output_tokens: list[int]
    truncated: list[bool]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct."""
    if n < 1 or not 0 <= c <= n:
        raise FathomError(f"pass@k: expected samples n >= 1 and 0 <= correct c <= n, "
                          f"got c={c}, n={n}")
    if not 1 <= k <= n:
        raise FathomError(f"pass@k k={k}: expected 1 <= k <= samples per problem ({n})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_answer(answers: list[str | None], grader: Grader) -> str | None:
    """The answer with the most votes (first seen of its group; ties: the group seen first)."""
    votes: dict[str, int] = {}
    first: dict[str, str] = {}
    for answer in answers:
        if answer is None or not answer.strip():
            continue
        key = grader.vote_key(answer)
        votes[key] = votes.get(key, 0) + 1
        first.setdefault(key, answer)
    if not votes:
        return None
    winner = max(votes, key=votes.__getitem__)  # max keeps the first of equal counts
    return first[winner]


def k_values(n: int) -> list[int]:
    """1, 2, 4, ... up to n, then n."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else ks + [n]


def summarize(problems: list[ProblemSamples], grader: Grader) -> dict:
    """The metrics table of `fathom eval`, as a JSON-ready dict."""
    if not problems:
        raise FathomError("eval: no problems to summarize")
    for p in problems:
        lengths = {len(p.answers), len(p.correct), len(p.output_tokens), len(p.truncated)}
        if len(lengths) != 1 or not p.answers:
            raise FathomError(f"problem {p.problem_id}: expected the same number (>= 1) of "
                              "answers, correct, output_tokens and truncated entries")
    n = min(len(p.answers) for p in problems)
    accuracies = [sum(p.correct) / len(p.correct) for p in problems]
    pass1 = sum(accuracies) / len(accuracies)
    per_problem = []
    for p in problems:
        majority = majority_answer(p.answers, grader)
        per_problem.append({"id": p.problem_id, "gold": p.gold, "correct": sum(p.correct),
                            "samples": len(p.correct), "majority": majority,
                            "majority_correct": grader.equivalent(majority, p.gold)})
    tokens = [t for p in problems for t in p.output_tokens]
    truncated = sum(sum(p.truncated) for p in problems)
    return {
        "problems": len(problems),
        "samples": len(tokens),
        "pass@1": pass1,
        "pass@1_ci95": _ci95(accuracies, pass1, sum(sum(p.correct) for p in problems),
                              len(tokens)),
        "pass@k": {str(k): sum(pass_at_k(len(p.correct), sum(p.correct), k) for p in problems)
                   / len(problems) for k in k_values(n)},
        "cons@n": sum(row["majority_correct"] for row in per_problem) / len(problems),
        "per_problem": per_problem,
        "tokens": {"mean": sum(tokens) / len(tokens), "p50": percentile(tokens, 50),
                   "p90": percentile(tokens, 90), "truncated_share": truncated / len(tokens)},
        "grader_timeouts": grader.timeouts,
    }


def _ci95(accuracies: list[float], mean: float, correct: int, samples: int) -> list[float]:
    """Normal interval over problems; Wilson over samples when the problems give no spread."""
    if len(set(accuracies)) == 1:
        return _wilson95(correct, samples)
    variance = sum((a - mean) ** 2 for a in accuracies) / (len(accuracies) - 1)
    half_width = _Z95 * math.sqrt(variance / len(accuracies))
    return [max(0.0, mean - half_width), min(1.0, mean + half_width)]


def _wilson95(correct: int, samples: int) -> list[float]:
    share, z2 = correct / samples, _Z95 ** 2
    centre = (share + z2 / (2 * samples)) / (1 + z2 / samples)
    half_width = (_Z95 / (1 + z2 / samples)
                  * math.sqrt(share * (1 - share) / samples + z2 / (4 * samples ** 2)))
    return [max(0.0, centre - half_width), min(1.0, centre + half_width)]
