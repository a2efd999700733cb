"""When a deployment does not fit: the one-step changes that would, and the one-line refusal naming them."""

from __future__ import annotations

from dataclasses import replace

from fathom.build.config import ModelConfig
from fathom.build.errors import PlanError
from fathom.build.precision import KvCacheFormat, WeightFormat

from .gpus import GIB, GpuSpec
from .planner import Deployment, Plan, plan


def alternatives(cfg: ModelConfig, gpu: GpuSpec, dep: Deployment) -> list[tuple[str, Deployment]]:
    """One-step changes worth trying when `dep` does not fit: cheaper weights or KV, more tp, shorter context."""
    out = []
    base = replace(dep, max_num_tokens=None, max_batch_size=None)
    if gpu.fp8 and dep.precision is not WeightFormat.FP8:
        out.append((f"--precision {WeightFormat.FP8} --kv-cache {KvCacheFormat.FP8}",
                    replace(base, precision=WeightFormat.FP8, kv_cache=KvCacheFormat.FP8)))
    if not gpu.fp8 and not dep.precision.quantized:
        for weights in (WeightFormat.W8A16, WeightFormat.W4A16_AWQ):
            out.append((f"--precision {weights}", replace(base, precision=weights)))
    if dep.kv_cache is KvCacheFormat.MODEL:
        cheap_kv = KvCacheFormat.FP8 if gpu.fp8 else KvCacheFormat.INT8
        out.append((f"--kv-cache {cheap_kv}", replace(base, kv_cache=cheap_kv)))
    for tp in (dep.tp * 2, dep.tp * 4):
        out.append((f"--tp {tp}", replace(base, tp=tp)))
    seq = dep.seq_len // 2
    while seq >= 1024:
        out.append((f"--seq-len {seq}", replace(base, seq_len=seq)))
        seq //= 2
    return out


def options_that_fit(cfg: ModelConfig, gpu: GpuSpec, dep: Deployment) -> list[tuple[str, int]]:
    """(flags, sequences that fit) for each alternative that fits; the first --tp and --seq-len only."""
    found, seen_kinds = [], set()
    for flags, alt in alternatives(cfg, gpu, dep):
        kind = flags.split()[0]
        if kind in ("--tp", "--seq-len") and kind in seen_kinds:
            continue
        try:
            p = plan(cfg, gpu, alt)
        except PlanError:
            continue
        if p.fits:
            seen_kinds.add(kind)
            found.append((flags, p.concurrent_sequences))
    return found


def require_fit(p: Plan, cfg: ModelConfig) -> None:
    """Raise PlanError naming why `p` does not fit and the nearest options that do."""
    if p.fits:
        return
    d = p.deployment
    free = p.gpu.memory_bytes - p.weights_per_rank_bytes - p.activation_bytes - p.runtime_overhead_bytes
    if free <= 0:
        why = (f"weights {p.weights_per_rank_bytes / GIB:.1f} GiB + activations {p.activation_bytes / GIB:.1f} GiB "
               f"+ overhead {p.runtime_overhead_bytes / GIB:.1f} GiB exceed {p.gpu.memory_gib:g} GiB per GPU")
    else:
        why = (f"KV budget {p.kv_budget_bytes / GIB:.2f} GiB holds no {d.seq_len}-token sequence "
               f"({p.kv_bytes_per_sequence_rank / GIB:.2f} GiB each)")
    options = options_that_fit(cfg, p.gpu, d)
    tail = ("options that fit: " + ", ".join(f"{f} ({n} x {d.seq_len if 'seq-len' not in f else f.split()[1]}-token seqs)"
                                             for f, n in options)) if options else "no single change fits"
    raise PlanError(f"{p.model_name} {d.precision} (KV {d.kv_cache}, tp={d.tp}, pp={d.pp}) does not fit "
                    f"{p.gpu.name}: {why}; {tail}")
