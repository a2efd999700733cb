"""Fake tensorrt_llm.models: QWenForCausalLM.from_checkpoint as in models/modeling_utils.py."""

import copy
import json
import os
from typing import Optional

import tensorrt_llm


class QWenForCausalLM:
    def __init__(self, config: dict, rank: int):
        self.config = config
        self.rank = rank

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str, rank: Optional[int] = None, config: Optional[dict] = None, *,
                        preprocess_weights_hook=None):
        if config is None:
            with open(os.path.join(ckpt_dir, "config.json")) as f:
                config = json.load(f)
        config = copy.deepcopy(config)
        mapping = config.setdefault("mapping", {})
        if rank is not None:
            mapping["rank"] = rank
        rank = mapping.get("rank", 0)
        if config.get("architecture") != "Qwen2ForCausalLM":
            raise AssertionError(f"Unsupported model architecture: {config.get('architecture')}")
        weights_path = os.path.join(ckpt_dir, f"rank{rank}.safetensors")
        assert os.path.isfile(weights_path)
        tensorrt_llm.CALLS.append(("from_checkpoint", ckpt_dir, rank))
        return cls(config, rank)
