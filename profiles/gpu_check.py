"""GPU check of the torch executor, in one go (a few minutes on an H100; not a test).

random:fathom-r1-14b with weights generated on the GPU, in bf16, then (when the GPU is sm89+ and
fathom's FP8 quantizer and linears import) with FP8 weights and an FP8 KV cache:
- copy bandwidth: a large device-to-device copy (bytes read + written / time): the roofline
- decode at batch 1/8/32 with ~1K and 16K contexts. The KV context is primed without a prefill
  (blocks allocated, values left as they are: decode cost does not depend on them). Per case: step
  time (median of the timed steps), tok/s, bytes a step must read (weights + live KV), achieved
  bandwidth and its fraction of the copy bandwidth; a case whose KV does not fit is skipped with
  the numbers
- prefill of one 16K-token prompt (chunked by max_num_tokens): seconds and tok/s
- NVML memory, power and energy per phase (fathom.runtime.nvml.Profiler; null fields when NVML
  is missing, with the reason)
Result: profiles/results/gpu_check_<gpu-name>.json.

    python -m fathom.profiles.gpu_check            # on the GPU
    python -m fathom.profiles.gpu_check --smoke    # random:tiny on the CPU, seconds: the code path only
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from fathom.build.config import DEFAULT_MAX_SEQ_LEN


@dataclass(frozen=True)
class Plan:
    model: str
    device: str
    dtype: str
    batches: tuple[int, ...]
    contexts: tuple[int, ...]
    steps: int
    prefill_tokens: int
    max_num_tokens: int
    copy_bytes: int


# Contexts 990 and 16000: with the 32 timed steps they stay inside one CUDA-graph context bucket
# (1024 and 16384), so no step times a capture or a doubled gather.
FULL = Plan("random:fathom-r1-14b", "cuda", "bfloat16", (1, 8, 32), (990, 16000), 32, 16000, 4096, 4 << 30)
SMOKE = Plan("random:tiny", "cpu", "float32", (1, 2), (16, 48), 3, 64, 32, 16 << 20)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth(plan: Plan) -> dict:
    import torch

    src = torch.empty(plan.copy_bytes, dtype=torch.uint8, device=plan.device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(plan.device)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(4):
            dst.copy_(src)
        sync(plan.device)
        times.append((time.perf_counter() - t) / 4)
    s = statistics.median(times)
    del src, dst
    return {"bytes_moved": 2 * plan.copy_bytes, "seconds": s, "bandwidth_gb_s": 2 * plan.copy_bytes / s / 1e9}


def load_bf16(plan: Plan):
    from fathom.build.sources import resolve_model
    from fathom.runtime.loader import load_model

    source = resolve_model(plan.model)  # RandomWeights are generated on plan.device: no host copy
    return source, load_model(source, plan.dtype, plan.device, max_seq_len=DEFAULT_MAX_SEQ_LEN)


def load_fp8(plan: Plan, source):
    """FP8 weights (per-tensor scales, fc/gate sharing one) + FP8 KV, built on the device from random bf16."""
    import torch

    from fathom.build.precision import QuantAlgo, torch_dtype
    from fathom.build.quant.config import linear_modules, make_quant_config
    from fathom.build.quant.fp8 import amax, quantize_linear_fp8
    from fathom.build.quant.kv_cache import kv_cache_scale
    from fathom.runtime.loader import native_tensors_from_hf
    from fathom.runtime.quant_linear import load_quantized_model

    cfg = source.config
    qcfg = make_quant_config(cfg, "fp8", kv_cache="fp8")
    tensors = native_tensors_from_hf(source, device=plan.device)
    for module in linear_modules(cfg):
        if not qcfg.quantizes(module):
            continue
        weight = tensors.pop(f"{module}.weight")
        partner = module.replace(".mlp.fc", ".mlp.gate") if ".mlp.fc" in module else module.replace(".mlp.gate", ".mlp.fc")
        shared = amax(weight) if partner == module else torch.maximum(amax(weight), amax(tensors.get(f"{partner}.weight", weight)))
        # Random weights have no calibration set: input amax 8.0 is a throughput stand-in, recorded as such.
        for leaf, t in quantize_linear_fp8(weight, shared, input_amax=8.0).items():
            tensors[f"{module}.{leaf}"] = t
        del weight
    for i in range(cfg.num_hidden_layers):
        tensors[f"transformer.layers.{i}.attention.kv_cache_scaling_factor"] = kv_cache_scale(1.0, 1.0, QuantAlgo.FP8)
    model = load_quantized_model(cfg, tensors, qcfg, torch_dtype(plan.dtype), plan.device, DEFAULT_MAX_SEQ_LEN)
    return model, model.quant_info


def open_executor(model, plan: Plan):
    from fathom.runtime.torch_executor import TorchExecutor, executor_config

    return TorchExecutor(model, eos_ids=[], max_seq_len=DEFAULT_MAX_SEQ_LEN,
                         config=executor_config(max_num_tokens=plan.max_num_tokens, max_num_seqs=max(plan.batches)))


def decode_case(ex, plan: Plan, batch: int, context: int, weight_bytes: int, copy_bw: float) -> dict:
    """`batch` sequences primed at `context` tokens, then plan.steps timed decode steps."""
    import random

    from fathom.runtime.executor import Request
    from fathom.runtime.sampling import SamplingParams

    per_token = ex.cache.bytes_per_token
    need = batch * (context + plan.steps + 2)
    if need > ex.cache.capacity_tokens:
        return {"batch": batch, "context": context, "skipped": f"needs {need} tokens of KV "
                f"({need * per_token / 2**30:.1f} GiB), the cache holds {ex.cache.capacity_tokens}"}
    rng = random.Random(batch * 7 + context)
    for i in range(batch):
        ids = [rng.randrange(ex.config.vocab_size) for _ in range(context)]
        ex.submit(Request(f"d{batch}-{context}-{i}", ids, SamplingParams(max_new_tokens=plan.steps + 2, ignore_eos=True)))
    ex.scheduler.admit()
    for s in ex.scheduler.running:  # prime: blocks for the context, as if it had been prefilled
        ex.scheduler.reserve(s, context, [], [])
        s.num_computed = context - 1
    t = time.perf_counter()
    ex.step()  # first step at this shape: captures its CUDA graph
    first_step_s = time.perf_counter() - t
    times = []
    for _ in range(plan.steps):
        t = time.perf_counter()
        events = ex.step()
        times.append(time.perf_counter() - t)
        assert len(events) == batch
    while ex.has_pending():
        ex.step()
    step_s = statistics.median(times)
    kv_bytes = batch * (context + 1 + plan.steps // 2) * per_token
    bytes_per_step = weight_bytes + kv_bytes
    return {"batch": batch, "context": context, "steps": plan.steps, "step_s": step_s, "step_s_runs": times,
            "first_step_s": first_step_s, "tok_s": batch / step_s, "weight_bytes": weight_bytes,
            "kv_bytes_read": kv_bytes, "bytes_read_per_step": bytes_per_step,
            "achieved_bandwidth_gb_s": bytes_per_step / step_s / 1e9,
            "fraction_of_copy_bandwidth": bytes_per_step / step_s / copy_bw,
            "roofline_tok_s": batch * copy_bw / bytes_per_step}


def prefill_case(ex, plan: Plan) -> dict:
    import random

    from fathom.runtime.executor import Request, now
    from fathom.runtime.sampling import SamplingParams

    rng = random.Random(0)
    ids = [rng.randrange(ex.config.vocab_size) for _ in range(plan.prefill_tokens)]
    t0 = now()
    ex.submit(Request("prefill", ids, SamplingParams(max_new_tokens=1, ignore_eos=True)))
    steps, first = 0, None
    while ex.has_pending():
        events = ex.step()
        steps += 1
        first = first or next((e.time_s for e in events if e.token_id is not None), None)
    return {"prompt_tokens": plan.prefill_tokens, "max_num_tokens": plan.max_num_tokens, "steps": steps,
            "seconds": first - t0, "tok_s": plan.prefill_tokens / (first - t0)}


def run_precision(name: str, model, plan: Plan, copy_bw: float, prof, extra: dict) -> dict:
    from fathom.runtime.model import param_bytes

    ex = open_executor(model, plan)
    emb = model.transformer.vocab_embedding.weight
    weight_bytes = param_bytes(model) - emb.numel() * emb.element_size()  # decode reads one embedding row
    out = {"precision": name, **extra, "executor": ex.describe(), "decode": []}
    for context in plan.contexts:
        for batch in plan.batches:
            with prof.window(f"{name}_decode_b{batch}_ctx{context}") as w:
                case = decode_case(ex, plan, batch, context, weight_bytes, copy_bw)
            out["decode"].append({**case, "nvml": w.measurement.to_dict()})
    with prof.window(f"{name}_prefill") as w:
        case = prefill_case(ex, plan)
    out["prefill"] = {**case, "nvml": w.measurement.to_dict()}
    b1 = [c for c in out["decode"] if c["batch"] == 1 and "skipped" not in c]
    out["batch1_fraction_of_roofline"] = min(c["fraction_of_copy_bandwidth"] for c in b1) if b1 else None
    out["executor"] = ex.describe()  # now with the CUDA graphs captured
    return out


def fp8_unavailable(plan: Plan) -> str | None:
    import torch

    if plan.device.startswith("cuda") and torch.cuda.get_device_capability() < (8, 9):
        return f"torch._scaled_mm FP8 needs sm89+, this GPU is sm{''.join(map(str, torch.cuda.get_device_capability()))}"
    try:
        import fathom.build.quant.fp8  # noqa: F401
        import fathom.runtime.quant_linear  # noqa: F401
    except ImportError as e:
        return f"FP8 path not importable: {e}"
    return None


def device_name(plan: Plan) -> str:
    import torch

    return torch.cuda.get_device_name(0) if plan.device.startswith("cuda") else "cpu"


def main(argv: list[str] | None = None) -> Path:
    import torch

    from fathom.runtime.nvml import Profiler
    from fathom.runtime.records import environment

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="random:tiny on the CPU, short contexts: the code path only")
    ap.add_argument("--skip-fp8", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU visible (use --smoke to dry-run on the CPU)")
    gpu = device_name(plan)
    slug = "cpu-smoke" if args.smoke else re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-").lower()
    out = args.out or Path(__file__).parent / "results" / f"gpu_check_{slug}.json"
    record = {"kind": "gpu_check", "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "smoke": args.smoke,
              "plan": plan.__dict__, "gpu_name": gpu}
    t_start = time.perf_counter()
    with Profiler(interval_ms=100) as prof:
        record["copy"] = copy_bandwidth(plan)
        copy_bw = record["copy"]["bandwidth_gb_s"] * 1e9
        with prof.window("load_bf16") as w:
            source, model = load_bf16(plan)
        record["load_bf16_s"] = w.measurement.duration_s
        record["bf16"] = run_precision("bf16", model, plan, copy_bw, prof, {})
        del model
        gc.collect()
        if plan.device.startswith("cuda"):
            torch.cuda.empty_cache()
        reason = "--skip-fp8" if args.skip_fp8 else fp8_unavailable(plan)
        if reason is None:
            with prof.window("load_fp8") as w:
                model, quant = load_fp8(plan, source)
            extra = {"load_s": w.measurement.duration_s, "quantization": quant,
                     "activation_scales": "not calibrated: input amax 8.0 for every linear (throughput only)"}
            record["fp8"] = run_precision("fp8", model, plan, copy_bw, prof, extra)
        else:
            record["fp8"] = {"skipped": reason}
        record["nvml"] = prof.summary()
    record["environment"] = environment(record["bf16"]["executor"], record["nvml"]["gpus"])
    record["total_s"] = time.perf_counter() - t_start
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(out)
    for name in ("bf16", "fp8"):
        for c in record[name].get("decode", []):
            if "skipped" in c:
                print(f"{name} batch {c['batch']:>2} ctx {c['context']:>5}: skipped ({c['skipped']})")
            else:
                print(f"{name} batch {c['batch']:>2} ctx {c['context']:>5}: {c['tok_s']:8.1f} tok/s, "
                      f"{c['achieved_bandwidth_gb_s']:7.1f} GB/s = {c['fraction_of_copy_bandwidth']:.0%} of copy")
        if "prefill" in record[name]:
            print(f"{name} prefill {record[name]['prefill']['prompt_tokens']} tokens: {record[name]['prefill']['seconds']:.2f} s")
    print(f"copy bandwidth {record['copy']['bandwidth_gb_s']:.0f} GB/s; fp8: {record['fp8'].get('skipped', 'ran')}; "
          f"{record['total_s']:.0f} s in all; wrote {out}")
    return out


if __name__ == "__main__":
    main()
