"""CPU benchmark of the torch executor (not a test): everything measured in one run, written as JSON.

1. Per-token overhead, small models (random:tiny, random:tiny-gqa5, the embedded demo model):
   output tokens/s of the torch executor vs HF transformers `generate` on the same weights
   (Qwen2ForCausalLM from the same HF directory), float32, greedy, eos ignored, prompt 32: batch 1
   at 128 and at 2,048 new tokens (target >= 3x), batch 8 at 128 (target >= 5x). The static-batch
   reference executor is measured beside them (`reference`).
2. Memory-bound decode (preset small-100m, ~170 MB of float32 weights): time per decode token at
   batch 1 vs one pass over the weights (sum of every parameter tensor: the bandwidth roofline of
   this CPU, measured in the same run at the same thread count). Target: <= 1.25x. Beside it, the
   time of its fused gate/up matmul at 1, 2, 4 and 8 rows: what batching costs on this CPU's BLAS.
3. Decode at long context (random:tiny, max_position_embeddings 16384): one sequence prefills a
   prompt of 128, 2,048 and 16,000 tokens in 1,024-token chunks, then decodes 64 tokens: decode
   tok/s, prefill time, KV usage. No target.

Every case runs once per executor variant (`--variants`: eager, and compiled = torch.compile'd
decode); each variant's first run is a warm-up, recorded as `warmup_s` (compilation included) and
kept out of the medians. A variant's `met` is true when it reaches the case's target (against HF:
with tokens equal to HF's). Runs are interleaved (variants, reference, HF, variants, ...) and repeated; the
median is reported, with wall-clock and CPU (thread) time both, and the load average before and
after: the dev CPU is shared. Intra-op threads default to 1 (`threads`): tiny ops gain nothing from
threads, and on a busy machine OpenMP's waits slow every op down by orders of magnitude. The
memory-bound case runs at 1 and 2 threads.

    python -m fathom.profiles.bench_cpu --repeats 5 --variants eager compiled
    python -m fathom.profiles.bench_cpu --quick --variants eager --out /tmp/quick.json  # the pipeline, in seconds
    python -m fathom.profiles.bench_cpu --summary profiles/results/cpu_executor_vm.json  # the README's tables
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fathom.build.errors import FathomError

from .bench_cpu_cases import VARIANT_OPTIONS, OverheadShape

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass(frozen=True)
class BenchPlan:
    variants: tuple[str, ...] = ("eager", "compiled")
    repeats: int = 5
    threads: int = 1
    models: tuple[str, ...] = ("random:tiny", "random:tiny-gqa5", "demo")
    prompt_tokens: int = 32
    shapes: tuple[OverheadShape, ...] = (OverheadShape(1, 128, 3.0), OverheadShape(1, 2048, 3.0),
                                         OverheadShape(8, 128, 5.0))
    memory_bound_model: str = "random:small-100m"
    memory_bound_threads: tuple[int, ...] = (1, 2)
    memory_bound_decode_tokens: int = 64
    matmul_rows: tuple[int, ...] = (1, 2, 4, 8)  # the first is the baseline of `relative_to_first`
    target_max_ratio: float = 1.25
    context_model: str = "random:tiny"
    contexts: tuple[int, ...] = (128, 2048, 16000)
    context_decode_tokens: int = 64
    context_max_num_tokens: int = 1024  # prefill chunk per step


# The whole pipeline on random:tiny in seconds: a check that it runs, never a measurement.
QUICK_PLAN = BenchPlan(repeats=2, models=("random:tiny",),
                       shapes=(OverheadShape(1, 16, 3.0), OverheadShape(1, 48, 3.0), OverheadShape(8, 16, 5.0)),
                       memory_bound_model="random:tiny", memory_bound_threads=(1,), memory_bound_decode_tokens=16,
                       contexts=(64, 256, 1024), context_decode_tokens=8, context_max_num_tokens=256)


def run(plan: BenchPlan) -> dict:
    """Every case of `plan`, as the JSON record."""
    import torch
    from transformers.utils import logging as hf_logging

    from fathom.runtime.records import environment

    from .bench_cpu_cases import context_cases, hf_dir_for, matmul_rows_case, memory_bound_case, overhead_cases

    hf_logging.disable_progress_bar()
    before = torch.get_num_threads()
    torch.set_num_threads(plan.threads)
    record = {"kind": "cpu_executor_benchmark", "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "environment": environment(), "plan": dataclasses.asdict(plan), "loadavg_before": os.getloadavg()}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            record["overhead"] = [case for spec in plan.models
                                  for case in overhead_cases(spec, hf_dir_for(spec, Path(tmp)), plan.shapes,
                                                             plan.prompt_tokens, plan.variants, plan.repeats)]
        record["memory_bound"] = [memory_bound_case(plan.memory_bound_model, plan.variants, t, plan.prompt_tokens,
                                                    plan.memory_bound_decode_tokens, plan.target_max_ratio,
                                                    plan.repeats) for t in plan.memory_bound_threads]
        record["matmul_rows"] = [matmul_rows_case(plan.memory_bound_model, plan.matmul_rows, t, plan.repeats)
                                 for t in plan.memory_bound_threads]
        record["context_decode"] = context_cases(plan.context_model, plan.contexts, plan.context_decode_tokens,
                                                 plan.context_max_num_tokens, plan.variants, plan.repeats)
    finally:
        torch.set_num_threads(before)
    record["loadavg_after"] = os.getloadavg()
    return record


def _verdict(flag: bool) -> str:
    return "**met**" if flag else "**not met**"


def summary(record: dict, source: str) -> str:
    """The record as markdown: the machine, then one table per part, a row per case and variant."""
    env, plan = record["environment"], record["plan"]
    load = {k: "/".join(f"{x:.2f}" for x in record[f"loadavg_{k}"]) for k in ("before", "after")}
    quick = " `--quick` record: a pipeline check, not a measurement." if record.get("quick") else ""
    verdicts = [e["met"] for c in record["overhead"] + record["memory_bound"] for e in c["variants"].values()]
    lines = [f"From `{source}` ({record['created_at']}): {env['cpu']['model']}, {env['cpu']['logical_cores']} logical "
             f"cores, torch {env['torch_version']}, {plan['threads']} intra-op thread(s), float32, median of "
             f"{plan['repeats']} interleaved runs; load average (1/5/15 min) {load['before']} before, "
             f"{load['after']} after.{quick} Targets met: {sum(verdicts)} of {len(verdicts)}.", "",
             "| model | batch | new tokens | executor | tok/s | HF tok/s | speedup | target | tokens = HF |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in record["overhead"]:
        for v, e in c["variants"].items():
            lines.append(f"| {c['model']} | {c['batch']} | {c['new_tokens']:,} | {v} | {e['tok_s']:,.0f} | "
                         f"{c['hf_tok_s']:,.0f} | {e['speedup']:.2f}x | >= {c['target_min_speedup']:g}x: "
                         f"{_verdict(e['met'])} | {'yes' if e['tokens_match_hf'] else 'NO'} |")
        r = c["reference"]
        lines.append(f"| {c['model']} | {c['batch']} | {c['new_tokens']:,} | reference | {r['tok_s']:,.0f} | "
                     f"{c['hf_tok_s']:,.0f} | {r['speedup']:.2f}x | | {'yes' if r['tokens_match_hf'] else 'NO'} |")
    lines += ["", "| memory-bound model | weights read per token | threads | executor | decode ms/token | pass over them ms | ratio "
              "| target |", "|---|---|---|---|---|---|---|---|"]
    for c in record["memory_bound"]:
        for v, e in c["variants"].items():
            lines.append(f"| {c['model']} | {c['decode_weight_bytes'] / 1e6:.1f} MB | {c['threads']} | {v} | "
                         f"{e['decode_s_per_token'] * 1e3:.2f} | {c['decode_weights_pass_s'] * 1e3:.2f} | "
                         f"{e['ratio_to_weights_pass']:.2f}x | <= {c['target_max_ratio']:g}x: {_verdict(e['met'])} |")
    lines += ["", "| float32 matmul | threads | m | ms | weight GB/s | time vs the first m |",
              "|---|---|---|---|---|---|"]
    for c in record["matmul_rows"]:
        for e in c["rows"]:
            lines.append(f"| (m x {c['in_features']}) x ({c['in_features']} x {c['out_features']}), {c['model']} "
                         f"gate/up | {c['threads']} | {e['rows']} | {e['s_per_matmul'] * 1e3:.3f} | "
                         f"{e['weight_bandwidth_gb_s']:.1f} | {e['relative_to_first']:.2f}x |")
    lines += ["", "| context tokens | model | executor | decode tok/s | prefill s (chunk) | prefill tok/s |",
              "|---|---|---|---|---|---|"]
    for c in record["context_decode"]:
        for v, e in c["variants"].items():
            lines.append(f"| {c['context_tokens']:,} | {c['model']} | {v} | {e['decode_tok_s']:,.0f} | "
                         f"{e['prefill_s']:.2f} ({c['max_num_tokens']:,}) | {e['prefill_tok_s']:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANT_OPTIONS), default=list(BenchPlan.variants),
                    help="torch executor variants, each measured in every case (compiled: torch.compile'd decode)")
    ap.add_argument("--quick", action="store_true",
                    help="random:tiny only, short lengths, 2 repeats: checks the pipeline, measures nothing")
    ap.add_argument("--repeats", type=int, help=f"timed runs per case (default {BenchPlan.repeats}, --quick 2)")
    ap.add_argument("--threads", type=int, default=BenchPlan.threads, help="intra-op threads")
    ap.add_argument("--models", nargs="+", help="overhead models: demo, random:<preset> or HF directories "
                    f"(default {' '.join(BenchPlan.models)})")
    ap.add_argument("--memory-bound-threads", type=int, nargs="+",
                    help="thread counts for the memory-bound case (each measured against its own weights pass)")
    ap.add_argument("--context-max-num-tokens", type=int, help="prefill chunk of the long-context case "
                    f"(default {BenchPlan.context_max_num_tokens})")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / f"cpu_executor_{socket.gethostname()}.json")
    ap.add_argument("--summary", type=Path, metavar="FILE",
                    help="print FILE (a record of this script) as the README's markdown tables, and exit")
    args = ap.parse_args(argv)
    if args.summary is not None:
        print(summary(json.loads(args.summary.read_text()), str(args.summary)))
        return None
    for flag, value in (("--repeats", args.repeats), ("--threads", args.threads),
                        ("--context-max-num-tokens", args.context_max_num_tokens)):
        if value is not None and value < 1:
            ap.error(f"{flag} {value}: expected >= 1")
    if any(t < 1 for t in args.memory_bound_threads or ()):
        ap.error(f"--memory-bound-threads {args.memory_bound_threads}: expected counts >= 1")
    chosen = {"variants": tuple(dict.fromkeys(args.variants)), "threads": args.threads, "repeats": args.repeats,
              "models": args.models and tuple(args.models), "context_max_num_tokens": args.context_max_num_tokens,
              "memory_bound_threads": args.memory_bound_threads and tuple(args.memory_bound_threads)}
    plan = dataclasses.replace(QUICK_PLAN if args.quick else BenchPlan(),
                               **{k: v for k, v in chosen.items() if v is not None})
    try:
        record = {**run(plan), "quick": args.quick}
    except FathomError as e:
        ap.exit(2, f"{ap.prog}: {e}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(record, indent=2) + "\n")
    tmp_out.replace(args.out)
    print(summary(record, str(args.out)))
    return args.out


if __name__ == "__main__":
    main()
