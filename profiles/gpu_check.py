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
- paged decode attention of one Fathom-size layer at batch 1/8 and 1K/8K/16K contexts: the eager
  gather + SDPA, the compiled kernel that reads the pool in place, and flash-attn's
  flash_attn_with_kvcache when it imports (profiles/gpu_cases.py `attention_kernels`)
- decode steps of random:fathom-r1-14b-4l (every width, 4 layers) at 1K/8K/16K contexts, eager vs
  compile=True, both replayed from CUDA graphs (`compiled_decode`)
- NVML memory, power and energy per phase (fathom.runtime.nvml.Profiler; null fields when NVML
  is missing, with the reason)
Result: profiles/results/gpu_check_<gpu-name>.json, rewritten after every part (a run cut short
keeps what it measured); a part that would not fit the time budget (--budget-s) is recorded as
skipped with the reason.

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

from .gpu_cases import attention_kernels, compiled_decode, decode_case, open_executor, prefill_case, sync


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
    layers_model: str  # the attention kernels' heads, and the model of the eager vs compiled decode
    kernel_batches: tuple[int, ...]
    kernel_contexts: tuple[int, ...]
    compiled_batches: tuple[int, ...]
    compiled_contexts: tuple[int, ...]


# Decode contexts 990, 8000 and 16000: with the 32 timed steps they stay inside one CUDA-graph
# context bucket (1024, 8192 and 16384), so no step times a capture or a doubled gather.
FULL = Plan("random:fathom-r1-14b", "cuda", "bfloat16", (1, 8, 32), (990, 16000), 32, 16000, 4096, 4 << 30,
            "random:fathom-r1-14b-4l", (1, 8), (1024, 8192, 16384), (1, 8), (990, 8000, 16000))
SMOKE = Plan("random:tiny", "cpu", "float32", (1, 2), (16, 48), 3, 64, 32, 16 << 20,
             "random:tiny", (2,), (16, 48), (2,), (16, 48))
# Seconds each later part takes at most on an H100/H200 (compiles included), for the time budget.
PART_ESTIMATE_S = {"attention_kernels": 60, "compiled_decode": 150, "fp8": 90}


def save(record: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(out)


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


def run_precision(name: str, model, plan: Plan, copy_bw: float, prof, extra: dict) -> dict:
    from fathom.runtime.model import param_bytes

    ex = open_executor(model, plan, max(plan.batches))
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


def print_attention(record: dict) -> None:
    kernels, compiled = record["attention_kernels"], record["compiled_decode"]
    for c in kernels.get("cases", []):
        times = ", ".join(f"{name} {k['us']:.0f} us" if "us" in k else f"{name} skipped"
                          for name, k in c["kernels"].items())
        print(f"attention batch {c['batch']:>2} ctx {c['context']:>5}: {times}")
    for c in compiled.get("speedup", []):
        print(f"compiled decode batch {c['batch']:>2} ctx {c['context']:>5}: "
              f"{c['compiled_over_eager_tok_s']:.2f}x eager tok/s")
    for part in (kernels, compiled):
        if "skipped" in part:
            print(f"skipped: {part['skipped']}")


def main(argv: list[str] | None = None) -> Path:
    import torch

    from fathom.runtime.nvml import Profiler
    from fathom.runtime.records import environment

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="random:tiny on the CPU, short contexts: the code path only")
    ap.add_argument("--skip-fp8", action="store_true")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="skip a later part (attention kernels, compiled decode, fp8) that would end past this")
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

    def over_budget(part: str) -> str | None:
        spent = time.perf_counter() - t_start
        if spent + PART_ESTIMATE_S[part] > args.budget_s:
            return (f"time budget: {spent:.0f} s spent, this part takes up to {PART_ESTIMATE_S[part]} s, "
                    f"--budget-s {args.budget_s:.0f}")
        return None

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
        save(record, out)
        with prof.window("attention_kernels"):
            skipped = over_budget("attention_kernels")
            record["attention_kernels"] = {"skipped": skipped} if skipped else attention_kernels(plan)
        save(record, out)
        skipped = over_budget("compiled_decode")
        record["compiled_decode"] = {"skipped": skipped} if skipped else compiled_decode(plan, copy_bw, prof)
        save(record, out)
        reason = "--skip-fp8" if args.skip_fp8 else fp8_unavailable(plan) or over_budget("fp8")
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
    save(record, out)
    for name in ("bf16", "fp8"):
        for c in record[name].get("decode", []):
            if "skipped" in c:
                print(f"{name} batch {c['batch']:>2} ctx {c['context']:>5}: skipped ({c['skipped']})")
            else:
                print(f"{name} batch {c['batch']:>2} ctx {c['context']:>5}: {c['tok_s']:8.1f} tok/s, "
                      f"{c['achieved_bandwidth_gb_s']:7.1f} GB/s = {c['fraction_of_copy_bandwidth']:.0%} of copy")
        if "prefill" in record[name]:
            print(f"{name} prefill {record[name]['prefill']['prompt_tokens']} tokens: {record[name]['prefill']['seconds']:.2f} s")
    print_attention(record)
    print(f"copy bandwidth {record['copy']['bandwidth_gb_s']:.0f} GB/s; fp8: {record['fp8'].get('skipped', 'ran')}; "
          f"{record['total_s']:.0f} s in all; wrote {out}")
    return out


if __name__ == "__main__":
    main()
