"""The profiler on the real device: NVML through fathom.runtime.nvml while the GPU does matmuls."""

import time

import pytest
import torch

from fathom.runtime.nvml import NVMLError, Profiler
from fathom.runtime.nvml_library import open_library

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

# What NVML reports on every datacenter GPU of the catalogue (Volta and newer). Left out:
# mem_reserved_bytes (needs the v2 memory struct in both driver and nvidia-ml-py) and
# process_mem_bytes (containers hide PIDs).
READING_FIELDS = ("mem_used_bytes", "mem_total_bytes", "gpu_util_pct", "mem_util_pct", "power_mw", "energy_mj",
                  "sm_clock_mhz", "mem_clock_mhz", "temperature_c", "throttle_reasons_mask")
INFO_FIELDS = ("name", "uuid", "driver_version", "cuda_driver_version", "compute_capability", "mem_total_bytes",
               "power_limit_mw", "mem_info_version")


@pytest.fixture(scope="module")
def pynvml():
    module = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    try:
        open_library(module).shutdown()
    except NVMLError as e:
        pytest.skip(f"NVML cannot initialise: {e}")
    return module


def busy(a: torch.Tensor, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(8):
            a @ a
        torch.cuda.synchronize()


def board_name(name: str) -> str:
    """Lower case, single spaces, no vendor word: NVML and the CUDA runtime read the same board name,
    but not every driver puts "NVIDIA" in front of both."""
    return " ".join(name.lower().replace("nvidia", " ").split())


def test_a_profiler_window_on_device_0_reads_memory_power_energy_and_the_torch_device_name(pynvml):
    hold = torch.empty(2**30, dtype=torch.uint8, device="cuda")  # 1 GiB that NVML must count as used
    a = torch.randn(4096, 4096, device="cuda")
    with Profiler(interval_ms=50, nvml_module=pynvml) as prof:
        assert prof.status == "ok", prof.reason
        busy(a, 0.3)  # clocks and power up before the window opens
        with prof.window("matmul") as w:
            busy(a, 1.0)
    assert prof.status == "ok", prof.reason  # the sampler met no NVML error
    reserved = torch.cuda.memory_reserved(0)
    assert reserved >= hold.numel()

    # Device 0 of torch: the GPU with its UUID, else the first in CUDA order.
    uuid = str(getattr(torch.cuda.get_device_properties(0), "uuid", "") or "")
    by_uuid = [g for g in prof.gpus if uuid and (g.uuid or "").removeprefix("GPU-") == uuid]
    info = by_uuid[0] if by_uuid else next(g for g in prof.gpus if g.cuda_index == 0)
    k = prof.gpus.index(info)

    assert [f for f in INFO_FIELDS if getattr(info, f) is None] == []
    name = board_name(info.name)
    torch_name = board_name(torch.cuda.get_device_name(0))
    assert name == torch_name or name in torch_name or torch_name in name, (info.name, torch.cuda.get_device_name(0))
    assert info.compute_capability == "{}.{}".format(*torch.cuda.get_device_capability(0))
    total = torch.cuda.get_device_properties(0).total_memory
    assert 0.9 * total <= info.mem_total_bytes <= 1.1 * total  # bytes, not MiB

    last = prof.readings[-1].gpus[k]
    assert last is not None
    assert [f for f in READING_FIELDS if getattr(last, f) is None] == []

    m = w.measurement
    g = m.gpus[k]
    assert m.num_readings >= 3 and m.duration_s >= 1.0
    assert g.peak_mem_used_bytes >= reserved  # the whole device's use includes this process's pool
    assert g.mean_power_w > 0 and g.max_power_w >= g.mean_power_w
    assert g.energy_j is not None and g.energy_j > 0
    # Energy (the counter, mJ) against mean sampled power (mW) x time: the same order of magnitude,
    # whatever the averaging of the power reading; a unit slip is a factor of 1000.
    assert 0.2 <= g.energy_j / (g.mean_power_w * m.duration_s) <= 5
    assert g.max_temperature_c > 0 and g.min_sm_clock_mhz > 0
    assert g.mean_gpu_util_pct is not None and g.mean_mem_util_pct is not None
    del hold
