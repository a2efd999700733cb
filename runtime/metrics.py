"""Benchmark metrics: pure functions over per-request timestamps, and one flat result dataclass.

Definitions follow vLLM `benchmarks/serve.py` (`calculate_metrics`), so numbers compare 1:1:
- TTFT = first token time - request start.
- E2E latency = last token (or response end) time - request start.
- TPOT = (E2E latency - TTFT) / (output_tokens - 1); undefined for one-token outputs (left out of
  the TPOT statistics, counted as 0 when checking the TPOT SLO, as vLLM does).
- ITL = gaps between consecutive token arrivals (between streamed chunks for an endpoint).
- Percentiles: linear interpolation between closest ranks (numpy's default, Hyndman & Fan type 7):
  rank = p/100 * (n - 1) on the sorted values.
- Goodput = requests meeting every given SLO / duration; null when no SLO was given.
Unmeasurable values are None, never 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class RequestTiming:
    """What the benchmark driver saw of one request (times from time.perf_counter())."""

    request_id: str
    start_s: float  # submitted (or its scheduled arrival under --request-rate)
    token_times_s: list[float] = field(default_factory=list)  # one per token, or per streamed chunk
    prompt_tokens: int | None = None
    output_tokens: int | None = None  # None: len(token_times_s)
    end_s: float | None = None  # None: the last token time
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.token_times_s)

    @property
    def num_output_tokens(self) -> int:
        return self.output_tokens if self.output_tokens is not None else len(self.token_times_s)


def ttft_s(t: RequestTiming) -> float:
    return t.token_times_s[0] - t.start_s


def e2e_latency_s(t: RequestTiming) -> float:
    return (t.end_s if t.end_s is not None else t.token_times_s[-1]) - t.start_s


def tpot_s(t: RequestTiming) -> float | None:
    n = t.num_output_tokens
    return (e2e_latency_s(t) - ttft_s(t)) / (n - 1) if n > 1 else None


def itls_s(t: RequestTiming) -> list[float]:
    times = t.token_times_s
    return [b - a for a, b in zip(times, times[1:])]


def percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy.percentile's default); None when empty."""
    if not values:
        return None
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p}: expected 0..100")
    xs = sorted(values)
    rank = p / 100 * (len(xs) - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def stats_ms(values_s: list[float]) -> dict[str, float | None]:
    """mean / median / p90 / p99 of seconds, in milliseconds."""
    ms = [v * 1000 for v in values_s]
    return {"mean": sum(ms) / len(ms) if ms else None, "median": percentile(ms, 50),
            "p90": percentile(ms, 90), "p99": percentile(ms, 99)}


def meets_slo(t: RequestTiming, slo_ttft_ms: float | None, slo_tpot_ms: float | None) -> bool:
    if slo_ttft_ms is not None and ttft_s(t) * 1000 > slo_ttft_ms:
        return False
    tpot = tpot_s(t)
    return slo_tpot_ms is None or (tpot or 0.0) * 1000 <= slo_tpot_ms


@dataclass(frozen=True)
class BenchMetrics:
    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int | None  # None when some prompt's length is unknown
    total_output_tokens: int
    request_throughput_per_s: float
    request_goodput_per_s: float | None
    output_throughput_tok_per_s: float
    total_throughput_tok_per_s: float | None
    mean_ttft_ms: float | None
    median_ttft_ms: float | None
    p90_ttft_ms: float | None
    p99_ttft_ms: float | None
    mean_tpot_ms: float | None
    median_tpot_ms: float | None
    p90_tpot_ms: float | None
    p99_tpot_ms: float | None
    mean_itl_ms: float | None
    median_itl_ms: float | None
    p90_itl_ms: float | None
    p99_itl_ms: float | None
    mean_e2el_ms: float | None
    median_e2el_ms: float | None
    p90_e2el_ms: float | None
    p99_e2el_ms: float | None
    energy_j: float | None  # profiler: all visible GPUs over the measured window
    energy_per_output_token_j: float | None
    peak_gpu_mem_used_bytes: int | None  # profiler: largest per-GPU peak (NVML, all processes)
    peak_torch_mem_allocated_bytes: int | None  # torch.cuda.max_memory_allocated of the executor
    peak_host_rss_bytes: int | None  # largest sampled RSS of this process in the measured window

    def to_dict(self) -> dict:
        return asdict(self)


def compute_metrics(timings: list[RequestTiming], duration_s: float, slo_ttft_ms: float | None = None,
                    slo_tpot_ms: float | None = None, energy_j: float | None = None,
                    peak_gpu_mem_used_bytes: int | None = None, peak_torch_mem_allocated_bytes: int | None = None,
                    peak_host_rss_bytes: int | None = None) -> BenchMetrics:
    """Aggregate the measured (non-warmup) requests of one run lasting `duration_s`."""
    if duration_s <= 0:
        raise ValueError(f"duration_s = {duration_s}: expected > 0")
    done = [t for t in timings if t.ok]
    out_tokens = sum(t.num_output_tokens for t in done)
    prompts = [t.prompt_tokens for t in done]
    in_tokens = sum(prompts) if None not in prompts else None
    tpots = [v for v in map(tpot_s, done) if v is not None]
    per = {
        "ttft": stats_ms([ttft_s(t) for t in done]),
        "tpot": stats_ms(tpots),
        "itl": stats_ms([gap for t in done for gap in itls_s(t)]),
        "e2el": stats_ms([e2e_latency_s(t) for t in done]),
    }
    latency = {f"{stat}_{name}_ms": v for name, s in per.items() for stat, v in s.items()}
    goodput = None
    if slo_ttft_ms is not None or slo_tpot_ms is not None:
        goodput = sum(meets_slo(t, slo_ttft_ms, slo_tpot_ms) for t in done) / duration_s
    return BenchMetrics(
        completed=len(done), failed=len(timings) - len(done), duration_s=duration_s,
        total_input_tokens=in_tokens, total_output_tokens=out_tokens,
        request_throughput_per_s=len(done) / duration_s, request_goodput_per_s=goodput,
        output_throughput_tok_per_s=out_tokens / duration_s,
        total_throughput_tok_per_s=(in_tokens + out_tokens) / duration_s if in_tokens is not None else None,
        **latency,
        energy_j=energy_j,
        energy_per_output_token_j=energy_j / out_tokens if energy_j is not None and out_tokens else None,
        peak_gpu_mem_used_bytes=peak_gpu_mem_used_bytes, peak_torch_mem_allocated_bytes=peak_torch_mem_allocated_bytes,
        peak_host_rss_bytes=peak_host_rss_bytes,
    )
