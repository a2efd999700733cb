"""The one model config: a frozen dataclass with Hugging Face Qwen2 field names.

Read from a HF `config.json` (transformers 4.x layout with top-level `rope_theta`/`torch_dtype`,
or 5.x with `rope_parameters`/`dtype`), from a TRT-LLM checkpoint config, or from a preset.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .precision import DTYPES

ARCHITECTURE = "Qwen2ForCausalLM"
# Fathom-R1-14B is trained and evaluated within 16,384 tokens (docs/REFERENCE.md, Model): every
# sequence-length default (checkpoint seq_length, executors, planner, presets) is this one.
DEFAULT_MAX_SEQ_LEN = 16384


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int = 0  # 0 = hidden_size // num_attention_heads
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    torch_dtype: str = "bfloat16"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    source: str = field(default="<preset>", compare=False)  # where it was read from, for errors

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"{self.source}: field '{name}' = {getattr(self, name)!r}, expected {expected}")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise bad(name, "a positive integer")
        if self.num_attention_heads % self.num_key_value_heads:
            raise bad("num_key_value_heads", f"a divisor of num_attention_heads ({self.num_attention_heads})")
        if not self.head_dim:
            if self.hidden_size % self.num_attention_heads:
                raise bad("hidden_size", f"a multiple of num_attention_heads ({self.num_attention_heads}) or an explicit head_dim")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if not isinstance(self.head_dim, int) or self.head_dim <= 0 or self.head_dim % 2:
            raise bad("head_dim", "a positive even integer (rotary embedding rotates pairs)")
        if not isinstance(self.rope_theta, (int, float)) or self.rope_theta <= 0:
            raise bad("rope_theta", "a positive number")
        if not isinstance(self.rms_norm_eps, (int, float)) or not 0 < self.rms_norm_eps < 1:
            raise bad("rms_norm_eps", "a number in (0, 1)")
        if self.hidden_act != "silu":
            raise bad("hidden_act", "'silu' (Qwen2 SwiGLU)")
        if self.torch_dtype not in DTYPES:
            raise bad("torch_dtype", f"one of {', '.join(DTYPES)}")
        if self.rope_scaling is not None and self.rope_scaling.get("rope_type", self.rope_scaling.get("type")) not in (None, "default"):
            raise bad("rope_scaling", "null or rope_type 'default' (scaled RoPE variants are not implemented)")

    # ---- derived sizes ------------------------------------------------------------------
    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, list) else [self.eos_token_id]

    def layer_param_count(self) -> int:
        h, i = self.hidden_size, self.intermediate_size
        qkv = h * (self.q_size + 2 * self.kv_size) + self.q_size + 2 * self.kv_size
        return qkv + self.q_size * h + 3 * h * i + 2 * h

    def embedding_param_count(self) -> int:
        return self.vocab_size * self.hidden_size

    def num_params(self) -> int:
        lm_head = 0 if self.tie_word_embeddings else self.embedding_param_count()
        return (self.embedding_param_count() + lm_head + self.hidden_size
                + self.num_hidden_layers * self.layer_param_count())

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(out_features, in_features) of each linear, unsharded, by TRT-LLM module name suffix."""
        h, i = self.hidden_size, self.intermediate_size
        return {"attention.qkv": (self.q_size + 2 * self.kv_size, h), "attention.dense": (h, self.q_size),
                "mlp.fc": (i, h), "mlp.gate": (i, h), "mlp.proj": (h, i), "lm_head": (self.vocab_size, h)}

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.num_hidden_layers * self.kv_size * dtype_bytes

    # ---- serialization ------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object")
        archs = d.get("architectures") or []
        if ARCHITECTURE not in archs and d.get("model_type") != "qwen2":
            raise ConfigError(f"{source}: field 'architectures' = {archs!r}, expected ['{ARCHITECTURE}'] (fathom serves Qwen2 models only)")
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads")
        for name in required:
            if name not in d:
                raise ConfigError(f"{source}: missing field '{name}' (required for {ARCHITECTURE})")
        rope = d.get("rope_parameters") or {}
        rope_theta = d.get("rope_theta", rope.get("rope_theta"))
        if rope_theta is None:
            raise ConfigError(f"{source}: missing field 'rope_theta' (or rope_parameters.rope_theta); "
                              "refusing to guess, a wrong RoPE base silently ruins Qwen2")
        rope_scaling = d.get("rope_scaling")
        if rope_scaling is None and rope.get("rope_type", "default") != "default":
            rope_scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        dtype = d.get("torch_dtype") or d.get("dtype") or "bfloat16"
        return cls(
            vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"], num_key_value_heads=d["num_key_value_heads"],
            head_dim=d.get("head_dim") or 0,
            max_position_embeddings=d.get("max_position_embeddings", 32768),
            rope_theta=float(rope_theta), rope_scaling=rope_scaling,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            hidden_act=d.get("hidden_act", "silu"), torch_dtype=str(dtype),
            bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
            source=source,
        )

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> "ModelConfig":
        cfg_path = Path(path) / "config.json"
        return cls.from_hf_dict(read_json(cfg_path), source=str(cfg_path))

    def to_hf_dict(self) -> dict[str, Any]:
        """A transformers-4.x style config.json (also read by transformers 5.x)."""
        d = asdict(self)
        d.pop("source")
        d.update(architectures=[ARCHITECTURE], model_type="qwen2", use_sliding_window=False)
        return d


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, with a one-line error naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: file not found") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


# Presets: name -> ModelConfig kwargs. Exact lookup through `preset()`.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # The published Fathom-R1-14B config.json (docs/REFERENCE.md, Model).
    "fathom-r1-14b": dict(
        vocab_size=152064, hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
        num_attention_heads=40, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
        rope_theta=1_000_000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=151646, eos_token_id=151643,
    ),
    # Fathom widths with 4 layers: a several-GB checkpoint for conversion benchmarks.
    "fathom-r1-14b-4l": dict(
        vocab_size=152064, hidden_size=5120, intermediate_size=13824, num_hidden_layers=4,
        num_attention_heads=40, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
        rope_theta=1_000_000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
    ),
    # Small configs for tests: kv-head ratios 1, 2, 5; tied embeddings; odd hidden size.
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096),
    "tiny-mha": dict(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                     tie_word_embeddings=True),
    "tiny-gqa5": dict(vocab_size=257, hidden_size=120, intermediate_size=200, num_hidden_layers=3,
                      num_attention_heads=10, num_key_value_heads=2, max_position_embeddings=4096),
    "tiny-odd": dict(vocab_size=131, hidden_size=72, intermediate_size=100, num_hidden_layers=2,
                     num_attention_heads=6, num_key_value_heads=1, max_position_embeddings=4096,
                     tie_word_embeddings=True),
    # The embedded demo model (build/demo_model/, scripts/train_demo_model.py); must equal its config.json.
    "demo": dict(vocab_size=384, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=DEFAULT_MAX_SEQ_LEN,
                 rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                 torch_dtype="float32", bos_token_id=1, eos_token_id=2),
    # Memory-bound on a CPU: ~130 MB of float32 weights.
    "small-100m": dict(vocab_size=4096, hidden_size=1024, intermediate_size=2816, num_hidden_layers=3,
                       num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=DEFAULT_MAX_SEQ_LEN),
}


def preset(name: str) -> ModelConfig:
    try:
        kwargs = MODEL_PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown model preset '{name}'; valid presets: {', '.join(sorted(MODEL_PRESETS))}") from None
    return ModelConfig(**kwargs, source=f"preset:{name}")
