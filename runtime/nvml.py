"""NVML profiler: GPU memory, power, energy, clocks, and host memory/CPU, sampled in the background.

Why it is built this way:
- Energy comes from NVML's total-energy counter (mJ since the driver loaded, Volta and newer): the
  energy of a window is end - start, exact whatever the sampling interval. Power samples are
  instantaneous readings and only feed the mean/max power figures.
- Every window takes one reading at its start and one at its end besides the periodic ticks, so a
  50 ms run still has memory, power and energy values.
- It samples every GPU NVML reports (restricted to CUDA_VISIBLE_DEVICES when set), whatever device
  the executor runs on: the whole device is profiled, other processes included.
- No pynvml, no driver, or no GPU: `status`/`reason` say which, one log line says so once, and
  every GPU field is null. Nothing is estimated.
- NVML error codes become typed exceptions in one place (`_NVML.call`), the pattern of
  ml-energy/zeus `zeus/device/gpu/nvidia.py`. A reading a GPU does not offer (or forbids) stays
  null for that GPU; any other error ends GPU sampling with status "error" and its reason.
- Readings stay in memory (well under 1 KB per GPU each: a few MB per GPU-hour at 100 ms), so a
  window can be aggregated after the fact and the time series written at the end.

nvidia-smi equivalents: memory.used / memory.reserved, utilization.gpu / utilization.memory,
power.draw, clocks.sm / clocks.mem, temperature.gpu, clocks_event_reasons.active.
"""

from __future__ import annotations

import functools
import json
import logging
import operator
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from fathom.build.errors import FathomError

log = logging.getLogger("fathom.profiler")
_said: set[str] = set()


class NVMLError(FathomError):
    """An NVML call failed; `code` is NVML's return code when it gave one."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class NVMLUnavailable(NVMLError):
    """The NVML library or the driver is missing."""


class NVMLNotSupported(NVMLError):
    """This GPU, driver or nvidia-ml-py version does not offer the reading."""


class NVMLNoPermission(NVMLError):
    """The reading needs privileges this process lacks."""


class NVMLGPULost(NVMLError):
    """The GPU fell off the bus or needs a reset."""


class NVMLTimeout(NVMLError):
    pass


class NVMLUninitialized(NVMLError):
    pass


class NVMLUnknownError(NVMLError):
    pass


# NVML return code names (nvml.h) -> exception class: the one place codes are interpreted.
_ERROR_CLASSES = {
    "NVML_ERROR_UNINITIALIZED": NVMLUninitialized,
    "NVML_ERROR_NOT_SUPPORTED": NVMLNotSupported,
    "NVML_ERROR_FUNCTION_NOT_FOUND": NVMLNotSupported,  # older driver without this entry point
    "NVML_ERROR_ARGUMENT_VERSION_MISMATCH": NVMLNotSupported,  # struct version (e.g. memory v2) too new
    "NVML_ERROR_NO_PERMISSION": NVMLNoPermission,
    "NVML_ERROR_LIBRARY_NOT_FOUND": NVMLUnavailable,
    "NVML_ERROR_DRIVER_NOT_LOADED": NVMLUnavailable,
    "NVML_ERROR_GPU_IS_LOST": NVMLGPULost,
    "NVML_ERROR_RESET_REQUIRED": NVMLGPULost,
    "NVML_ERROR_TIMEOUT": NVMLTimeout,
}
_FIELD_ERRORS = (NVMLNotSupported, NVMLNoPermission)  # the field stays null, sampling goes on

# Clock event ("throttle") reason bits, nvml.h nvmlClocksEventReason*.
THROTTLE_REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting",
}


def throttle_reason_names(mask: int) -> list[str]:
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    unknown = mask & ~sum(THROTTLE_REASONS)
    return names + ([hex(unknown)] if unknown else [])


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.warning("profiler: %s", message)


class _NVML:
    """pynvml behind one door: every call goes through `call`, which types the errors."""

    def __init__(self, module):
        self.nv = module
        self.classes = {getattr(module, name): cls for name, cls in _ERROR_CLASSES.items() if hasattr(module, name)}

    def call(self, fn: str, *args):
        f = getattr(self.nv, fn, None)
        if f is None:
            raise NVMLNotSupported(f"{fn}: not in this nvidia-ml-py version")
        try:
            return f(*args)
        except self.nv.NVMLError as e:
            code = getattr(e, "value", None)
            raise self.classes.get(code, NVMLUnknownError)(f"{fn}: {e}", code) from e


def visible_gpu_indices(spec: str | None, uuids: list[str]) -> list[int]:
    """NVML indices selected by CUDA_VISIBLE_DEVICES (`spec`), in CUDA order.

    Entries are indices or (prefixes of) UUIDs. Like CUDA, the list ends at the first entry that
    names no device. MIG instances cannot be measured by NVML: refused with a reason.
    """
    if spec is None:
        return list(range(len(uuids)))
    chosen: list[int] = []
    for entry in (e.strip() for e in spec.split(",")):
        if entry.startswith("MIG-"):
            raise NVMLNotSupported(f"CUDA_VISIBLE_DEVICES={spec}: NVML cannot measure MIG instances; "
                                   "name whole GPUs to profile them")
        if entry.lstrip("-").isdigit():
            index = int(entry)
        else:
            matches = [i for i, u in enumerate(uuids) if entry and u.startswith(entry)]
            index = matches[0] if len(matches) == 1 else -1
        if not 0 <= index < len(uuids):
            break
        if index not in chosen:
            chosen.append(index)
    return chosen


@dataclass(frozen=True)
class GPUInfo:
    """Static facts, read once."""

    index: int  # NVML index (nvidia-smi order)
    cuda_index: int  # position in CUDA_VISIBLE_DEVICES order
    name: str | None
    uuid: str | None
    driver_version: str | None
    cuda_driver_version: str | None
    compute_capability: str | None
    mem_total_bytes: int | None
    power_limit_mw: int | None
    mem_info_version: int | None  # 2: mem_used excludes the driver's reservation; 1: includes it


@dataclass(frozen=True)
class GPUReading:
    mem_used_bytes: int | None = None
    mem_reserved_bytes: int | None = None
    mem_total_bytes: int | None = None
    process_mem_bytes: int | None = None  # this process, when the driver reports it
    gpu_util_pct: int | None = None
    mem_util_pct: int | None = None
    power_mw: int | None = None
    energy_mj: int | None = None  # counter since driver load
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    temperature_c: int | None = None
    throttle_reasons_mask: int | None = None


@dataclass(frozen=True)
class Reading:
    time_s: float  # time.perf_counter(), the clock of TokenEvent.time_s
    rss_bytes: int | None
    cpu_time_s: float
    gpus: tuple[GPUReading | None, ...]  # one per GPUInfo; None: the GPU could not be read


class _GPU:
    """One device's handle plus which readings it turned out not to offer."""

    def __init__(self, nvml: _NVML, nvml_index: int):
        self.nvml = nvml
        self.handle = nvml.call("nvmlDeviceGetHandleByIndex", nvml_index)
        self.unsupported: set[str] = set()  # readings this GPU turned out not to offer

    def field(self, key: str, fn: str, *args):
        if key in self.unsupported:
            return None
        try:
            return self.nvml.call(fn, self.handle, *args)
        except _FIELD_ERRORS:
            self.unsupported.add(key)
            return None

    def memory(self) -> tuple[int | None, int | None, int | None]:
        """(used, reserved, total); v2 when the driver has it, else v1 (reserved unknown)."""
        version = getattr(self.nvml.nv, "nvmlMemory_v2", None)
        if version is not None:
            m = self.field("memory_v2", "nvmlDeviceGetMemoryInfo", version)
            if m is not None:
                return m.used, m.reserved, m.total
        m = self.field("memory", "nvmlDeviceGetMemoryInfo")
        return (m.used, None, m.total) if m is not None else (None, None, None)

    @property
    def memory_version(self) -> int:
        return 1 if "memory_v2" in self.unsupported or not hasattr(self.nvml.nv, "nvmlMemory_v2") else 2

    def process_memory(self) -> int | None:
        procs = self.field("processes", "nvmlDeviceGetComputeRunningProcesses")
        mine = [p.usedGpuMemory for p in procs or [] if p.pid == os.getpid() and p.usedGpuMemory is not None]
        return sum(mine) if mine else None  # absent: not on this GPU, or PIDs hidden by a container

    def throttle_mask(self) -> int | None:
        mask = self.field("throttle", "nvmlDeviceGetCurrentClocksEventReasons")
        if mask is None:  # drivers/bindings from before the rename
            mask = self.field("throttle_old", "nvmlDeviceGetCurrentClocksThrottleReasons")
        return mask

    def info(self, nvml_index: int, cuda_index: int, driver: str | None, cuda: str | None) -> GPUInfo:
        cc = self.field("cc", "nvmlDeviceGetCudaComputeCapability")
        used, _, total = self.memory()
        return GPUInfo(nvml_index, cuda_index, _text(self.field("name", "nvmlDeviceGetName")),
                       _text(self.field("uuid", "nvmlDeviceGetUUID")), driver, cuda,
                       f"{cc[0]}.{cc[1]}" if cc else None, total,
                       self.field("power_limit", "nvmlDeviceGetEnforcedPowerLimit"),
                       None if used is None else self.memory_version)

    def read(self) -> GPUReading:
        nv = self.nvml.nv
        used, reserved, total = self.memory()
        util = self.field("util", "nvmlDeviceGetUtilizationRates")
        return GPUReading(
            mem_used_bytes=used, mem_reserved_bytes=reserved, mem_total_bytes=total,
            process_mem_bytes=self.process_memory(),
            gpu_util_pct=util.gpu if util is not None else None,
            mem_util_pct=util.memory if util is not None else None,
            power_mw=self.field("power", "nvmlDeviceGetPowerUsage"),
            energy_mj=self.field("energy", "nvmlDeviceGetTotalEnergyConsumption"),
            sm_clock_mhz=self.field("sm_clock", "nvmlDeviceGetClockInfo", nv.NVML_CLOCK_SM),
            mem_clock_mhz=self.field("mem_clock", "nvmlDeviceGetClockInfo", nv.NVML_CLOCK_MEM),
            temperature_c=self.field("temperature", "nvmlDeviceGetTemperature", nv.NVML_TEMPERATURE_GPU),
            throttle_reasons_mask=self.throttle_mask(),
        )


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _cuda_version(value: int | None) -> str | None:
    return None if value is None else f"{value // 1000}.{value % 1000 // 10}"


def host_rss_bytes() -> int | None:
    """Resident set size of this process (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def host_peak_rss_bytes() -> int | None:
    """Peak resident set size over the process lifetime, as the OS reports it."""
    try:
        import resource
        import sys
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class GPUWindow:
    index: int
    uuid: str | None
    energy_j: float | None  # energy counter at the end reading - at the start reading
    mean_power_w: float | None  # mean of the instantaneous power samples
    max_power_w: float | None
    peak_mem_used_bytes: int | None
    peak_process_mem_bytes: int | None
    mean_gpu_util_pct: float | None
    mean_mem_util_pct: float | None
    max_temperature_c: int | None
    mean_sm_clock_mhz: float | None
    min_sm_clock_mhz: int | None
    throttle_reasons: tuple[str, ...]  # every reason seen in the window


@dataclass(frozen=True)
class Measurement:
    name: str
    duration_s: float
    num_readings: int
    energy_j: float | None  # all GPUs; null unless every GPU's counter was read at both ends
    mean_power_w: float | None  # sum over GPUs of each GPU's mean sampled power
    peak_gpu_mem_used_bytes: int | None  # the largest per-GPU peak
    cpu_time_s: float  # this process, all threads
    max_rss_bytes: int | None  # largest sampled RSS of this process
    gpus: tuple[GPUWindow, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def measure(name: str, readings: list[Reading], gpus: list[GPUInfo]) -> Measurement:
    """Aggregate the readings of one window (its start reading first, its end reading last)."""
    first, last = readings[0], readings[-1]
    per_gpu = []
    for k, info in enumerate(gpus):
        rs = [r.gpus[k] for r in readings if r.gpus[k] is not None]

        def values(attr: str) -> list:
            return [getattr(g, attr) for g in rs if getattr(g, attr) is not None]

        e0 = first.gpus[k].energy_mj if first.gpus[k] is not None else None
        e1 = last.gpus[k].energy_mj if last.gpus[k] is not None else None
        energy = (e1 - e0) / 1000 if e0 is not None and e1 is not None and e1 >= e0 else None
        power, masks = values("power_mw"), values("throttle_reasons_mask")
        mean_power = _mean(power)
        reasons = throttle_reason_names(functools.reduce(operator.or_, masks)) if masks else []
        per_gpu.append(GPUWindow(
            info.index, info.uuid, energy,
            mean_power / 1000 if mean_power is not None else None, max(power) / 1000 if power else None,
            max(values("mem_used_bytes"), default=None), max(values("process_mem_bytes"), default=None),
            _mean(values("gpu_util_pct")), _mean(values("mem_util_pct")), max(values("temperature_c"), default=None),
            _mean(values("sm_clock_mhz")), min(values("sm_clock_mhz"), default=None), tuple(reasons)))
    energies = [g.energy_j for g in per_gpu]
    powers = [g.mean_power_w for g in per_gpu]
    peaks = [g.peak_mem_used_bytes for g in per_gpu if g.peak_mem_used_bytes is not None]
    rss = [r.rss_bytes for r in readings if r.rss_bytes is not None]
    return Measurement(
        name, last.time_s - first.time_s, len(readings),
        sum(energies) if energies and None not in energies else None,
        sum(powers) if powers and None not in powers else None,
        max(peaks, default=None), last.cpu_time_s - first.cpu_time_s, max(rss, default=None), tuple(per_gpu))


class Window:
    """Handle yielded by `Profiler.window`; `measurement` is set when the block exits."""

    def __init__(self, name: str):
        self.name = name
        self.measurement: Measurement | None = None


class Profiler:
    """Background sampler of every visible GPU and of this process.

        with Profiler(interval_ms=100) as prof:
            with prof.window("prefill") as w:
                ...
        w.measurement.energy_j, prof.summary()
    """

    def __init__(self, interval_ms: float = 100.0, nvml_module=None):
        if interval_ms <= 0:
            raise FathomError(f"profile interval {interval_ms} ms: expected a positive number")
        self.interval_ms = interval_ms
        self.status = "not_started"  # ok | no_pynvml | nvml_unavailable | no_gpu | error
        self.reason: str | None = None
        self.gpus: list[GPUInfo] = []
        self.readings: list[Reading] = []
        self.windows: list[Measurement] = []
        self._module = nvml_module
        self._nvml: _NVML | None = None
        self._devices: list[_GPU] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> Profiler:
        if self._thread is not None:
            raise FathomError("profiler: already started")
        self._open()
        self.read()
        self._thread = threading.Thread(target=self._run, name="fathom-profiler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self.read()
        self._close()

    def _close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.call("nvmlShutdown")
            except NVMLError:
                pass
            self._nvml = None

    def __enter__(self) -> Profiler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval_ms / 1000):
                self.read()
        except Exception as e:  # a dead sampler must show in the record, not vanish with its thread
            self.status, self.reason = "error", f"sampler stopped: {type(e).__name__}: {e}"
            _say_once(self.reason)

    def _open(self) -> None:
        module = self._module
        if module is None:
            try:
                import pynvml as module
            except ImportError:
                return self._unavailable("no_pynvml", "pynvml (nvidia-ml-py) is not installed; GPU fields are null")
        nvml = _NVML(module)
        try:
            nvml.call("nvmlInit")
        except NVMLError as e:
            return self._unavailable("nvml_unavailable", f"NVML is unavailable ({e}); GPU fields are null")
        self._nvml = nvml
        try:
            devices = [_GPU(nvml, i) for i in range(nvml.call("nvmlDeviceGetCount"))]
            uuids = [_text(d.field("uuid", "nvmlDeviceGetUUID")) or "" for d in devices]
            spec = os.environ.get("CUDA_VISIBLE_DEVICES")
            visible = visible_gpu_indices(spec, uuids)
            driver = _text(_system_field(nvml, "nvmlSystemGetDriverVersion"))
            cuda = _cuda_version(_system_field(nvml, "nvmlSystemGetCudaDriverVersion"))
            self.gpus = [devices[i].info(i, k, driver, cuda) for k, i in enumerate(visible)]
        except NVMLError as e:
            return self._unavailable("nvml_unavailable", f"{e}; GPU fields are null")
        if not visible:
            where = f" selected by CUDA_VISIBLE_DEVICES={spec!r}" if spec is not None and devices else ""
            return self._unavailable("no_gpu", f"no GPU{where} (NVML reports {len(devices)}); GPU fields are null")
        self._devices = [devices[i] for i in visible]
        self.status = "ok"

    def _unavailable(self, status: str, reason: str) -> None:
        self.status, self.reason, self.gpus, self._devices = status, reason, [], []
        self._close()
        _say_once(reason)

    # ---- readings --------------------------------------------------------------------
    def read(self) -> int:
        """Take one reading now; returns its index in `readings`."""
        with self._lock:  # one reading at a time keeps `readings` in time order
            gpus = self._read_gpus()
            self.readings.append(Reading(time.perf_counter(), host_rss_bytes(), time.process_time(), gpus))
            return len(self.readings) - 1

    def _read_gpus(self) -> tuple[GPUReading | None, ...]:
        if self.status != "ok":
            return (None,) * len(self.gpus)
        try:
            return tuple(d.read() for d in self._devices)
        except NVMLError as e:
            self.status, self.reason = "error", f"GPU sampling stopped: {e}"
            _say_once(self.reason)
            return (None,) * len(self.gpus)

    @contextmanager
    def window(self, name: str) -> Iterator[Window]:
        """A named phase, read at its start and end besides the periodic ticks."""
        if self._thread is None or self._stop.is_set():
            raise FathomError(f"profiler window {name!r}: the profiler is not running")
        handle = Window(name)
        start = self.read()
        try:
            yield handle
        finally:
            end = self.read()
            with self._lock:
                readings = self.readings[start:end + 1]
            handle.measurement = measure(name, readings, self.gpus)
            self.windows.append(handle.measurement)

    # ---- results ---------------------------------------------------------------------
    def summary(self) -> dict:
        """Everything a run record keeps: status, static GPU facts, the whole run and each window."""
        with self._lock:
            readings = list(self.readings)
        return {
            "status": self.status,
            "reason": self.reason,
            "interval_ms": self.interval_ms,
            "num_readings": len(readings),
            "gpus": [asdict(g) for g in self.gpus],
            "run": measure("run", readings, self.gpus).to_dict() if readings else None,
            "windows": [m.to_dict() for m in self.windows],
            "host": {"process_peak_rss_bytes": host_peak_rss_bytes(), "cpu_count": os.cpu_count()},
        }

    def timeseries(self) -> list[dict]:
        """One flat-ish dict per reading; `t_s` counts from the first reading."""
        with self._lock:
            readings = list(self.readings)
        t0 = readings[0].time_s if readings else 0.0
        return [{"t_s": r.time_s - t0, "rss_bytes": r.rss_bytes, "cpu_time_s": r.cpu_time_s,
                 "gpus": [asdict(g) if g is not None else None for g in r.gpus]} for r in readings]

    def write_timeseries(self, path: str | Path) -> Path:
        """JSON lines, written to a temp sibling and renamed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            for row in self.timeseries():
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
        return path


def gpu_facts(nvml_module=None) -> list[dict]:
    """Static facts of the visible GPUs ([] without NVML or GPU), for records of unprofiled runs."""
    prof = Profiler(nvml_module=nvml_module)
    prof._open()
    prof._close()
    return [asdict(g) for g in prof.gpus]


def _system_field(nvml: _NVML, fn: str):
    try:
        return nvml.call(fn)
    except _FIELD_ERRORS:
        return None
