"""NVML profiling: GPU memory, power, energy, clocks, and host memory/CPU, sampled in the background.

The public names of the profiling modules, in one place for the code that measures something:

- `nvml_library`: the pynvml boundary (opened in one place, NVML return codes as typed exceptions);
- `nvml_devices`: the GPUs CUDA_VISIBLE_DEVICES selects, their static facts and readings;
- `measurements`: a window of readings reduced to energy, power, memory, clocks, throttling;
- `host_usage`: this process's resident memory;
- `profiler`: the background sampler with named windows, its summary and time series.
"""

from .host_usage import host_peak_rss_bytes, host_rss_bytes
from .measurements import THROTTLE_REASONS, GPUWindow, Measurement, Reading, measure, throttle_reason_names
from .nvml_devices import GPUInfo, GPUReading, gpu_facts, visible_gpu_indices
from .nvml_library import (NVMLError, NVMLGPULost, NVMLNoPermission, NVMLNotSupported, NVMLTimeout,
                           NVMLUnavailable, NVMLUninitialized, NVMLUnknownError)
from .profiler import Profiler, Window

__all__ = [
    "host_peak_rss_bytes", "host_rss_bytes",
    "THROTTLE_REASONS", "GPUWindow", "Measurement", "Reading", "measure", "throttle_reason_names",
    "GPUInfo", "GPUReading", "gpu_facts", "visible_gpu_indices",
    "NVMLError", "NVMLGPULost", "NVMLNoPermission", "NVMLNotSupported", "NVMLTimeout", "NVMLUnavailable",
    "NVMLUninitialized", "NVMLUnknownError",
    "Profiler", "Window",
]
