"""CPU benchmark of the torch executor (not a test): everything measured in one run, written as JSON.

1. Per-token overhead, small models (hidden <= 256, and the embedded demo model when present):
   output tokens/s of the torch executor vs HF transformers `generate` on the same weights
   (Qwen2ForCausalLM from the same HF directory), float32, greedy, fixed lengths (prompt 32, 128 new
   tokens, eos ignored), batch 1 and 8. Targets: >= 3x at batch 1, >= 5x at batch 8. The static-batch
   reference executor is measured beside them (`reference_tok_s`, `reference_speedup`).
2. Memory-bound decode (preset small-100m, ~170 MB of float32 weights): time per decode token at
   batch 1 vs one pass over the weights (sum of every parameter tensor: the bandwidth roofline of
   this CPU, measured in the same run). Target: <= 1.25x.
3. One 16K-token sequence on the tiny model: chunked prefill of 16,320 tokens, then 63 decode
   tokens; times and KV usage.

Runs are interleaved (ours, HF, ours, ...) and repeated; the median is reported, with wall-clock
and CPU (thread) time both, and the load average before and after: the dev CPU is shared.
Intra-op threads default to 1 (recorded as `threads`): tiny ops gain nothing from threads, and on a
busy machine OpenMP's waits slow every op down by orders of magnitude. The memory-bound case runs
at 1 and 2 threads, each against a weights pass at the same thread count.

    python -m fathom.profiles.bench_cpu --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

from fathom.build.config import DEFAULT_MAX_SEQ_LEN

PROMPT_TOKENS = 32
NEW_TOKENS = 128
LONG_TOKENS = DEFAULT_MAX_SEQ_LEN


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - w, time.thread_time() - c


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def prompts_for(vocab: int, batch: int, length: int) -> list[list[int]]:
    import random

    rng = random.Random(batch)
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(batch)]


def run_ours(executor, prompts: list[list[int]], new_tokens: int, tag: str) -> dict[str, list]:
    from fathom.runtime.executor import Request, collect
    from fathom.runtime.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    return collect(executor, [Request(f"{tag}-{i}", p, params) for i, p in enumerate(prompts)])


def run_hf(hf, prompts: list[list[int]], new_tokens: int):
    import torch

    ids = torch.tensor(prompts)
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
    assert out.shape[1] == ids.shape[1] + new_tokens, "HF generate stopped early"
    return out[:, ids.shape[1]:]


def overhead_case(name: str, hf_dir: Path, batch: int, repeats: int) -> dict:
    import torch
    from transformers import Qwen2ForCausalLM

    from fathom.build.sources import resolve_model
    from fathom.runtime.executors import create_executor

    source = resolve_model(str(hf_dir))
    ours = create_executor("torch", source, dtype="float32", device="cpu", max_seq_len=1024, eos_ids=[])
    # The static-batch reference executor, on its own copy of the weights.
    reference = create_executor("reference", source, dtype="float32", device="cpu", max_seq_len=1024, eos_ids=[])
    hf = Qwen2ForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    prompts = prompts_for(source.config.vocab_size, batch, PROMPT_TOKENS)
    tokens = batch * NEW_TOKENS
    want = run_hf(hf, prompts, NEW_TOKENS)
    same = {}
    for key, ex in (("torch", ours), ("reference", reference)):
        got = run_ours(ex, prompts, NEW_TOKENS, "warm")  # warm-up, and the output check
        same[key] = all([e.token_id for e in got[f"warm-{i}"]] == want[i].tolist() for i in range(batch))
    runners = {"torch": lambda r: run_ours(ours, prompts, NEW_TOKENS, f"r{r}"),
               "reference": lambda r: run_ours(reference, prompts, NEW_TOKENS, f"ref{r}"),
               "hf": lambda r: run_hf(hf, prompts, NEW_TOKENS)}
    walls = {k: [] for k in runners}
    cpus = {k: [] for k in runners}
    for r in range(repeats):
        for key, fn in runners.items():
            w, c = _timed(lambda: fn(r))
            walls[key].append(w)
            cpus[key].append(c)
    tps = {k: tokens / _median(v) for k, v in walls.items()}
    return {"model": name, "batch": batch, "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS,
            "tokens_match_hf": same["torch"], "reference_tokens_match_hf": same["reference"],
            "torch_tok_s": tps["torch"], "reference_tok_s": tps["reference"], "hf_tok_s": tps["hf"],
            "speedup": tps["torch"] / tps["hf"], "reference_speedup": tps["reference"] / tps["hf"],
            "speedup_cpu_time": _median(cpus["hf"]) / _median(cpus["torch"]),
            "torch_wall_s": walls["torch"], "reference_wall_s": walls["reference"], "hf_wall_s": walls["hf"],
            "target": 3.0 if batch == 1 else 5.0,
            "executor": ours.describe()}


def memory_bound_case(repeats: int, threads: int) -> dict:
    import torch

    from fathom.build.sources import resolve_model
    from fathom.runtime.executors import create_executor

    torch.set_num_threads(threads)
    source = resolve_model("random:small-100m")
    ex = create_executor("torch", source, dtype="float32", device="cpu", max_seq_len=1024, eos_ids=[])
    params = list(ex.model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    embedding = ex.model.transformer.vocab_embedding.weight
    decode_bytes = weight_bytes - embedding.numel() * embedding.element_size()  # decode reads one row of it

    def read_all():
        for p in params:
            p.sum()

    prompts = prompts_for(source.config.vocab_size, 1, PROMPT_TOKENS)
    run_ours(ex, prompts, 8, "warm")
    read_s, token_s = [], []
    for r in range(repeats):
        read_s.append(_timed(read_all)[0])
        events = run_ours(ex, prompts, 64, f"r{r}")["r%d-0" % r]
        token_s.append((events[-1].time_s - events[0].time_s) / (len(events) - 1))
    read, token = _median(read_s), _median(token_s)
    return {"model": "random:small-100m", "weight_bytes": weight_bytes, "decode_weight_bytes": decode_bytes,
            "read_all_weights_s": read, "read_bandwidth_gb_s": weight_bytes / read / 1e9,
            "decode_s_per_token": token, "decode_weight_bandwidth_gb_s": decode_bytes / token / 1e9,
            "ratio_to_roofline": token / read, "target_ratio": 1.25,
            "read_all_weights_s_runs": read_s, "decode_s_per_token_runs": token_s,
            "threads": torch.get_num_threads(), "executor": ex.describe()}


def long_sequence_case(max_num_tokens: int) -> dict:
    from fathom.build.sources import resolve_model
    from fathom.runtime.executor import Request, now
    from fathom.runtime.executors import create_executor
    from fathom.runtime.sampling import SamplingParams

    source = resolve_model("random:tiny")
    # The preset says 4096 positions; RoPE itself has no limit, and random weights no trained range.
    source.config = dataclasses.replace(source.config, max_position_embeddings=LONG_TOKENS)
    ex = create_executor("torch", source, dtype="float32", device="cpu", max_seq_len=LONG_TOKENS, eos_ids=[],
                         max_num_tokens=max_num_tokens, max_num_seqs=4)
    new = 64
    prompt = prompts_for(source.config.vocab_size, 1, LONG_TOKENS - new)[0]
    t0 = now()
    ex.submit(Request("long", prompt, SamplingParams(max_new_tokens=new, ignore_eos=True)))
    times, steps, peak = [], 0, ex.kv_usage()
    while ex.has_pending():
        events = ex.step()
        steps += 1
        usage = ex.kv_usage()
        peak = usage if usage.used_tokens > peak.used_tokens else peak
        times += [e.time_s for e in events if e.token_id is not None]
    return {"model": "random:tiny (max_position_embeddings 16384)", "prompt_tokens": len(prompt), "new_tokens": len(times),
            "total_tokens": len(prompt) + len(times), "max_num_tokens": max_num_tokens, "steps": steps,
            "prefill_s": times[0] - t0, "prefill_tok_s": len(prompt) / (times[0] - t0),
            "decode_tok_s": (len(times) - 1) / (times[-1] - times[0]), "total_s": times[-1] - t0,
            "kv_peak_used_tokens": peak.used_tokens, "kv_capacity_tokens": peak.capacity_tokens,
            "kv_peak_used_bytes": peak.used_tokens * peak.bytes_per_token, "kv_bytes_per_token": peak.bytes_per_token,
            "executor": ex.describe()}


def overhead_models(tmp: Path) -> list[tuple[str, Path]]:
    """(name, HF dir) of the small models: random presets written once, and the demo model if built."""
    import torch

    from fathom.build.config import preset
    from fathom.build.sources import DEMO_DIR
    from fathom.build.synthetic import write_hf_dir

    out = [(f"random:{n}", write_hf_dir(preset(n), tmp / n, seed=0, dtype=torch.float32)) for n in ("tiny", "tiny-gqa5")]
    if (DEMO_DIR / "config.json").is_file():
        out.append(("demo", DEMO_DIR))
    return out


def main(argv: list[str] | None = None) -> Path:
    import torch

    from fathom.runtime.records import environment

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-bound-threads", type=int, nargs="+", default=[1, 2],
                    help="thread counts for the memory-bound case (each measured against its own weights pass)")
    ap.add_argument("--long-max-num-tokens", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / f"cpu_executor_{socket.gethostname()}.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    record = {"kind": "cpu_executor_benchmark", "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "environment": environment(), "threads": args.threads, "repeats": args.repeats,
              "loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        record["overhead"] = [overhead_case(name, path, batch, args.repeats)
                              for name, path in overhead_models(Path(tmp)) for batch in (1, 8)]
    record["memory_bound"] = [memory_bound_case(args.repeats, t) for t in args.memory_bound_threads]
    torch.set_num_threads(args.threads)
    record["long_sequence"] = long_sequence_case(args.long_max_num_tokens)
    record["loadavg_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(record, indent=2) + "\n")
    tmp_out.replace(args.out)
    for case in record["overhead"]:
        print(f"{case['model']:>18} batch {case['batch']}: torch {case['torch_tok_s']:8.0f} tok/s, HF {case['hf_tok_s']:7.0f} "
              f"tok/s, {case['speedup']:.2f}x (target {case['target']:.0f}x); reference {case['reference_tok_s']:.0f} tok/s, "
              f"{case['reference_speedup']:.2f}x; tokens match HF: {case['tokens_match_hf']}/{case['reference_tokens_match_hf']}")
    for mb in record["memory_bound"]:
        print(f"small-100m, {mb['threads']} thread(s): decode {mb['decode_s_per_token'] * 1e3:.2f} ms/token vs weights "
              f"pass {mb['read_all_weights_s'] * 1e3:.2f} ms: {mb['ratio_to_roofline']:.2f}x (target <= 1.25x)")
    ls = record["long_sequence"]
    print(f"16K sequence: prefill {ls['prefill_s']:.1f} s ({ls['prefill_tok_s']:.0f} tok/s), decode {ls['decode_tok_s']:.0f} "
          f"tok/s, KV peak {ls['kv_peak_used_tokens']} tokens")
    print(f"load average before {record['loadavg_before']}, after {record['loadavg_after']}; wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
