"""Lazy tensor sources: safetensors directories (single or sharded) and deterministic random weights.

Both expose the same small interface (`TensorSource`) so conversion, validation and the executors
never care where tensors come from. Nothing is read until `get(name)` is called.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Iterable, Protocol

import torch

from .config import ModelConfig
from .errors import WeightsError

SAFETENSORS_DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn,
    "I8": torch.int8, "U8": torch.uint8, "I32": torch.int32, "I64": torch.int64, "BOOL": torch.bool,
}


class TensorSource(Protocol):
    def names(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def dtype(self, name: str) -> torch.dtype: ...
    def get(self, name: str) -> torch.Tensor: ...


def read_safetensors_header(path: Path) -> dict:
    """Parse and check a safetensors header without reading tensor data (detects truncation)."""
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise WeightsError(f"{path}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", raw_len)
            size = path.stat().st_size
            if n > size - 8:
                raise WeightsError(f"{path}: truncated safetensors file (header claims {n} bytes, file has {size})")
            header = json.loads(f.read(n))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path}: not a valid safetensors file ({e})") from e
    header.pop("__metadata__", None)
    end = max((info["data_offsets"][1] for info in header.values()), default=0)
    if 8 + n + end > size:
        raise WeightsError(f"{path}: truncated safetensors file (tensor data needs {8 + n + end} bytes, file has {size})")
    return header


class SafetensorsDir:
    """All tensors of a directory's `*.safetensors` files, checked against the shard index if any."""

    def __init__(self, directory: str | Path, pattern: str = "*.safetensors"):
        self.directory = Path(directory)
        self.files = sorted(self.directory.glob(pattern))
        if not self.files:
            raise WeightsError(f"{self.directory}: no {pattern} files found")
        self._where: dict[str, Path] = {}
        self._info: dict[str, dict] = {}
        for path in self.files:
            for name, info in read_safetensors_header(path).items():
                if name in self._where:
                    raise WeightsError(f"{path}: tensor '{name}' also in {self._where[name].name}")
                self._where[name] = path
                self._info[name] = info
        self._check_index()
        self._handles: dict[Path, object] = {}

    def _check_index(self) -> None:
        index_path = self.directory / "model.safetensors.index.json"
        if not index_path.exists():
            return
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise WeightsError(f"{index_path}: expected a JSON object with 'weight_map' ({e})") from e
        for name, file in weight_map.items():
            actual = self._where.get(name)
            if actual is None:
                raise WeightsError(f"{index_path}: lists '{name}' in {file}, but no safetensors file contains it")
            if actual.name != file:
                raise WeightsError(f"{index_path}: lists '{name}' in {file}, but it is in {actual.name}")
        extra = sorted(set(self._where) - set(weight_map))
        if extra:
            raise WeightsError(f"{index_path}: does not list {len(extra)} tensor(s) present in the files, e.g. '{extra[0]}'")

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._info[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        code = self._info[name]["dtype"]
        if code not in SAFETENSORS_DTYPES:
            raise WeightsError(f"{self._where[name]}: tensor '{name}' has unsupported dtype {code}")
        return SAFETENSORS_DTYPES[code]

    def nbytes(self, name: str) -> int:
        start, end = self._info[name]["data_offsets"]
        return end - start

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        path = self._where[name]
        if path not in self._handles:
            try:
                self._handles[path] = safe_open(str(path), framework="pt")
            except Exception as e:  # safetensors raises its own error types
                raise WeightsError(f"{path}: cannot open safetensors file ({e})") from e
        try:
            return self._handles[path].get_tensor(name)
        except Exception as e:
            raise WeightsError(f"{path}: cannot read tensor '{name}' ({e})") from e


class RandomWeights:
    """Deterministic random HF-named Qwen2 weights with exact shapes, generated per tensor on demand.

    Each tensor's values depend only on (seed, name), so lazy access in any order is reproducible.
    """

    def __init__(self, cfg: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.bfloat16, device: str = "cpu"):
        from .weight_map import hf_shapes

        self.cfg, self.seed, self._dtype, self.device = cfg, seed, dtype, device
        self._shapes = hf_shapes(cfg)
        self.files: list[Path] = []

    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def dtype(self, name: str) -> torch.dtype:
        return self._dtype

    def nbytes(self, name: str) -> int:
        n = 1
        for d in self._shapes[name]:
            n *= d
        return n * self._dtype.itemsize

    def get(self, name: str) -> torch.Tensor:
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        shape = self._shapes[name]
        if name.endswith("norm.weight") or "layernorm" in name:
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen, device=self.device)
        elif name.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=gen, device=self.device)
        else:
            # std 1/sqrt(fan_in) keeps activations O(1) through many layers.
            fan_in = shape[-1] if name != "model.embed_tokens.weight" else 1
            t = torch.randn(shape, generator=gen, device=self.device) * (fan_in ** -0.5 if fan_in > 1 else 0.5)
        return t.to(self._dtype)


def check_tensors(source: TensorSource, expected: dict[str, tuple[int, ...]], where: str,
                  ignored_suffixes: Iterable[str] = ()) -> list[str]:
    """Raise listing missing / mis-shaped / unexpected tensors; return the ignored names."""
    names = set(source.names())
    ignored = sorted(n for n in names - set(expected) if n.endswith(tuple(ignored_suffixes)))
    missing = sorted(set(expected) - names)
    unexpected = sorted(names - set(expected) - set(ignored))
    misshaped = [f"{n} {source.shape(n)} (expected {expected[n]})"
                 for n in sorted(names & set(expected)) if source.shape(n) != expected[n]]
    problems = []
    for label, items in (("missing", missing), ("mis-shaped", misshaped), ("unexpected", unexpected)):
        if items:
            shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise WeightsError(f"{where}: tensors do not match the config; " + "; ".join(problems))
    return ignored


FINITE_CHECK_CHUNK = 1 << 24  # elements: the temporaries stay small for any tensor size
_HALF_EXPONENT_MASKS = {torch.bfloat16: 0x7F80, torch.float16: 0x7C00}


def _nonfinite_in_chunk(chunk: torch.Tensor) -> int:
    """numpy is ~10x faster than torch.isfinite on CPU. 16-bit floats are tested by their exponent
    bits (all ones exactly for NaN/Inf): numpy has no bf16 and its float16 isfinite is slow."""
    import numpy as np

    mask = _HALF_EXPONENT_MASKS.get(chunk.dtype)
    if mask is not None:
        bits = chunk.view(torch.int16).cpu().numpy()
        return int(np.count_nonzero((bits & mask) == mask))
    values = chunk.cpu().numpy()
    return 0 if np.isfinite(values).all() else int(np.count_nonzero(~np.isfinite(values)))


def count_nonfinite(tensor: torch.Tensor) -> int:
    """Number of NaN/Inf values of a floating tensor (0 for other dtypes), in bounded memory."""
    if not tensor.is_floating_point() or tensor.dtype.itemsize == 1:
        return 0
    return sum(_nonfinite_in_chunk(chunk) for chunk in tensor.detach().reshape(-1).split(FINITE_CHECK_CHUNK))


def check_finite(name: str, tensor: torch.Tensor, where: str) -> None:
    bad = count_nonfinite(tensor)
    if bad:
        raise WeightsError(f"{where}: tensor '{name}' has {bad} NaN/Inf value(s)")
