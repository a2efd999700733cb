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
does: per output channel, scale = amax / 128, q = clamp(round(W / scale), -128, 127)
(cpp/tensorrt_llm/kernels/cutlass_kernels/cutlass_preprocessors.cpp, `symmetric_quantize`:
quant_range_scale = 1 / (1 << (bits - 1))).
"""

from __future__ import annotations

import torch

INT8_RANGE = 128.0  # TRT-LLM divides by 2^(bits-1), then clamps to [-128, 127]


def quantize_per_channel_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (out, in) -> (q (out, in) int8, scale (out,) float32), weight ~= q * scale[:, None]."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / INT8_RANGE).clamp_min(1e-12)  # (out,)
    q = torch.round(w / scale[:, None]).clamp(-128, 127).to(torch.int8)  # (out, in)
    return q, scale


def dequantize_per_channel_int8(q: torch.Tensor, scale: torch.Tensor,
                                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale.float()[:, None]).to(dtype)

