"""A fake `pynvml` (nvidia-ml-py) for tests: scripted devices, advancing counters, injected errors.

Only the functions `fathom.runtime.nvml` calls exist. State is module-global, like NVML itself;
`configure()` resets it. By default NVML is absent (nvmlInit raises LIBRARY_NOT_FOUND), so a run
that picks this module up by accident never reports a made-up GPU.

    from fakes import pynvml as fake
    fake.configure([fake.FakeDevice(name="NVIDIA H100 80GB HBM3")])
    fake.inject_error("nvmlDeviceGetPowerUsage", at_call=3, code=fake.NVML_ERROR_GPU_IS_LOST)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

# Error codes, constants and struct versions: same values as nvidia-ml-py 13.
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_UNKNOWN = 999
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_TEMPERATURE_GPU = 0
nvmlMemory_v2 = 0x02000028


class NVMLError(Exception):
    def __init__(self, value: int):
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return f"NVML error {self.value}"


@dataclass
class FakeDevice:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    mem_total_bytes: int = 80 * 2**30
    mem_reserved_bytes: int = 512 * 2**20
    mem_used_bytes: list[int] = field(default_factory=lambda: [2 * 2**30])  # one value per read, last repeats
    power_mw: list[int] = field(default_factory=lambda: [300_000])
    energy_start_mj: int = 1_000_000
    energy_step_mj: int = 1_000  # added after every energy read
    gpu_util_pct: int = 90
    mem_util_pct: int = 40
    sm_clock_mhz: int = 1980
    mem_clock_mhz: int = 2619
    temperature_c: int = 55
    throttle_mask: int = 0x4  # SwPowerCap
    compute_capability: tuple[int, int] = (9, 0)
    power_limit_mw: int = 700_000
    processes: list[tuple[int, int]] = field(default_factory=list)  # (pid, used bytes)
    unsupported: set[str] = field(default_factory=set)  # function names raising NOT_SUPPORTED
    has_memory_v2: bool = True
    has_clocks_event_reasons: bool = True  # False: only the older ...ClocksThrottleReasons name


class _State:
    def __init__(self, devices=None, library=False, driver="550.54.15", cuda_version=12040):
        self.devices: list[FakeDevice] = list(devices or [])
        self.library = library
        self.driver = driver
        self.cuda_version = cuda_version
        self.initialized = 0
        self.calls: list[str] = []
        self.counts: dict[str, int] = {}
        self.errors: dict[str, tuple[int, int, bool]] = {}  # fn -> (at_call, code, persistent)
        self.reads: dict[tuple[str, int], int] = {}  # (fn, device) -> reads so far
        self.energy_returned: dict[int, list[int]] = {}
        self.lock = threading.Lock()


_state = _State()


def configure(devices: list[FakeDevice] | None = None, library: bool = True, **kw) -> None:
    """Reset: `devices` ([] = NVML works but reports no GPU); library=False = NVML not installed."""
    global _state
    _state = _State(devices, library=library, **kw)


def inject_error(function: str, at_call: int, code: int = NVML_ERROR_GPU_IS_LOST, persistent: bool = True) -> None:
    """The `at_call`-th call (1-based) of `function` raises NVMLError(code); persistent: every later one too."""
    _state.errors[function] = (at_call, code, persistent)


def calls(function: str | None = None) -> list[str]:
    return [c for c in _state.calls if function is None or c == function]


def energy_returned(index: int) -> list[int]:
    """Every energy counter value handed out for device `index`, in order."""
    return list(_state.energy_returned.get(index, []))


def _enter(fn: str, handle=None) -> FakeDevice | None:
    with _state.lock:
        _state.calls.append(fn)
        n = _state.counts[fn] = _state.counts.get(fn, 0) + 1
        if fn in _state.errors:
            at, code, persistent = _state.errors[fn]
            if n == at or (persistent and n > at):
                raise NVMLError(code)
    if fn != "nvmlInit" and not _state.initialized:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    if handle is None:
        return None
    dev = _state.devices[handle.index]
    if fn in dev.unsupported:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return dev


def _next(fn: str, handle, values: list[int]) -> int:
    with _state.lock:
        i = _state.reads.get((fn, handle.index), 0)
        _state.reads[(fn, handle.index)] = i + 1
    return values[min(i, len(values) - 1)]


def nvmlInit() -> None:
    _enter("nvmlInit")
    if not _state.library:
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
    _state.initialized += 1


def nvmlShutdown() -> None:
    _enter("nvmlShutdown")
    _state.initialized -= 1


def nvmlSystemGetDriverVersion() -> str:
    _enter("nvmlSystemGetDriverVersion")
    return _state.driver


def nvmlSystemGetCudaDriverVersion() -> int:
    _enter("nvmlSystemGetCudaDriverVersion")
    return _state.cuda_version


def nvmlDeviceGetCount() -> int:
    _enter("nvmlDeviceGetCount")
    return len(_state.devices)


def nvmlDeviceGetHandleByIndex(index: int):
    _enter("nvmlDeviceGetHandleByIndex")
    if not 0 <= index < len(_state.devices):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return SimpleNamespace(index=index)


def nvmlDeviceGetName(handle) -> str:
    return _enter("nvmlDeviceGetName", handle).name


def nvmlDeviceGetUUID(handle) -> str:
    return _enter("nvmlDeviceGetUUID", handle).uuid


def nvmlDeviceGetCudaComputeCapability(handle) -> tuple[int, int]:
    return _enter("nvmlDeviceGetCudaComputeCapability", handle).compute_capability


def nvmlDeviceGetEnforcedPowerLimit(handle) -> int:
    return _enter("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_mw


def nvmlDeviceGetMemoryInfo(handle, version=None):
    dev = _enter("nvmlDeviceGetMemoryInfo", handle)
    if version is not None and not dev.has_memory_v2:
        raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
    used = _next("nvmlDeviceGetMemoryInfo", handle, dev.mem_used_bytes)
    if version is None:  # v1: `used` includes the driver's reservation
        used += dev.mem_reserved_bytes
        return SimpleNamespace(total=dev.mem_total_bytes, free=dev.mem_total_bytes - used, used=used)
    free = dev.mem_total_bytes - used - dev.mem_reserved_bytes
    return SimpleNamespace(version=version, total=dev.mem_total_bytes, reserved=dev.mem_reserved_bytes,
                           free=free, used=used)


def nvmlDeviceGetComputeRunningProcesses(handle):
    dev = _enter("nvmlDeviceGetComputeRunningProcesses", handle)
    return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in dev.processes]


def nvmlDeviceGetUtilizationRates(handle):
    dev = _enter("nvmlDeviceGetUtilizationRates", handle)
    return SimpleNamespace(gpu=dev.gpu_util_pct, memory=dev.mem_util_pct)


def nvmlDeviceGetPowerUsage(handle) -> int:
    dev = _enter("nvmlDeviceGetPowerUsage", handle)
    return _next("nvmlDeviceGetPowerUsage", handle, dev.power_mw)


def nvmlDeviceGetTotalEnergyConsumption(handle) -> int:
    dev = _enter("nvmlDeviceGetTotalEnergyConsumption", handle)
    with _state.lock:
        got = _state.energy_returned.setdefault(handle.index, [])
        value = dev.energy_start_mj + len(got) * dev.energy_step_mj
        got.append(value)
    return value


def nvmlDeviceGetClockInfo(handle, clock: int) -> int:
    dev = _enter("nvmlDeviceGetClockInfo", handle)
    return dev.sm_clock_mhz if clock == NVML_CLOCK_SM else dev.mem_clock_mhz


def nvmlDeviceGetTemperature(handle, sensor: int) -> int:
    return _enter("nvmlDeviceGetTemperature", handle).temperature_c


def nvmlDeviceGetCurrentClocksEventReasons(handle) -> int:
    dev = _enter("nvmlDeviceGetCurrentClocksEventReasons", handle)
    if not dev.has_clocks_event_reasons:
        raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
    return dev.throttle_mask


def nvmlDeviceGetCurrentClocksThrottleReasons(handle) -> int:
    return _enter("nvmlDeviceGetCurrentClocksThrottleReasons", handle).throttle_mask
