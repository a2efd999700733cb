"""Ask a model the demo task's held-out problems through any executor and grade the answers."""

from __future__ import annotations

from dataclasses import dataclass

from .arith import Problem, is_correct, make_problems
from .chat import build_messages, chat_prompt_ids
from .generate import Completion, generate_texts
from .sampling import SamplingParams


@dataclass
class TaskResult:
    problems: list[Problem]
    completions: list[Completion]
    correct: list[bool]
    wall_s: float

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else 0.0

    @property
    def output_tokens(self) -> int:
        return sum(c.output_tokens for c in self.completions)

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else 0.0


def heldout_problems(n: int, seed: int = 0) -> list[Problem]:
    return make_problems(n, seed=seed, split="heldout")


def answer_problems(executor, tokenizer, problems: list[Problem], max_new_tokens: int = 96,
                    batch_size: int = 32) -> TaskResult:
    """Greedy answers in batches of `batch_size`; correctness = last \\boxed{} equals the answer."""
    from .executor import now

    params = SamplingParams(max_new_tokens=max_new_tokens)
    prompts = [chat_prompt_ids(tokenizer, build_messages(p.user_message)) for p in problems]
    start = now()
    completions: list[Completion] = []
    for i in range(0, len(prompts), batch_size):
        completions += generate_texts(executor, tokenizer, prompts[i:i + batch_size], params)
    wall_s = now() - start
    correct = [is_correct(c.text, p) for c, p in zip(completions, problems)]
    return TaskResult(problems, completions, correct, wall_s)
