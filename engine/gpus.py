"""The GPU catalogue (profiles/gpus.json): datasheet numbers the planner and the presets rely on.

Names resolve exactly (catalogue key or short alias, case-insensitive); an unknown name lists the
valid ones. `auto` asks NVML for the local GPU and maps its name through each entry's `nvml_names`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from fathom.build.errors import ConfigError, MissingDependencyError, PlanError
from fathom.build.precision import KvCacheFormat, QuantAlgo, WeightFormat

from .trtllm import SUPPORTED_TRTLLM_VERSION

GIB = 2**30
TB = 10**12
# dense_tflops keys every entry must have: the tensor-core input dtypes of the weight formats. Entries
# may list more (int8, from the same datasheets).
COMPUTE_DTYPES = tuple(dict.fromkeys(w.compute_dtype for w in WeightFormat if w.compute_dtype is not None))
# tensorrt_llm/builder.py build() (v1.2.1) raises "INT8/INT4 quantization is not supported on SM>=100."
# on a GPU with 100 <= sm < 120 for INT8/INT4 weight-only models (QuantMode.is_int8_weight_only /
# is_int4_weight_only: fathom's w8a16 and w4a16_awq) and for an INT8 KV cache.
NO_INTEGER_QUANT_SM = range(100, 120)


@dataclass(frozen=True)
class GpuSpec:
    key: str
    name: str
    aliases: tuple[str, ...]
    nvml_names: tuple[str, ...]
    memory_gib: float
    memory_bandwidth_tb_s: float
    dense_tflops: dict  # tensor-core input dtype -> TFLOPS (None = unsupported)
    compute_capability: str
    fp8: bool
    source: str

    def __post_init__(self) -> None:
        where = f"profiles/gpus.json: gpus.{self.key}"
        missing = [d for d in COMPUTE_DTYPES if d not in self.dense_tflops]
        if missing:
            raise ConfigError(f"{where}.dense_tflops: missing {', '.join(missing)} "
                              f"(expected keys {', '.join(COMPUTE_DTYPES)})")
        if self.fp8 != (self.sm >= 89):
            raise ConfigError(f"{where}.fp8 = {self.fp8}, expected {self.sm >= 89} (FP8 tensor cores need sm >= 89)")
        if (self.dense_tflops["fp8"] is not None) != self.fp8:
            raise ConfigError(f"{where}.dense_tflops.fp8: expected a number exactly when fp8 is true")
        if self.memory_gib <= 0 or self.memory_bandwidth_tb_s <= 0 or not self.dense_tflops["bf16"]:
            raise ConfigError(f"{where}: memory, bandwidth and bf16 TFLOPS must be positive")

    @property
    def sm(self) -> int:
        major, minor = self.compute_capability.split(".")
        return int(major) * 10 + int(minor)

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    @property
    def bandwidth_bytes_s(self) -> float:
        return self.memory_bandwidth_tb_s * TB

    def flops_s(self, dtype: str) -> float:
        """Dense peak ops/s for `dtype` (a WeightFormat.compute_dtype, or int8); raises if the GPU lacks it."""
        tflops = self.dense_tflops[dtype]
        if tflops is None:
            raise PlanError(f"{self.name} (sm{self.sm}) has no {dtype} tensor cores")
        return tflops * TB

    def integer_quant_refusal(self, weights: WeightFormat, kv_cache: KvCacheFormat) -> str | None:
        """Why TensorRT-LLM refuses to build these formats for this GPU, or None."""
        if self.sm not in NO_INTEGER_QUANT_SM:
            return None
        what = [f"{weights} weights"] if weights.quant_algo is not None and weights.quant_algo.weight_only else []
        what += [f"an {kv_cache} KV cache"] if kv_cache.quant_algo is QuantAlgo.INT8 else []
        if not what:
            return None
        return (f"{self.name} is sm{self.sm}: TensorRT-LLM {SUPPORTED_TRTLLM_VERSION} builds no INT8/INT4 quantization for "
                f"{NO_INTEGER_QUANT_SM.start} <= sm < {NO_INTEGER_QUANT_SM.stop} ({' and '.join(what)})")

    def summary(self) -> dict:
        return {"key": self.key, "name": self.name, "memory_gib": self.memory_gib,
                "memory_bandwidth_tb_s": self.memory_bandwidth_tb_s, "dense_tflops": dict(self.dense_tflops),
                "compute_capability": self.compute_capability, "sm": self.sm, "fp8": self.fp8,
                "source": self.source}


@lru_cache(maxsize=1)
def catalogue() -> dict[str, GpuSpec]:
    text = resources.files("fathom.profiles").joinpath("gpus.json").read_text()
    raw = json.loads(text)["gpus"]
    return {key: GpuSpec(key=key, name=e["name"], aliases=tuple(e["aliases"]), nvml_names=tuple(e["nvml_names"]),
                         memory_gib=e["memory_gib"], memory_bandwidth_tb_s=e["memory_bandwidth_tb_s"],
                         dense_tflops=dict(e["dense_tflops"]), compute_capability=e["compute_capability"],
                         fp8=e["fp8"], source=e["source"])
            for key, e in raw.items()}


def _names() -> dict[str, str]:
    """Every accepted spelling (lower case) -> catalogue key."""
    names = {}
    for key, gpu in catalogue().items():
        names[key] = key
        names.update({alias.lower(): key for alias in gpu.aliases})
    return names


def valid_names() -> list[str]:
    return sorted(_names())


def get_gpu(name: str) -> GpuSpec:
    """Exact lookup of a catalogue key or alias (`h100`, `l40s`, ...); `auto` reads the local GPU."""
    if name.lower() == "auto":
        return local_gpu()
    key = _names().get(name.lower())
    if key is None:
        raise PlanError(f"--gpu {name!r}: unknown GPU; valid names: auto, {', '.join(valid_names())}")
    return catalogue()[key]


def gpu_from_nvml_name(nvml_name: str) -> GpuSpec | None:
    """The catalogue entry whose `nvml_names` holds this exact NVML device name, if any."""
    wanted = nvml_name.strip().lower()
    for gpu in catalogue().values():
        if wanted in (n.lower() for n in gpu.nvml_names):
            return gpu
    return None


def local_gpu_names() -> list[str]:
    """NVML names of the visible GPUs ([] when NVML finds no driver or no device)."""
    try:
        import pynvml
    except ImportError as e:
        raise MissingDependencyError("--gpu auto needs NVML: pip install nvidia-ml-py") from e
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else name)  # bytes before nvidia-ml-py 11.5
        return names
    finally:
        pynvml.nvmlShutdown()


def local_gpu() -> GpuSpec:
    names = local_gpu_names()
    if not names:
        raise PlanError("--gpu auto: NVML sees no NVIDIA GPU on this machine; name the target GPU with --gpu")
    if len(set(names)) > 1:
        raise PlanError(f"--gpu auto: this machine mixes GPU models ({', '.join(sorted(set(names)))}); name one with --gpu")
    gpu = gpu_from_nvml_name(names[0])
    if gpu is None:
        raise PlanError(f"--gpu auto: local GPU {names[0]!r} is not in profiles/gpus.json; "
                        f"valid names: {', '.join(valid_names())}")
    return gpu
