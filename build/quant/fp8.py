"""FP8 (e4m3) weights and activations with per-tensor scales, as TensorRT-LLM 1.2.1 reads them.

Why per-tensor: TRT-LLM's `FP8Linear` (tensorrt_llm/quantization/layers.py) declares exactly one
float32 `weights_scaling_factor` (1,) and one `activation_scaling_factor` (1,) per linear, and its
GEMM takes the product of the two as the output scale (alpha). e4m3 keeps 3 mantissa bits over a
dynamic range of 2^-9..448, so one scale per tensor is enough for weights whose rows differ in
magnitude; the scale only has to map the tensor's amax onto 448:

    weights_scaling_factor = amax(|W|) / 448,    W_fp8 = W / weights_scaling_factor
    activation_scaling_factor = amax(|x|) / 448  over the calibration set (static: TRT-LLM
    quantizes each input with this fixed scale, so values beyond the calibrated amax saturate).

The fused qkv is one GEMM, so it gets one weight scale (the amax of the concatenation) and one
input scale (q, k and v read the same input).

fc/gate share ONE weight scale (the max of the two amaxes). TRT-LLM may fuse them into a single
GEMM (`fuse_gate_mlp` in tensorrt_llm/models/modeling_utils.py), which dequantizes both with their
own scales and requantizes with the max: with a shared scale that requantization reproduces the
stored fp8 values bit for bit instead of rounding a second time. NVIDIA's own exporter (modelopt)
makes the same choice. Their activation scales are equal anyway: fc and gate read the same input.

Scales are computed in float32 from the unsharded tensor and replicated to every tensor-parallel
rank, so all ranks quantize identically (TRT-LLM's fused all-reduce + norm + quantize kernel reads
the next layer's qkv `activation_scaling_factor` and assumes one value for all ranks).
"""

from __future__ import annotations

import torch

E4M3_MAX = 448.0
MIN_SCALE = 1e-12  # an all-zero tensor still gets a finite, invertible scale


def amax(t: torch.Tensor) -> torch.Tensor:
    """max |t| as a float32 scalar tensor."""
    lo, hi = torch.aminmax(t.float())
    return torch.maximum(-lo, hi)


def fp8_scale(amax_value: torch.Tensor | float) -> torch.Tensor:
    """amax -> float32 scale of shape (1,) (amax / 448)."""
    a = torch.as_tensor(amax_value, dtype=torch.float32).reshape(1)
    return (a / E4M3_MAX).clamp_min(MIN_SCALE)


def quantize_fp8(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """t / scale, saturated to +-448, as float8_e4m3fn (round to nearest even)."""
    return (t.float() / scale.float()).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def dequantize_fp8(t8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (t8.float() * scale.float()).to(dtype)


def quantize_linear_fp8(weight: torch.Tensor, weight_amax: torch.Tensor, input_amax: float) -> dict[str, torch.Tensor]:
    """One linear's checkpoint tensors (suffixes relative to the module name).

    weight (out, in) float; weight_amax: the amax that sets the weight scale (the module's own, or
    the max over modules that share a scale); input_amax: calibrated amax of the module's input.
    """
    w_scale = fp8_scale(weight_amax)
    return {
        "weight": quantize_fp8(weight, w_scale),  # (out, in) float8_e4m3fn
        "weights_scaling_factor": w_scale,  # (1,) float32
        "activation_scaling_factor": fp8_scale(input_amax),  # (1,) float32
    }
