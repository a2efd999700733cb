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

from fathom.build.config import DEFAULT_MAX_SEQ_LEN, ModelConfig
from fathom.build.errors import ConfigError, PlanError
from fathom.build.mapping import Mapping, ShardKind, shard_shape
from fathom.build.precision import DTYPE_BYTES, KvCacheFormat, WeightFormat

from .gpus import GIB, GpuSpec
from .trtllm_rules import ContextAttention, context_attention

# Weight formats the planner sizes: those with a tensor-core rate in the GPU catalogue (fp32 has none).
ENGINE_PRECISIONS = tuple(w for w in WeightFormat if w.compute_dtype is not None)
# Quantized formats keep activations and unquantized tensors in the checkpoint's 16-bit dtype;
# bfloat16 and float16 have the same size, so bfloat16 stands for both.
QUANTIZED_MODEL_DTYPE = "bfloat16"
LOGITS_BYTES = DTYPE_BYTES["float32"]  # config.json logits_dtype, as build/checkpoint.py writes it

KV_CACHE_FRACTION = 0.9  # TRT-LLM default share of free memory given to the KV cache
RUNTIME_OVERHEAD_BYTES = 1 * GIB  # CUDA context, cuBLAS/TRT workspaces, runtime buffers (estimate)
ACTIVATION_SHARE = 1 / 16  # max_num_tokens is the largest power of two whose activations fit in this share
MAX_BATCH_CAP = 2048  # BuildConfig.max_batch_size default in tensorrt_llm/builder.py
# "Expected" = ceiling at these efficiencies: assumed, not measured by fathom (docs/REFERENCE.md, GPU
# datasheets, takes a plain copy at ~0.90 of datasheet bandwidth and a bf16 matmul at ~0.81 of
# peak as assumptions); whole decoder kernels (attention, small GEMMs, launches) reach less.
BANDWIDTH_EFFICIENCY = 0.8
COMPUTE_EFFICIENCY = 0.6


def engine_precision(word: str) -> WeightFormat:
    """The weight format of a --precision word the planner sizes; PlanError for fp32 and unknown words."""
    choices = ", ".join(ENGINE_PRECISIONS)
    if word == WeightFormat.FP32:
        raise PlanError(f"--precision fp32: not an engine precision (profiles/gpus.json has no fp32 tensor-core "
                        f"rate); expected one of {choices}")
    if word not in ENGINE_PRECISIONS:
        raise PlanError(f"--precision {str(word)!r}: expected one of {choices}")
    return WeightFormat(word)


def _kv_cache_format(word: str) -> KvCacheFormat:
    if word not in tuple(KvCacheFormat):
        raise PlanError(f"--kv-cache {str(word)!r}: expected one of {', '.join(KvCacheFormat)}")
    return KvCacheFormat(word)


@dataclass(frozen=True)
class Deployment:
    """What is deployed: weight and KV cache formats (members or their --precision / --kv-cache
    words), sequence length, mapping and engine limits."""

    precision: WeightFormat = WeightFormat.BF16
    kv_cache: KvCacheFormat = KvCacheFormat.MODEL
    seq_len: int = DEFAULT_MAX_SEQ_LEN
    tp: int = 1
    pp: int = 1
    max_num_tokens: int | None = None  # None: the planner picks
    max_batch_size: int | None = None  # None: the sequences of seq_len tokens that fit

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", engine_precision(self.precision))
        object.__setattr__(self, "kv_cache", _kv_cache_format(self.kv_cache))
        for name in ("seq_len", "tp", "pp", "max_num_tokens", "max_batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise PlanError(f"--{name.replace('_', '-')} {value!r}: expected a positive integer")

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @property
    def mapping(self) -> Mapping:
        return Mapping(tp_size=self.tp, pp_size=self.pp)

    @property
    def model_dtype(self) -> str:
        """dtype of activations and of every unquantized tensor (embedding, lm_head, norms, biases)."""
        return self.precision.dtype or QUANTIZED_MODEL_DTYPE

    @property
    def context_attention(self) -> ContextAttention:
        """Context attention TensorRT-LLM builds for these formats: whether prompts can be chunked."""
        return context_attention(self.precision, self.kv_cache)

    @property
    def uses_fp8(self) -> bool:
        return self.precision is WeightFormat.FP8 or self.kv_cache is KvCacheFormat.FP8


# ---- model arithmetic -------------------------------------------------------------------------
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


def stages(cfg: ModelConfig, dep: Deployment) -> list[Stage]:
    """The ranks of each pp stage, laid out by build/mapping.py's Mapping as TRT-LLM shards them."""
    mapping, h = dep.mapping, cfg.hidden_size
    unquantized_bytes = DTYPE_BYTES[dep.model_dtype]
    shapes = mapping.linear_shapes(cfg)
    q, kv = mapping.qkv_rows(cfg)
    layer_bytes = (sum(dep.precision.linear_bytes(o, i) for o, i in shapes)
                   + unquantized_bytes * (q + 2 * kv + 2 * h))  # qkv bias, two RMSNorm weights
    layer_params = sum(o * i for o, i in shapes)
    vocab_rank = shard_shape(ShardKind.VOCAB, cfg.linear_dims()["lm_head"], dep.tp, cfg)[0]  # lm_head rows here
    embedding = unquantized_bytes * cfg.vocab_size * h  # replicated per tp rank (use_parallel_embedding=False)
    kv_element_bytes = dep.kv_cache.bytes_per_element(dep.model_dtype)
    out = []
    for s in range(dep.pp):
        n = len(mapping.pp_layers(cfg.num_hidden_layers, s))
        first, last = s == 0, s == dep.pp - 1
        weights = (n * layer_bytes + (embedding if first else 0)
                   + (unquantized_bytes * (vocab_rank * h + h) if last else 0))  # lm_head, ln_f
        out.append(Stage(
            layers=n, first=first, last=last, weights_bytes=weights,
            embedding_bytes=embedding if first else 0,
            linear_params=n * layer_params + (vocab_rank * h if last else 0),
            kv_bytes_per_token=2 * n * kv * kv_element_bytes,
            q_size=q,
        ))
    return out


def weight_bytes_total(cfg: ModelConfig, precision: WeightFormat) -> int:
    """Bytes of the whole model's weights at one rank (tp=1, pp=1)."""
    return stages(cfg, Deployment(precision=precision))[0].weights_bytes


def activation_bytes(cfg: ModelConfig, dep: Deployment, num_tokens: int, logits_rows: int, last: bool) -> int:
    """Peak activations of one rank for `num_tokens` tokens in flight (TensorRT reuses buffers
    across layers, so one layer's widest tensors count): residual + normed input, qkv, the fused
    fc|gate output and the activated product; plus float32 logits rows on the last stage."""
    qkv, _, fc, _, _ = dep.mapping.linear_shapes(cfg)  # (out, in) per rank
    width = 2 * cfg.hidden_size + qkv[0] + 3 * fc[0]
    logits = logits_rows * cfg.vocab_size * LOGITS_BYTES if last else 0
    return num_tokens * DTYPE_BYTES[dep.model_dtype] * width + logits


def pick_max_num_tokens(cfg: ModelConfig, gpu: GpuSpec, dep: Deployment) -> int:
    """Largest power of two <= seq_len (at least 1024 when seq_len allows) whose activations stay
    within ACTIVATION_SHARE of the GPU: one chunk then prefills a whole prompt where memory allows.
    Without chunked context one step must hold a whole prompt: seq_len."""
    if not dep.context_attention.chunked_context:
        return dep.seq_len
    budget = gpu.memory_bytes * ACTIVATION_SHARE
    tokens = 1 << (dep.seq_len.bit_length() - 1)
    while tokens > 1024 and activation_bytes(cfg, dep, tokens, 0, False) > budget:
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
            "deployment": asdict(d) | {"precision": d.precision.value, "kv_cache": d.kv_cache.value,
                                       "world_size": d.world_size},
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
    """Refuse combinations the hardware or TRT-LLM's mapping (Mapping.check_model) cannot run at all."""
    if dep.uses_fp8 and not gpu.fp8:
        weights = "|".join(w for w in ENGINE_PRECISIONS if w is not WeightFormat.FP8)
        kv_cache = "|".join(k for k in KvCacheFormat if k is not KvCacheFormat.FP8)
        what = "weights" if dep.precision is WeightFormat.FP8 else "KV cache"
        raise PlanError(f"FP8 ({what}) needs FP8 tensor cores (sm >= 89); {gpu.name} is sm{gpu.sm}: "
                        f"use --precision {weights} and --kv-cache {kv_cache}")
    refusal = gpu.integer_quant_refusal(dep.precision, dep.kv_cache)
    if refusal:
        raise PlanError(f"{refusal}: use --precision {WeightFormat.FP8} and --kv-cache {KvCacheFormat.FP8}")
    try:
        dep.mapping.check_model(cfg)
    except ConfigError as e:
        raise PlanError(str(e)) from None


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
    tokens = dep.max_num_tokens or pick_max_num_tokens(cfg, gpu, dep)
    stage_list = stages(cfg, dep)
    overhead = RUNTIME_OVERHEAD_BYTES

    def fit(logits_rows: int) -> tuple[int, Stage, int, int]:
        """(sequences that fit, limiting stage, its activation bytes, its KV budget)."""
        worst = None
        for s in stage_list:
            act = activation_bytes(cfg, dep, tokens, logits_rows, s.last)
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
    attention = dep.context_attention
    if not attention.chunked_context:
        notes.append(f"no chunked context ({attention.reason}): one step holds a whole prompt, so "
                     f"max_num_tokens={tokens} bounds the prompt length")
    elif tokens < dep.seq_len:
        notes.append(f"prompts longer than max_num_tokens={tokens} are prefilled in chunks (chunked context)")
    resolved = replace(dep, max_num_tokens=tokens, max_batch_size=max(batch, 1))

    estimates = {}
    decode_batch = max(1, min(resolved.max_batch_size, concurrent))
    if concurrent >= 1:
        peak = gpu.flops_s(dep.precision.compute_dtype)
        ceil_ = _roofline(stage_list, resolved, gpu.bandwidth_bytes_s, peak, decode_batch)
        expe = _roofline(stage_list, resolved, gpu.bandwidth_bytes_s * BANDWIDTH_EFFICIENCY,
                         peak * COMPUTE_EFFICIENCY, decode_batch)
        estimates = {k: Estimate(ceil_[k], expe[k]) for k in ceil_}

    return Plan(
        model_name=model_name, num_params=cfg.num_params(), gpu=gpu, deployment=resolved,
        weights_total_bytes=weight_bytes_total(cfg, dep.precision),
        weights_per_rank_bytes=max(s.weights_bytes for s in stage_list),
        kv_bytes_per_token_model=cfg.kv_bytes_per_token(dep.kv_cache.bytes_per_element(dep.model_dtype)),
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
