"""The TensorRT-LLM checkpoint format: config.json (write/read/check) and rank files (check/merge).

config.json is what tensorrt-llm 1.2.x reads with `PretrainedConfig.from_json_file` ->
`QWenConfig(**config)` (`tensorrt_llm/models/modeling_utils.py`, `models/qwen/config.py`): unknown
keys become attributes, `mapping` goes through `Mapping(**d)` and `quantization` through
`QuantConfig(**d)`. Traps: QWenConfig defaults `rotary_base` to 10000 when the key is missing
(Qwen2 needs rope_theta, 1e6 for Fathom), and `qwen_type` / `seq_length` have no default at all
(QWenDecoderLayer reads them), so all three are always written and required on read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ARCHITECTURE, ModelConfig, read_json
from .errors import CheckpointError, ConfigError
from .layout import RankPlan, TensorSpec, plan_ranks
from .mapping import Mapping
from .precision import KvCacheFormat, WeightFormat
from .mapping import ShardKind
from .tp_split import merge_shards
from .precision import DTYPES, torch_dtype
from .quant.config import QuantConfig
from .transform import checkpoint_specs, transform_for
from .safetensors_io import DTYPE_CODES
from .weights import SAFETENSORS_DTYPES, read_safetensors_header

CONFIG_NAME = "config.json"
MANIFEST_NAME = "fathom.json"
QWEN_TYPE = "qwen2"


def trtllm_config(cfg: ModelConfig, mapping: Mapping, dtype: str, max_seq_len: int,
                  quantization: QuantConfig) -> dict[str, Any]:
    """config.json of a Qwen2 checkpoint: the keys QWenConfig/PretrainedConfig of tensorrt-llm 1.2.x read."""
    rotary_scaling = cfg.rope_scaling
    if rotary_scaling is not None and rotary_scaling.get("rope_type", rotary_scaling.get("type")) in (None, "default"):
        rotary_scaling = None  # plain RoPE; TRT-LLM would look up rotary_scaling["type"]
    return {
        "architecture": ARCHITECTURE,
        "qwen_type": QWEN_TYPE,  # decides attention bias and MLP width in QWenDecoderLayer
        "dtype": dtype,
        "logits_dtype": "float32",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_size": cfg.head_dim,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "hidden_act": cfg.hidden_act,
        "norm_epsilon": cfg.rms_norm_eps,
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": cfg.rope_theta,
        "rotary_scaling": rotary_scaling,
        "rotary_embedding_dim": cfg.head_dim,
        "seq_length": max_seq_len,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        # PretrainedConfig defaults: embedding replicated on every tp rank of the first stage.
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "qk_layernorm": False,
        "attn_bias": True,
        "mlp_bias": False,
        "use_logn_attn": False,
        "disable_weight_only_quant_plugin": False,
        "moe_intermediate_size": 0,
        "moe_shared_expert_intermediate_size": 0,
        "num_labels": 1,
        "mapping": mapping.to_dict(),
        "quantization": quantization.to_trtllm_dict(),
    }


def _require(d: dict, key: str, source: str, why: str = ""):
    if key not in d:
        raise ConfigError(f"{source}: missing field '{key}'{why}")
    return d[key]


def config_from_trtllm(d: dict, source: str) -> ModelConfig:
    """ModelConfig from a TRT-LLM checkpoint config.json (or an engine's pretrained_config).

    bos/eos ids are not part of the TRT-LLM format; they come from the keys if present, else from
    the fathom.json manifest next to `source`.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a JSON object")
    if d.get("architecture") != ARCHITECTURE:
        raise ConfigError(f"{source}: field 'architecture' = {d.get('architecture')!r}, expected '{ARCHITECTURE}'")
    if _require(d, "qwen_type", source, " (TRT-LLM's QWen model reads it)") != QWEN_TYPE:
        raise ConfigError(f"{source}: field 'qwen_type' = {d['qwen_type']!r}, expected '{QWEN_TYPE}'")
    rotary_base = _require(d, "rotary_base", source, " (TensorRT-LLM would silently use 10000, which ruins Qwen2)")
    if d.get("position_embedding_type", "rope_gpt_neox") != "rope_gpt_neox":
        raise ConfigError(f"{source}: field 'position_embedding_type' = {d['position_embedding_type']!r}, expected 'rope_gpt_neox'")
    dtype = _require(d, "dtype", source)
    if dtype not in DTYPES:
        raise ConfigError(f"{source}: field 'dtype' = {dtype!r}, expected one of {', '.join(DTYPES)}")
    ids = {k: d.get(k) for k in ("bos_token_id", "eos_token_id")}
    manifest = Path(source).parent / MANIFEST_NAME
    if ids["bos_token_id"] is None and ids["eos_token_id"] is None and manifest.is_file():
        model = read_json(manifest).get("model", {})
        ids = {k: model.get(k) for k in ids}
    hidden, heads = _require(d, "hidden_size", source), _require(d, "num_attention_heads", source)
    return ModelConfig(
        vocab_size=_require(d, "vocab_size", source), hidden_size=hidden,
        intermediate_size=_require(d, "intermediate_size", source),
        num_hidden_layers=_require(d, "num_hidden_layers", source), num_attention_heads=heads,
        num_key_value_heads=d.get("num_key_value_heads", heads),
        head_dim=d.get("head_size") or 0,
        max_position_embeddings=_require(d, "max_position_embeddings", source),
        rope_theta=rotary_base, rope_scaling=d.get("rotary_scaling"),
        rms_norm_eps=_require(d, "norm_epsilon", source),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        hidden_act=d.get("hidden_act", "silu"), torch_dtype=dtype,
        source=source, **ids,
    )


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    raw: dict[str, Any]
    cfg: ModelConfig
    mapping: Mapping
    dtype: str
    quantization: QuantConfig

    @property
    def max_seq_len(self) -> int:
        return self.raw["seq_length"]

    @property
    def weights(self) -> WeightFormat:
        """The weight format: `quantization.quant_algo`, else the unquantized format of `dtype`."""
        return WeightFormat.of_checkpoint(self.quantization.quant_algo, self.dtype, str(self.path / CONFIG_NAME))

    @property
    def kv_cache(self) -> KvCacheFormat:
        """The KV cache format: `quantization.kv_cache_quant_algo` (null: the model dtype)."""
        return KvCacheFormat.of_checkpoint(self.quantization.kv_cache_quant_algo, str(self.path / CONFIG_NAME))

    def rank_plans(self) -> list[RankPlan]:
        transform = transform_for(self.quantization, self.cfg)
        stored = [s for _, outs in checkpoint_specs(self.cfg, torch_dtype(self.dtype, f"{self.path}: field 'dtype' ="), transform)
                  for s in outs]
        return plan_ranks(stored, self.cfg, self.mapping)


def read_checkpoint(path: str | Path) -> CheckpointInfo:
    """Config, mapping and quantization of a checkpoint dir (no weights read). A TensorRT-LLM engine
    dir reads as the checkpoint it was built from: its config.json's `pretrained_config`."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    cfg_path = path / CONFIG_NAME
    raw = read_json(cfg_path)
    if isinstance(raw.get("pretrained_config"), dict) and "build_config" in raw:
        raw = raw["pretrained_config"]
    return checkpoint_info(raw, path, str(cfg_path))


def checkpoint_info(raw: dict, path: Path, source: str) -> CheckpointInfo:
    """CheckpointInfo of a checkpoint config.json dict, or of an engine's `pretrained_config` (same keys)."""
    cfg = config_from_trtllm(raw, source)
    mapping = Mapping.from_dict(_require(raw, "mapping", source), source)
    mapping.check_model(cfg)
    quant = QuantConfig.from_trtllm_dict(_require(raw, "quantization", source), source)
    _require(raw, "seq_length", source, " (TRT-LLM's QWen model reads it)")
    return CheckpointInfo(path, raw, cfg, mapping, raw["dtype"], quant)


def check_rank_file(path: Path, plan: RankPlan, relative_names: bool = False) -> dict:
    """Raise unless the file's tensors are exactly the planned names, shapes and dtypes; return its header."""
    file = path / plan.info.file_name
    where = plan.info.file_name if relative_names else str(file)
    if not file.is_file():
        raise CheckpointError(f"{where}: missing (config.json mapping needs a file per rank)")
    header = read_safetensors_header(file)
    expected = {t.local_name: t for t in plan.tensors}
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    wrong = []
    for n in sorted(set(header) & set(expected)):
        shape, code = tuple(header[n]["shape"]), header[n]["dtype"]
        want = expected[n]
        if shape != want.shape or SAFETENSORS_DTYPES.get(code) != want.spec.dtype:
            wrong.append(f"{n} {shape} {code} (expected {want.shape} {DTYPE_CODES.get(want.spec.dtype)})")
    problems = [f"{label}: {', '.join(items[:3])}{f' (+{len(items) - 3} more)' if len(items) > 3 else ''}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape/dtype", wrong))
                if items]
    if problems:
        raise CheckpointError(f"{where}: tensors do not match config.json; " + "; ".join(problems))
    return header


def load_native_tensors(ckpt: CheckpointInfo) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint merged back to tp=1, pp=1 with global layer names (torch executor)."""
    from safetensors import safe_open

    plans = ckpt.rank_plans()
    shards: dict[str, list[tuple[int, Any, str]]] = {}  # global name -> [(tp_rank, handle, local name)]
    specs: dict[str, TensorSpec] = {}
    handles = []
    for plan in plans:
        check_rank_file(ckpt.path, plan)
        handle = safe_open(str(ckpt.path / plan.info.file_name), framework="pt")
        handles.append(handle)
        for t in plan.tensors:
            shards.setdefault(t.spec.name, []).append((plan.info.tp_rank, handle, t.local_name))
            specs[t.spec.name] = t.spec
    out = {}
    for name, pieces in shards.items():
        spec = specs[name]
        pieces = sorted(pieces, key=lambda p: p[0])
        if spec.kind is ShardKind.REPLICATED:
            pieces = pieces[:1]  # every tp rank holds the same copy
        tensors = [h.get_tensor(local) for _, h, local in pieces]
        full_rows = spec.shape[0] if spec.kind is ShardKind.VOCAB else None
        out[name] = merge_shards(spec.kind, tensors, ckpt.cfg, full_rows=full_rows)
    return out


def write_config(out_dir: Path, config: dict) -> Path:
    path = out_dir / CONFIG_NAME
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path
