"""Write a synthetic Hugging Face Qwen2 directory (random weights, exact shapes) for tests and benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .precision import dtype_word
from .config import ModelConfig
from .weights import RandomWeights


def write_hf_dir(cfg: ModelConfig, out: str | Path, seed: int = 0, dtype: torch.dtype = torch.float32,
                 shard_bytes: int | None = None) -> Path:
    """Save config.json and model*.safetensors (sharded with an index when shard_bytes is set)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = RandomWeights(cfg, seed=seed, dtype=dtype)
    config = cfg.to_hf_dict()
    config["torch_dtype"] = dtype_word(dtype)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    shards: list[list[str]] = [[]]
    size = 0
    for name in weights.names():
        if shard_bytes and shards[-1] and size + weights.nbytes(name) > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += weights.nbytes(name)
    if len(shards) == 1:
        save_file({n: weights.get(n).contiguous() for n in shards[0]}, str(out / "model.safetensors"))
        return out
    weight_map = {}
    for i, names in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: weights.get(n).contiguous() for n in names}, str(out / file))
        weight_map.update({n: file for n in names})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    return out
