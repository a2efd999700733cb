"""Where samples come from: an in-process executor or an OpenAI-compatible endpoint.

Both take the same jobs (one sampled completion each, with its own seed) and yield outputs as they
finish, so the samples file grows sample by sample and an interrupted run loses little.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Iterator

from fathom.build.errors import FathomError
from fathom.runtime.choices import Choice
from fathom.runtime.executor import Request
from fathom.runtime.sampling import SamplingParams

from .data import Problem


@dataclass(frozen=True)
class SampleJob:
    problem: Problem
    sample: int
    prompt_text: str  # the rendered chat prompt
    prompt_ids: list[int]
    seed: int


@dataclass(frozen=True)
class SampleOutput:
    job: SampleJob
    completion: str
    output_tokens: int
    finish_reason: str


class ExecutorBackend:
    """Samples on a fathom executor. The pending samples of one problem are submitted together:
    they share the prompt, so with prefix reuse (torch executor) its KV blocks are computed once."""

    def __init__(self, executor, tokenizer):
        self.executor, self.tokenizer = executor, tokenizer

    def generate(self, jobs: list[SampleJob], params: SamplingParams) -> Iterator[SampleOutput]:
        groups: dict[str, list[SampleJob]] = {}
        for job in jobs:
            groups.setdefault(job.problem.id, []).append(job)
        for group in groups.values():
            yield from self._generate_group(group, params)

    def _generate_group(self, jobs: list[SampleJob], params: SamplingParams) -> Iterator[SampleOutput]:
        choices: dict[str, tuple[SampleJob, Choice]] = {}
        for i, job in enumerate(jobs):
            rid = f"{job.problem.id}/{job.sample}"
            choices[rid] = (job, Choice(i, rid, self.tokenizer, list(params.stop_strings), None))
            self.executor.submit(Request(rid, job.prompt_ids, replace(params, seed=job.seed)))
        while self.executor.has_pending():
            for event in self.executor.step():
                job, choice = choices[event.request_id]
                _, cancel = choice.push(event)
                if cancel:
                    self.executor.cancel(event.request_id)
                if event.finished:
                    yield SampleOutput(job, choice.text, choice.completion_tokens, choice.finish_reason or "stop")


class EndpointBackend:
    """Samples from an OpenAI-compatible server's /v1/completions with the prompt rendered here.

    The completions route (rather than chat) sends the exact prompt text the in-process run uses,
    so every engine sees the same bytes, and returns the raw output with its `<think>` block (a
    chat route's reasoning parser would move it to a separate field or drop it); `finish_reason`
    "length" marks a truncated sample. At most `concurrency` requests are in flight.
    """

    def __init__(self, url: str, model: str, api_key: str | None = None, concurrency: int = 16,
                 timeout_s: float = 3600.0):
        from fathom.runtime.endpoint import completions_url

        if concurrency < 1:
            raise FathomError(f"--concurrency {concurrency}: expected >= 1")
        self.url, self.model, self.concurrency = completions_url(url), model, concurrency
        key = api_key or os.environ.get("OPENAI_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout_s = timeout_s

    def _request(self, client, job: SampleJob, params: SamplingParams) -> SampleOutput:
        body = {"model": self.model, "prompt": job.prompt_text, "max_tokens": params.max_new_tokens,
                "temperature": params.temperature, "top_p": params.top_p, "seed": job.seed, "n": 1}
        try:
            response = client.post(self.url, json=body, headers=self.headers)
        except Exception as e:  # httpx raises a family of transport errors
            raise FathomError(f"--endpoint {self.url}: request failed ({type(e).__name__}: {e})") from e
        if response.status_code != 200:
            detail = response.text[:300].replace("\n", " ")
            raise FathomError(f"--endpoint {self.url}: HTTP {response.status_code}: {detail}")
        data = response.json()
        choice = data["choices"][0]
        tokens = (data.get("usage") or {}).get("completion_tokens")
        return SampleOutput(job, choice.get("text") or "", int(tokens or 0), choice.get("finish_reason") or "stop")

    def generate(self, jobs: list[SampleJob], params: SamplingParams) -> Iterator[SampleOutput]:
        import httpx

        pending = iter(jobs)
        with httpx.Client(timeout=self.timeout_s) as client, ThreadPoolExecutor(self.concurrency) as pool:
            running = set()
            for job in pending:
                running.add(pool.submit(self._request, client, job, params))
                if len(running) >= self.concurrency:
                    break
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
                    nxt = next(pending, None)
                    if nxt is not None:
                        running.add(pool.submit(self._request, client, nxt, params))
