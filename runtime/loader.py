"""Load any MODEL source into the PyTorch executor's Qwen2Model."""

from __future__ import annotations

import torch

from fathom.build.config import DEFAULT_MAX_SEQ_LEN
from fathom.build.errors import ConfigError
from fathom.build.sources import ModelSource
from fathom.build.weight_map import IGNORED_HF_SUFFIXES, hf_shapes, trtllm_sources
from fathom.build.weights import check_tensors

from fathom.build.precision import torch_dtype

from .model import Qwen2Model


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | None, device: str | None) -> tuple[str, str]:
    """(dtype, device) with defaults filled in: cuda if available; bfloat16 on CUDA, float32 on CPU
    (a CPU runs bf16 matmuls ~13x slower than fp32) for dtype None or "auto"."""
    device = device or default_device()
    if dtype in (None, "auto"):
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return dtype, device


def native_tensors_from_hf(source: ModelSource, device: str = "cpu") -> dict[str, torch.Tensor]:
    """HF-named tensors -> unsharded TRT-LLM-named tensors, validated against the config."""
    tensors = source.hf_tensors(device=device)
    check_tensors(tensors, hf_shapes(source.config), where=source.spec, ignored_suffixes=IGNORED_HF_SUFFIXES)
    out = {}
    for name, parts in trtllm_sources(source.config).items():
        loaded = [tensors.get(p) for p in parts]
        out[name] = loaded[0] if len(loaded) == 1 else torch.cat(loaded, dim=0)
    return out


def load_model(source: ModelSource, dtype: str = "float32", device: str | None = None,
               max_seq_len: int = DEFAULT_MAX_SEQ_LEN) -> Qwen2Model:
    device = device or default_device()
    if source.kind in ("hf", "random"):
        tensors = native_tensors_from_hf(source, device=device)
    elif source.kind == "checkpoint":
        from fathom.build.checkpoint import load_native_tensors, read_checkpoint

        ckpt = read_checkpoint(source.path)
        tensors = load_native_tensors(ckpt)
        qcfg = ckpt.quantization
        if qcfg.quantized:
            from .quant_linear import load_quantized_model

            return load_quantized_model(source.config, tensors, qcfg, torch_dtype(dtype), device, max_seq_len,
                                        tp=ckpt.mapping.tp_size)
    else:
        raise ConfigError(f"{source.spec}: the torch executor cannot run a TensorRT engine; "
                          "pass the checkpoint it was built from, or use --executor trtllm")
    return Qwen2Model.from_tensors(source.config, tensors, torch_dtype(dtype), device, max_seq_len)
