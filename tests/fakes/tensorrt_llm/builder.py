"""Fake tensorrt_llm.builder: BuildConfig (the 1.2.1 fields), build(), Engine.save().

The rules fathom depends on, from tensorrt_llm/builder.py of the 1.2 line:
- build() works on a deep copy of the BuildConfig, sets `plugin_config.dtype` to the model dtype,
  and `update_kv_cache_type` turns `kv_cache_type` None into `KVCacheType.PAGED` (for
  paged_kv_cache true) and switches `paged_state` off;
- `_init_max_seq_len` / `_common.check_max_num_tokens`: max_input_len is clipped to max_seq_len,
  max_num_tokens to max_seq_len * max_batch_size and up to tokens_per_block, opt_num_tokens is
  min(max_batch_size * max_beam_width, max_num_tokens);
- "Logics to control paged_context_fmha and fp8_context_fmha": FP8 context FMHA only for the FP8
  workflow (quant_algo FP8, W4A8_AWQ, NVFP4) and, with paged context FMHA, only beside an FP8 KV
  cache (switched on there); paged context FMHA off for an FP8 KV cache outside that workflow and
  for an INT8 KV cache;
- 100 <= sm < 120: INT8/INT4 weight-only models and an INT8 KV cache raise RuntimeError;
- FP8 weights or KV force strongly_typed; weight-only models get the (groupwise) weight-only
  matmul plugin in the model dtype; nccl_plugin is the model dtype for world_size > 1, else None;
- each override logs a warning through tensorrt_llm.logger (stdout).
`KVCacheType` is the enum of tensorrt_llm.bindings, which builder.py imports; `to_dict` writes its
name. `Engine.save` writes config.json {version, pretrained_config, build_config} from rank 0 (the
BuildConfig without dry_run and visualize_network) and rank{N}.engine. Where TensorRT's own builder
log goes is not in the TensorRT-LLM source; the fake writes one line to file descriptor 1 during
build, as native code would, so that fathom's fd-level redirect is exercised.
"""

import copy
import enum
import json
import os
from dataclasses import dataclass, field
from typing import Optional

import tensorrt_llm

from .logger import logger
from .plugin import PluginConfig

FP8_WORKFLOW = ("FP8", "W4A8_AWQ", "NVFP4")


class KVCacheType(enum.Enum):
    CONTINUOUS = 0
    PAGED = 1
    DISABLED = 2

    @staticmethod
    def from_string(name: str) -> "KVCacheType":
        return KVCacheType[name.upper()]


@dataclass
class BuildConfig:
    max_input_len: int = 1024
    max_seq_len: int = None
    opt_batch_size: int = 8
    max_batch_size: int = 2048
    max_beam_width: int = 1
    max_num_tokens: int = 8192
    opt_num_tokens: Optional[int] = None
    max_prompt_embedding_table_size: int = 0
    kv_cache_type: KVCacheType = None
    gather_context_logits: int = False
    gather_generation_logits: int = False
    strongly_typed: bool = True
    force_num_profiles: Optional[int] = None
    profiling_verbosity: str = "layer_names_only"
    enable_debug_output: bool = False
    max_draft_len: int = 0
    speculative_decoding_mode: object = "NONE"
    use_refit: bool = False
    input_timing_cache: str = None
    output_timing_cache: str = "model.cache"
    lora_config: dict = field(default_factory=dict)
    weight_sparsity: bool = False
    weight_streaming: bool = False
    plugin_config: PluginConfig = field(default_factory=PluginConfig)
    use_strip_plan: bool = False
    max_encoder_input_len: int = 1024
    dry_run: bool = False
    visualize_network: str = None
    monitor_memory: bool = False
    use_mrope: bool = False

    def __post_init__(self):
        tensorrt_llm.CALLS.append(("BuildConfig", {k: v for k, v in self.__dict__.items() if k != "plugin_config"}))

    def to_dict(self) -> dict:
        output = copy.deepcopy(self.__dict__)
        if output.get("kv_cache_type") is not None:
            output["kv_cache_type"] = str(output["kv_cache_type"].name)
        output["plugin_config"] = output["plugin_config"].model_dump()
        return output


class Engine:
    def __init__(self, config: dict, rank: int):
        self.config = config
        self.rank = rank

    def save(self, engine_dir: str) -> None:
        tensorrt_llm.CALLS.append(("save", engine_dir, self.rank))
        os.makedirs(engine_dir, exist_ok=True)
        if self.rank == 0:
            with open(os.path.join(engine_dir, "config.json"), "w", encoding="utf-8") as f:
                json.dump(self.config, f, indent=4)
        with open(os.path.join(engine_dir, f"rank{self.rank}.engine"), "wb") as f:
            f.write(f"FAKE TensorRT engine, rank {self.rank}\n".encode())


def _pretrained(model) -> dict:
    return model.config if isinstance(model.config, dict) else model.config.to_dict()


def _override(plugin: PluginConfig, name: str, value, message: str) -> None:
    if getattr(plugin, name) != value:
        setattr(plugin, name, value)
        logger.warning(message)


def _context_fmha(bc: BuildConfig, quant_algo, kv_algo) -> None:
    pc, fp8_kv, sm = bc.plugin_config, kv_algo == "FP8", tensorrt_llm.SM_VERSION
    if not pc.context_fmha:
        pc.use_fp8_context_fmha = pc.use_paged_context_fmha = False
    elif quant_algo not in FP8_WORKFLOW:
        _override(pc, "use_fp8_context_fmha", False, "FP8 Context FMHA is disabled because it must be used together "
                                                     "with the fp8 quantization workflow.")
        if fp8_kv:
            _override(pc, "use_paged_context_fmha", False, "FP8 Paged Context FMHA is disabled because FP8 context "
                                                           "FMHA is disabled.")
    elif sm < 89:
        _override(pc, "use_fp8_context_fmha", False, "FP8 context FMHA is disabled because it is only supported on "
                                                     "Ada and Hopper Arch.")
        if fp8_kv:
            _override(pc, "use_paged_context_fmha", False, "FP8 Paged Context FMHA is disabled because FP8 context "
                                                           "FMHA is disabled.")
    elif pc.use_paged_context_fmha and not fp8_kv:
        _override(pc, "use_fp8_context_fmha", False, "FP8 Paged Context FMHA is disabled because it must be used "
                                                     "together with fp8 KV Cache.")
    elif pc.use_paged_context_fmha:
        _override(pc, "use_fp8_context_fmha", True, "FP8 Context FMHA is enabled to support FP8 Paged Context FMHA.")
    if kv_algo == "INT8":
        _override(pc, "use_paged_context_fmha", False, "Paged Context FMHA is disabled because it doesn't work with "
                                                       "int8 kv cache currently.")
    if 100 <= sm < 120 and (quant_algo in ("W8A16", "W4A16", "W4A16_AWQ") or kv_algo == "INT8"):
        raise RuntimeError("INT8/INT4 quantization is not supported on SM>=100.")


def _max_tokens(bc: BuildConfig) -> None:
    pc = bc.plugin_config
    bc.max_input_len = min(bc.max_input_len, bc.max_seq_len)
    if bc.opt_num_tokens is None and not pc.multiple_profiles:
        bc.opt_num_tokens = min(bc.max_batch_size * bc.max_beam_width, bc.max_num_tokens)
    bc.max_num_tokens = min(bc.max_num_tokens, bc.max_seq_len * bc.max_batch_size)
    if pc.context_fmha and bc.max_num_tokens < pc.tokens_per_block:
        bc.max_num_tokens = pc.tokens_per_block
    bc.opt_num_tokens = min(bc.opt_num_tokens, bc.max_num_tokens) if bc.opt_num_tokens else bc.opt_num_tokens


def build(model, build_config: BuildConfig) -> Engine:
    build_config = copy.deepcopy(build_config)  # as upstream: the caller's config is not changed
    pretrained = _pretrained(model)
    quant = pretrained.get("quantization") or {}
    quant_algo, kv_algo = quant.get("quant_algo"), quant.get("kv_cache_quant_algo")
    pc = build_config.plugin_config
    pc.dtype = pretrained["dtype"]
    if build_config.kv_cache_type is None:
        build_config.kv_cache_type = KVCacheType.PAGED if pc.paged_kv_cache in (True, None) else KVCacheType.CONTINUOUS
    pc.paged_kv_cache = build_config.kv_cache_type == KVCacheType.PAGED
    _override(pc, "paged_state", False, "Overriding paged_state to False")
    _max_tokens(build_config)
    if "FP8" in (quant_algo, kv_algo):
        build_config.strongly_typed = True
    _context_fmha(build_config, quant_algo, kv_algo)
    if quant_algo == "W4A16_AWQ":
        pc.weight_only_groupwise_quant_matmul_plugin = pretrained["dtype"]
    elif quant_algo == "W8A16":
        pc.weight_only_quant_matmul_plugin = pretrained["dtype"]
    pc.set_nccl_plugin(pretrained["dtype"] if pretrained["mapping"]["world_size"] > 1 else None)
    os.write(1, b"[TensorRT] fake native builder output\n")
    tensorrt_llm.CALLS.append(("build", model.rank, build_config.to_dict()))
    if tensorrt_llm.FAIL_AT_RANK == model.rank:
        raise RuntimeError(f"fake engine build failure at rank {model.rank}")
    saved = build_config.to_dict()
    for key in ("dry_run", "visualize_network"):
        saved.pop(key)
    config = {"version": tensorrt_llm.__version__, "pretrained_config": pretrained, "build_config": saved}
    return Engine(config, model.rank)
