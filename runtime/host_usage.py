"""This process's memory on the host, as the OS reports it."""

from __future__ import annotations

import os


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


def reset_peak_rss() -> None:
    """Restart this process's resident-set high-water mark (`rss_high_water_bytes`) at its current
    RSS (Linux: "5" written to /proc/self/clear_refs; a no-op elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_high_water_bytes() -> int | None:
    """Peak RSS of this process's address space since it was created or `reset_peak_rss`
    (/proc/self/status VmHWM; None elsewhere). Unlike getrusage's ru_maxrss it does not carry over
    the RSS of the parent that forked this process before exec (a spawned worker starts from 0)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
