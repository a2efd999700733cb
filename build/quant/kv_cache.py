"""KV cache quantization: one float32 scale per layer for K and V together.

TRT-LLM's attention layer reads `transformer.layers.{i}.attention.kv_cache_scaling_factor` (1,)
when `kv_cache_quant_algo` is FP8 or INT8; the cache stores x / scale and reads back q * scale
(at load it adds `kv_cache_rcp_scaling_factor` = 1 / scale itself: `process_kv_scaling_factor` in
tensorrt_llm/models/modeling_utils.py). The scale comes from the calibration amax of the values
actually stored: K after RoPE and V, over all heads of the layer.

- INT8: scale = amax / 127 (the range TRT-LLM's int8 cache uses; its legacy Qwen converter takes
  amax over the whole qkv output, which only over-estimates it).
- FP8: scale = max(amax / 448, 1.0). NVIDIA's exporter (modelopt `get_kv_cache_scaling_factor`)
  clamps the FP8 KV scale to at least 1: e4m3 already covers 2^-9..448 without scaling, and bf16
  K/V rarely exceed 448, so a scale below 1 would only push small values into the subnormals.

Scales are computed from unsharded calibration statistics and replicated to every TP rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import QuantAlgo
from .fp8 import E4M3_MAX

INT8_KV_MAX = 127.0


def kv_cache_scale(k_amax: float, v_amax: float, algo: QuantAlgo) -> torch.Tensor:
    """Per-layer `kv_cache_scaling_factor`, float32 (1,)."""
    a = max(float(k_amax), float(v_amax), 1e-12)
    if algo is QuantAlgo.FP8:
        return torch.tensor([max(a / E4M3_MAX, 1.0)], dtype=torch.float32)
    if algo is QuantAlgo.INT8:
        return torch.tensor([a / INT8_KV_MAX], dtype=torch.float32)
    raise ValueError(f"kv cache algo {algo!r}: expected FP8 or INT8")


def kv_storage_dtype(algo: QuantAlgo) -> torch.dtype:
    return torch.float8_e4m3fn if algo is QuantAlgo.FP8 else torch.int8


def quantize_kv(x: torch.Tensor, scale: torch.Tensor, algo: QuantAlgo) -> torch.Tensor:
    """K or V in the model dtype -> the stored fp8/int8 values."""
    y = x.float() / scale.float()
    if algo is QuantAlgo.FP8:
        return y.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return torch.round(y).clamp(-128, 127).to(torch.int8)


def dequantize_kv(stored: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (stored.float() * scale.float()).to(dtype)


@dataclass(frozen=True)
class KVCacheQuant:
    """A model's KV cache format, for caches that store K/V quantized (`model.kv_cache_quant`)."""

    algo: QuantAlgo
    scales: torch.Tensor  # (num_layers,) float32, kv_cache_scaling_factor per layer

    @property
    def storage_dtype(self) -> torch.dtype:
        return kv_storage_dtype(self.algo)

    def quantize(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return quantize_kv(x, self.scales[layer], self.algo)

    def dequantize(self, layer: int, stored: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_kv(stored, self.scales[layer], dtype)
