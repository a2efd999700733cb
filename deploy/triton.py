"""A Triton Inference Server model repository for a fathom engine (`fathom export triton`).

The layout is the tensorrtllm_backend's inflight_batcher_llm one, as the pinned tensorrt-llm release
(engine/trtllm.py SUPPORTED_TRTLLM_VERSION) ships it in NVIDIA/TensorRT-LLM
triton_backend/all_models/inflight_batcher_llm/:

    OUT/preprocessing/config.pbtxt, 1/model.py   python: tokenizes text_input (container's model.py)
    OUT/tensorrt_llm/config.pbtxt, 1/            the C++ backend "tensorrtllm" running the engine
    OUT/postprocessing/config.pbtxt, 1/model.py  python: detokenizes (container's model.py)
    OUT/<model-name>/config.pbtxt, 1/            the ensemble chaining the three: the model clients call
    OUT/launch.sh                                tritonserver / mpirun command, health and generate checks

Every parameter of the templates is written. A value comes from the engine manifest (engine dir,
max batch size, beam width, chunked context, block reuse, KV fraction, multi-block mode, ...), from
the command line, or is the empty string, which the backend reads as "not set" exactly as it reads
a template's unfilled `${...}` (triton_backend/inflight_batcher_llm/src/model_instance_state.cc: a
number or boolean that does not parse keeps the default; encoder_model_path, gpu_device_ids and
the guided-decoding paths are checked for empty). Fixed choices: inflight_fused_batching; decoupled
mode on, so `generate_stream` and gRPC streaming work, while `/generate` (stream false) still gets
the one final response; exclude_input_in_output true (text_output is the completion only);
guaranteed_no_evict scheduling and no KV host offload, as fathom's own trtllm executor runs it.

The python models are not copied: `1/model.py` is a symbolic link to the file the Triton
TensorRT-LLM container ships under /app/all_models/inflight_batcher_llm (the backend's
dockerfile/Dockerfile.triton.trt_llm_backend copies triton_backend/all_models there). Outside that
container, replace each link with the same file from that release's source tree.

tensorrt_llm_bls is not written: it exists to run a draft model for speculative decoding and
multimodal encoders from Python, and fathom engines are decoder-only Qwen2 without draft tokens
(build_config.max_draft_len 0), so it would only add a Python hop to each request.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from fathom.build.atomic import atomic_output_dir
from fathom.build.config import read_json
from fathom.build.errors import CheckpointError, ConfigError
from fathom.build.precision import check_dtype
from fathom.engine.manifest import MANIFEST_NAME, read_engine_manifest
from fathom.runtime.trtllm_settings import RuntimeSettings

from . import triton_tensors as tt
from .triton_launch import launch_script
from .triton_pbtxt import Repeated, Token, to_pbtxt

CONTAINER_MODELS_DIR = "/app/all_models/inflight_batcher_llm"
PYTHON_MODELS = ("preprocessing", "postprocessing")
ENGINE_MODEL = "tensorrt_llm"
UNSET = ""  # what the backend reads as "not set" (see the module docstring)
TRITON_TYPES = {"float32": "FP32", "float16": "FP16", "bfloat16": "BF16"}  # model dtype word -> Triton type
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class TritonExportOptions:
    tokenizer_dir: str | Path | None = None  # None: the engine dir's own tokenizer files
    model_name: str = "fathom"  # the ensemble, the model clients call
    max_queue_delay_us: int = 0
    kv_cache_free_gpu_mem_fraction: float | None = None  # None: the manifest's runtime value
    force: bool = False


@dataclass(frozen=True)
class TritonDeployment:
    """Everything the configs and launch.sh are filled from."""

    engine_dir: Path
    tokenizer_dir: Path
    model_name: str
    ranks: int  # tp x pp: MPI ranks, one GPU each
    max_batch_size: int
    max_beam_width: int
    logits_type: str  # Triton type of the engine's logits
    runtime: RuntimeSettings
    max_queue_delay_us: int


def plan_triton(engine_dir: str | Path, options: TritonExportOptions) -> TritonDeployment:
    """Check the engine and the options; one-line errors before anything is written."""
    from fathom.build.sources import resolve_model

    engine_dir = Path(engine_dir).absolute()
    manifest = read_engine_manifest(engine_dir)
    source = str(engine_dir / MANIFEST_NAME)
    name = options.model_name
    if not _MODEL_NAME.fullmatch(name) or name in (*PYTHON_MODELS, ENGINE_MODEL):
        raise ConfigError(f"--model-name {name!r}: expected letters, digits, '_', '.' or '-', and not one of "
                          f"{', '.join((*PYTHON_MODELS, ENGINE_MODEL))}")
    if isinstance(options.max_queue_delay_us, bool) or not isinstance(options.max_queue_delay_us, int) \
            or options.max_queue_delay_us < 0:
        raise ConfigError(f"--max-queue-delay-us {options.max_queue_delay_us!r}: expected an integer >= 0")
    runtime = RuntimeSettings.from_manifest(manifest.get("runtime") or {}, source)
    fraction = options.kv_cache_free_gpu_mem_fraction
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ConfigError(f"--kv-cache-free-gpu-mem-fraction {fraction!r}: expected a number in (0, 1]")
        runtime = RuntimeSettings(**{**runtime.to_dict(), "kv_cache_free_gpu_memory_fraction": float(fraction)})
    build, mapping = manifest.get("build_config"), manifest.get("mapping")
    for key, section in (("build_config", build), ("mapping", mapping)):
        if not isinstance(section, dict):
            raise CheckpointError(f"{source}: missing field {key!r}")
    for key in ("max_batch_size", "max_beam_width"):
        if not isinstance(build.get(key), int):
            raise CheckpointError(f"{source}: field 'build_config.{key}' = {build.get(key)!r}, expected an integer")
    if not isinstance(mapping.get("world_size"), int) or mapping["world_size"] < 1:
        raise CheckpointError(f"{source}: field 'mapping.world_size' = {mapping.get('world_size')!r}, "
                              f"expected an integer >= 1")
    config_path = engine_dir / "config.json"
    logits = read_json(config_path).get("pretrained_config", {}).get("logits_dtype", "float32")
    logits = check_dtype(logits, f"{config_path}: field 'pretrained_config.logits_dtype' =")
    tokenizer = resolve_model(str(engine_dir), tokenizer=options.tokenizer_dir).tokenizer_dir
    if tokenizer is None:
        raise ConfigError(f"{engine_dir}: no tokenizer.json or tokenizer_config.json in the engine dir; pass "
                          f"--tokenizer DIR (the model's Hugging Face directory)")
    return TritonDeployment(engine_dir, Path(tokenizer).absolute(), name, mapping["world_size"],
                            build["max_batch_size"], build["max_beam_width"], TRITON_TYPES[logits], runtime,
                            options.max_queue_delay_us)


def _flag(value: bool | None) -> str:
    return UNSET if value is None else ("true" if value else "false")


def _number(value) -> str:
    return UNSET if value is None else str(value)


def tensorrt_llm_parameters(d: TritonDeployment) -> dict[str, str]:
    """The `parameters` of the tensorrt_llm model, in the template's order."""
    rt = d.runtime
    return {
        "max_beam_width": str(d.max_beam_width),
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
        "gpt_model_type": "inflight_fused_batching",
        "gpt_model_path": str(d.engine_dir),
        "encoder_model_path": UNSET,
        "max_tokens_in_paged_kv_cache": _number(rt.max_tokens_in_paged_kv_cache),
        "max_attention_window_size": UNSET,
        "sink_token_length": UNSET,
        "batch_scheduler_policy": "guaranteed_no_evict",
        "kv_cache_free_gpu_mem_fraction": _number(rt.kv_cache_free_gpu_memory_fraction),
        "cross_kv_cache_fraction": UNSET,
        "kv_cache_host_memory_bytes": UNSET,
        "kv_cache_onboard_blocks": UNSET,
        "enable_trt_overlap": UNSET,
        "exclude_input_in_output": "true",
        "cancellation_check_period_ms": UNSET,
        "stats_check_period_ms": UNSET,
        "iter_stats_max_iterations": UNSET,
        "request_stats_max_iterations": UNSET,
        "enable_kv_cache_reuse": _flag(rt.kv_cache_enable_block_reuse),
        "normalize_log_probs": UNSET,
        "enable_chunked_context": _flag(rt.enable_chunked_context),
        "gpu_device_ids": UNSET,
        "participant_ids": UNSET,
        "num_nodes": UNSET,
        "lora_cache_optimal_adapter_size": UNSET,
        "lora_cache_max_adapter_size": UNSET,
        "lora_cache_gpu_memory_fraction": UNSET,
        "lora_cache_host_memory_bytes": UNSET,
        "lora_prefetch_dir": UNSET,
        "decoding_mode": UNSET,
        "executor_worker_path": "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker",
        "lookahead_window_size": UNSET,
        "lookahead_ngram_size": UNSET,
        "lookahead_verification_set_size": UNSET,
        "medusa_choices": UNSET,
        "eagle_choices": UNSET,
        "gpu_weights_percent": UNSET,
        "enable_context_fmha_fp32_acc": _flag(rt.enable_context_fmha_fp32_acc),
        "multi_block_mode": _flag(rt.multi_block_mode),
        "cuda_graph_mode": _flag(rt.cuda_graph_mode),
        "cuda_graph_cache_size": UNSET,
        "speculative_decoding_fast_logits": UNSET,
        "tokenizer_dir": str(d.tokenizer_dir),
        "guided_decoding_backend": UNSET,
        "xgrammar_tokenizer_info_path": UNSET,
    }


def _tensors(tensors: list[tt.Tensor]) -> list[dict]:
    out = []
    for t in tensors:
        entry = {"name": t.name, "data_type": Token(f"TYPE_{t.data_type}"), "dims": list(t.dims)}
        if t.scalar:
            entry["reshape"] = {"shape": []}
        if t.optional:
            entry["optional"] = True
        if t.ragged:
            entry["allow_ragged_batch"] = True
        out.append(entry)
    return out


def _parameters(values: dict[str, str]) -> Repeated:
    return Repeated({"key": k, "value": {"string_value": v}} for k, v in values.items())


def _queue(d: TritonDeployment) -> dict:
    return {"preferred_batch_size": [d.max_batch_size], "max_queue_delay_microseconds": d.max_queue_delay_us,
            "default_queue_policy": {"max_queue_size": 0}}  # 0: no limit (here and in the C++ executor)


def _cpu_instances(count: int = 1) -> list[dict]:
    return [{"count": count, "kind": Token("KIND_CPU")}]


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict:
    return {"model_name": model, "model_version": -1,
            "input_map": Repeated({"key": k, "value": v} for k, v in inputs.items()),
            "output_map": Repeated({"key": k, "value": v} for k, v in outputs.items())}


def model_configs(d: TritonDeployment) -> dict[str, dict]:
    """Model directory name -> its ModelConfig, as data for triton_pbtxt."""
    tokenizer, engine = str(d.tokenizer_dir), str(d.engine_dir)
    return {
        "preprocessing": {
            "name": "preprocessing", "backend": "python", "max_batch_size": d.max_batch_size,
            "dynamic_batching": _queue(d),
            "input": _tensors(tt.PREPROCESSING_INPUTS), "output": _tensors(tt.PREPROCESSING_OUTPUTS),
            "parameters": _parameters({"tokenizer_dir": tokenizer, "add_special_tokens": "true",
                                       "multimodal_model_path": UNSET, "gpt_model_path": engine,
                                       "max_num_images": UNSET, "hf_model_path": UNSET}),
            "instance_group": _cpu_instances(),
        },
        ENGINE_MODEL: {
            "name": ENGINE_MODEL, "backend": "tensorrtllm", "max_batch_size": d.max_batch_size,
            "model_transaction_policy": {"decoupled": True},
            "dynamic_batching": _queue(d),
            "input": _tensors(tt.tensorrt_llm_inputs(d.logits_type)),
            "output": _tensors(tt.tensorrt_llm_outputs(d.logits_type)),
            "instance_group": _cpu_instances(),  # the backend places the engine's ranks on GPUs itself
            "parameters": _parameters(tensorrt_llm_parameters(d)),
        },
        "postprocessing": {
            "name": "postprocessing", "backend": "python", "max_batch_size": d.max_batch_size,
            "dynamic_batching": {},
            "input": _tensors(tt.POSTPROCESSING_INPUTS), "output": _tensors(tt.POSTPROCESSING_OUTPUTS),
            "parameters": _parameters({"tokenizer_dir": tokenizer, "skip_special_tokens": "true"}),
            "instance_group": _cpu_instances(),
        },
        d.model_name: {
            "name": d.model_name, "platform": "ensemble", "max_batch_size": d.max_batch_size,
            "input": _tensors(tt.ENSEMBLE_INPUTS), "output": _tensors(tt.ensemble_outputs(d.logits_type)),
            "ensemble_scheduling": {"step": [
                _step("preprocessing", tt.PREPROCESSING_INPUT_MAP, tt.PREPROCESSING_OUTPUT_MAP),
                _step(ENGINE_MODEL, tt.TENSORRT_LLM_INPUT_MAP, tt.tensorrt_llm_output_map(d.logits_type)),
                _step("postprocessing", tt.POSTPROCESSING_INPUT_MAP, tt.POSTPROCESSING_OUTPUT_MAP),
            ]},
        },
    }


def export_triton(engine_dir: str | Path, out: str | Path, options: TritonExportOptions) -> Path:
    """Write the model repository OUT for `engine_dir`: all of it, or nothing (atomic_output_dir)."""
    from fathom.engine.trtllm import SUPPORTED_TRTLLM_VERSION

    d = plan_triton(engine_dir, options)
    header = (f"Written by fathom export triton for {d.engine_dir}\n"
              f"Template: NVIDIA/TensorRT-LLM triton_backend/all_models/inflight_batcher_llm "
              f"(tensorrt-llm {SUPPORTED_TRTLLM_VERSION})")
    with atomic_output_dir(out, force=options.force) as tmp:
        for name, config in model_configs(d).items():
            (tmp / name / "1").mkdir(parents=True)
            (tmp / name / "config.pbtxt").write_text(to_pbtxt(config, header))
        for name in PYTHON_MODELS:
            os.symlink(f"{CONTAINER_MODELS_DIR}/{name}/1/model.py", tmp / name / "1" / "model.py")
        script = tmp / "launch.sh"
        script.write_text(launch_script(d.model_name, d.ranks, ENGINE_MODEL, PYTHON_MODELS, CONTAINER_MODELS_DIR,
                                        SUPPORTED_TRTLLM_VERSION))
        script.chmod(0o755)
    return Path(out).absolute()
