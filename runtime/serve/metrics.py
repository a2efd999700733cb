"""Prometheus metrics of the server, named like vLLM's with a `fathom_` prefix.

Each server has its own registry (so tests can run several in one process). Request counts and
latency histograms are updated by the handlers; running/waiting requests and KV cache usage are
read from the engine at scrape time; GPU memory, power and energy come from NVML at scrape time
when a GPU is visible (`fathom.runtime.nvml_devices`), and are absent otherwise, never invented.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

# vLLM's buckets (vllm/engine/metrics.py) cover interactive to long-reasoning requests.
TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS_S = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class EngineCollector:
    """Gauges read when /metrics is scraped: engine queue, KV cache, and NVML readings."""

    def __init__(self, engine, gpus):
        self.engine, self.gpus = engine, gpus

    def collect(self):
        stats = self.engine.stats
        running = GaugeMetricFamily("fathom_num_requests_running", "Requests with at least one generated token.")
        running.add_metric([], stats.running)
        waiting = GaugeMetricFamily("fathom_num_requests_waiting", "Requests submitted, waiting for their first token.")
        waiting.add_metric([], stats.waiting)
        yield running
        yield waiting
        usage = stats.kv_usage.used_fraction if stats.kv_usage is not None else None
        if usage is not None:
            kv = GaugeMetricFamily("fathom_kv_cache_usage_ratio", "Share of the KV cache's token capacity in use.")
            kv.add_metric([], usage)
            yield kv
        yield from self._gpu_metrics()

    def _gpu_metrics(self):
        if self.gpus is None or not self.gpus.devices:
            return
        mem = GaugeMetricFamily("fathom_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=["gpu"])
        power = GaugeMetricFamily("fathom_gpu_power_watts", "GPU power draw (NVML).", labels=["gpu"])
        energy = GaugeMetricFamily("fathom_gpu_energy_joules", "GPU energy counter since driver load (NVML).",
                                   labels=["gpu"])
        for info, device in zip(self.gpus.infos, self.gpus.devices):
            reading = device.read()
            label = [str(info.cuda_index)]
            if reading.mem_used_bytes is not None:
                mem.add_metric(label, reading.mem_used_bytes)
            if reading.power_mw is not None:
                power.add_metric(label, reading.power_mw / 1000)
            if reading.energy_mj is not None:
                energy.add_metric(label, reading.energy_mj / 1000)
        yield from (m for m in (mem, power, energy) if m.samples)


class ServerMetrics:
    def __init__(self, engine, gpus=None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fathom_requests", "HTTP requests by endpoint and status code.",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("fathom_prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.generation_tokens = Counter("fathom_generation_tokens", "Generated tokens.", registry=r)
        self.ttft = Histogram("fathom_time_to_first_token_seconds", "Time to first token.",
                              buckets=TTFT_BUCKETS_S, registry=r)
        self.tpot = Histogram("fathom_time_per_output_token_seconds", "Time per output token after the first.",
                              buckets=TPOT_BUCKETS_S, registry=r)
        self.e2e = Histogram("fathom_e2e_request_latency_seconds", "Request latency, arrival to last token.",
                             buckets=E2E_BUCKETS_S, registry=r)
        r.register(EngineCollector(engine, gpus))

    def observe_choice(self, arrival_s: float, first_s: float | None, last_s: float | None, tokens: int) -> None:
        self.generation_tokens.inc(tokens)
        if first_s is None:
            return
        self.ttft.observe(first_s - arrival_s)
        if last_s is not None:
            self.e2e.observe(last_s - arrival_s)
            if tokens > 1:
                self.tpot.observe((last_s - first_s) / (tokens - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
