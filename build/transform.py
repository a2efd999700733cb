"""Per-tensor transforms of the converter, and the `quantization` block of config.json.

`fathom convert` is a pipeline: plan (mapping + every output tensor per rank, shapes and dtypes
known before a byte is written) -> produce each tensor (read the HF parts, concatenate, transform,
split per rank) -> write. A transform turns one unsharded TRT-LLM tensor into the tensors stored for
it: `CastTransform` (bf16/fp16/fp32) stores it cast; a quantizer (issue 4) registers a transform per
quant_algo that emits e.g. an FP8 weight plus its scaling factors, and declares them in `specs` so
the writer can plan the file headers and `fathom verify` can check them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .layout import TensorSpec, base_specs

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
QUANT_KEYS = ("quant_algo", "kv_cache_quant_algo", "group_size", "has_zero_point", "pre_quant_scale",
              "exclude_modules")


@dataclass(frozen=True)
class QuantizationSpec:
    """config.json `quantization`: fields of tensorrt_llm.models.modeling_utils.QuantConfig (v1.2.x).

    TRT-LLM reads it with `QuantConfig(**d)`, so only these field names may appear.
    """
    quant_algo: str | None = None
    kv_cache_quant_algo: str | None = None
    group_size: int = 128
    has_zero_point: bool = False
    pre_quant_scale: bool = False
    exclude_modules: tuple[str, ...] | None = None

    @property
    def is_quantized(self) -> bool:
        return self.quant_algo is not None or self.kv_cache_quant_algo is not None

    def to_dict(self) -> dict:
        return {"quant_algo": self.quant_algo, "kv_cache_quant_algo": self.kv_cache_quant_algo,
                "group_size": self.group_size, "has_zero_point": self.has_zero_point,
                "pre_quant_scale": self.pre_quant_scale,
                "exclude_modules": list(self.exclude_modules) if self.exclude_modules is not None else None}

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "QuantizationSpec":
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: field 'quantization' = {d!r}, expected an object")
        known = {k: d[k] for k in QUANT_KEYS if k in d}
        if known.get("exclude_modules") is not None:
            known["exclude_modules"] = tuple(known["exclude_modules"])
        return cls(**known)


class TensorTransform(Protocol):
    quantization: QuantizationSpec

    def specs(self, base: TensorSpec) -> list[TensorSpec]:
        """The tensors stored for `base` (names, unsharded shapes, dtypes, shard kinds)."""

    def apply(self, base: TensorSpec, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        """`tensor` (unsharded, source dtype) -> {name: tensor} exactly as declared by `specs(base)`."""


class CastTransform:
    """Unquantized checkpoints: each tensor stored as is, cast to the checkpoint dtype."""

    quantization = QuantizationSpec()

    def specs(self, base: TensorSpec) -> list[TensorSpec]:
        return [base]

    def apply(self, base: TensorSpec, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        return {base.name: tensor.to(base.dtype)}


# quant_algo -> factory(QuantizationSpec, ModelConfig) -> transform. Filled by fathom.build.quant.
TRANSFORMS: dict[str, Callable[[QuantizationSpec, ModelConfig], TensorTransform]] = {}


def register_transform(quant_algo: str, factory: Callable[[QuantizationSpec, ModelConfig], TensorTransform]) -> None:
    TRANSFORMS[quant_algo] = factory


def transform_for(quantization: QuantizationSpec, cfg: ModelConfig) -> TensorTransform:
    if not quantization.is_quantized:
        return CastTransform()
    import fathom.build.quant  # noqa: F401  (registers the quantized formats)

    key = quantization.quant_algo or f"kv_cache:{quantization.kv_cache_quant_algo}"
    try:
        factory = TRANSFORMS[key]
    except KeyError:
        known = ", ".join(sorted(TRANSFORMS)) or "none"
        raise CheckpointError(f"quantization {quantization.to_dict()}: not supported by this fathom "
                              f"(registered quantizers: {known})") from None
    return factory(quantization, cfg)


def torch_dtype_of(name: str, source: str) -> torch.dtype:
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ConfigError(f"{source}: dtype {name!r}, expected one of {', '.join(TORCH_DTYPES)}") from None


def checkpoint_specs(cfg: ModelConfig, dtype: torch.dtype, transform: TensorTransform
                     ) -> list[tuple[TensorSpec, list[TensorSpec]]]:
    """(base tensor, tensors stored for it) in write order."""
    return [(base, transform.specs(base)) for base in base_specs(cfg, dtype)]
