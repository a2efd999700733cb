"""Load any MODEL source into the PyTorch executor's Qwen2Model, or one rank's shard of a
tensor-parallel checkpoint (`load_rank_model`)."""

from __future__ import annotations

import struct
from pathlib import Path

import torch

from fathom.build.config import DEFAULT_MAX_SEQ_LEN
from fathom.build.errors import ConfigError, WeightsError
from fathom.build.sources import ModelSource
from fathom.build.weight_map import IGNORED_HF_SUFFIXES, hf_shapes, trtllm_sources
from fathom.build.weights import SAFETENSORS_DTYPES, check_tensors

from fathom.build.precision import torch_dtype

from .model import Qwen2Model
from .tensor_parallel import TensorParallel


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


def check_tp_checkpoint(source: ModelSource, tp: int) -> None:
    """Refuse what `--tp tp` cannot run: anything but a checkpoint converted with tp_size = tp and
    pp_size = 1 (each rank loads its own rank file)."""
    if source.kind != "checkpoint":
        raise ConfigError(f"{source.spec}: --tp {tp} runs a TensorRT-LLM checkpoint converted with --tp {tp} "
                          f"(fathom convert MODEL OUT --tp {tp}); this is a {source.kind} source")
    from fathom.build.checkpoint import read_checkpoint

    mapping = read_checkpoint(source.path).mapping
    if mapping.pp_size != 1:
        raise ConfigError(f"{source.spec}: --tp {tp}: the checkpoint has pp_size {mapping.pp_size}, expected 1 "
                          "(the torch executor runs tensor parallelism only)")
    if mapping.tp_size != tp:
        raise ConfigError(f"{source.spec}: --tp {tp}: the checkpoint has tp_size {mapping.tp_size}, expected {tp} "
                          f"(convert it again with --tp {tp}, or pass --tp {mapping.tp_size})")


def read_tensors(path: Path, header: dict) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file read into memory of its own. Plain reads, not a memory map:
    mapped file pages count in the resident set next to the copies, twice the weights at peak."""
    out = {}
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        for name, info in header.items():
            t = torch.empty(info["shape"], dtype=SAFETENSORS_DTYPES[info["dtype"]])
            start, end = info["data_offsets"]
            f.seek(8 + header_len + start)
            if f.readinto(t.reshape(-1).view(torch.uint8).numpy()) != end - start:
                raise WeightsError(f"{path}: tensor '{name}' is truncated")
            out[name] = t
    return out


def load_rank_model(path: str | Path, tp: TensorParallel, dtype: str, device: str,
                    max_seq_len: int = DEFAULT_MAX_SEQ_LEN) -> tuple[Qwen2Model, int]:
    """Rank `tp.rank`'s model from its own `rank{r}.safetensors` of a tp-sized, pp 1 checkpoint (no
    other rank's file is read) and the bytes of tensors it read."""
    from fathom.build.checkpoint import check_rank_file, read_checkpoint

    ckpt = read_checkpoint(path)
    plan = ckpt.rank_plans()[tp.rank]
    tensors = read_tensors(ckpt.path / plan.info.file_name, check_rank_file(ckpt.path, plan))
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    if ckpt.quantization.quantized:
        from .quant_linear import load_quantized_model

        model = load_quantized_model(ckpt.cfg, tensors, ckpt.quantization, torch_dtype(dtype), device, max_seq_len,
                                     parallel=tp)
    else:
        model = Qwen2Model.from_tensors(ckpt.cfg, tensors, torch_dtype(dtype), device, max_seq_len, tp=tp)
    return model, nbytes
