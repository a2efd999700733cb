"""Per-tensor transforms of the converter.

`fathom convert` is a pipeline: plan (mapping + every output tensor per rank, shapes and dtypes
known before a byte is written) -> produce each tensor (read the HF parts, concatenate, transform,
split per rank) -> write. A transform turns one unsharded TRT-LLM tensor into the tensors stored for
it: `CastTransform` (bf16/fp16/fp32) stores it cast; `fathom.build.quant.quantizer.QuantTransform`
emits e.g. an FP8 weight plus its scaling factors, and declares them in `specs` so the writer can
plan the file headers and `fathom verify` can check them.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .config import ModelConfig
from .layout import TensorSpec, base_specs
from .quant.config import QuantConfig


class TensorTransform(Protocol):
    qcfg: QuantConfig

    def specs(self, base: TensorSpec) -> list[TensorSpec]:
        """The tensors stored for `base` (names, unsharded shapes, dtypes, shard kinds)."""

    def apply(self, base: TensorSpec, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        """`tensor` (unsharded, source dtype) -> {name: tensor} exactly as declared by `specs(base)`."""


class CastTransform:
    """Unquantized checkpoints: each tensor stored as is, cast to the checkpoint dtype."""

    qcfg = QuantConfig()

    def specs(self, base: TensorSpec) -> list[TensorSpec]:
        return [base]

    def apply(self, base: TensorSpec, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        return {base.name: tensor.to(base.dtype)}


def transform_for(qcfg: QuantConfig, cfg: ModelConfig) -> TensorTransform:
    """The transform that stores a checkpoint with this `quantization` block, from config.json alone:
    enough to plan, verify and merge a checkpoint (no calibration statistics)."""
    if not qcfg.quantized:
        return CastTransform()
    from .quant.quantizer import QuantTransform

    return QuantTransform(qcfg, cfg)


def checkpoint_specs(cfg: ModelConfig, dtype: torch.dtype, transform: TensorTransform
                     ) -> list[tuple[TensorSpec, list[TensorSpec]]]:
    """(base tensor, tensors stored for it) in write order."""
    return [(base, transform.specs(base)) for base in base_specs(cfg, dtype)]
