"""Text in, text out over any executor: detokenization, stop strings, reasoning split, timings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

from .chat import IncrementalDecoder, split_reasoning
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
    decoders = [IncrementalDecoder(tokenizer) for _ in prompts]
    ids: list[list[int]] = [[] for _ in prompts]
    reasons: list[str | None] = [None] * len(prompts)
    first: list[float | None] = [None] * len(prompts)
    last: list[float] = [0.0] * len(prompts)
    text_cut: list[int | None] = [None] * len(prompts)  # where a stop string begins
    start = now()
    for i, p in enumerate(prompts):
        executor.submit(Request(str(i), p, params))
    while executor.has_pending():
        for event in executor.step():
            i = int(event.request_id)
            if reasons[i] is not None:
                continue  # cancelled for a stop string; its final event may still arrive
            last[i] = event.time_s
            if event.token_id is not None:
                first[i] = first[i] or event.time_s
                ids[i].append(event.token_id)
                if event.finish_reason == "stop":
                    # The eos/stop token ends the output; like vLLM, it is not part of the text.
                    reasons[i] = "stop"
                    continue
                delta = decoders[i].push(event.token_id)
                cut = find_stop(decoders[i].text, len(delta), params.stop_strings)
                if cut is not None:
                    delta = delta[:max(0, len(delta) - (len(decoders[i].text) - cut))]
                    text_cut[i] = cut
                    reasons[i] = "stop"
                    executor.cancel(event.request_id)
                if delta and on_delta:
                    on_delta(i, delta)
            if event.finish_reason is not None and reasons[i] is None:
                reasons[i] = event.finish_reason
    out = []
    for i, p in enumerate(prompts):
        text = decoders[i].text[:text_cut[i]] if text_cut[i] is not None else decoders[i].text
        split = split_reasoning(text, starts_in_think)
        out.append(Completion(
            prompt_tokens=len(p), token_ids=ids[i], text=text, reasoning=split.reasoning, answer=split.answer,
            finish_reason=reasons[i] or "stop",
            ttft_ms=((first[i] or last[i]) - start) * 1000, total_ms=(last[i] - start) * 1000,
        ))
    return out


def find_stop(text: str, delta_len: int, stops: tuple[str, ...]) -> int | None:
    """Index where the earliest stop string starts, looking only where the new delta could complete one."""
    best = None
    for s in stops:
        idx = text.find(s, max(0, len(text) - delta_len - len(s) + 1))
        if idx != -1 and (best is None or idx < best):
            best = idx
    return best
