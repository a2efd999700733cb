"""Quantized linears and the KV cache format of a quantized checkpoint, for the torch model.

A quantized checkpoint loads into the same `Qwen2Model`: its quantized linears are replaced by the
modules below, whose buffers carry the TRT-LLM tensor names (`weight`, `weights_scaling_factor`,
`per_channel_scale`, `prequant_scaling_factor`, ...). Each module picks its kernel when it is
built, by running it once on the real weight and device (`path`), and falls back to dequantizing
the weight inside forward otherwise; the reason is kept and reported (`describe_quantization`):

- FP8 (W8A8): input quantized with the static calibrated scale, then `torch._scaled_mm`
  (CPU in recent torch; CUDA from sm89), else dequantized fp32 matmul of the same fp8 values.
- W8A16: the checkpoint holds bf16 weights (see fathom.build.quant.int8); they are quantized here at
  load exactly as TensorRT-LLM does (scales in the checkpoint dtype, halves rounded away from zero,
  row-parallel linears per rank shard of a tp > 1 checkpoint), then `torch._weight_int8pack_mm`
  (CPU; once per rank shard) or dequantize.
- W4A16-AWQ: input times `prequant_scaling_factor`, then `torch._weight_int4pack_mm_for_cpu`
  (CPU) or dequantize.
- KV cache (FP8/INT8): the checkpoint's format and per-layer `kv_cache_scaling_factor` become the
  model's `kv_quant` (fathom.build.quant.kv_cache.KVCacheQuant). Whatever stores K/V takes it:
  the paged cache stores fp8/int8 for real, the static cache and passes without a cache round K/V
  to the format and keep the model dtype, so every read sees the values a quantized cache returns.
"""

from __future__ import annotations

import torch
from torch import nn

from fathom.build.config import ModelConfig
from fathom.build.mapping import ShardKind
from fathom.build.precision import KvCacheFormat, QuantAlgo, WeightFormat, dtype_word
from fathom.build.quant.awq import dequantize_groupwise_int4, unpack_int4
from fathom.build.quant.config import QuantConfig, linear_modules
from fathom.build.quant.fp8 import dequantize_fp8, quantize_fp8
from fathom.build.quant.int8 import dequantize_per_channel_int8, quantize_per_channel_int8
from fathom.build.quant.kv_cache import KVCacheQuant

from .tensor_parallel import SINGLE, TensorParallel

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

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, parts: int = 1):
        q, scale = quantize_per_channel_int8(weight, parts)  # TRT-LLM's load-time W8A16 quantization
        super().__init__(*q.shape, bias)
        # (parts, out, in/parts): one contiguous block per rank shard, as aten's kernel needs
        self.register_buffer("weight", q.reshape(q.shape[0], parts, -1).transpose(0, 1).contiguous())
        self.register_buffer("per_channel_scale", scale)  # (parts, out) in the checkpoint dtype
        self._choose_path("int8pack_mm", dtype)

    def _matmul(self, x2d):
        if self.path == "int8pack_mm":
            xs = x2d.chunk(self.weight.shape[0], dim=1)
            return sum(torch._weight_int8pack_mm(x, w, s.to(x2d.dtype))
                       for x, w, s in zip(xs, self.weight, self.per_channel_scale))
        q = self.weight.transpose(0, 1).reshape(self.out_features, self.in_features)
        return x2d.float() @ dequantize_per_channel_int8(q, self.per_channel_scale).t()


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
                        dtype: torch.dtype, device, tp: int = 1) -> dict[str, QuantLinear]:
    """Quantized modules for every quantized linear; their tensors are removed from `tensors`.
    `tp`: the tensor parallelism of the checkpoint the tensors were merged from (W8A16 quantizes
    row-parallel linears per rank shard, as TensorRT-LLM loads them)."""
    modules: dict[str, QuantLinear] = {}
    for module, kind in linear_modules(cfg).items():
        if not qcfg.quantizes(module):
            continue
        get = lambda leaf: _take(tensors, f"{module}.{leaf}", device)  # noqa: E731
        bias = get("bias")
        bias = None if bias is None else bias.to(dtype)
        if qcfg.quant_algo is QuantAlgo.FP8:
            modules[module] = Fp8Linear(get("weight"), get("weights_scaling_factor"),
                                        get("activation_scaling_factor"), bias, dtype)
        elif qcfg.quant_algo is QuantAlgo.W8A16:
            modules[module] = Int8WeightOnlyLinear(get("weight"), bias, dtype,
                                                   parts=tp if kind is ShardKind.ROW else 1)
        else:
            modules[module] = Int4AwqLinear(get("weight"), get("weights_scaling_factor"),
                                            get("prequant_scaling_factor"), bias, qcfg.group_size, dtype)
    return modules


def load_quantized_model(cfg: ModelConfig, tensors: dict[str, torch.Tensor], qcfg: QuantConfig,
                         dtype: torch.dtype, device, max_seq_len: int, tp: int = 1, parallel: TensorParallel = SINGLE):
    """Qwen2Model with quantized linears and its KV cache format from TRT-LLM-named checkpoint
    tensors merged from a checkpoint of tensor parallelism `tp`, or with `parallel`, the tensors of
    that rank's file (`tp` 1: TensorRT-LLM quantizes each rank file's shard as a whole)."""
    from .model import Qwen2Model

    tensors = dict(tensors)
    modules = build_quant_linears(cfg, tensors, qcfg, dtype, device, tp)
    kv_quant = None
    if qcfg.kv_cache_quant_algo is not None:
        scales = [tensors.pop(f"transformer.layers.{i}.attention.kv_cache_scaling_factor").float().reshape(1)
                  for i in range(cfg.num_hidden_layers)]
        kv_quant = KVCacheQuant(KvCacheFormat.of_checkpoint(qcfg.kv_cache_quant_algo, qcfg.source),
                                torch.cat(scales).to(device))
    info = describe_quantization(cfg, modules, qcfg, dtype)
    return Qwen2Model.from_tensors(cfg, tensors, dtype, device, max_seq_len, modules=modules, kv_quant=kv_quant,
                                   quant_info=info, tp=parallel)


def describe_quantization(cfg: ModelConfig, modules: dict[str, QuantLinear], qcfg: QuantConfig,
                          dtype: torch.dtype) -> dict:
    """What runs where: kernel path per quantized linear kind (every other linear module counts as
    unquantized), fallbacks with reasons, KV cache handling."""
    paths: dict[str, int] = {}
    fallbacks: dict[str, str] = {}
    for name in linear_modules(cfg):
        m = modules.get(name)
        key = "unquantized" if m is None else f"{m.kind}:{m.path}"
        paths[key] = paths.get(key, 0) + 1
        if m is not None and m.fallback_reason:
            fallbacks.setdefault(m.kind, m.fallback_reason)
    kv = qcfg.kv_cache_quant_algo
    kv_text = None
    if kv is not None:
        storage = KvCacheFormat.of_checkpoint(kv, qcfg.source).storage
        kv_text = (f"K/V rounded to {kv.value} with per-layer scales; stored as {storage} in the paged cache, "
                   f"as {str(dtype).removeprefix('torch.')} in the static cache")
    return {
        "quant_algo": qcfg.quant_algo.value if qcfg.quant_algo else None,
        "kv_cache_quant_algo": kv.value if kv else None,
        "linear_paths": paths,
        "fallbacks": fallbacks,
        "kv_cache": kv_text,
    }


def describe_model_precision(model) -> dict:
    """`precision` (the --precision word of a quantized model's weights; None = unquantized, named by
    the model dtype), `kv_cache_format` (the --kv-cache word) and `quantization` (`quant_info`) for
    executor descriptions."""
    info = model.quant_info
    algo = info["quant_algo"] if info else None
    precision = None
    if algo is not None:
        precision = WeightFormat.of_checkpoint(algo, dtype_word(model.dtype), "quant_info").value
    kv = KvCacheFormat.of_checkpoint(info["kv_cache_quant_algo"] if info else None, "quant_info")
    return {"precision": precision, "kv_cache_format": kv.value, "quantization": info}
