"""Fake tensorrt_llm.builder: BuildConfig (the 1.2.1 fields), build(), Engine.save()."""

import copy
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

import tensorrt_llm

from .plugin import PluginConfig


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
    kv_cache_type: object = None
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
        tensorrt_llm.CALLS.append(("BuildConfig", {k: v for k, v in asdict(self).items() if k != "plugin_config"}))

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["plugin_config"] = self.plugin_config.to_dict()
        return d


class Engine:
    def __init__(self, config: dict, rank: int):
        self.config = config
        self.rank = rank

    def save(self, engine_dir: str) -> None:
        tensorrt_llm.CALLS.append(("save", engine_dir, self.rank))
        os.makedirs(engine_dir, exist_ok=True)
        if self.rank == 0:
            with open(os.path.join(engine_dir, "config.json"), "w") as f:
                json.dump(self.config, f, indent=4)
        with open(os.path.join(engine_dir, f"rank{self.rank}.engine"), "wb") as f:
            f.write(f"FAKE TensorRT engine, rank {self.rank}\n".encode())


def build(model, build_config: BuildConfig) -> Engine:
    build_config = copy.deepcopy(build_config)  # as upstream: the caller's config is not changed
    build_config.plugin_config.dtype = model.config["dtype"]
    if build_config.kv_cache_type is None:
        build_config.kv_cache_type = "PAGED" if build_config.plugin_config.paged_kv_cache else "CONTINUOUS"
    tensorrt_llm.CALLS.append(("build", model.rank, build_config.to_dict()))
    if tensorrt_llm.FAIL_AT_RANK == model.rank:
        raise RuntimeError(f"fake engine build failure at rank {model.rank}")
    config = {"version": tensorrt_llm.__version__, "pretrained_config": model.config,
              "build_config": build_config.to_dict()}
    return Engine(config, model.rank)
