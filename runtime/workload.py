"""A benchmark workload: its prompts, their arrivals, and the drivers that send them into an executor
or an OpenAI-compatible endpoint under a load shape, timed per token.

Load shapes (vLLM `vllm bench serve` conventions):
- `batch_size=B`: static waves, B requests submitted together, the next wave when all finished.
- `concurrency=C`: at most C requests in flight, a new one as soon as one finishes.
- `request_rate=R`: Poisson arrivals at R requests/s (seeded), optionally capped by `concurrency`.
- none of them: every request submitted at once.
Request start is its submit time; under a request rate without a concurrency cap it is the
scheduled arrival, so time spent waiting for the busy driver loop counts as queueing, as in a server.
"""

from __future__ import annotations

import random
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fathom.build.errors import ConfigError

from .executor import Request, now
from .metrics import RequestTiming
from .sampling import SamplingParams

# Random prompt ids for a served model that does not resolve locally (unknown vocabulary): valid
# for any vocabulary of at least 256 tokens, and prefill cost does not depend on the id values.
ENDPOINT_RANDOM_VOCAB = 256


@dataclass(frozen=True)
class WorkloadSpec:
    """The requests of a benchmark and how they arrive; the CLI options of the same names."""

    input_len: int = 128
    output_len: int = 128
    num_requests: int = 32
    batch_size: int | None = None
    concurrency: int | None = None
    request_rate: float | None = None  # requests/s, Poisson arrivals; None: all at once
    warmup: int | None = None  # None: one wave (max_in_flight requests), so every shape is warm
    dataset: str = "random"  # or a .jsonl file of {"prompt": str} / {"prompt_ids": [int]}
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("input_len", "output_len", "num_requests", "batch_size", "concurrency"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {value}: expected >= 1")
        if self.warmup is not None and self.warmup < 0:
            raise ConfigError(f"--warmup {self.warmup}: expected >= 0")
        if self.batch_size is not None and (self.concurrency is not None or self.request_rate is not None):
            raise ConfigError("--batch-size runs static waves; it excludes --concurrency and --request-rate")
        if self.request_rate is not None and not self.request_rate > 0:
            raise ConfigError(f"--request-rate {self.request_rate}: expected > 0 requests/s")
        if self.dataset != "random" and not Path(self.dataset).is_file():
            raise ConfigError(f"--dataset {self.dataset}: expected 'random' or an existing .jsonl file")

    @property
    def mode(self) -> str:
        if self.batch_size is not None:
            return "batch"
        return "rate" if self.request_rate is not None else "concurrency"

    @property
    def max_in_flight(self) -> int:
        return min(self.batch_size or self.concurrency or self.num_requests, self.num_requests)

    @property
    def warmup_requests(self) -> int:
        return self.max_in_flight if self.warmup is None else self.warmup


@dataclass(frozen=True)
class Prompt:
    ids: list[int] | None
    text: str | None
    output_len: int


def random_prompts(n: int, cfg: WorkloadSpec, vocab_size: int, seed: int) -> list[Prompt]:
    rng = random.Random(seed)
    return [Prompt([rng.randrange(vocab_size) for _ in range(cfg.input_len)], None, cfg.output_len) for _ in range(n)]


def file_prompts(path: str | Path, n: int, default_output_len: int) -> list[Prompt]:
    """JSON lines with "prompt" (text) or "prompt_ids", optional "output_len"; cycled up to n."""
    from .records import read_jsonl

    rows = []
    for i, row in read_jsonl(path, ConfigError):
        row = row if isinstance(row, dict) else {}
        ids, text, out_len = row.get("prompt_ids"), row.get("prompt"), row.get("output_len", default_output_len)
        if not (isinstance(ids, list) and ids and all(isinstance(t, int) for t in ids)):
            ids = None
        if ids is None and not (isinstance(text, str) and text):
            raise ConfigError(f"{path}:{i}: expected an object with a non-empty 'prompt' string or 'prompt_ids' list of ints")
        if not isinstance(out_len, int) or out_len < 1:
            raise ConfigError(f"{path}:{i}: 'output_len' must be an integer >= 1")
        rows.append(Prompt(ids, None if ids else text, out_len))
    if not rows:
        raise ConfigError(f"{path}: no prompts")
    return [rows[i % len(rows)] for i in range(n)]


def make_prompts(cfg: WorkloadSpec, vocab_size: int, tokenizer=None) -> tuple[list[Prompt], list[Prompt]]:
    """(warmup prompts, measured prompts). Text prompts are tokenized when a tokenizer is given."""
    n = cfg.warmup_requests + cfg.num_requests
    if cfg.dataset == "random":
        prompts = random_prompts(n, cfg, vocab_size, cfg.seed)
    else:
        prompts = file_prompts(cfg.dataset, n, cfg.output_len)
        if tokenizer is not None:
            from .chat import raw_prompt_ids

            prompts = [p if p.ids else Prompt(raw_prompt_ids(tokenizer, p.text), None, p.output_len) for p in prompts]
    return prompts[:cfg.warmup_requests], prompts[cfg.warmup_requests:]


def arrival_offsets_s(n: int, rate: float | None, seed: int) -> list[float]:
    """Poisson process: exponential gaps with mean 1/rate, from a seeded generator; all 0 without a rate."""
    if rate is None:
        return [0.0] * n
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr, unit="req")


# ---- executor driver ---------------------------------------------------------------------
def drive_executor(executor, prompts: list[Prompt], cfg: WorkloadSpec, tag: str, progress: bool = False) -> list[RequestTiming]:
    """Run `prompts` through `executor` under cfg's load shape; per-token times from its TokenEvents."""
    if any(p.ids is None for p in prompts):
        raise ConfigError(f"--dataset {cfg.dataset}: text prompts need a tokenizer (--tokenizer DIR)")
    arrivals = arrival_offsets_s(len(prompts), cfg.request_rate, cfg.seed)
    queue = deque(range(len(prompts)))
    timings: dict[str, RequestTiming] = {}
    in_flight: set[str] = set()
    bar = _progress(len(prompts), progress, tag)
    t0 = now()

    def admit(i: int) -> None:
        rid = f"{tag}-{i}"
        scheduled = cfg.mode == "rate" and cfg.concurrency is None
        timings[rid] = RequestTiming(rid, t0 + arrivals[i] if scheduled else now(), prompt_tokens=len(prompts[i].ids))
        params = SamplingParams(max_new_tokens=prompts[i].output_len, ignore_eos=True, seed=cfg.seed + i)
        executor.submit(Request(rid, list(prompts[i].ids), params))
        in_flight.add(rid)

    with bar:
        while queue or in_flight:
            if cfg.mode == "batch":
                while queue and len(in_flight) < cfg.batch_size and (not in_flight or len(timings) % cfg.batch_size):
                    admit(queue.popleft())  # a whole wave, once the previous one has finished
            else:
                while queue and len(in_flight) < cfg.max_in_flight and t0 + arrivals[queue[0]] <= now():
                    admit(queue.popleft())
            if not in_flight:
                time.sleep(max(0.0, t0 + arrivals[queue[0]] - now()))
                continue
            for ev in executor.step():
                t = timings.get(ev.request_id)
                if t is None:
                    continue
                if ev.token_id is not None:
                    t.token_times_s.append(ev.time_s)
                if ev.finished:
                    in_flight.discard(ev.request_id)
                    t.end_s = ev.time_s
                    if ev.finish_reason == "cancelled":
                        t.error = "cancelled"
                    bar.update(1)
    return [timings[f"{tag}-{i}"] for i in range(len(prompts))]


# ---- endpoint driver ---------------------------------------------------------------------
def drive_endpoint(url: str, model: str, prompts: list[Prompt], cfg: WorkloadSpec, tag: str,
                   progress: bool = False, timeout_s: float = 600.0) -> list[RequestTiming]:
    """The same load shapes against an OpenAI-compatible server, one thread per request in flight."""
    from .endpoint import completion_body, stream_completion

    arrivals = arrival_offsets_s(len(prompts), cfg.request_rate, cfg.seed)
    bar = _progress(len(prompts), progress, tag)

    def one(i: int) -> RequestTiming:
        p = prompts[i]
        t = stream_completion(url, completion_body(model, p.ids if p.ids else p.text, p.output_len), f"{tag}-{i}", timeout_s)
        bar.update(1)
        return t

    with bar, ThreadPoolExecutor(max_workers=min(cfg.max_in_flight, 256)) as pool:
        if cfg.mode == "batch":
            timings = []
            for lo in range(0, len(prompts), cfg.batch_size):
                timings += list(pool.map(one, range(lo, min(lo + cfg.batch_size, len(prompts)))))
            return timings
        t0 = now()
        futures = []
        for i in range(len(prompts)):
            time.sleep(max(0.0, t0 + arrivals[i] - now()))
            futures.append(pool.submit(one, i))
        return [f.result() for f in futures]
