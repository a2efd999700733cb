"""Memory of the running process for the benchmark scripts (Linux /proc; not used by fathom itself)."""

from __future__ import annotations

import threading
import time

SAMPLE_INTERVAL_S = 0.02
STATUS_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


def proc_status_bytes(pid: int | str = "self") -> dict[str, int]:
    """Memory fields of /proc/<pid>/status in bytes (STATUS_FIELDS)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in STATUS_FIELDS:
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak_rss() -> None:
    """Set VmHWM back to the current RSS (Linux: proc(5), /proc/pid/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class AnonPeak:
    """The peak of RssAnon (private, non-file memory) while the `with` block runs, sampled by a
    thread every SAMPLE_INTERVAL_S: VmHWM counts file pages too (memory-mapped weights)."""

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak_bytes = max(self.peak_bytes, proc_status_bytes()["RssAnon"])
            time.sleep(SAMPLE_INTERVAL_S)

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
