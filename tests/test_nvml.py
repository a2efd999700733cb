import json
import os
import sys
import time

import pytest
from fakes import pynvml as fake

from fathom.build.errors import FathomError
from fathom.runtime import nvml, nvml_library
from fathom.runtime.nvml import Profiler, visible_gpu_indices
from fathom.runtime.nvml_library import NVMLLibrary

NEVER_TICKS = 600_000  # ms: only the start/end readings of the profiler and its windows happen


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    monkeypatch.setattr(nvml_library, "_said", set())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield
    fake.configure(library=False)  # back to "no NVML" for whoever imports the fake next


def devices(n: int = 1, **kw) -> list:
    return [fake.FakeDevice(uuid=f"GPU-{i}{i}{i}-uuid", **kw) for i in range(n)]


def test_energy_of_a_window_is_the_counter_at_its_end_minus_at_its_start():
    fake.configure(devices(1, energy_start_mj=5_000_000, energy_step_mj=2_500))
    with Profiler(NEVER_TICKS, nvml_module=fake) as prof:
        with prof.window("decode") as w:
            pass
    got = fake.energy_returned(0)  # profiler start, window start, window end, profiler stop
    assert len(got) == 4
    assert w.measurement.energy_j == pytest.approx((got[2] - got[1]) / 1000) == 2.5
    assert prof.summary()["run"]["energy_j"] == pytest.approx((got[3] - got[0]) / 1000) == 7.5


def test_a_window_shorter_than_the_interval_still_has_memory_power_and_energy():
    fake.configure(devices(1, mem_used_bytes=[1 * 2**30, 3 * 2**30], power_mw=[200_000, 400_000]))
    with Profiler(NEVER_TICKS, nvml_module=fake) as prof:
        with prof.window("prefill") as w:
            pass
    m = w.measurement
    assert m.num_readings == 2
    assert m.peak_gpu_mem_used_bytes == 3 * 2**30  # first read (profiler start) is outside the window
    assert m.gpus[0].mean_power_w == pytest.approx(400.0)
    assert m.energy_j is not None and m.cpu_time_s >= 0


def test_periodic_ticks_add_readings_between_start_and_stop():
    fake.configure(devices(1))
    with Profiler(5, nvml_module=fake) as prof:
        deadline = time.monotonic() + 10
        while len(prof.readings) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(prof.readings) >= 6  # start + >= 4 ticks + stop
    times = [r.time_s for r in prof.readings]
    assert times == sorted(times)


def test_windows_aggregate_every_gpu_and_sum_energy():
    fake.configure([fake.FakeDevice(uuid="GPU-a", energy_step_mj=1000, power_mw=[100_000]),
                    fake.FakeDevice(uuid="GPU-b", energy_step_mj=3000, power_mw=[300_000])])
    with Profiler(NEVER_TICKS, nvml_module=fake) as prof:
        with prof.window("w") as w:
            pass
    m = w.measurement
    assert [g.uuid for g in m.gpus] == ["GPU-a", "GPU-b"]
    assert m.energy_j == pytest.approx(4.0)
    assert m.mean_power_w == pytest.approx(400.0)


def test_static_facts_are_read_once():
    fake.configure(devices(1, compute_capability=(8, 9), power_limit_mw=350_000), cuda_version=12080)
    with Profiler(NEVER_TICKS, nvml_module=fake) as prof:
        with prof.window("a"):
            pass
    info = prof.summary()["gpus"][0]
    assert info["name"] == "NVIDIA H100 80GB HBM3" and info["uuid"] == "GPU-000-uuid"
    assert (info["driver_version"], info["cuda_driver_version"], info["compute_capability"]) == ("550.54.15", "12.8", "8.9")
    assert info["power_limit_mw"] == 350_000 and info["mem_info_version"] == 2
    assert len(fake.calls("nvmlDeviceGetName")) == 1


def test_memory_v2_reports_reserved_and_v1_is_used_when_the_driver_lacks_v2():
    fake.configure([fake.FakeDevice(uuid="GPU-a"), fake.FakeDevice(uuid="GPU-b", has_memory_v2=False)])
    with Profiler(NEVER_TICKS, nvml_module=fake) as prof:
        pass
    v2, v1 = prof.readings[0].gpus
    dev = fake.FakeDevice()
    assert (v2.mem_used_bytes, v2.mem_reserved_bytes) == (dev.mem_used_bytes[0], dev.mem_reserved_bytes)
    assert (v1.mem_used_bytes, v1.mem_reserved_bytes) == (dev.mem_used_bytes[0] + dev.mem_reserved_bytes, None)
    assert [g.mem_info_version for g in prof.gpus] == [2, 1]


def test_process_memory_is_this_process_only_and_null_when_not_reported():
    fake.configure([fake.FakeDevice(uuid="GPU-a", processes=[(os.getpid(), 123), (1, 999)]),
                    fake.FakeDevice(uuid="GPU-b", processes=[(1, 999)])])
    with Profiler(NEVER_TICKS, nvml_module=fake) as prof:
        pass
    mine, other = prof.readings[0].gpus
    assert mine.process_mem_bytes == 123
    assert other.process_mem_bytes is None


def test_throttle_reasons_are_decoded_and_the_old_function_name_is_a_fallback():
    fake.configure([fake.FakeDevice(uuid="GPU-a", throttle_mask=0x4 | 0x40),
                    fake.FakeDevice(uuid="GPU-b", throttle_mask=0x20, has_clocks_event_reasons=False)])
    with Profiler(NEVER_TICKS, nvml_module=fake) as prof:
        with prof.window("w") as w:
            pass
    assert w.measurement.gpus[0].throttle_reasons == ("sw_power_cap", "hw_thermal_slowdown")
    assert w.measurement.gpus[1].throttle_reasons == ("sw_thermal_slowdown",)
    assert fake.calls("nvmlDeviceGetCurrentClocksThrottleReasons")
    assert nvml.throttle_reason_names(0x1 | 0x1000) == ["gpu_idle", "0x1000"]


def test_an_unsupported_reading_stays_null_and_is_not_asked_again():
    fake.configure(devices(1, unsupported={"nvmlDeviceGetTotalEnergyConsumption"}))
    with Profiler(NEVER_TICKS, nvml_module=fake) as prof:
        with prof.window("w") as w:
            pass
    assert prof.status == "ok"
    assert w.measurement.energy_j is None and w.measurement.gpus[0].energy_j is None
    assert w.measurement.gpus[0].mean_power_w is not None
    assert len(fake.calls("nvmlDeviceGetTotalEnergyConsumption")) == 1


def test_an_nvml_error_mid_run_stops_gpu_sampling_with_a_reason_and_keeps_earlier_readings():
    fake.configure(devices(1))
    fake.inject_error("nvmlDeviceGetPowerUsage", at_call=3, code=fake.NVML_ERROR_GPU_IS_LOST)
    with Profiler(NEVER_TICKS, nvml_module=fake) as prof:
        with prof.window("w") as w:  # start reading = call 2, end reading = call 3 fails
            pass
    s = prof.summary()
    assert s["status"] == "error" and "nvmlDeviceGetPowerUsage" in s["reason"]
    assert w.measurement.energy_j is None  # no end reading: no energy, not a guess
    assert w.measurement.peak_gpu_mem_used_bytes is not None  # the start reading is kept
    assert prof.readings[-1].gpus == (None,) and prof.readings[-1].rss_bytes is not None
    assert len(fake.calls("nvmlDeviceGetPowerUsage")) == 3  # not called again after the error


@pytest.mark.parametrize("code, cls", [
    (fake.NVML_ERROR_NOT_SUPPORTED, nvml.NVMLNotSupported),
    (fake.NVML_ERROR_FUNCTION_NOT_FOUND, nvml.NVMLNotSupported),
    (fake.NVML_ERROR_NO_PERMISSION, nvml.NVMLNoPermission),
    (fake.NVML_ERROR_GPU_IS_LOST, nvml.NVMLGPULost),
    (fake.NVML_ERROR_LIBRARY_NOT_FOUND, nvml.NVMLUnavailable),
    (fake.NVML_ERROR_TIMEOUT, nvml.NVMLTimeout),
    (fake.NVML_ERROR_UNKNOWN, nvml.NVMLUnknownError),
    (4242, nvml.NVMLUnknownError),
])
def test_nvml_error_codes_map_to_typed_exceptions(code, cls):
    fake.configure(devices(1))
    fake.inject_error("nvmlDeviceGetCount", at_call=1, code=code)
    door = NVMLLibrary(fake)
    door.call("nvmlInit")
    with pytest.raises(cls) as err:
        door.call("nvmlDeviceGetCount")
    assert err.value.code == code and "nvmlDeviceGetCount" in str(err.value)


def test_a_function_missing_from_the_bindings_is_not_supported():
    with pytest.raises(nvml.NVMLNotSupported):
        NVMLLibrary(fake).call("nvmlDeviceGetSomethingNew")


def test_no_gpu_says_so_once_and_records_null_gpu_fields(caplog):
    fake.configure([])
    for _ in range(2):
        with Profiler(NEVER_TICKS, nvml_module=fake) as prof:
            with prof.window("w") as w:
                pass
    s = prof.summary()
    assert s["status"] == "no_gpu" and "no GPU" in s["reason"]
    assert s["gpus"] == [] and w.measurement.gpus == ()
    assert w.measurement.energy_j is None and w.measurement.peak_gpu_mem_used_bytes is None
    assert w.measurement.max_rss_bytes is not None  # host metrics still recorded
    assert sum("no GPU" in r.getMessage() for r in caplog.records) == 1


def test_missing_nvml_library_and_missing_pynvml_are_reported(monkeypatch):
    fake.configure(library=False)
    with Profiler(NEVER_TICKS, nvml_module=fake) as prof:
        pass
    assert prof.status == "nvml_unavailable" and "NVML" in prof.reason
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    with Profiler(NEVER_TICKS) as prof:
        pass
    assert prof.status == "no_pynvml" and len(prof.summary()["run"]["gpus"]) == 0


def test_cuda_visible_devices_selects_by_index_and_uuid_in_cuda_order():
    uuids = ["GPU-aaa1", "GPU-bbb2", "GPU-ccc3"]
    assert visible_gpu_indices(None, uuids) == [0, 1, 2]
    assert visible_gpu_indices("2,0", uuids) == [2, 0]
    assert visible_gpu_indices("GPU-bbb", uuids) == [1]  # unique prefix
    assert visible_gpu_indices("1,7,0", uuids) == [1]  # like CUDA: stops at the first invalid entry
    assert visible_gpu_indices("", uuids) == []
    with pytest.raises(nvml.NVMLNotSupported, match="MIG"):
        visible_gpu_indices("MIG-1234", uuids)


def test_profiler_samples_only_visible_gpus(monkeypatch):
    fake.configure([fake.FakeDevice(uuid=u) for u in ("GPU-aaa1", "GPU-bbb2", "GPU-ccc3")])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-ccc3,1")
    with Profiler(NEVER_TICKS, nvml_module=fake) as prof:
        pass
    assert [(g.index, g.cuda_index) for g in prof.gpus] == [(2, 0), (1, 1)]
    assert len(prof.readings[0].gpus) == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with Profiler(NEVER_TICKS, nvml_module=fake) as prof:
        pass
    assert prof.status == "no_gpu" and "CUDA_VISIBLE_DEVICES" in prof.reason


def test_timeseries_file_has_one_line_per_reading(tmp_path):
    fake.configure(devices(1))
    with Profiler(NEVER_TICKS, nvml_module=fake) as prof:
        with prof.window("w"):
            pass
    path = prof.write_timeseries(tmp_path / "ts" / "run.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == len(prof.readings) == 4
    assert rows[0]["t_s"] == 0 and rows[0]["gpus"][0]["energy_mj"] == fake.energy_returned(0)[0]


def test_nvml_is_shut_down_on_stop_and_windows_need_a_running_profiler():
    fake.configure(devices(1))
    prof = Profiler(NEVER_TICKS, nvml_module=fake)
    with pytest.raises(FathomError, match="not running"):
        with prof.window("early"):
            pass
    with prof:
        pass
    assert len(fake.calls("nvmlInit")) == len(fake.calls("nvmlShutdown")) == 1
    with pytest.raises(FathomError, match="interval"):
        Profiler(0)
