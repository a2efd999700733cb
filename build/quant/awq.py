"""W4A16-AWQ: group-wise symmetric int4 weights, activation-aware per-input-channel scaling.

Maths. For a linear y = x W^T, AWQ picks a per-input-channel scale s > 0 and stores
W' = W * s (columns scaled) quantized to int4, plus `prequant_scaling_factor` = 1 / s that
TRT-LLM multiplies into the input: y = (x * (1/s)) Q(W * s)^T. Input channels with large
activations get s > 1, so their weights use more of the int4 grid and lose less to rounding.
s = mean|x|^alpha (normalized by sqrt(max * min)); alpha is searched on a grid over [0, 1) to
minimize the linear's output error on calibration tokens (llm-awq `auto_scale`, modelopt
`awq_lite`). alpha = 0 is plain round-to-nearest, so the search never does worse than RTN on the
calibration sample.

Quantization per group of `group_size` input channels: scale = amax / 7, q = clamp(round(W / scale),
-8, 7) (modelopt `to_quantized_weight`, INT4_AWQ). Scales are rounded to the checkpoint dtype
BEFORE quantizing, so dequantization with the stored values is exact.

Checkpoint layout (TensorRT-LLM 1.2.1, as written by modelopt's export and read by
`preprocess_perlayer_weights` in tensorrt_llm/models/modeling_utils.py):
- `weight`: int8 (out/2, in); byte [j, k] holds q[2j, k] in its low nibble and q[2j+1, k] in its
  high nibble, two's complement. At load TRT-LLM transposes it to (in, out/2) and runs
  `preprocess_weights_for_mixed_gemm(W.T, torch.quint4x2, ...)`, whose input is (K, N/2) with the
  even output column in the low nibble; that GPU-specific interleave happens at load, not here.
- `weights_scaling_factor`: (out, in/group) in the model dtype (transposed at load).
- `prequant_scaling_factor`: (in,) in the model dtype (reshaped to (1, in) at load).
`quantization.pre_quant_scale` must be true and `group_size` matches. TRT-LLM's kernels implement
group sizes 64 and 128, and pad in/out features to multiples of max(64, group) * tp_size
(`WeightOnlyGroupwiseQuantLinear`), which `fathom build` refuses (quantizer.trtllm_padding):
Fathom-R1-14B's widths fit for tp 1, 2 and 4; at tp 8 with groups of 128 its MLP width 13824 is
not a multiple of 1024.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fathom.build.errors import WeightsError

INT4_MAX = 7.0
AWQ_GRID = 20


def quantize_groupwise_int4(weight: torch.Tensor, group_size: int,
                            scale_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (out, in) -> (q (out, in) int8 in [-8, 7], scales (out, in/group) in scale_dtype)."""
    out_f, in_f = weight.shape
    wg = weight.float().reshape(out_f, in_f // group_size, group_size)  # (out, G, g)
    scales = (wg.abs().amax(dim=-1) / INT4_MAX).clamp_min(1e-8).to(scale_dtype)  # (out, G)
    q = torch.round(wg / scales.float()[..., None]).clamp(-8, 7).to(torch.int8)
    return q.reshape(out_f, in_f), scales


def dequantize_groupwise_int4(q: torch.Tensor, scales: torch.Tensor, group_size: int,
                              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q (out, in) int8, scales (out, in/group) -> weight (out, in)."""
    out_f, in_f = q.shape
    w = q.float().reshape(out_f, in_f // group_size, group_size) * scales.float()[..., None]
    return w.reshape(out_f, in_f).to(dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q (out, in) int8 in [-8, 7] -> (out/2, in) int8: rows 2j (low nibble) and 2j+1 (high nibble)."""
    if q.shape[0] % 2:
        raise WeightsError(f"pack_int4: {q.shape[0]} output rows, expected an even number")
    u = q.to(torch.uint8) & 0x0F  # two's complement nibbles
    return (u[0::2] | (u[1::2] << 4)).view(torch.int8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(out/2, in) int8 -> q (out, in) int8 in [-8, 7]; inverse of pack_int4."""
    u = packed.view(torch.uint8)
    nibbles = torch.stack([u & 0x0F, u >> 4], dim=1).to(torch.int8)  # (out/2, 2, in)
    nibbles = torch.where(nibbles >= 8, nibbles - 16, nibbles)
    return nibbles.reshape(2 * packed.shape[0], packed.shape[1])


@dataclass(frozen=True)
class AwqSearch:
    alpha: float  # chosen exponent (0 = plain round-to-nearest)
    loss: float  # output MSE on the calibration tokens with the chosen scale
    loss_rtn: float  # same with alpha = 0


def _awq_candidate(w: torch.Tensor, act_mean: torch.Tensor, alpha: float, group_size: int, dtype: torch.dtype):
    s = act_mean.float().clamp_min(1e-4).pow(alpha)  # (in,)
    s = s / (s.max() * s.min()).sqrt()
    pre_quant = (1.0 / s).to(dtype)  # stored; quantize against the stored value
    q, scales = quantize_groupwise_int4(w / pre_quant.float(), group_size, dtype)
    return pre_quant, q, scales


def search_awq_scale(weight: torch.Tensor, act_mean: torch.Tensor, x: torch.Tensor, group_size: int,
                     dtype: torch.dtype, grid: int = AWQ_GRID):
    """Grid search of alpha. weight (out, in), act_mean (in,), x (n, in) calibration inputs.

    Returns (pre_quant (in,), q (out, in) int8, scales (out, in/group), AwqSearch).
    """
    w = weight.float()
    xf = x.float().to(w.device)
    ref = xf @ w.t()  # (n, out)
    best = None
    loss_rtn = None
    for i in range(grid):
        alpha = i / grid
        pre_quant, q, scales = _awq_candidate(w, act_mean.to(w.device), alpha, group_size, dtype)
        w_hat = dequantize_groupwise_int4(q, scales, group_size)
        loss = float(((xf * pre_quant.float()) @ w_hat.t() - ref).pow(2).mean())
        if i == 0:
            loss_rtn = loss
        if best is None or loss < best[0]:
            best = (loss, alpha, pre_quant, q, scales)
    loss, alpha, pre_quant, q, scales = best
    return pre_quant, q, scales, AwqSearch(alpha=alpha, loss=loss, loss_rtn=loss_rtn)


def quantize_linear_awq(weight: torch.Tensor, act_mean: torch.Tensor, x: torch.Tensor, group_size: int,
                        dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], AwqSearch]:
    """One linear's checkpoint tensors (suffixes relative to the module name) and the search result."""
    out_f, in_f = weight.shape
    if in_f % group_size:
        raise WeightsError(f"awq: {in_f} input features, not a multiple of group_size {group_size}")
    pre_quant, q, scales, found = search_awq_scale(weight, act_mean, x, group_size, dtype)
    return {
        "weight": pack_int4(q),  # (out/2, in) int8
        "weights_scaling_factor": scales,  # (out, in/group) model dtype
        "prequant_scaling_factor": pre_quant,  # (in,) model dtype
    }, found
