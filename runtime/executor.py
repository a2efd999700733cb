"""The executor interface shared by generate, chat, bench, quality and the demo.

Executors know only token ids. A caller submits `Request`s, then calls `step()` until nothing is
pending; each step returns the `TokenEvent`s produced (one token per running request per decode
step, with a timestamp). `cancel()` ends a request at the next step. This is the step-driven shape
of vLLM's LLMEngine: a CLI drives it in a loop, a server drives it from one background thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Protocol

from fathom.build.config import ModelConfig

from .sampling import SamplingParams


@dataclass
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of a request.

    `logprob` and `top_logprobs` are set when the request's `SamplingParams.logprobs` is not None:
    log-probs of the model's raw distribution (log_softmax of the float32 logits before
    temperature, top-k and top-p, as vLLM's default `raw_logprobs` mode), so a sampled token may
    be absent from `top_logprobs` and a filter never turns a log-prob into -inf.
    """

    request_id: str
    token_id: int | None  # None only for a request finished without a new token (cancelled, abort)
    time_s: float  # time.perf_counter() when the token became available
    # On the request's last event: "stop" | "length" | "cancelled", or "abort" when the executor
    # ended it with an error (the trtllm executor logs the message)
    finish_reason: str | None = None
    logprob: float | None = None  # log-prob of token_id
    top_logprobs: tuple[tuple[int, float], ...] = ()  # (token id, log-prob), most likely first

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class KVUsage:
    used_tokens: int
    capacity_tokens: int | None  # None: the executor cannot see it (TensorRT-LLM sizes its own pool)
    bytes_per_token: int

    @property
    def used_fraction(self) -> float | None:
        if self.capacity_tokens is None:
            return None
        return self.used_tokens / self.capacity_tokens if self.capacity_tokens else 0.0


class Executor(Protocol):
    name: str
    config: ModelConfig

    def submit(self, request: Request) -> None: ...
    def cancel(self, request_id: str) -> None: ...
    def step(self) -> list[TokenEvent]: ...
    def has_pending(self) -> bool: ...
    def kv_usage(self) -> KVUsage: ...
    def describe(self) -> dict:
        """What the executor runs: device, dtype, precision, kernels/paths used (for run records)."""


def stream(executor: Executor, requests: list[Request]) -> Iterator[TokenEvent]:
    """Submit requests and yield their token events until all have finished."""
    for r in requests:
        executor.submit(r)
    while executor.has_pending():
        yield from executor.step()


def collect(executor: Executor, requests: list[Request]) -> dict[str, list[TokenEvent]]:
    """Run requests to completion; each request's events in order."""
    out: dict[str, list[TokenEvent]] = {}
    for event in stream(executor, requests):
        out.setdefault(event.request_id, []).append(event)
    return out


def finish_reason(token_id: int, generated: int, params: SamplingParams, eos_ids: list[int]) -> str | None:
    """Why a request stops after emitting `token_id` as its `generated`-th token (None: go on)."""
    if token_id in params.stop_token_ids or (not params.ignore_eos and token_id in eos_ids):
        return "stop"
    if generated >= params.max_new_tokens:
        return "length"
    return None


def now() -> float:
    return time.perf_counter()
