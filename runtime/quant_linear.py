"""Quantized linears and KV cache rounding for the torch executor.

A quantized checkpoint loads into the same `Qwen2Model`: its quantized linears are replaced by the
modules below, whose buffers carry the TRT-LLM tensor names (`weight`, `weights_scaling_factor`,
`per_channel_scale`, `prequant_scaling_factor`, ...). Each module picks its kernel when it is
built, by running it once on the real weight and device (`path`), and falls back to dequantizing
the weight inside forward otherwise; the reason is kept and reported (`describe_quantization`):

- FP8 (W8A8): input quantized with the static calibrated scale, then `torch._scaled_mm`
  (CPU in recent torch; CUDA from sm89), else dequantized fp32 matmul of the same fp8 values.
- W8A16: the checkpoint holds bf16 weights (see fathom.build.quant.int8); they are quantized here at
  load exactly as TensorRT-LLM does, then `torch._weight_int8pack_mm` (CPU) or dequantize.
- W4A16-AWQ: input times `prequant_scaling_factor`, then `torch._weight_int4pack_mm_for_cpu`
  (CPU) or dequantize.
- KV cache (FP8/INT8): K and V are rounded to the cache format with the layer's
  `kv_cache_scaling_factor` before the attention backend stores them (a pre-hook on each attention
  module), so every later read sees exactly the values a quantized cache would return. A cache
  that allocates the model dtype gets the quantized cache's numerics, not its memory (reported as
  such); one that declares `stores_quantized_kv = True` receives K/V unrounded and stores them with
  `model.kv_cache_quant` (fathom.build.quant.kv_cache.KVCacheQuant).
"""

from __future__ import annotations

import torch
from torch import nn

from fathom.build.config import ModelConfig
from fathom.build.quant.awq import dequantize_groupwise_int4, unpack_int4
from fathom.build.quant.config import QuantAlgo, QuantConfig, linear_modules
from fathom.build.quant.fp8 import dequantize_fp8, quantize_fp8
from fathom.build.quant.int8 import dequantize_per_channel_int8, quantize_per_channel_int8
from fathom.build.quant.kv_cache import KVCacheQuant

DEQUANT = "dequantize"


class QuantLinear(nn.Module):
    """y = x W^T (+ bias) with a quantized W; `path` names the kernel in use, `fallback_reason` why not a faster one."""

    kind = "base"

    def __init__(self, out_features: int, in_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.register_buffer("bias", bias)
        self.path = DEQUANT
        self.fallback_reason: str | None = None

    def _matmul(self, x2d: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _choose_path(self, fast: str, dtype: torch.dtype) -> None:
        """Use `fast` if it runs here and matches the dequantize path on a probe input."""
        self.path = fast
        probe = torch.randn(2, self.in_features, generator=torch.Generator().manual_seed(0)).to(
            device=self._device(), dtype=dtype)
        try:
            got = self._matmul(probe).float()
        except (RuntimeError, NotImplementedError) as e:
            self.path, self.fallback_reason = DEQUANT, f"{fast}: {str(e).splitlines()[0][:160]}"
            return
        self.path = DEQUANT
        want = self._matmul(probe).float()
        tol = 2e-2 * float(want.abs().max()) + 1e-3  # bf16 accumulation differs from fp32
        if not torch.allclose(got, want, atol=tol, rtol=0):
            self.fallback_reason = f"{fast}: result differs from the dequantized matmul"
            return
        self.path = fast

    def _device(self) -> torch.device:
        return next(b for b in self.buffers() if b is not None).device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._matmul(x.reshape(-1, self.in_features)).to(x.dtype)  # (N, out)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)


class Fp8Linear(QuantLinear):
    kind = "fp8"

    def __init__(self, weight: torch.Tensor, weights_scaling_factor: torch.Tensor,
                 activation_scaling_factor: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__(*weight.shape, bias)
        self.register_buffer("weight", weight)  # (out, in) float8_e4m3fn
        self.register_buffer("weights_scaling_factor", weights_scaling_factor.float())  # (1,)
        self.register_buffer("activation_scaling_factor", activation_scaling_factor.float())  # (1,)
        self._choose_path("scaled_mm", dtype)

    def _matmul(self, x2d):
        a_scale, w_scale = self.activation_scaling_factor, self.weights_scaling_factor
        xq = quantize_fp8(x2d, a_scale)  # static per-tensor input scale, as TRT-LLM
        if self.path == "scaled_mm":
            out_dtype = x2d.dtype if x2d.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32
            return torch._scaled_mm(xq, self.weight.t(), scale_a=a_scale, scale_b=w_scale, out_dtype=out_dtype)
        return dequantize_fp8(xq, a_scale) @ dequantize_fp8(self.weight, w_scale).t()


class Int8WeightOnlyLinear(QuantLinear):
    kind = "int8"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        q, scale = quantize_per_channel_int8(weight)  # TRT-LLM's load-time W8A16 quantization
        super().__init__(*q.shape, bias)
        self.register_buffer("weight", q)  # (out, in) int8
        self.register_buffer("per_channel_scale", scale)  # (out,) float32
        self._choose_path("int8pack_mm", dtype)

    def _matmul(self, x2d):
        if self.path == "int8pack_mm":
            return torch._weight_int8pack_mm(x2d, self.weight, self.per_channel_scale.to(x2d.dtype))
        return x2d.float() @ dequantize_per_channel_int8(self.weight, self.per_channel_scale).t()


class Int4AwqLinear(QuantLinear):
    kind = "int4_awq"

    def __init__(self, weight: torch.Tensor, weights_scaling_factor: torch.Tensor,
                 prequant_scaling_factor: torch.Tensor, bias: torch.Tensor | None, group_size: int,
                 dtype: torch.dtype):
        q = unpack_int4(weight)  # (out, in) int8 in [-8, 7]
        super().__init__(*q.shape, bias)
        self.group_size = group_size
        self.register_buffer("weight", weight)  # (out/2, in) int8, TRT-LLM layout
        self.register_buffer("weights_scaling_factor", weights_scaling_factor)  # (out, in/group)
        self.register_buffer("prequant_scaling_factor", prequant_scaling_factor)  # (in,)
        self._kernel: tuple[torch.Tensor, torch.Tensor] | None = None  # aten's CPU layout (a second copy)
        if weight.device.type != "cpu":
            self.fallback_reason = f"int4pack_mm_cpu: weight on {weight.device.type}"
        else:
            self._kernel = self._pack_for_cpu(q, dtype)
            if self._kernel is not None:
                self._choose_path("int4pack_mm_cpu", dtype)

    def _pack_for_cpu(self, q: torch.Tensor, dtype: torch.dtype):
        # aten's CPU int4 kernel: unsigned nibbles u = q + 8 and w = (u - 8) * scale + zero, per group.
        try:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu((q.int() + 8), 1)
        except (RuntimeError, AttributeError) as e:
            self.fallback_reason = f"int4pack_mm_cpu: {str(e).splitlines()[0][:160]}"
            return None
        scales = self.weights_scaling_factor.float().t()  # (in/group, out)
        scales_zeros = torch.stack([scales, torch.zeros_like(scales)], dim=-1).to(dtype).contiguous()
        return packed, scales_zeros

    def _matmul(self, x2d):
        x2d = x2d * self.prequant_scaling_factor.to(x2d.dtype)
        if self.path == "int4pack_mm_cpu":
            packed, scales_zeros = self._kernel
            return torch._weight_int4pack_mm_for_cpu(x2d, packed, self.group_size, scales_zeros.to(x2d.dtype))
        w = dequantize_groupwise_int4(unpack_int4(self.weight), self.weights_scaling_factor, self.group_size)
        return x2d.float() @ w.t()


def _take(tensors: dict[str, torch.Tensor], name: str, device) -> torch.Tensor | None:
    t = tensors.pop(name, None)
    return None if t is None else t.to(device)


def build_quant_linears(cfg: ModelConfig, tensors: dict[str, torch.Tensor], qcfg: QuantConfig,
                        dtype: torch.dtype, device) -> dict[str, QuantLinear]:
    """Quantized modules for every quantized linear; their tensors are removed from `tensors`."""
    modules: dict[str, QuantLinear] = {}
    for module in linear_modules(cfg):
        if not qcfg.quantizes(module):
            continue
        get = lambda leaf: _take(tensors, f"{module}.{leaf}", device)  # noqa: E731
        bias = get("bias")
        bias = None if bias is None else bias.to(dtype)
        if qcfg.quant_algo is QuantAlgo.FP8:
            modules[module] = Fp8Linear(get("weight"), get("weights_scaling_factor"),
                                        get("activation_scaling_factor"), bias, dtype)
        elif qcfg.quant_algo is QuantAlgo.W8A16:
            modules[module] = Int8WeightOnlyLinear(get("weight"), bias, dtype)
        else:
            modules[module] = Int4AwqLinear(get("weight"), get("weights_scaling_factor"),
                                            get("prequant_scaling_factor"), bias, qcfg.group_size, dtype)
    return modules


def _round_kv_hook(kv: KVCacheQuant):
    def hook(module, args):
        *inputs, attn, layer = args  # QwenAttention.forward(x, ..., attn, layer)
        if getattr(attn, "stores_quantized_kv", False):
            return None  # the backend stores K/V in kv.storage_dtype itself

        def quantized_attn(layer_, q, k, v):
            k = kv.dequantize(layer_, kv.quantize(layer_, k), k.dtype)
            v = kv.dequantize(layer_, kv.quantize(layer_, v), v.dtype)
            return attn(layer_, q, k, v)

        return (*inputs, quantized_attn, layer)
    return hook


def install_kv_cache_quant(model, scales: dict[int, torch.Tensor], algo: QuantAlgo) -> None:
    """Round K/V to the cache format in every layer (`scales`: layer -> kv_cache_scaling_factor (1,)).

    `model.kv_cache_quant` describes the format for a cache that stores K/V quantized; a backend with
    `stores_quantized_kv = True` gets K/V unrounded and quantizes them itself.
    """
    kv = KVCacheQuant(algo, torch.cat([scales[i].float().reshape(1) for i in range(len(scales))]).to(model.device))
    model.kv_cache_quant = kv
    for i, layer in enumerate(model.transformer.layers):
        layer.attention.register_buffer("kv_cache_scaling_factor", kv.scales[i:i + 1].clone())
        layer.attention.register_forward_pre_hook(_round_kv_hook(kv))


def load_quantized_model(cfg: ModelConfig, tensors: dict[str, torch.Tensor], qcfg: QuantConfig,
                         dtype: torch.dtype, device, max_seq_len: int):
    """Qwen2Model with quantized linears (and KV rounding) from merged TRT-LLM-named checkpoint tensors."""
    from .model import Qwen2Model

    tensors = dict(tensors)
    modules = build_quant_linears(cfg, tensors, qcfg, dtype, device)
    kv_scales = {}
    if qcfg.kv_cache_quant_algo is not None:
        kv_scales = {i: tensors.pop(f"transformer.layers.{i}.attention.kv_cache_scaling_factor")
                     for i in range(cfg.num_hidden_layers)}
    model = Qwen2Model.from_tensors(cfg, tensors, dtype, device, max_seq_len, modules=modules)
    if kv_scales:
        install_kv_cache_quant(model, kv_scales, qcfg.kv_cache_quant_algo)
    model.quant_info = describe_quantization(model, qcfg)
    return model


def describe_quantization(model, qcfg: QuantConfig) -> dict:
    """What runs where: kernel path per quantized linear kind, fallbacks with reasons, KV cache handling."""
    paths: dict[str, int] = {}
    fallbacks: dict[str, str] = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            key = f"{m.kind}:{m.path}"
            paths[key] = paths.get(key, 0) + 1
            if m.fallback_reason:
                fallbacks.setdefault(m.kind, m.fallback_reason)
        elif isinstance(m, nn.Linear):
            paths["unquantized"] = paths.get("unquantized", 0) + 1
    kv = qcfg.kv_cache_quant_algo
    return {
        "quant_algo": qcfg.quant_algo.value if qcfg.quant_algo else None,
        "kv_cache_quant_algo": kv.value if kv else None,
        "linear_paths": paths,
        "fallbacks": fallbacks,
        "kv_cache": None if kv is None else
        f"K/V rounded to {kv.value} with per-layer scales; stored as {str(model.dtype).removeprefix('torch.')} "
        f"unless the cache sets stores_quantized_kv",
    }


PLANNER_PRECISION = {"FP8": "fp8", "W8A16": "w8a16", "W4A16_AWQ": "w4a16_awq"}


def describe_model_precision(model) -> dict:
    """`precision` (planner names; None = the compute dtype) and `quantization` for executor descriptions."""
    info = getattr(model, "quant_info", None)
    algo = (info or {}).get("quant_algo")
    return {"precision": PLANNER_PRECISION.get(algo), "quantization": info}
