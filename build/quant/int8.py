"""W8A16: int8 weights with one scale per output channel, activations in the model dtype.

Decision: a W8A16 checkpoint holds the linear weights in the model dtype (bf16) and
`quantization.quant_algo = "W8A16"`; TensorRT-LLM 1.2.1 quantizes them when it loads the checkpoint.
Read from the source:

- `PretrainedModel.from_checkpoint` calls `preprocess_weights` (tensorrt_llm/models/modeling_utils.py),
  which for W8A16 calls `weight_only_quantize_dict(weights, quant_algo, exclude_modules, plugin=True)`
  (tensorrt_llm/models/convert_utils.py). That function quantizes every `qkv/dense/fc/proj/gate`
  weight whose dtype is NOT already int8, with
  `torch.ops.trtllm.symmetric_quantize_last_axis_of_batched_matrix(W.t(), torch.int8)`, and adds
  `<module>.per_channel_scale`.
- A pre-quantized int8 weight is taken as is, so it would have to be in that op's *processed*
  layout: `preprocess_weights_for_mixed_gemm` (tensorrt_llm/quantization/functional.py) permutes
  rows per MMA tile, transposes, interleaves columns and adds a +128 bias, with tables chosen by
  `get_sm_version()` of the GPU doing the conversion (sm80 vs sm90 vs sm100 differ). A converter
  running on a CPU cannot know the GPU that will build the engine, and a wrong guess loads without
  error and computes garbage. TRT-LLM's own converter (models/qwen/convert.py,
  `get_tllm_linear_weight`) pre-quantizes only because it runs on the target GPU.

So the checkpoint keeps bf16 weights (no size saving on disk; the engine holds int8), and the
quantization maths lives here for the torch executor, which quantizes at load exactly as TRT-LLM
does (`symmetric_quantize` in cpp/tensorrt_llm/kernels/cutlass_kernels/cutlass_preprocessors.cpp,
called through `symmetric_quantize_helper` in cpp/tensorrt_llm/thop/weightOnlyQuantOp.cpp):

- per output channel, in float32: scale = amax * (1 / 2^(bits-1)) = amax / 128;
- q = clamp(round(W / scale), -128, 127) with that float32 scale and C's `round` (half away from
  zero, where torch.round rounds half to even); a channel of zeros gets q = 0 and scale 0;
- the scale is stored, and used by the GEMM, in the weight's dtype (`scales` is created with
  `weight.dtype()`, so `ComputeType` is the checkpoint dtype, bf16 for Fathom);
- per rank: `PretrainedModel.from_checkpoint` reads one `rank{r}.safetensors` and quantizes that
  shard, so a row-parallel linear (attention.dense, mlp.proj) of a tp > 1 checkpoint has one scale
  per output channel per rank, over that rank's input features (`parts` below). Column-parallel
  splits keep whole rows, so their scales do not depend on tp.

Measured on the embedded demo model (bf16 checkpoint, attention linears in W8A16 since its MLP width
352 is one TensorRT-LLM pads; float32 torch executor on CPU; 64 sequences of 128 builtin tokens):
these rules against torch.round with one float32 scale per output channel over the whole row give
logits KL mean 2.5e-5 (largest logit difference 0.29) at tp 1, and 1.7e-4 (0.73) at tp 2.
"""

from __future__ import annotations

import torch

INT8_RANGE = 128.0  # TRT-LLM multiplies amax by 1 / 2^(bits-1), then clamps to [-128, 127]


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's `round`: halves go away from zero (exact: the fraction of a float32 is exact)."""
    whole = torch.trunc(x)
    return whole + torch.sign(x) * ((x - whole).abs() >= 0.5)


def quantize_per_channel_int8(weight: torch.Tensor, parts: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (out, in) -> (q (out, in) int8, scale (parts, out) in weight.dtype), quantized as
    TensorRT-LLM does per rank shard: `parts` equal blocks of input features, each with its own
    scales (1: one scale per output channel). weight ~= q * scale[p] on block p."""
    out_f, in_f = weight.shape
    w = weight.float().reshape(out_f, parts, in_f // parts)  # (out, parts, in/parts)
    scale = w.abs().amax(dim=2) * (1.0 / INT8_RANGE)  # (out, parts) float32
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.where(scale[..., None] == 0, 0.0, round_half_away(w / safe[..., None]))
    q = q.clamp(-128, 127).to(torch.int8).reshape(out_f, in_f)
    return q, scale.t().contiguous().to(weight.dtype)


def dequantize_per_channel_int8(q: torch.Tensor, scale: torch.Tensor,
                                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q (out, in) int8, scale (parts, out) -> weight (out, in), input block p scaled by scale[p]."""
    out_f, in_f = q.shape
    parts = scale.shape[0]
    w = q.float().reshape(out_f, parts, in_f // parts) * scale.float().t()[..., None]
    return w.reshape(out_f, in_f).to(dtype)
