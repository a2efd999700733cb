"""The sampling profiler: every visible GPU and this process, read in the background and in named windows.

- Every window takes one reading at its start and one at its end besides the periodic ticks, so a
  50 ms run still has memory, power and energy values.
- It samples every GPU NVML reports (restricted to CUDA_VISIBLE_DEVICES when set), whatever device
  the executor runs on: the whole device is profiled, other processes included.
- No pynvml, no driver, or no GPU: `status`/`reason` say which and every GPU field is null. An NVML
  error other than a reading the GPU does not offer ends GPU sampling with status "error" and its
  reason. Nothing is estimated.
- Readings stay in memory (well under 1 KB per GPU each: a few MB per GPU-hour at 100 ms), so a
  window can be aggregated after the fact and the time series written at the end.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from fathom.build.errors import FathomError

from .host_usage import host_peak_rss_bytes, host_rss_bytes
from .measurements import Measurement, Reading, measure
from .nvml_devices import GPUInfo, GPUReading, VisibleGPUs, open_visible_gpus
from .nvml_library import NVMLError, say_once


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
        self._visible: VisibleGPUs | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> Profiler:
        if self._thread is not None:
            raise FathomError("profiler: already started")
        self._visible = open_visible_gpus(self._module)
        self.status, self.reason, self.gpus = self._visible.status, self._visible.reason, self._visible.infos
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
        self._visible.close()

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
            say_once(self.reason)

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
            return tuple(d.read() for d in self._visible.devices)
        except NVMLError as e:
            self.status, self.reason = "error", f"GPU sampling stopped: {e}"
            say_once(self.reason)
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
