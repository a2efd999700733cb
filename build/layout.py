"""Where each tensor of a TensorRT-LLM checkpoint goes: names, shapes, shard kinds, rank files.

A checkpoint holds, per rank N = pp_rank * tp + tp_rank, the tp shard of every tensor of its
pipeline stage. Rules (NVIDIA/TensorRT-LLM v1.2.x):
- layer tensors are numbered from 0 in each rank file: `tensorrt_llm/models/modeling_utils.py`
  DecoderLayerList is a ModuleList over `mapping.pp_layers(...)`, so its parameter names use the
  local position; `models/qwen/convert.py` writes `transformer.layers.{l - layers_range[0]}` and
  `models/model_weights_loader.py` maps local index -> global HF index ("Auto PP");
- `transformer.vocab_embedding.*` lives on the first pp rank, `transformer.ln_f.*` and `lm_head.*`
  on the last (`models/qwen/model.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .config import ModelConfig
from .errors import CheckpointError
from .mapping import Mapping, RankInfo, ShardKind, kind_of, shard_shape
from .safetensors_io import PlannedEntry
from .weight_map import trtllm_shapes

LAYER_RE = re.compile(r"^transformer\.layers\.(\d+)\.")
FIRST_STAGE_PREFIX = "transformer.vocab_embedding."
LAST_STAGE_PREFIXES = ("transformer.ln_f.", "lm_head.")


@dataclass(frozen=True)
class TensorSpec:
    """One unsharded TRT-LLM tensor (global layer index), as it will be stored."""
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    kind: ShardKind


@dataclass(frozen=True)
class ShardPlan:
    """One tensor of one rank file."""
    local_name: str
    spec: TensorSpec
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return PlannedEntry(self.local_name, self.shape, self.spec.dtype).nbytes


@dataclass(frozen=True)
class RankPlan:
    info: RankInfo
    tensors: tuple[ShardPlan, ...]

    def entries(self) -> list[PlannedEntry]:
        return [PlannedEntry(t.local_name, t.shape, t.spec.dtype) for t in self.tensors]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def base_specs(cfg: ModelConfig, dtype: torch.dtype) -> list[TensorSpec]:
    """Unsharded tensors of an unquantized checkpoint in write order: embedding, layers 0..L-1, ln_f, lm_head.

    lm_head is always present, also for tied embeddings: TRT-LLM's qwen converter writes a copy of
    the embedding (`lm_head_weights = v.clone()`; unified loader: custom_dict {"lm_head": "model.embed_tokens"}).
    """
    shapes = trtllm_shapes(cfg)
    names = sorted(shapes, key=_write_order)
    return [TensorSpec(n, shapes[n], dtype, kind_of(n)) for n in names]


def _write_order(name: str) -> tuple[int, int]:
    # sorted() is stable, so the tensors of one layer keep the weight map's order.
    if name.startswith(FIRST_STAGE_PREFIX):
        return (0, 0)
    m = LAYER_RE.match(name)
    if m:
        return (1, int(m.group(1)))
    return (2, 0 if name.startswith("transformer.ln_f.") else 1)


def pp_stage_of(name: str, cfg: ModelConfig, mapping: Mapping) -> int:
    if name.startswith(FIRST_STAGE_PREFIX):
        return 0
    if name.startswith(LAST_STAGE_PREFIXES):
        return mapping.pp_size - 1
    m = LAYER_RE.match(name)
    if m is None:
        raise CheckpointError(f"tensor '{name}': no pipeline stage rule for this name")
    return mapping.pp_rank_of_layer(int(m.group(1)), cfg.num_hidden_layers)


def local_name(name: str, layers: range) -> str:
    """Global layer index -> index within the rank file."""
    m = LAYER_RE.match(name)
    if m is None:
        return name
    return f"transformer.layers.{int(m.group(1)) - layers.start}.{name[m.end():]}"


def plan_ranks(specs: list[TensorSpec], cfg: ModelConfig, mapping: Mapping) -> list[RankPlan]:
    """The tensors of each rank file, in `specs` order, with their shard shapes."""
    per_rank: dict[int, list[ShardPlan]] = {r.rank: [] for r in mapping.ranks(cfg.num_hidden_layers)}
    infos = mapping.ranks(cfg.num_hidden_layers)
    for spec in specs:
        stage = pp_stage_of(spec.name, cfg, mapping)
        shape = shard_shape(spec.kind, spec.shape, mapping.tp_size, cfg)
        for info in infos:
            if info.pp_rank == stage:
                per_rank[info.rank].append(ShardPlan(local_name(spec.name, info.layers), spec, shape))
    return [RankPlan(info, tuple(per_rank[info.rank])) for info in infos]
