import sys
import types

import pytest

from fathom.build.errors import ConfigError, PlanError
from fathom.build.precision import KvCacheFormat, WeightFormat
from fathom.engine import gpus
from fathom.engine.gpus import GpuSpec, catalogue, get_gpu, gpu_from_nvml_name


def test_catalogue_covers_the_required_gpus_and_short_names():
    assert {"h100-sxm", "h100-pcie", "h200", "a100-80gb", "a100-40gb", "l40s", "l4", "rtx4090"} <= set(catalogue())
    shorts = {"h100": "h100-sxm", "h200": "h200", "a100": "a100-80gb", "l40s": "l40s", "l4": "l4", "rtx4090": "rtx4090"}
    for short, key in shorts.items():
        assert get_gpu(short).key == key
    assert get_gpu("H100").key == "h100-sxm"  # case-insensitive, still exact


def test_datasheet_numbers_match_reference_anchors():
    expect = {  # docs/REFERENCE.md, GPU datasheets: bandwidth TB/s, dense bf16 / fp8 TFLOPS
        "h100": (3.35, 989, 1979), "h200": (4.8, 989, 1979), "a100": (2.04, 312, None),
        "l40s": (0.864, 362, 733), "l4": (0.3, 121, 242),
    }
    for name, (bw, bf16, fp8) in expect.items():
        g = get_gpu(name)
        assert g.memory_bandwidth_tb_s == pytest.approx(bw, rel=0.005)
        assert g.dense_tflops["bf16"] == pytest.approx(bf16, rel=0.005)
        assert (g.dense_tflops["fp8"] is None) == (fp8 is None)
        if fp8:
            assert g.dense_tflops["fp8"] == pytest.approx(fp8, rel=0.005)
    assert get_gpu("h200").memory_bytes == 141 * 2**30
    assert get_gpu("l4").bandwidth_bytes_s == 300e9


def test_every_entry_is_sourced_and_fp8_follows_compute_capability():
    for g in catalogue().values():
        assert g.source and g.nvml_names
        assert g.fp8 == (g.sm >= 89)
        assert all(g.dense_tflops[k] for k in ("bf16", "int8"))
    assert get_gpu("a100").sm == 80 and get_gpu("l40s").sm == 89 and get_gpu("h100").sm == 90


def test_inconsistent_fp8_flag_is_rejected():
    with pytest.raises(ConfigError, match="fp8"):
        GpuSpec(key="x", name="X", aliases=(), nvml_names=("X",), memory_gib=8, memory_bandwidth_tb_s=1.0,
                dense_tflops={"bf16": 10.0, "fp8": 20.0, "int8": 20.0}, compute_capability="8.0", fp8=True,
                source="test")


def _synthetic(compute_capability: str) -> GpuSpec:
    return GpuSpec(key="x", name="X", aliases=(), nvml_names=("X",), memory_gib=180, memory_bandwidth_tb_s=8.0,
                   dense_tflops={"bf16": 2250.0, "fp8": 4500.0}, compute_capability=compute_capability, fp8=True,
                   source="test")


def test_sm100_to_sm119_refuse_integer_weight_only_and_int8_kv():
    # tensorrt_llm/builder.py build() (1.2.1): 100 <= sm < 120 raises for INT8/INT4 weight-only and INT8 KV.
    sm100 = _synthetic("10.0")
    for weights in (WeightFormat.W8A16, WeightFormat.W4A16_AWQ):
        assert f"{weights} weights" in sm100.integer_quant_refusal(weights, KvCacheFormat.MODEL)
    assert "an int8 KV cache" in sm100.integer_quant_refusal(WeightFormat.FP8, KvCacheFormat.INT8)
    for weights in (WeightFormat.BF16, WeightFormat.FP16, WeightFormat.FP8):
        for kv in (KvCacheFormat.MODEL, KvCacheFormat.FP8):
            assert sm100.integer_quant_refusal(weights, kv) is None
    for cc in ("9.0", "12.0"):
        assert _synthetic(cc).integer_quant_refusal(WeightFormat.W4A16_AWQ, KvCacheFormat.INT8) is None
    assert all(g.integer_quant_refusal(WeightFormat.W8A16, KvCacheFormat.INT8) is None for g in catalogue().values())


def test_every_weight_format_compute_dtype_must_have_a_rate():
    assert gpus.COMPUTE_DTYPES == ("bf16", "fp8")  # WeightFormat.compute_dtype values
    with pytest.raises(ConfigError, match="dense_tflops: missing fp8"):
        GpuSpec(key="x", name="X", aliases=(), nvml_names=("X",), memory_gib=8, memory_bandwidth_tb_s=1.0,
                dense_tflops={"bf16": 10.0, "int8": 20.0}, compute_capability="8.0", fp8=False, source="test")


def test_unknown_gpu_lists_valid_names():
    with pytest.raises(PlanError) as e:
        get_gpu("h1OO")
    assert "h100-sxm" in str(e.value) and "rtx4090" in str(e.value) and "auto" in str(e.value)


def test_a100_has_no_fp8_throughput():
    with pytest.raises(PlanError, match="no fp8"):
        get_gpu("a100").flops_s("fp8")


class _FakeNvml(types.ModuleType):
    class NVMLError(Exception):
        pass

    def __init__(self, names, fail_init=False):
        super().__init__("pynvml")
        self.names, self.fail_init, self.shutdowns = names, fail_init, 0

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.names)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, handle):
        return self.names[handle]


def _with_nvml(monkeypatch, names, fail_init=False):
    fake = _FakeNvml(names, fail_init)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def test_gpu_auto_maps_the_nvml_name_to_the_catalogue(monkeypatch):
    fake = _with_nvml(monkeypatch, ["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"])
    assert get_gpu("auto").key == "h100-sxm"
    assert fake.shutdowns == 1
    _with_nvml(monkeypatch, [b"NVIDIA L40S"])  # old nvidia-ml-py returns bytes
    assert get_gpu("auto").key == "l40s"


def test_gpu_auto_refuses_unknown_mixed_or_absent_gpus(monkeypatch):
    _with_nvml(monkeypatch, ["NVIDIA B200"])
    with pytest.raises(PlanError, match="'NVIDIA B200' is not in profiles/gpus.json"):
        get_gpu("auto")
    _with_nvml(monkeypatch, ["NVIDIA L4", "NVIDIA L40S"])
    with pytest.raises(PlanError, match="mixes GPU models"):
        get_gpu("auto")
    _with_nvml(monkeypatch, [], fail_init=True)
    with pytest.raises(PlanError, match="no NVIDIA GPU"):
        get_gpu("auto")
    assert gpus.local_gpu_names() == []


def test_nvml_lookup_is_exact():
    assert gpu_from_nvml_name("NVIDIA A100-SXM4-40GB").key == "a100-40gb"
    assert gpu_from_nvml_name("NVIDIA A100 80GB PCIe") is None  # different bandwidth: not guessed
