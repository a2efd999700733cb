"""One vocabulary for precision: model dtypes, weight formats and KV cache formats.

Every command option, config file, preset, run record and report label names a precision with the
words defined here, and every fact about a format (its TensorRT-LLM `quant_algo` value, bytes per
stored element, the torch dtype it is stored in) hangs off the enum member, so no other module
keeps a table of them.

- `--dtype` words (`bfloat16`, `float16`, `float32`) are torch's names for the model dtype: the
  dtype of activations and of every tensor that is not quantized. TensorRT-LLM's config.json
  `dtype` field uses the same words.
- `--precision` words name the weight format: `bf16`, `fp16`, `fp32` (unquantized, stored in that
  dtype), `fp8` (e4m3 weights and activations, per-tensor scales), `w8a16` (int8 weights, 16-bit
  activations), `w4a16_awq` (int4 weights in groups, activation-aware scales).
- `--kv-cache` words name the KV cache format: `model` (the model dtype, unquantized), `fp8`, `int8`.

TensorRT-LLM values are those of `tensorrt_llm/quantization/mode.py` `QuantAlgo` (v1.2.1), as read
back from config.json's `quantization` block by `tensorrt_llm/models/modeling_utils.py` `QuantConfig`.
torch is imported only where a torch dtype is asked for, so the CLI and planner stay light.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

# --dtype words -> bytes per element. Keys are torch attribute names (torch.bfloat16, ...).
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DTYPES = tuple(DTYPE_BYTES)


def check_dtype(name: str, where: str) -> str:
    """`name` if it is a model dtype word, else a one-line ConfigError naming `where`."""
    if name not in DTYPE_BYTES:
        raise ConfigError(f"{where} {name!r}: expected one of {', '.join(DTYPES)}")
    return name


def dtype_word(dtype: "torch.dtype") -> str:
    """torch.bfloat16 -> "bfloat16" (also storage dtypes: float8_e4m3fn, int8)."""
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str, where: str = "--dtype") -> "torch.dtype":
    """torch dtype of a model dtype word (bfloat16 | float16 | float32)."""
    import torch

    return getattr(torch, check_dtype(name, where))


class QuantAlgo(str, Enum):
    """config.json `quant_algo` / `kv_cache_quant_algo` values, exactly as TensorRT-LLM writes them."""

    FP8 = "FP8"
    W8A16 = "W8A16"
    W4A16_AWQ = "W4A16_AWQ"
    INT8 = "INT8"  # KV cache only

    @property
    def weight_only(self) -> bool:
        """Integer weights beside activations in the model dtype (TensorRT-LLM's WeightOnly* layers)."""
        return self in (QuantAlgo.W8A16, QuantAlgo.W4A16_AWQ)


AWQ_GROUP_SIZES = (64, 128)  # what TRT-LLM's fine-grained int4 GEMM kernels implement
DEFAULT_GROUP_SIZE = 128


class _Words(str, Enum):
    """An enum whose values are CLI words and whose members may carry a TensorRT-LLM `quant_algo`."""

    def __str__(self) -> str:
        return self.value

    @property
    def quantized(self) -> bool:
        return self.quant_algo is not None

    @classmethod
    def parse(cls, word: str, where: str):
        """The member named `word`, else a one-line ConfigError naming `where` and the valid words."""
        try:
            return cls(word)
        except ValueError:
            raise ConfigError(f"{where} {word!r}: expected one of {', '.join(m.value for m in cls)}") from None

    @classmethod
    def _of_algo(cls, algo: str, where: str, field: str):
        """The quantized member whose TensorRT-LLM value is `algo` (config.json `quantization.<field>`)."""
        for m in cls:
            if m.quantized and m.quant_algo.value == algo:
                return m
        algos = ", ".join(m.quant_algo.value for m in cls if m.quantized)
        raise ConfigError(f"{where}: field 'quantization.{field}' = {algo!r}, expected null or one of {algos}")


class WeightFormat(_Words):
    """How the linear weights are stored: the `--precision` words."""

    # word, quant_algo, bits per stored weight, model dtype implied (None: the checkpoint's dtype),
    # dtype of the matmul inputs on the tensor cores (a key of the GPU catalogue's dense_tflops)
    BF16 = ("bf16", None, 16, "bfloat16", "bf16")
    FP16 = ("fp16", None, 16, "float16", "bf16")  # fp16 tensor-core rate = bf16's
    FP32 = ("fp32", None, 32, "float32", None)
    FP8 = ("fp8", QuantAlgo.FP8, 8, None, "fp8")
    W8A16 = ("w8a16", QuantAlgo.W8A16, 8, None, "bf16")
    W4A16_AWQ = ("w4a16_awq", QuantAlgo.W4A16_AWQ, 4, None, "bf16")

    def __new__(cls, word: str, quant_algo: QuantAlgo | None, bits: int, dtype: str | None,
                compute: str | None) -> "WeightFormat":
        member = str.__new__(cls, word)
        member._value_ = word
        member.quant_algo = quant_algo
        member.bits = bits
        member.dtype = dtype
        member.compute_dtype = compute
        return member

    @classmethod
    def of_dtype(cls, dtype: str) -> "WeightFormat":
        """The unquantized format of a model dtype word."""
        return {m.dtype: m for m in cls if not m.quantized}[check_dtype(dtype, "dtype")]

    @classmethod
    def of_checkpoint(cls, quant_algo: str | None, dtype: str, where: str) -> "WeightFormat":
        """Format of a TRT-LLM config.json: its `quant_algo`, else its `dtype`."""
        if quant_algo is None:
            return cls.of_dtype(check_dtype(dtype, f"{where}: field 'dtype' ="))
        return cls._of_algo(quant_algo, where, "quant_algo")

    def model_dtype(self, requested: str) -> str:
        """The model dtype of a checkpoint in this format when `requested` is asked for; unquantized
        formats fix it, quantized ones keep the requested one."""
        if self.dtype is not None and requested != self.dtype:
            raise ConfigError(f"--precision {self.value} stores weights as {self.dtype}; "
                              f"--dtype {requested} contradicts it (leave --dtype out)")
        return requested

    def linear_bytes(self, out_features: int, in_features: int, group_size: int = DEFAULT_GROUP_SIZE) -> int:
        """Stored bytes of one (out, in) linear in this format, scaling factors included, as
        TensorRT-LLM's checkpoint holds them."""
        n = out_features * in_features
        if not self.quantized:
            return n * self.bits // 8
        if self is WeightFormat.FP8:
            return n + 2 * 4  # e4m3 weights + float32 weights_scaling_factor and activation_scaling_factor
        if self is WeightFormat.W8A16:
            return n + 2 * out_features  # int8 weights + per-channel 16-bit scale
        groups = -(-in_features // group_size)
        return n // 2 + 2 * groups * out_features + 2 * in_features  # int4 + group scales + prequant scale

    def bytes_per_weight(self, group_size: int = DEFAULT_GROUP_SIZE) -> float:
        """Average stored bytes per weight, with the group-wise scale overhead (w4a16_awq: one 16-bit
        scale per `group_size` weights)."""
        if self is WeightFormat.W4A16_AWQ:
            return 0.5 + 2 / group_size
        return self.bits / 8


class KvCacheFormat(_Words):
    """How K and V are stored in the cache: the `--kv-cache` words."""

    # word, kv_cache_quant_algo, bytes per element (None: the model dtype's), torch dtype name
    MODEL = ("model", None, None, None)
    FP8 = ("fp8", QuantAlgo.FP8, 1, "float8_e4m3fn")
    INT8 = ("int8", QuantAlgo.INT8, 1, "int8")

    def __new__(cls, word: str, quant_algo: QuantAlgo | None, nbytes: int | None, storage: str | None
                ) -> "KvCacheFormat":
        member = str.__new__(cls, word)
        member._value_ = word
        member.quant_algo = quant_algo
        member._bytes = nbytes
        member.storage = storage
        return member

    @classmethod
    def default_for(cls, weights: WeightFormat) -> "KvCacheFormat":
        """The KV cache format chosen when none is asked for: FP8 beside FP8 weights (TensorRT-LLM's
        FP8 recipe), the model dtype otherwise."""
        return cls.FP8 if weights is WeightFormat.FP8 else cls.MODEL

    @classmethod
    def of_checkpoint(cls, kv_cache_quant_algo: str | None, where: str) -> "KvCacheFormat":
        """Format of a TRT-LLM config.json's `kv_cache_quant_algo` (null: the model dtype)."""
        if kv_cache_quant_algo is None:
            return cls.MODEL
        return cls._of_algo(kv_cache_quant_algo, where, "kv_cache_quant_algo")

    def bytes_per_element(self, model_dtype: str) -> int:
        return self._bytes if self._bytes is not None else DTYPE_BYTES[check_dtype(model_dtype, "dtype")]

    def torch_dtype(self, model_dtype: str) -> "torch.dtype":
        """The dtype K/V are stored in."""
        if self.storage is None:
            return torch_dtype(model_dtype, "dtype")
        import torch

        return getattr(torch, self.storage)

