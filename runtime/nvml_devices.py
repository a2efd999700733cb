"""The GPUs a run measures: every GPU NVML reports, narrowed to CUDA_VISIBLE_DEVICES when set, each
with its static facts (`GPUInfo`) and one reading at a time (`GPUReading`).

nvidia-smi equivalents of the readings: memory.used / memory.reserved, utilization.gpu /
utilization.memory, power.draw, clocks.sm / clocks.mem, temperature.gpu, clocks_event_reasons.active.
A reading a GPU does not offer (or forbids) is null for that GPU and is not asked for again.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from fathom.build.errors import MissingDependencyError

from .nvml_library import FIELD_ERRORS, NVMLError, NVMLLibrary, NVMLNotSupported, open_library, say_once


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


class GPUDevice:
    """One device's handle plus which readings it turned out not to offer."""

    def __init__(self, nvml: NVMLLibrary, nvml_index: int):
        self.nvml = nvml
        self.handle = nvml.call("nvmlDeviceGetHandleByIndex", nvml_index)
        self.unsupported: set[str] = set()  # readings this GPU turned out not to offer

    def field(self, key: str, fn: str, *args):
        if key in self.unsupported:
            return None
        try:
            return self.nvml.call(fn, self.handle, *args)
        except FIELD_ERRORS:
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


@dataclass
class VisibleGPUs:
    """What `open_visible_gpus` found. `status`: ok | no_pynvml | nvml_unavailable | no_gpu; `reason`
    says why when not ok. NVML stays open while `library` is set; `close` shuts it down."""

    status: str
    reason: str | None = None
    infos: list[GPUInfo] = field(default_factory=list)
    devices: list[GPUDevice] = field(default_factory=list)  # one per info, same order
    library: NVMLLibrary | None = None

    def close(self) -> None:
        if self.library is not None:
            self.library.shutdown()
            self.library = None


def open_visible_gpus(nvml_module=None) -> VisibleGPUs:
    """Start NVML and find the GPUs CUDA_VISIBLE_DEVICES selects, with their static facts. Without
    pynvml, driver or GPU: no GPUs, a status and a reason, logged once per process."""
    try:
        library = open_library(nvml_module)
    except MissingDependencyError as e:
        return _unavailable("no_pynvml", f"{e}; GPU fields are null")
    except NVMLError as e:
        return _unavailable("nvml_unavailable", f"NVML is unavailable ({e}); GPU fields are null")
    try:
        devices = [GPUDevice(library, i) for i in range(library.call("nvmlDeviceGetCount"))]
        uuids = [_text(d.field("uuid", "nvmlDeviceGetUUID")) or "" for d in devices]
        spec = os.environ.get("CUDA_VISIBLE_DEVICES")
        visible = visible_gpu_indices(spec, uuids)
        driver = _text(library.optional("nvmlSystemGetDriverVersion"))
        cuda = _cuda_version(library.optional("nvmlSystemGetCudaDriverVersion"))
        infos = [devices[i].info(i, k, driver, cuda) for k, i in enumerate(visible)]
    except NVMLError as e:
        library.shutdown()
        return _unavailable("nvml_unavailable", f"{e}; GPU fields are null")
    if not visible:
        library.shutdown()
        where = f" selected by CUDA_VISIBLE_DEVICES={spec!r}" if spec is not None and devices else ""
        return _unavailable("no_gpu", f"no GPU{where} (NVML reports {len(devices)}); GPU fields are null")
    return VisibleGPUs("ok", None, infos, [devices[i] for i in visible], library)


def _unavailable(status: str, reason: str) -> VisibleGPUs:
    say_once(reason)
    return VisibleGPUs(status, reason)


def gpu_facts(nvml_module=None) -> list[dict]:
    """Static facts of the visible GPUs ([] without NVML or GPU), for records of unprofiled runs."""
    gpus = open_visible_gpus(nvml_module)
    gpus.close()
    return [asdict(g) for g in gpus.infos]
