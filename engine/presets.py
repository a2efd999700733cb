"""Build presets: what TensorRT-LLM should be told to build, per GPU x precision, sized for 16K.

A preset is plain data (profiles/presets/<gpu>-<precision>.json) generated from the planner by
profiles/make_presets.py. The same sizing runs on the fly for `fathom build --gpu NAME`. Choices
follow tensorrt-llm 1.2.1's `tensorrt_llm/builder.py` (BuildConfig) and `tensorrt_llm/plugin/plugin.py`
(PluginConfig):
- max_seq_len = max_input_len = 16384 (otherwise max_seq_len comes from max_position_embeddings,
  131072, and max_input_len defaults to 1024); max_num_tokens and max_batch_size from the planner;
- paged KV cache with paged context FMHA, which is what chunked context (a runtime switch) needs
  to prefill prompts longer than max_num_tokens, except where build() would switch it off
  (engine/trtllm_rules.py): there the settings ask for none, chunked context is off and
  max_num_tokens holds a whole prompt;
- bf16: gemm_plugin "auto"; FP8: gemm_plugin disabled. FP8 linears run TensorRT's own FP8 GEMM
  either way (tensorrt_llm/quantization/layers.py: FP8Linear takes the plugin only for
  gemm_plugin "fp8", and "auto" reads as the model dtype); disabled differs from "auto" only for
  the unquantized linears (lm_head), which then use TensorRT's GEMM instead of cuBLASLt;
- FP8 context FMHA exactly where build() keeps it: FP8 weights beside an FP8 KV cache.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from fathom.build.config import DEFAULT_MAX_SEQ_LEN, preset
from fathom.build.errors import CheckpointError, ConfigError, PlanError
from fathom.build.precision import KvCacheFormat, QuantAlgo, WeightFormat

from .fit_options import require_fit
from .gpus import GIB, GpuSpec, catalogue
from .planner import ENGINE_PRECISIONS, Deployment, Plan, plan
from .trtllm_rules import check_runtime, check_step_holds_a_prompt, context_attention

if TYPE_CHECKING:
    from fathom.build.checkpoint import CheckpointInfo

PRESET_MODEL = "fathom-r1-14b"
PRESET_SEQ_LEN = DEFAULT_MAX_SEQ_LEN
TOKENS_PER_BLOCK = 32  # PluginConfig.tokens_per_block default
TP_CHOICES = (1, 2, 4, 8)
GENERATED_BY = "python profiles/make_presets.py (from fathom.engine.planner; regenerate, do not edit by hand)"


# ---- what a checkpoint holds ----------------------------------------------------------------------
def engine_formats(ckpt: CheckpointInfo) -> tuple[WeightFormat, KvCacheFormat]:
    """(weights, KV cache) of a checkpoint or engine; an engine's weights are quantized or 16-bit float."""
    weights = ckpt.weights
    if weights not in ENGINE_PRECISIONS:
        wanted = " or ".join(repr(w.dtype) for w in ENGINE_PRECISIONS if w.dtype is not None)
        raise ConfigError(f"{ckpt.path / 'config.json'}: field 'dtype' = {ckpt.dtype!r}, "
                          f"expected {wanted} for an engine")
    return weights, ckpt.kv_cache


def read_build_checkpoint(path: str | Path) -> CheckpointInfo:
    """The TRT-LLM checkpoint an engine is built from (build/checkpoint.py reads it; no weights read)."""
    from fathom.build.checkpoint import read_checkpoint
    from fathom.build.quant.quantizer import trtllm_padding
    from fathom.build.sources import resolve_model

    src = resolve_model(str(path))
    if src.kind != "checkpoint":
        raise CheckpointError(f"{path}: expected a TRT-LLM checkpoint (config.json with 'architecture' and 'mapping'), "
                              f"got a {src.kind} {'directory' if src.path else 'source'}; convert it first with fathom convert")
    ckpt = read_checkpoint(path)
    refusal = trtllm_padding(ckpt.quantization, ckpt.cfg, ckpt.mapping.tp_size)
    if refusal:
        raise PlanError(f"{path}: TensorRT-LLM cannot build this checkpoint: {refusal}")
    return ckpt


def describe_model(spec: str) -> dict:
    """What `fathom plan MODEL` needs: name, config, and for a checkpoint or engine its precision and
    mapping (None where the MODEL does not fix them). Only config files are read."""
    from fathom.build.sources import resolve_model

    src = resolve_model(spec)
    out = {"name": spec.partition(":")[2].partition("@")[0] if src.kind == "random" else Path(spec).name,
           "config": src.config, "precision": None, "kv_cache": None, "tp": None, "pp": None}
    if src.kind in ("checkpoint", "engine"):
        from fathom.build.checkpoint import read_checkpoint

        ckpt = read_checkpoint(src.path)
        out["precision"], out["kv_cache"] = engine_formats(ckpt)
        out["tp"], out["pp"] = ckpt.mapping.tp_size, ckpt.mapping.pp_size
    return out


# ---- build settings ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildSettings:
    name: str | None  # preset name; None when sized on the fly for --gpu
    gpu: str  # catalogue key
    model: str
    precision: WeightFormat
    kv_cache: KvCacheFormat
    tp: int
    pp: int
    build_config: dict  # tensorrt_llm.BuildConfig keyword arguments
    plugin_config: dict  # tensorrt_llm.plugin.PluginConfig attributes
    runtime: dict = field(default_factory=dict)  # what the runtime should pass when loading
    planned: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def deployment(self) -> Deployment:
        b = self.build_config
        return Deployment(precision=self.precision, kv_cache=self.kv_cache, seq_len=b["max_seq_len"], tp=self.tp,
                          pp=self.pp, max_num_tokens=b["max_num_tokens"], max_batch_size=b["max_batch_size"])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d


def plugin_settings(precision: WeightFormat, kv_cache: KvCacheFormat) -> dict:
    attention = context_attention(precision, kv_cache)
    return {
        "gpt_attention_plugin": "auto",
        "gemm_plugin": None if precision is WeightFormat.FP8 else "auto",  # None = disabled
        "context_fmha": True,
        "use_paged_context_fmha": attention.paged_context_fmha,  # needed by chunked context and KV reuse
        "use_fp8_context_fmha": attention.fp8_context_fmha,
        "paged_kv_cache": True,
        "remove_input_padding": True,
        "tokens_per_block": TOKENS_PER_BLOCK,
    }


def settings_from_plan(p: Plan, name: str | None, model: str) -> BuildSettings:
    d = p.deployment
    return BuildSettings(
        name=name, gpu=p.gpu.key, model=model, precision=d.precision, kv_cache=d.kv_cache, tp=d.tp, pp=d.pp,
        build_config={"max_seq_len": d.seq_len, "max_input_len": d.seq_len, "max_num_tokens": d.max_num_tokens,
                      "max_batch_size": d.max_batch_size, "max_beam_width": 1},
        plugin_config=plugin_settings(d.precision, d.kv_cache),
        runtime={"enable_chunked_context": d.context_attention.chunked_context,
                 "kv_cache_free_gpu_memory_fraction": 0.9},
        planned=planned_summary(p), notes=p.notes,
    )


def planned_summary(p: Plan) -> dict:
    r = lambda x: round(x, 1)  # noqa: E731
    return {
        "concurrent_sequences": p.concurrent_sequences,
        "weights_per_rank_gib": r(p.weights_per_rank_bytes / GIB),
        "kv_bytes_per_sequence_rank": p.kv_bytes_per_sequence_rank,
        "decode_batch1_tok_s_ceiling": r(p.decode_batch1.ceiling),
        "decode_max_batch_tok_s_ceiling": r(p.decode_max_batch.ceiling),
        "ttft_ms_ceiling": r(p.ttft_ms.ceiling),
    }


def preset_name(gpu_key: str, precision: WeightFormat) -> str:
    return f"{gpu_key}-{precision}"


def fathom_preset(gpu: GpuSpec, precision: WeightFormat) -> BuildSettings:
    """The preset for Fathom-R1-14B on `gpu`: the smallest tp that fits 16K sequences."""
    cfg = preset(PRESET_MODEL)
    for tp in TP_CHOICES:
        p = plan(cfg, gpu, Deployment(precision=precision, kv_cache=KvCacheFormat.default_for(precision),
                                      seq_len=PRESET_SEQ_LEN, tp=tp), model_name=PRESET_MODEL)
        if p.fits:
            return settings_from_plan(p, preset_name(gpu.key, precision), PRESET_MODEL)
    raise PlanError(f"{PRESET_MODEL} {precision} does not fit {gpu.name} with tp up to {TP_CHOICES[-1]}")


def render_presets() -> dict[str, dict]:
    """Every preset file's content, by name: bf16 everywhere, FP8 where the GPU has FP8 tensor cores."""
    out = {}
    for gpu in catalogue().values():
        for precision in (WeightFormat.BF16, WeightFormat.FP8) if gpu.fp8 else (WeightFormat.BF16,):
            s = fathom_preset(gpu, precision)
            out[s.name] = {"description": f"{PRESET_MODEL} {precision} (KV {s.kv_cache}) on {gpu.name}, "
                                          f"tp={s.tp}, sized for {PRESET_SEQ_LEN:,}-token sequences",
                           **s.to_dict(), "generated_by": GENERATED_BY}
    return out


def preset_text(content: dict) -> str:
    return json.dumps(content, indent=2) + "\n"


def _preset_dir():
    return resources.files("fathom.profiles").joinpath("presets")


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in _preset_dir().iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> BuildSettings:
    names = preset_names()
    if name not in names:
        raise PlanError(f"--preset {name!r}: unknown preset; valid presets: {', '.join(names)}")
    raw = json.loads(_preset_dir().joinpath(f"{name}.json").read_text())
    keys = {f for f in BuildSettings.__dataclass_fields__}
    values = {k: (tuple(v) if k == "notes" else v) for k, v in raw.items() if k in keys}
    values["precision"] = WeightFormat.parse(values["precision"], f"{name}.json: field 'precision' =")
    values["kv_cache"] = KvCacheFormat.parse(values["kv_cache"], f"{name}.json: field 'kv_cache' =")
    return BuildSettings(**values)


# ---- contradictions between a preset and a checkpoint -----------------------------------------------
def _algo_text(algo: QuantAlgo | None) -> str:
    return repr(algo.value) if algo is not None else "None"


def _sized_as(weights: WeightFormat) -> WeightFormat:
    """The format a preset is sized for: fp16 has bf16's bytes and tensor-core rate."""
    return WeightFormat.BF16 if weights is WeightFormat.FP16 else weights


def _way_out(gpu: GpuSpec, weights: WeightFormat) -> str:
    name = preset_name(gpu.key, _sized_as(weights))
    return f"use preset {name} or --gpu {gpu.key}" if name in preset_names() else f"use --gpu {gpu.key}"


def check_compat(s: BuildSettings, ckpt: CheckpointInfo, gpu: GpuSpec) -> None:
    """Refuse settings that contradict the checkpoint or the GPU, with the reason and a way out."""
    label = f"preset {s.name}" if s.name else f"settings for --gpu {s.gpu}"
    weights, kv_cache = engine_formats(ckpt)
    algo = f"quantization.quant_algo = {_algo_text(weights.quant_algo)}"
    if s.plugin_config.get("use_fp8_context_fmha") and weights is not WeightFormat.FP8:
        raise PlanError(f"{label} enables FP8 context FMHA but {ckpt.path} is a {weights} checkpoint ({algo}); "
                        f"{_way_out(gpu, weights)}")
    if _sized_as(s.precision) is not _sized_as(weights):
        raise PlanError(f"{label} builds {s.precision} kernels but {ckpt.path} is a {weights} checkpoint ({algo}); "
                        f"{_way_out(gpu, weights)}")
    if s.kv_cache is not kv_cache:
        raise PlanError(f"{label} is sized for a {s.kv_cache} KV cache but {ckpt.path} has a {kv_cache} one "
                        f"(quantization.kv_cache_quant_algo = {_algo_text(kv_cache.quant_algo)}); use --gpu {gpu.key}")
    if (weights is WeightFormat.FP8 or kv_cache is KvCacheFormat.FP8) and not gpu.fp8:
        raise PlanError(f"{ckpt.path} holds FP8 tensors but {gpu.name} is sm{gpu.sm}; FP8 needs sm >= 89")
    refusal = gpu.integer_quant_refusal(weights, kv_cache)
    if refusal:
        raise PlanError(f"{ckpt.path}: {refusal}; convert with --precision {WeightFormat.FP8} "
                        f"--kv-cache {KvCacheFormat.FP8}")
    tp, pp = ckpt.mapping.tp_size, ckpt.mapping.pp_size
    if (s.tp, s.pp) != (tp, pp):
        raise PlanError(f"{label} is sized for tp={s.tp} pp={s.pp} but {ckpt.path} is mapped tp={tp} pp={pp}; "
                        f"convert with --tp {s.tp} --pp {s.pp}, or use --gpu {gpu.key} to size for this mapping")
    attention = context_attention(weights, kv_cache)
    if s.plugin_config.get("use_paged_context_fmha") and not attention.paged_context_fmha:
        raise PlanError(f"{label} asks for use_paged_context_fmha but {attention.reason} ({ckpt.path}: {weights} "
                        f"weights, {kv_cache} KV cache); use --gpu {gpu.key}")
    check_runtime(s.runtime, s.plugin_config, label)
    check_step_holds_a_prompt(s.build_config, s.runtime, label)


def with_overrides(s: BuildSettings, max_seq_len: int | None = None, max_input_len: int | None = None,
                   max_num_tokens: int | None = None, max_batch_size: int | None = None) -> BuildSettings:
    b = dict(s.build_config)
    if max_seq_len is not None:
        b["max_seq_len"] = max_seq_len
        b["max_input_len"] = min(b["max_input_len"], max_seq_len)
    for key, value in (("max_input_len", max_input_len), ("max_num_tokens", max_num_tokens),
                       ("max_batch_size", max_batch_size)):
        if value is not None:
            b[key] = value
    if b["max_input_len"] > b["max_seq_len"]:
        raise PlanError(f"--max-input-len {b['max_input_len']} exceeds --max-seq-len {b['max_seq_len']}")
    return replace(s, build_config=b)


def settings_for_checkpoint(ckpt: CheckpointInfo, gpu: GpuSpec, preset_id: str | None,
                            **overrides) -> tuple[BuildSettings, Plan]:
    """Settings from preset `preset_id` (checked against the checkpoint, then planned for the
    checkpoint's own config) or sized for `gpu` by the planner; CLI overrides applied; refuses
    what contradicts the checkpoint or does not fit."""
    if preset_id is None:
        weights, kv_cache = engine_formats(ckpt)
        dep = Deployment(precision=weights, kv_cache=kv_cache, seq_len=overrides.get("max_seq_len") or PRESET_SEQ_LEN,
                         tp=ckpt.mapping.tp_size, pp=ckpt.mapping.pp_size,
                         max_num_tokens=overrides.get("max_num_tokens"), max_batch_size=overrides.get("max_batch_size"))
        p = plan(ckpt.cfg, gpu, dep, model_name=ckpt.path.name)
        require_fit(p, ckpt.cfg)
        settings = with_overrides(settings_from_plan(p, None, ckpt.path.name), max_input_len=overrides.get("max_input_len"))
        check_compat(settings, ckpt, gpu)
        return settings, p
    settings = with_overrides(load_preset(preset_id), **overrides)
    check_compat(settings, ckpt, gpu)
    p = plan(ckpt.cfg, gpu, settings.deployment(), model_name=ckpt.path.name)
    require_fit(p, ckpt.cfg)
    return settings, p
