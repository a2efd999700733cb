"""Tensor/pipeline parallel layout: rank numbering, layer ranges, shard kinds and per-rank shapes,
as TensorRT-LLM computes them (the split/merge of tensor data is in `tp_split`).

Rules taken from NVIDIA/TensorRT-LLM (v1.2.x) `tensorrt_llm/mapping.py`:
- rank N = pp_rank * tp_size + tp_rank (MpiTopology: tp_rank = rank % tp, pp_rank = rank // tp, cp = 1);
- `pp_layers`: `torch.tensor_split(arange(num_layers), pp_size)[pp_rank]`, i.e. contiguous ranges and,
  when num_layers % pp_size = n != 0, the first n pp ranks get one extra layer;
- the first pp rank holds the embedding, the last holds ln_f and lm_head
  (`tensorrt_llm/models/qwen/model.py`, QWenModel / QWenForCausalLM).
- shard kinds per tensor and their per-rank shapes follow `tensorrt_llm/models/qwen/convert.py`
  (see `tp_split`); KV heads below tp are duplicated (ceil(kv / tp) per rank, `layers/attention.py`).
Mappings TRT-LLM cannot build are refused here, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .config import ModelConfig
from .errors import ConfigError


@dataclass(frozen=True)
class RankInfo:
    rank: int
    tp_rank: int
    pp_rank: int
    layers: range  # global layer indices held by this rank (its file numbers them from 0)

    @property
    def file_name(self) -> str:
        return f"rank{self.rank}.safetensors"


@dataclass(frozen=True)
class Mapping:
    tp_size: int = 1
    pp_size: int = 1

    def __post_init__(self) -> None:
        for name in ("tp_size", "pp_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"mapping: {name} = {value!r}, expected a positive integer")

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    def tp_rank(self, rank: int) -> int:
        return rank % self.tp_size

    def pp_rank(self, rank: int) -> int:
        return rank // self.tp_size

    def pp_layers(self, num_layers: int, pp_rank: int) -> range:
        """Layers of one pipeline stage; like torch.tensor_split, the first (L % pp) stages get one more."""
        base, extra = divmod(num_layers, self.pp_size)
        start = pp_rank * base + min(pp_rank, extra)
        return range(start, start + base + (1 if pp_rank < extra else 0))

    def pp_rank_of_layer(self, layer: int, num_layers: int) -> int:
        for pp_rank in range(self.pp_size):
            if layer in self.pp_layers(num_layers, pp_rank):
                return pp_rank
        raise ValueError(f"layer {layer} outside 0..{num_layers - 1}")

    def ranks(self, num_layers: int) -> list[RankInfo]:
        return [RankInfo(rank, self.tp_rank(rank), self.pp_rank(rank), self.pp_layers(num_layers, self.pp_rank(rank)))
                for rank in range(self.world_size)]

    def padded_vocab_size(self, vocab_size: int) -> int:
        """tensorrt_llm._utils.pad_vocab_size: lm_head rows rounded up to a multiple of tp_size."""
        return -(-vocab_size // self.tp_size) * self.tp_size

    def kv_heads_per_rank(self, num_kv_heads: int) -> int:
        """KV heads on each tp rank; below tp_size heads are duplicated (TRT-LLM Attention: ceil(kv / tp))."""
        return max(num_kv_heads // self.tp_size, 1)

    def qkv_rows(self, cfg: ModelConfig, unit: int = 1) -> tuple[int, int]:
        """(q rows, k-or-v rows) of one tp rank's fused qkv projection; `unit` output rows per stored
        row (2: int4 packed)."""
        kv_rows = self.kv_heads_per_rank(cfg.num_key_value_heads) * cfg.head_dim
        return cfg.q_size // self.tp_size // unit, kv_rows // unit

    def linear_shapes(self, cfg: ModelConfig) -> list[tuple[int, int]]:
        """(out, in) of one layer's linears on one tp rank, in LAYER_LINEARS order."""
        dims = cfg.linear_dims()
        return [shard_shape(kind_of(f"{s}.weight"), dims[s], self.tp_size, cfg) for s in LAYER_LINEARS]

    def to_dict(self) -> dict[str, int]:
        """The `mapping` block of config.json (Mapping.from_dict(d) = Mapping(**d) in TRT-LLM)."""
        return {"world_size": self.world_size, "tp_size": self.tp_size, "pp_size": self.pp_size}

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "Mapping":
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: field 'mapping' = {d!r}, expected an object with tp_size, pp_size, world_size")
        tp, pp = d.get("tp_size", 1), d.get("pp_size", 1)
        mapping = cls(tp, pp)
        if d.get("world_size", mapping.world_size) != mapping.world_size:
            raise ConfigError(f"{source}: field 'mapping.world_size' = {d.get('world_size')!r}, "
                              f"expected tp_size * pp_size = {mapping.world_size}")
        if d.get("cp_size", 1) != 1:
            raise ConfigError(f"{source}: field 'mapping.cp_size' = {d.get('cp_size')!r}, "
                              "expected 1 (context parallelism is not supported)")
        return mapping

    def check_model(self, cfg: ModelConfig) -> None:
        """Refuse mappings TRT-LLM cannot shard this model with (one-line ConfigError)."""
        tp, pp = self.tp_size, self.pp_size
        what = f"--tp {tp} --pp {pp}"
        if cfg.num_attention_heads % tp:
            raise ConfigError(f"{what}: num_attention_heads ({cfg.num_attention_heads}) is not divisible by tp ({tp})")
        kv = cfg.num_key_value_heads
        if kv >= tp and kv % tp:
            raise ConfigError(f"{what}: num_key_value_heads ({kv}) is not divisible by tp ({tp})")
        if kv < tp and tp % kv:
            raise ConfigError(f"{what}: tp ({tp}) is not a multiple of num_key_value_heads ({kv}); "
                              "KV heads can only be duplicated a whole number of times")
        if cfg.intermediate_size % tp:
            raise ConfigError(f"{what}: intermediate_size ({cfg.intermediate_size}) is not divisible by tp ({tp})")
        if pp > cfg.num_hidden_layers:
            raise ConfigError(f"{what}: more pipeline stages ({pp}) than layers ({cfg.num_hidden_layers})")


class ShardKind(Enum):
    REPLICATED = "replicated"  # norms, embedding (use_parallel_embedding = false), per-tensor scales
    COLUMN = "column"  # output features split: mlp.fc, mlp.gate
    ROW = "row"  # input features split: attention.dense, mlp.proj
    QKV = "qkv"  # q, k, v split separately, KV heads duplicated below tp
    QKV_INT4 = "qkv_int4"  # int4-packed qkv weight (two output rows per byte): the QKV rule on half rows
    VOCAB = "vocab"  # lm_head: rows padded to a multiple of tp, then split like COLUMN

    @property
    def rows_per_stored_row(self) -> int:
        """Output rows held by one stored row: 2 for an int4-packed qkv weight, else 1."""
        return 2 if self is ShardKind.QKV_INT4 else 1


# Suffix of an unsharded TRT-LLM tensor name -> how it is split (anything else is replicated).
KIND_BY_SUFFIX = {
    "attention.qkv.weight": ShardKind.QKV,
    "attention.qkv.bias": ShardKind.QKV,
    "attention.dense.weight": ShardKind.ROW,
    "mlp.fc.weight": ShardKind.COLUMN,  # HF gate_proj
    "mlp.gate.weight": ShardKind.COLUMN,  # HF up_proj
    "mlp.proj.weight": ShardKind.ROW,
    "lm_head.weight": ShardKind.VOCAB,
}


def kind_of(name: str) -> ShardKind:
    for suffix, kind in KIND_BY_SUFFIX.items():
        if name.endswith(suffix):
            return kind
    return ShardKind.REPLICATED


# The linears of one decoder layer (TRT-LLM module name suffixes), in computation order.
LAYER_LINEARS = ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")


def shard_shape(kind: ShardKind, shape: tuple[int, ...], tp: int, cfg: ModelConfig) -> tuple[int, ...]:
    """Shape of each tp rank's piece of an unsharded tensor of `shape` (all ranks get the same shape)."""
    if kind is ShardKind.REPLICATED or tp == 1:
        return tuple(shape)
    if kind in (ShardKind.QKV, ShardKind.QKV_INT4):
        q_rows, kv_rows = Mapping(tp_size=tp).qkv_rows(cfg, kind.rows_per_stored_row)
        return (q_rows + 2 * kv_rows, *shape[1:])
    if kind is ShardKind.ROW:
        return (shape[0], shape[1] // tp, *shape[2:])
    rows = -(-shape[0] // tp) if kind is ShardKind.VOCAB else shape[0] // tp
    return (rows, *shape[1:])
