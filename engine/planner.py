"""Capacity planner and roofline: will this model fit this GPU, and how fast can it possibly go?

Why: a TensorRT-LLM engine build takes many minutes and is only valid for one GPU model, and the
classic failures (OOM at long context, a max_num_tokens cap, "perf below published numbers") are
all visible from arithmetic before anything is built. So the planner reads only the model config
and the datasheet numbers in profiles/gpus.json, and answers per GPU:

- memory: weights of the largest rank, KV bytes per token and per sequence, an activation and
  workspace estimate for max_num_tokens tokens, a fixed runtime overhead, and the KV budget that
  TensorRT-LLM takes by default (90% of what is free after the engine is loaded:
  KvCacheConfig.free_gpu_memory_fraction, tensorrt_llm/llmapi/llm_args.py); from these, how many
  sequences of the full length fit at once.
- roofline: the hardware ceiling from datasheet bandwidth and dense tensor throughput, never
  derated, so a measured run can be reported as a fraction of it. Each stage costs
  max(bytes moved / bandwidth, flops / peak). Decode reads every weight except the embedding
  table (a gather reads one row per token) plus the KV of every sequence; prefill of a prompt is
  compute-bound. Beside each ceiling sits an "expected" figure at the stated efficiencies.

Units: bytes are plain integers (`_bytes`), GiB = 2^30 bytes for capacities, TB/s = 10^12 B/s.
With pp > 1 the pipeline stages are taken to run one after another for each token (no overlap
of micro-batches), so pp adds capacity, not speed; tp ranks run in parallel.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from fathom.build.config import ModelConfig
from fathom.build.errors import PlanError

from .gpus import GIB, GpuSpec

PRECISIONS = ("bf16", "fp8", "w8a16", "w4a16_awq")
KV_CACHE_DTYPES = ("bf16", "fp8", "int8")
KV_DTYPE_BYTES = {"bf16": 2, "fp8": 1, "int8": 1}
AWQ_GROUP_SIZE = 128
ACT_BYTES = 2  # activations stay 16-bit in every precision here
LOGITS_BYTES = 4  # TRT-LLM's default logits_dtype is float32

KV_CACHE_FRACTION = 0.9  # TRT-LLM default share of free memory given to the KV cache
RUNTIME_OVERHEAD_BYTES = 1 * GIB  # CUDA context, cuBLAS/TRT workspaces, runtime buffers (estimate)
ACTIVATION_SHARE = 1 / 16  # max_num_tokens is the largest power of two whose activations fit in this share
MAX_BATCH_CAP = 2048  # BuildConfig.max_batch_size default in tensorrt_llm/builder.py
# "Expected" = ceiling at these efficiencies. Assumed, not measured on this model: on the lent H100
# a plain copy reached ~0.90 of datasheet bandwidth and a bf16 matmul ~0.81 of peak (REFERENCE s4);
# whole decoder kernels (attention, small GEMMs, launches) reach less.
BANDWIDTH_EFFICIENCY = 0.8
COMPUTE_EFFICIENCY = 0.6


def default_kv_cache(precision: str) -> str:
    return "fp8" if precision == "fp8" else "bf16"


@dataclass(frozen=True)
class Deployment:
    precision: str = "bf16"
    kv_cache: str = "bf16"
    seq_len: int = 16384
    tp: int = 1
    pp: int = 1
    max_num_tokens: int | None = None  # None: the planner picks
    max_batch_size: int | None = None  # None: the sequences of seq_len tokens that fit

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise PlanError(f"--precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.kv_cache not in KV_CACHE_DTYPES:
            raise PlanError(f"--kv-cache {self.kv_cache!r}: expected one of {', '.join(KV_CACHE_DTYPES)}")
        for name in ("seq_len", "tp", "pp", "max_num_tokens", "max_batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise PlanError(f"--{name.replace('_', '-')} {value!r}: expected a positive integer")

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @property
    def uses_fp8(self) -> bool:
        return self.precision == "fp8" or self.kv_cache == "fp8"


# ---- model arithmetic -------------------------------------------------------------------------
def layers_per_stage(num_layers: int, pp: int) -> list[int]:
    """Layers held by each pp rank: the first `num_layers % pp` ranks get one extra
    (torch.tensor_split, as Mapping.pp_layers does in tensorrt_llm/mapping.py)."""
    base, extra = divmod(num_layers, pp)
    return [base + (1 if s < extra else 0) for s in range(pp)]


def kv_heads_per_rank(cfg: ModelConfig, tp: int) -> int:
    """KV heads split over tp ranks, duplicated when there are fewer heads than ranks."""
    return max(1, cfg.num_key_value_heads // tp)


def linear_shapes(cfg: ModelConfig, tp: int) -> list[tuple[int, int]]:
    """(out, in) of one layer's linears on one tp rank: qkv, dense, fc, gate, proj."""
    q = cfg.q_size // tp
    kv = kv_heads_per_rank(cfg, tp) * cfg.head_dim
    i = cfg.intermediate_size // tp
    h = cfg.hidden_size
    return [(q + 2 * kv, h), (h, q), (i, h), (i, h), (h, i)]


def linear_bytes(out: int, inp: int, precision: str) -> int:
    """Stored bytes of one (out, in) linear, scales included."""
    n = out * inp
    if precision == "bf16":
        return 2 * n
    if precision == "fp8":
        return n + 2 * 4  # e4m3 weights + float32 weights_scaling_factor and activation_scaling_factor
    if precision == "w8a16":
        return n + 2 * out  # int8 weights + per-channel 16-bit scale
    if precision == "w4a16_awq":
        groups = math.ceil(inp / AWQ_GROUP_SIZE)
        return n // 2 + 2 * groups * out + 2 * inp  # int4 + group scales + prequant_scaling_factor
    raise PlanError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class Stage:
    """One rank of one pp stage (all tp ranks of a stage are alike)."""

    layers: int
    first: bool
    last: bool
    weights_bytes: int
    embedding_bytes: int  # part of weights_bytes that decode does not stream
    linear_params: int  # multiply-accumulates per token through the linears (lm_head included)
    kv_bytes_per_token: int
    q_size: int  # attention width on this rank


def stages(cfg: ModelConfig, precision: str, kv_cache: str, tp: int, pp: int) -> list[Stage]:
    h = cfg.hidden_size
    shapes = linear_shapes(cfg, tp)
    kv = kv_heads_per_rank(cfg, tp) * cfg.head_dim
    layer_bytes = sum(linear_bytes(o, i, precision) for o, i in shapes) + 2 * (cfg.q_size // tp + 2 * kv) + 2 * 2 * h
    layer_params = sum(o * i for o, i in shapes)
    vocab_rank = math.ceil(cfg.vocab_size / tp)  # lm_head padded to a multiple of tp, then split
    embedding = 2 * cfg.vocab_size * h  # replicated per tp rank (TRT-LLM use_parallel_embedding=False)
    out = []
    counts = layers_per_stage(cfg.num_hidden_layers, pp)
    for s, n in enumerate(counts):
        first, last = s == 0, s == pp - 1
        weights = n * layer_bytes + (embedding if first else 0) + ((2 * vocab_rank * h + 2 * h) if last else 0)
        out.append(Stage(
            layers=n, first=first, last=last, weights_bytes=weights,
            embedding_bytes=embedding if first else 0,
            linear_params=n * layer_params + (vocab_rank * h if last else 0),
            kv_bytes_per_token=2 * n * kv * KV_DTYPE_BYTES[kv_cache],
            q_size=cfg.q_size // tp,
        ))
    return out


def weight_bytes_total(cfg: ModelConfig, precision: str) -> int:
    """Bytes of the whole model's weights at one rank (tp=1, pp=1)."""
    return stages(cfg, precision, "bf16", 1, 1)[0].weights_bytes


def activation_bytes(cfg: ModelConfig, tp: int, num_tokens: int, logits_rows: int, last: bool) -> int:
    """Peak activations of one rank for `num_tokens` tokens in flight (TensorRT reuses buffers
    across layers, so one layer's widest tensors count): residual + normed input, qkv, the fused
    fc|gate output and the activated product; plus float32 logits rows on the last stage."""
    kv = kv_heads_per_rank(cfg, tp) * cfg.head_dim
    per_token = ACT_BYTES * (2 * cfg.hidden_size + cfg.q_size // tp + 2 * kv + 3 * (cfg.intermediate_size // tp))
    logits = logits_rows * cfg.vocab_size * LOGITS_BYTES if last else 0
    return num_tokens * per_token + logits


def pick_max_num_tokens(cfg: ModelConfig, gpu: GpuSpec, tp: int, seq_len: int) -> int:
    """Largest power of two <= seq_len (at least 1024 when seq_len allows) whose activations stay
    within ACTIVATION_SHARE of the GPU: one chunk then prefills a whole prompt where memory allows."""
    budget = gpu.memory_bytes * ACTIVATION_SHARE
    tokens = 1 << (seq_len.bit_length() - 1)
    while tokens > 1024 and activation_bytes(cfg, tp, tokens, 0, False) > budget:
        tokens //= 2
    return tokens


# ---- the plan -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    ceiling: float
    expected: float


@dataclass(frozen=True)
class Plan:
    model_name: str
    num_params: int
    gpu: GpuSpec
    deployment: Deployment  # max_num_tokens and max_batch_size resolved
    weights_total_bytes: int
    weights_per_rank_bytes: int  # the largest rank
    kv_bytes_per_token_model: int  # whole model, all layers and heads
    kv_bytes_per_token_rank: int  # the limiting rank
    kv_bytes_per_sequence_rank: int
    activation_bytes: int
    runtime_overhead_bytes: int
    kv_budget_bytes: int
    concurrent_sequences: int  # sequences of seq_len tokens that fit at once
    decode_batch1: Estimate | None  # tok/s, context ~0
    decode_batch1_full_context: Estimate | None  # tok/s for the last token of a seq_len sequence
    decode_max_batch: Estimate | None  # aggregate tok/s at decode_batch sequences, mean context seq_len / 2
    prefill: Estimate | None  # tok/s prefilling one seq_len prompt
    ttft_ms: Estimate | None  # time to first token of a seq_len prompt
    decode_batch: int = 1  # min(max_batch_size, concurrent_sequences): what decode_max_batch assumes
    notes: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return self.concurrent_sequences >= 1

    def to_dict(self) -> dict:
        d = self.deployment
        est = lambda e: None if e is None else asdict(e)  # noqa: E731
        return {
            "model": {"name": self.model_name, "num_params": self.num_params},
            "gpu": self.gpu.summary(),
            "deployment": asdict(d) | {"world_size": d.world_size},
            "fits": self.fits,
            "memory_per_gpu": {
                "capacity_bytes": self.gpu.memory_bytes,
                "weights_total_bytes": self.weights_total_bytes,
                "weights_per_rank_bytes": self.weights_per_rank_bytes,
                "kv_bytes_per_token_model": self.kv_bytes_per_token_model,
                "kv_bytes_per_token_rank": self.kv_bytes_per_token_rank,
                "kv_bytes_per_sequence_rank": self.kv_bytes_per_sequence_rank,
                "activation_workspace_bytes": self.activation_bytes,
                "runtime_overhead_bytes": self.runtime_overhead_bytes,
                "kv_cache_fraction": KV_CACHE_FRACTION,
                "kv_budget_bytes": self.kv_budget_bytes,
            },
            "concurrent_sequences": self.concurrent_sequences,
            "roofline": {
                "decode_batch1_tok_s": est(self.decode_batch1),
                "decode_batch1_full_context_tok_s": est(self.decode_batch1_full_context),
                "decode_max_batch_tok_s": est(self.decode_max_batch),
                "decode_max_batch_size": self.decode_batch,
                "decode_max_batch_mean_context_tokens": d.seq_len // 2,
                "prefill_tok_s": est(self.prefill),
                "ttft_ms": est(self.ttft_ms),
                "bandwidth_efficiency": BANDWIDTH_EFFICIENCY,
                "compute_efficiency": COMPUTE_EFFICIENCY,
                "basis": "ceiling: datasheet bandwidth and dense tensor throughput; expected: ceiling at the stated efficiencies (assumed, not measured)",
            },
            "notes": list(self.notes),
        }


def check_deployment(cfg: ModelConfig, gpu: GpuSpec, dep: Deployment) -> None:
    """Refuse combinations the hardware or TRT-LLM's mapping cannot run at all."""
    if dep.uses_fp8 and not gpu.fp8:
        raise PlanError(f"FP8 ({'weights' if dep.precision == 'fp8' else 'KV cache'}) needs FP8 tensor cores "
                        f"(sm >= 89); {gpu.name} is sm{gpu.sm}: use --precision bf16|w8a16|w4a16_awq and --kv-cache bf16|int8")
    if cfg.num_attention_heads % dep.tp:
        raise PlanError(f"--tp {dep.tp}: must divide num_attention_heads ({cfg.num_attention_heads})")
    kv = cfg.num_key_value_heads
    if kv % dep.tp and dep.tp % kv:
        raise PlanError(f"--tp {dep.tp}: must divide or be a multiple of num_key_value_heads ({kv})")
    if dep.pp > cfg.num_hidden_layers:
        raise PlanError(f"--pp {dep.pp}: more pipeline stages than layers ({cfg.num_hidden_layers})")


def _roofline(stage_list: list[Stage], dep: Deployment, bandwidth: float, peak: float, batch: int) -> dict:
    """Seconds per decode step / prefill, summed over pp stages, each max(memory, compute)."""
    def decode_step_s(b: int, context: int) -> float:
        return sum(max((s.weights_bytes - s.embedding_bytes + b * s.kv_bytes_per_token * context) / bandwidth,
                       b * (2 * s.linear_params + 4 * s.layers * s.q_size * context) / peak)
                   for s in stage_list)

    n = dep.seq_len
    chunks = math.ceil(n / dep.max_num_tokens)
    prefill_s = sum(max((chunks * (s.weights_bytes - s.embedding_bytes) + n * s.kv_bytes_per_token) / bandwidth,
                        (2 * s.linear_params * n + 4 * s.layers * s.q_size * n * (n + 1) / 2) / peak)
                    for s in stage_list)
    return {
        "decode_batch1": 1 / decode_step_s(1, 0),
        "decode_batch1_full_context": 1 / decode_step_s(1, n),
        "decode_max_batch": batch / decode_step_s(batch, n // 2),
        "prefill": n / prefill_s,
        "ttft_ms": prefill_s * 1000,
    }


def plan(cfg: ModelConfig, gpu: GpuSpec, dep: Deployment, model_name: str = "model") -> Plan:
    """The memory breakdown and roofline of `cfg` on `gpu` under `dep` (no weights are read)."""
    check_deployment(cfg, gpu, dep)
    notes = []
    tokens = dep.max_num_tokens or pick_max_num_tokens(cfg, gpu, dep.tp, dep.seq_len)
    stage_list = stages(cfg, dep.precision, dep.kv_cache, dep.tp, dep.pp)
    overhead = RUNTIME_OVERHEAD_BYTES

    def fit(logits_rows: int) -> tuple[int, Stage, int, int]:
        """(sequences that fit, limiting stage, its activation bytes, its KV budget)."""
        worst = None
        for s in stage_list:
            act = activation_bytes(cfg, dep.tp, tokens, logits_rows, s.last)
            budget = max(0, int(KV_CACHE_FRACTION * (gpu.memory_bytes - s.weights_bytes - act - overhead)))
            fits = budget // (s.kv_bytes_per_token * dep.seq_len)
            if worst is None or fits < worst[0]:
                worst = (fits, s, act, budget)
        return worst

    # Logits rows depend on max_batch_size, which depends on what fits: settle in two passes.
    concurrent, limiting, act, budget = fit(dep.max_batch_size or 1)
    if dep.max_batch_size is None:
        concurrent, limiting, act, budget = fit(min(max(concurrent, 1), MAX_BATCH_CAP))
    batch = dep.max_batch_size or min(concurrent, MAX_BATCH_CAP)
    if dep.max_batch_size is None and concurrent > MAX_BATCH_CAP:
        notes.append(f"max_batch_size capped at {MAX_BATCH_CAP} (TRT-LLM's default limit)")
    if dep.max_batch_size is not None and 1 <= concurrent < dep.max_batch_size:
        notes.append(f"max_batch_size {dep.max_batch_size} exceeds the {concurrent} sequences of "
                     f"{dep.seq_len} tokens that fit; the rest wait for KV blocks or must be shorter")
    if tokens < dep.seq_len:
        notes.append(f"prompts longer than max_num_tokens={tokens} are prefilled in chunks (chunked context)")
    resolved = replace(dep, max_num_tokens=tokens, max_batch_size=max(batch, 1))

    estimates = {}
    decode_batch = max(1, min(resolved.max_batch_size, concurrent))
    if concurrent >= 1:
        compute_dtype = "fp8" if dep.precision == "fp8" else "bf16"
        ceil_ = _roofline(stage_list, resolved, gpu.bandwidth_bytes_s, gpu.flops_s(compute_dtype), decode_batch)
        expe = _roofline(stage_list, resolved, gpu.bandwidth_bytes_s * BANDWIDTH_EFFICIENCY,
                         gpu.flops_s(compute_dtype) * COMPUTE_EFFICIENCY, decode_batch)
        estimates = {k: Estimate(ceil_[k], expe[k]) for k in ceil_}

    return Plan(
        model_name=model_name, num_params=cfg.num_params(), gpu=gpu, deployment=resolved,
        weights_total_bytes=weight_bytes_total(cfg, dep.precision),
        weights_per_rank_bytes=max(s.weights_bytes for s in stage_list),
        kv_bytes_per_token_model=cfg.kv_bytes_per_token(KV_DTYPE_BYTES[dep.kv_cache]),
        kv_bytes_per_token_rank=limiting.kv_bytes_per_token,
        kv_bytes_per_sequence_rank=limiting.kv_bytes_per_token * dep.seq_len,
        activation_bytes=act, runtime_overhead_bytes=overhead, kv_budget_bytes=budget,
        concurrent_sequences=concurrent,
        decode_batch1=estimates.get("decode_batch1"),
        decode_batch1_full_context=estimates.get("decode_batch1_full_context"),
        decode_max_batch=estimates.get("decode_max_batch"),
        prefill=estimates.get("prefill"), ttft_ms=estimates.get("ttft_ms"),
        decode_batch=decode_batch, notes=tuple(notes),
    )


# ---- refusal with the nearest options that fit ----------------------------------------------------
def alternatives(cfg: ModelConfig, gpu: GpuSpec, dep: Deployment) -> list[tuple[str, Deployment]]:
    """One-step changes worth trying when `dep` does not fit: cheaper weights or KV, more tp, shorter context."""
    out = []
    base = replace(dep, max_num_tokens=None, max_batch_size=None)
    if gpu.fp8 and dep.precision != "fp8":
        out.append(("--precision fp8 --kv-cache fp8", replace(base, precision="fp8", kv_cache="fp8")))
    if not gpu.fp8 and dep.precision == "bf16":
        out.append(("--precision w8a16", replace(base, precision="w8a16")))
        out.append(("--precision w4a16_awq", replace(base, precision="w4a16_awq")))
    if dep.kv_cache == "bf16":
        cheap_kv = "fp8" if gpu.fp8 else "int8"
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


# ---- text ---------------------------------------------------------------------------------------
def render_plan(p: Plan) -> list[str]:
    """The plan as aligned text lines (what `fathom plan` and the demo print)."""
    d, g = p.deployment, p.gpu
    gib = lambda b: f"{b / GIB:8.2f} GiB"  # noqa: E731
    memory = [
        ("weights (largest rank)", gib(p.weights_per_rank_bytes), f"whole model {p.weights_total_bytes / 1e9:.1f} GB"),
        ("activations/workspace (est.)", gib(p.activation_bytes), f"{d.max_num_tokens} tokens"),
        ("runtime overhead (est.)", gib(p.runtime_overhead_bytes), ""),
        (f"KV budget ({KV_CACHE_FRACTION:.0%} of free)", gib(p.kv_budget_bytes), ""),
        ("KV per token", f"{p.kv_bytes_per_token_rank / 1024:8.1f} KiB", f"whole model {p.kv_bytes_per_token_model / 1024:.0f} KiB"),
        (f"KV per {d.seq_len:,}-token sequence", gib(p.kv_bytes_per_sequence_rank), ""),
    ]
    lines = [
        f"{p.model_name} ({p.num_params / 1e9:.2f} B params) on {g.name} "
        f"({g.memory_gib:g} GiB, {g.memory_bandwidth_tb_s:g} TB/s, sm{g.sm})",
        f"  {d.precision} weights, {d.kv_cache} KV cache, tp={d.tp} pp={d.pp}, {d.seq_len:,}-token sequences, "
        f"max_num_tokens={d.max_num_tokens}, max_batch_size={d.max_batch_size}",
        "  memory per GPU",
        *[f"    {label:<33}{value}" + (f"   ({extra})" if extra else "") for label, value, extra in memory],
        f"  concurrent {d.seq_len:,}-token sequences: {p.concurrent_sequences}" + ("" if p.fits else "  -> DOES NOT FIT"),
    ]
    if p.fits:
        lines.append(f"  roofline: ceiling (datasheet) | expected ({BANDWIDTH_EFFICIENCY:.0%} bandwidth, "
                     f"{COMPUTE_EFFICIENCY:.0%} compute)")
        rows = [("decode, batch 1", p.decode_batch1, "tok/s"),
                (f"decode, batch 1 at {d.seq_len:,} ctx", p.decode_batch1_full_context, "tok/s"),
                (f"decode, batch {p.decode_batch} (ctx {d.seq_len // 2:,})", p.decode_max_batch, "tok/s"),
                (f"prefill {d.seq_len:,}-token prompt", p.prefill, "tok/s"),
                (f"TTFT {d.seq_len:,}-token prompt", p.ttft_ms, "ms")]
        lines += [f"    {label:<33}{e.ceiling:>10,.1f} | {e.expected:>10,.1f} {unit}" for label, e, unit in rows]
    lines += [f"  note: {n}" for n in p.notes]
    return lines
