"""KV cache quantization: one float32 scale per layer for K and V together.

TRT-LLM's attention layer reads `transformer.layers.{i}.attention.kv_cache_scaling_factor` (1,)
when `kv_cache_quant_algo` is FP8 or INT8; the cache stores x / scale and reads back q * scale
(at load it adds `kv_cache_rcp_scaling_factor` = 1 / scale itself: `process_kv_scaling_factor` in
tensorrt_llm/models/modeling_utils.py). The scale comes from the calibration amax of the values
actually stored: K after RoPE and V, over all heads of the layer (`KVAmax` observes them).

- INT8: scale = amax / 127 (the range TRT-LLM's int8 cache uses; its legacy Qwen converter takes
  amax over the whole qkv output, which only over-estimates it).
- FP8: scale = max(amax / 448, 1.0). NVIDIA's exporter (modelopt `get_kv_cache_scaling_factor`)
  clamps the FP8 KV scale to at least 1: e4m3 already covers 2^-9..448 without scaling, and bf16
  K/V rarely exceed 448, so a scale below 1 would only push small values into the subnormals.

Scales are computed from unsharded calibration statistics and replicated to every TP rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fathom.build.errors import ConfigError
from fathom.build.precision import KvCacheFormat, QuantAlgo

from .fp8 import E4M3_MAX, amax

INT8_KV_MAX = 127.0


def kv_cache_scale(k_amax: float, v_amax: float, algo: QuantAlgo) -> torch.Tensor:
    """Per-layer `kv_cache_scaling_factor`, float32 (1,)."""
    a = max(float(k_amax), float(v_amax), 1e-12)
    if QuantAlgo(algo) is QuantAlgo.FP8:
        return torch.tensor([max(a / E4M3_MAX, 1.0)], dtype=torch.float32)
    if QuantAlgo(algo) is QuantAlgo.INT8:
        return torch.tensor([a / INT8_KV_MAX], dtype=torch.float32)
    raise ValueError(f"kv cache algo {algo!r}: expected FP8 or INT8")


def quantize_kv(x: torch.Tensor, scale: torch.Tensor, algo: QuantAlgo) -> torch.Tensor:
    """K or V in the model dtype -> the stored fp8/int8 values."""
    y = x.float() / scale.float()
    if QuantAlgo(algo) is QuantAlgo.FP8:
        return y.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return torch.round(y).clamp(-128, 127).to(torch.int8)


def dequantize_kv(stored: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (stored.float() * scale.float()).to(dtype)


@dataclass(frozen=True, eq=False)
class KVCacheQuant:
    """A quantized KV cache format and its per-layer scales: what an object that stores K/V needs
    to store them in that format (a quantized checkpoint's, or one asked of the torch executor)."""

    format: KvCacheFormat  # FP8 or INT8
    scales: torch.Tensor  # (num_layers,) float32: kv_cache_scaling_factor per layer
    _layer_scales: tuple[torch.Tensor, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.format.quantized:
            raise ConfigError(f"KV cache format {self.format.value!r} has no scales: expected fp8 or int8")
        scales = self.scales.detach().float().reshape(-1)
        if not bool((scales > 0).all()):
            raise ConfigError(f"kv_scales = {scales.tolist()}, expected positive numbers")
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "_layer_scales", scales.split(1))  # (1,) views, one per layer

    @property
    def num_layers(self) -> int:
        return self.scales.shape[0]

    def check_layers(self, num_layers: int) -> None:
        if self.num_layers != num_layers:
            raise ConfigError(f"kv_scales has {self.num_layers} values, expected one per layer ({num_layers})")

    def quantize(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return quantize_kv(x, self._layer_scales[layer], self.format.quant_algo)

    def dequantize(self, layer: int, stored: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_kv(stored, self._layer_scales[layer], dtype)

    def round(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x as a cache in this format returns it: quantized and read back, in x's dtype."""
        return self.dequantize(layer, self.quantize(layer, x), x.dtype)


class KVAmax:
    """Calibration observer: the amax of K (after RoPE) and of V per layer, over every token seen."""

    def __init__(self, num_layers: int):
        self.k_amax = [0.0] * num_layers
        self.v_amax = [0.0] * num_layers

    def observe(self, layer: int, kv: torch.Tensor) -> None:
        """kv (..., 2, Hkv, D): K then V of some tokens of `layer`, as the cache would store them."""
        k, v = kv.unbind(-3)
        self.k_amax[layer] = max(self.k_amax[layer], float(amax(k)))
        self.v_amax[layer] = max(self.v_amax[layer], float(amax(v)))

    def scales(self, kv_format: KvCacheFormat) -> tuple[float, ...]:
        """Per-layer kv_cache_scaling_factor for `kv_format` (fp8 or int8), by `kv_cache_scale`."""
        return tuple(float(kv_cache_scale(k, v, kv_format.quant_algo)[0]) for k, v in zip(self.k_amax, self.v_amax))
