"""Text in, text out over any executor: detokenization, stop strings, reasoning split, timings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

from .chat import split_reasoning
from .choices import Choice
from .executor import Executor, Request, now
from .sampling import SamplingParams


@dataclass
class Completion:
    prompt_tokens: int
    token_ids: list[int]
    text: str
    reasoning: str
    answer: str
    finish_reason: str
    ttft_ms: float
    total_ms: float

    @property
    def output_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def decode_tok_s(self) -> float | None:
        """Tokens per second after the first token (None with fewer than 2 tokens)."""
        span_s = (self.total_ms - self.ttft_ms) / 1000
        return (self.output_tokens - 1) / span_s if self.output_tokens > 1 and span_s > 0 else None

    def to_dict(self) -> dict:
        return {**asdict(self), "output_tokens": self.output_tokens, "decode_tok_s": self.decode_tok_s}


def generate_texts(executor: Executor, tokenizer, prompts: list[list[int]], params: SamplingParams,
                   starts_in_think: bool = True,
                   on_delta: Callable[[int, str], None] | None = None) -> list[Completion]:
    """Run prompt token ids to completion; `on_delta(i, text)` streams the i-th output as it grows."""
    choices = [Choice(i, str(i), tokenizer, list(params.stop_strings), None) for i in range(len(prompts))]
    start = now()
    for i, p in enumerate(prompts):
        executor.submit(Request(str(i), p, params))
    while executor.has_pending():
        for event in executor.step():
            choice = choices[int(event.request_id)]
            delta, cancel = choice.push(event)
            if cancel:
                executor.cancel(event.request_id)  # a stop string ended it
            if delta.text and on_delta:
                on_delta(choice.index, delta.text)
    out = []
    for p, c in zip(prompts, choices):
        split = split_reasoning(c.text, starts_in_think)
        first, last = c.first_token_s or start, c.last_token_s or start
        out.append(Completion(
            prompt_tokens=len(p), token_ids=c.token_ids, text=c.text, reasoning=split.reasoning, answer=split.answer,
            finish_reason=c.finish_reason or "stop", ttft_ms=(first - start) * 1000, total_ms=(last - start) * 1000,
        ))
    return out
