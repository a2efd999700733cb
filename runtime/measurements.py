"""A window of profiler readings reduced to the figures a run record keeps.

Energy comes from NVML's total-energy counter (mJ since the driver loaded, Volta and newer): the
energy of a window is the counter at its end reading minus at its start reading, exact whatever the
sampling interval. Power samples are instantaneous readings and only feed the mean/max power figures.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import asdict, dataclass

from .nvml_devices import GPUInfo, GPUReading

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


@dataclass(frozen=True)
class Reading:
    time_s: float  # time.perf_counter(), the clock of TokenEvent.time_s
    rss_bytes: int | None
    cpu_time_s: float
    gpus: tuple[GPUReading | None, ...]  # one per GPUInfo; None: the GPU could not be read


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


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


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
