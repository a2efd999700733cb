"""One HTTP request's generation: its choices submitted to the engine, their events as deltas.

A request with n choices (and, for /v1/completions, several prompts) becomes one executor request
per choice. The first choice of each prompt is submitted at once and the others when it has its
first token: by then the prompt's full KV blocks are registered, so they are shared through the
executor's prefix reuse instead of being computed n times.
Leaving `events()` early (a client that disconnects, an error) cancels every unfinished choice, so
its KV blocks are freed at the engine's next step.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, replace
from typing import AsyncIterator

from fathom.runtime.choices import Choice, Delta
from fathom.runtime.executor import Request, TokenEvent, now
from fathom.runtime.reasoning import ReasoningSplitter
from fathom.runtime.sampling import SamplingParams

from .engine import EngineLoop, asyncio_sink


class EngineFailed(Exception):
    """The executor refused or failed a request after it was accepted."""


@dataclass(frozen=True)
class PromptJob:
    prompt_ids: list[int]
    starts_in_think: bool | None  # None: no reasoning split (completions)


class GenerationRun:
    def __init__(self, engine: EngineLoop, tokenizer, jobs: list[PromptJob], n: int, params: SamplingParams,
                 stop_strings: list[str]):
        self.engine, self.tokenizer = engine, tokenizer
        self.id = uuid.uuid4().hex
        self.created = int(time.time())
        self.arrival_s = now()
        self.prompt_tokens = sum(len(j.prompt_ids) for j in jobs)
        self.prompts = len(jobs)
        self.choices: list[Choice] = []
        self.requests: list[Request] = []
        for p, job in enumerate(jobs):
            for k in range(n):
                index = p * n + k
                seed = None if params.seed is None else params.seed + k
                rid = f"{self.id}-{index}"
                splitter = None if job.starts_in_think is None else ReasoningSplitter(job.starts_in_think)
                self.choices.append(Choice(index, rid, tokenizer, stop_strings, splitter))
                self.requests.append(Request(rid, job.prompt_ids, replace(params, seed=seed)))
        self._by_id = {c.request_id: c for c in self.choices}

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    async def events(self) -> AsyncIterator[tuple[Choice, Delta]]:
        """(choice, delta) as tokens arrive, until every choice has finished."""
        queue: asyncio.Queue[TokenEvent | BaseException] = asyncio.Queue()
        sink = asyncio_sink(asyncio.get_running_loop(), queue)
        n = len(self.requests) // self.prompts
        followers = {}  # first choice's request id -> the prompt's other choices, submitted on its first event
        for p in range(self.prompts):
            self.engine.submit(self.requests[p * n], sink)
            followers[self.requests[p * n].request_id] = self.requests[p * n + 1:(p + 1) * n]
        try:
            while not all(c.done for c in self.choices):
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise EngineFailed(str(item)) from item
                for request in followers.pop(item.request_id, ()):
                    self.engine.submit(request, sink)
                choice = self._by_id[item.request_id]
                delta, cancel = choice.push(item)
                if cancel:
                    self.engine.cancel(choice.request_id)
                if not delta.empty():
                    yield choice, delta
        finally:
            for choice in self.choices:
                if not choice.done:
                    self.engine.cancel(choice.request_id)

    async def collect(self) -> list[tuple[Choice, Delta]]:
        """Every choice's whole output as one delta each (non-streaming responses)."""
        merged = {c.index: Delta() for c in self.choices}
        async for choice, delta in self.events():
            m = merged[choice.index]
            m.text += delta.text
            m.reasoning += delta.reasoning
            m.content += delta.content
            m.logprobs += delta.logprobs
            m.finish_reason = delta.finish_reason or m.finish_reason
        return [(c, merged[c.index]) for c in self.choices]
