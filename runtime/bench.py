"""One benchmark run: a workload against a target, inside the profiler, written as a run record.

The target is a model run by a local executor or a model served at an OpenAI-compatible endpoint
(`BenchTarget`); the requests and their load shape are a `WorkloadSpec` (fathom.runtime.workload);
what is sampled besides the request timings is `ProfileOptions`. Warmup requests run first and are
left out of the metrics and out of the "benchmark" profiler window.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from fathom.build.errors import FathomError

from .executor import now
from .metrics import BenchMetrics, RequestTiming, compute_metrics
from .workload import ENDPOINT_RANDOM_VOCAB, Prompt, WorkloadSpec, drive_endpoint, drive_executor, make_prompts

if TYPE_CHECKING:
    from fathom.build.sources import ModelSource

    from .profiler import Profiler


@dataclass(frozen=True)
class BenchTarget:
    """What answers the requests: `model` through a local executor, or the model served at `endpoint`."""

    model: str  # a model spec (HF dir, checkpoint, engine, demo, random:<preset>) or a served model name
    executor: str = "auto"
    dtype: str = "auto"
    device: str | None = None
    tokenizer: str | None = None
    max_seq_len: int | None = None  # None: the longest prompt + output of the workload
    threads: int | None = None
    hostfile: str | None = None  # MPI hostfile for a multi-node engine (fathom.deploy.launch)
    tp: int = 1  # tensor-parallel ranks of the torch executor
    compile: bool = False  # torch executor: decode steps through torch.compile
    endpoint: str | None = None  # URL of an OpenAI-compatible server
    request_timeout_s: float = 600.0  # endpoint only: socket timeout of one request


@dataclass(frozen=True)
class ProfileOptions:
    enabled: bool = True  # sample GPUs (NVML) and this process during the run
    interval_ms: float = 100.0
    timeseries: bool = False  # also write every reading, next to the records file


@dataclass
class BenchRun:
    timings: list[RequestTiming]
    metrics: BenchMetrics
    profiler: dict | None  # Profiler.summary()
    profiler_obj: Profiler | None = None


def _torch_cuda_peak(device: str | None, reset: bool) -> int | None:
    torch = sys.modules.get("torch")
    if torch is None or not str(device or "").startswith("cuda") or not torch.cuda.is_initialized():
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return int(torch.cuda.max_memory_allocated())


def run_phases(drive, warmup: list[Prompt], measured: list[Prompt], workload: WorkloadSpec,
               profiling: ProfileOptions, device: str | None = None) -> BenchRun:
    """Warmup then the measured phase, inside the profiler when `profiling.enabled`."""
    from contextlib import nullcontext

    from .profiler import Profiler

    prof = Profiler(profiling.interval_ms) if profiling.enabled else None
    with prof or nullcontext():
        if warmup:
            with prof.window("warmup") if prof else nullcontext():
                drive(warmup, "warmup")
        _torch_cuda_peak(device, reset=True)
        with prof.window("benchmark") if prof else nullcontext() as window:
            t_start = now()
            timings = drive(measured, "bench")
            duration_s = now() - t_start
    m = window.measurement if prof else None
    ok = [t for t in timings if t.ok]
    if not ok:
        raise FathomError(f"benchmark: all {len(timings)} requests failed; first error: {timings[0].error}")
    metrics = compute_metrics(
        timings, duration_s, workload.slo_ttft_ms, workload.slo_tpot_ms,
        energy_j=m.energy_j if m else None, peak_gpu_mem_used_bytes=m.peak_gpu_mem_used_bytes if m else None,
        peak_torch_mem_allocated_bytes=_torch_cuda_peak(device, reset=False),
        peak_host_rss_bytes=m.max_rss_bytes if m else None)
    return BenchRun(timings, metrics, prof.summary() if prof else None, prof)


def bench_model(target: BenchTarget, workload: WorkloadSpec = WorkloadSpec(),
                profiling: ProfileOptions = ProfileOptions(), out: str | Path | None = None,
                progress: bool = False) -> dict:
    """Benchmark `target`, append its run record to `out` and return the record.

    `out` defaults to `records.default_results_file` (./fathom-runs/<host>-<gpu>.jsonl).
    This is also the entry point for `fathom demo`'s short bf16-vs-fp8 comparison.
    """
    from fathom.build.sources import resolve_model

    from . import records

    try:
        source = resolve_model(target.model, tokenizer=target.tokenizer)
    except FathomError:
        if target.endpoint is None:
            raise
        source = None  # a served model name, not a local model: its config is unknown here
    if target.endpoint is None:
        from .executors import resolve_run_dtype

        dtype, device = resolve_run_dtype(target.dtype, target.device, source)
        target = replace(target, dtype=dtype, device=device)
        run, info = _run_executor(source, target, workload, profiling, progress)
    else:
        run, info = _run_endpoint(source, target, workload, profiling, progress)
    record = _bench_record(source, target, workload, profiling, run, info)
    path = Path(out) if out is not None else records.default_results_file(record)
    if profiling.timeseries and run.profiler_obj is not None:
        relative = Path("timeseries") / f"{record['record_id']}.jsonl"  # relative to the records file
        run.profiler_obj.write_timeseries(path.parent / relative)
        record["timeseries_path"] = str(relative)
    records.append_record(record, path)
    return record


def _run_executor(source: ModelSource, target: BenchTarget, workload: WorkloadSpec, profiling: ProfileOptions,
                  progress: bool) -> tuple[BenchRun, dict]:
    from fathom.deploy.launch import launch_ranks

    from .executors import create_executor
    from .trtllm_executor import exit_if_follower

    launch_ranks(target.executor, source, target.hostfile, tp=target.tp)  # a multi-rank engine re-runs under mpirun
    tok = None
    if workload.dataset != "random" and source.tokenizer_dir is not None:
        from .chat import load_tokenizer

        tok = load_tokenizer(source.tokenizer_dir, target.model)
    warmup, measured = make_prompts(workload, source.config.vocab_size, tok)
    longest = max(len(p.ids or ()) + p.output_len for p in warmup + measured)
    ex = create_executor(target.executor, source, dtype=target.dtype, device=target.device,
                         max_seq_len=target.max_seq_len or longest, eos_ids=source.config.eos_token_ids,
                         threads=target.threads, tp=target.tp, compile=target.compile)
    exit_if_follower(ex)  # only the leader rank measures and writes the record
    info = ex.describe()
    run = run_phases(lambda ps, tag: drive_executor(ex, ps, workload, tag, progress), warmup, measured, workload,
                     profiling, device=info.get("device", target.device))
    return run, info


def _run_endpoint(source: ModelSource | None, target: BenchTarget, workload: WorkloadSpec,
                  profiling: ProfileOptions, progress: bool) -> tuple[BenchRun, dict]:
    from .endpoint import completions_url

    url = completions_url(target.endpoint)
    vocab = source.config.vocab_size if source is not None else ENDPOINT_RANDOM_VOCAB
    warmup, measured = make_prompts(workload, vocab)
    info = {"executor": "endpoint", "endpoint": url}

    def drive(prompts: list[Prompt], tag: str) -> list[RequestTiming]:
        return drive_endpoint(url, target.model, prompts, workload, tag, progress, target.request_timeout_s)

    return run_phases(drive, warmup, measured, workload, profiling), info


def _bench_record(source: ModelSource | None, target: BenchTarget, workload: WorkloadSpec,
                  profiling: ProfileOptions, run: BenchRun, info: dict) -> dict:
    from . import records
    from .nvml_devices import gpu_facts

    preset = source.spec.split(":", 1)[1].split("@")[0] if source is not None and source.kind == "random" else None
    gpus = run.profiler["gpus"] if run.profiler else gpu_facts()
    env = records.environment(info, gpus, preset)
    served = target.endpoint is not None
    params = {**asdict(workload), "mode": workload.mode, "max_in_flight": workload.max_in_flight,
              "executor": target.executor, "endpoint": target.endpoint,
              "request_timeout_s": target.request_timeout_s if served else None,
              "dtype": target.dtype, "device": target.device, "profile": profiling.enabled,
              "profile_interval_ms": profiling.interval_ms if profiling.enabled else None,
              "output_tokens_source": _output_tokens_source(run.timings, served)}
    model_block = {"spec": target.model, "kind": source.kind if source else "served", "config": None}
    if source is not None:
        model_block["config"] = {k: v for k, v in asdict(source.config).items() if k != "source"}
    record = records.make_record("bench", model_block, params, run.metrics.to_dict(), env, run.profiler)
    if not served:
        from .report import record_roofline

        record["roofline"] = record_roofline(record)
    return record


def _output_tokens_source(timings: list[RequestTiming], served: bool) -> str:
    if not served:
        return "executor"
    ok = [t for t in timings if t.ok]
    return "usage" if ok and all(t.output_tokens is not None for t in ok) else "chunks"
