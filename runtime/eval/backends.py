"""Where samples come from: an in-process executor or an OpenAI-compatible endpoint.

Both take the same jobs (one sampled completion each, with its own seed) and yield outputs as they
finish, so the samples file grows sample by sample and an interrupted run loses little.
"""

from __future__ import annotations

import os
import queue
import threading
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
    prompt_ids: list[int]  # the rendered chat prompt
    seed: int


@dataclass(frozen=True)
class SampleOutput:
    job: SampleJob
    completion: str
    output_tokens: int | None  # None: the endpoint's reply had no usage
    finish_reason: str | None  # None: the endpoint's reply did not say why the sample ended


class ExecutorBackend:
    """Samples on a fathom executor. The pending samples of one problem are submitted together:
    they share the prompt, so with prefix reuse (torch executor) its KV blocks are computed once.
    The next problem's group is submitted as soon as a sequence slot (`max_num_seqs`) is free; the
    executor queues what exceeds its slots, so one slow sample does not leave the others idle."""

    def __init__(self, executor, tokenizer):
        self.executor, self.tokenizer = executor, tokenizer

    def generate(self, jobs: list[SampleJob], params: SamplingParams) -> Iterator[SampleOutput]:
        groups: dict[str, list[SampleJob]] = {}
        for job in jobs:
            groups.setdefault(job.problem.id, []).append(job)
        waiting = list(groups.values())
        slots = self.executor.describe().get("max_num_seqs") or 1
        choices: dict[str, tuple[SampleJob, Choice]] = {}
        running = 0
        while waiting or self.executor.has_pending():
            while waiting and running < slots:
                group = waiting.pop(0)
                for i, job in enumerate(group):
                    rid = f"{job.problem.id}/{job.sample}"
                    choices[rid] = (job, Choice(i, rid, self.tokenizer, list(params.stop_strings), None))
                    self.executor.submit(Request(rid, job.prompt_ids, replace(params, seed=job.seed)))
                running += len(group)
            for event in self.executor.step():
                job, choice = choices[event.request_id]
                _, cancel = choice.push(event)
                if cancel:
                    self.executor.cancel(event.request_id)
                if event.finished:
                    running -= 1
                    del choices[event.request_id]
                    yield SampleOutput(job, choice.text, choice.completion_tokens, choice.finish_reason or "stop")


class EndpointBackend:
    """Samples from an OpenAI-compatible server's /v1/completions with the prompt rendered here.

    The prompt goes as token ids (the completions API accepts a list of ints), so every engine sees
    exactly the tokens of the in-process run: a text prompt would be tokenized again by the server,
    which may add a BOS on top of the chat template's. The completions route (rather than chat)
    returns the raw output with its `<think>` block (a chat route's reasoning parser would move it
    to a separate field or drop it); `finish_reason` "length" marks a truncated sample, and a reply
without a `finish_reason` leaves it unknown.

    At most `concurrency` requests are in flight, each on a daemon thread, so a failure or Ctrl-C
    returns at once instead of waiting for the requests still running. HTTP 429, 5xx and transport
    errors are tried again up to `attempts` times in all, waiting `backoff_s` x 1, 2, 4, ... between.
    """

    def __init__(self, url: str, model: str, api_key: str | None = None, concurrency: int = 16,
                 timeout_s: float = 3600.0, attempts: int = 5, backoff_s: float = 2.0):
        from fathom.runtime.endpoint import completions_url

        if concurrency < 1:
            raise FathomError(f"--concurrency {concurrency}: expected >= 1")
        if attempts < 1:
            raise FathomError(f"endpoint attempts {attempts}: expected >= 1")
        self.url, self.model, self.concurrency = completions_url(url), model, concurrency
        key = api_key or os.environ.get("OPENAI_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout_s, self.attempts, self.backoff_s = timeout_s, attempts, backoff_s

    def _post(self, client, body: dict, stop: threading.Event) -> dict:
        import httpx

        for attempt in range(1, self.attempts + 1):
            try:
                response = client.post(self.url, json=body, headers=self.headers)
            except httpx.TransportError as e:
                problem = f"request failed ({type(e).__name__}: {e})"
            else:
                if response.status_code == 200:
                    return self._reply(response)
                detail = response.text[:300].replace("\n", " ")
                problem = f"HTTP {response.status_code}: {detail}"
                if response.status_code != 429 and response.status_code < 500:
                    raise FathomError(f"--endpoint {self.url}: {problem}")
            if attempt < self.attempts and stop.wait(self.backoff_s * 2 ** (attempt - 1)):
                break  # the run is stopping
        raise FathomError(f"--endpoint {self.url}: {problem} (gave up after {attempt} attempts)")

    def _reply(self, response) -> dict:
        try:
            data = response.json()
        except ValueError:
            raise FathomError(f"--endpoint {self.url}: HTTP 200 but the reply is not JSON: "
                              f"{response.text[:100]!r}") from None
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise FathomError(f"--endpoint {self.url}: the reply has no 'choices' (expected an OpenAI "
                              f"completions reply): {response.text[:100]!r}")
        return data

    def _request(self, client, job: SampleJob, params: SamplingParams, stop: threading.Event) -> SampleOutput:
        body = {"model": self.model, "prompt": list(job.prompt_ids), "max_tokens": params.max_new_tokens,
                "temperature": params.temperature, "top_p": params.top_p, "seed": job.seed, "n": 1}
        data = self._post(client, body, stop)
        choice = data["choices"][0]
        if not isinstance(choice.get("text"), str):
            raise FathomError(f"--endpoint {self.url}: the reply's choices[0].text must be a string, got "
                              f"{choice.get('text')!r}")
        tokens = (data.get("usage") or {}).get("completion_tokens")
        tokens = tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None
        reason = choice.get("finish_reason")
        return SampleOutput(job, choice["text"], tokens, reason if isinstance(reason, str) else None)

    def generate(self, jobs: list[SampleJob], params: SamplingParams) -> Iterator[SampleOutput]:
        import httpx

        todo: queue.SimpleQueue = queue.SimpleQueue()
        for job in jobs:
            todo.put(job)
        results: queue.Queue = queue.Queue()
        stop = threading.Event()
        client = httpx.Client(timeout=self.timeout_s)

        def work() -> None:
            while not stop.is_set():
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    results.put(self._request(client, job, params, stop))
                except BaseException as e:  # handed to the consumer, which raises it
                    results.put(e)

        for i in range(min(self.concurrency, len(jobs))):
            threading.Thread(target=work, name=f"fathom-eval-endpoint-{i}", daemon=True).start()
        try:
            for _ in jobs:
                result = results.get()
                if isinstance(result, BaseException):
                    raise result
                yield result
        finally:
            stop.set()
            client.close()
