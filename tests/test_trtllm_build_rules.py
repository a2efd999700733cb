"""What TensorRT-LLM's build() does with fathom's settings (the fake models tensorrt_llm/builder.py
1.2.1): overrides read back into the manifest, the sm100 refusal, parallel build GPU assignment,
stdout kept clean, weight-only widths it would pad."""

import json
import sys
from dataclasses import replace

import pytest

from fathom.build.checkpoint import read_checkpoint
from fathom.build.errors import MissingDependencyError, PlanError
from fathom.engine import builder
from fathom.engine.builder import build_engine, prepare_build
from fathom.engine.gpus import get_gpu
from fathom.engine.manifest import read_engine_manifest
from fathom.engine.presets import check_compat, settings_for_checkpoint
from test_engine_build import WEIGHT_ONLY_BUILDABLE, calls, fake_trtllm, write_checkpoint  # noqa: F401 (fixture)

# ---- what TensorRT-LLM's build() does with fathom's settings ------------------------------------
FORMATS = [(None, None), ("FP8", "FP8"), ("FP8", None), ("FP8", "INT8"), (None, "FP8"), (None, "INT8"),
           ("W8A16", None), ("W8A16", "INT8"), ("W4A16_AWQ", "INT8"), ("W4A16_AWQ", "FP8")]


@pytest.mark.parametrize("quant_algo,kv_algo", FORMATS)
def test_fathom_asks_for_what_build_keeps_so_the_manifest_matches_the_engine(tmp_path, fake_trtllm, quant_algo,
                                                                             kv_algo):
    ckpt = write_checkpoint(tmp_path / "ckpt", WEIGHT_ONLY_BUILDABLE, quant_algo=quant_algo, kv_algo=kv_algo)
    warnings = []
    out = build_engine(prepare_build(ckpt, gpu="l40s"), tmp_path / "engine", on_warning=warnings.append)
    m = read_engine_manifest(out)
    (_, _, built), = calls(fake_trtllm, "build")
    for key, value in m["plugin_config"].items():
        assert built["plugin_config"][key] == value, key
    assert m["build_overrides"] == [] and warnings == []
    chunked = m["plugin_config"]["use_paged_context_fmha"]
    assert chunked == (kv_algo != "INT8" and (kv_algo != "FP8" or quant_algo == "FP8"))
    assert m["runtime"]["enable_chunked_context"] is chunked
    if not chunked:  # one step holds a whole prompt
        assert m["build_config"]["max_num_tokens"] >= m["build_config"]["max_input_len"]


def test_int8_kv_engines_run_without_chunked_context(tmp_path, fake_trtllm):
    # build() drops paged context FMHA beside an INT8 KV cache, and chunked context needs it.
    ckpt = write_checkpoint(tmp_path / "ckpt", WEIGHT_ONLY_BUILDABLE, quant_algo="W4A16_AWQ", kv_algo="INT8")
    spec = prepare_build(ckpt, gpu="l40s")
    assert spec.settings.plugin_config["use_paged_context_fmha"] is False
    assert spec.settings.runtime["enable_chunked_context"] is False
    assert spec.settings.build_config["max_num_tokens"] == spec.settings.build_config["max_input_len"] == 16384
    with pytest.raises(PlanError, match="max_num_tokens 4096 is below max_input_len 16384 and chunked context is off"):
        prepare_build(ckpt, gpu="l40s", max_num_tokens=4096)
    assert prepare_build(ckpt, gpu="l40s", max_num_tokens=4096, max_input_len=4096).settings.build_config[
        "max_input_len"] == 4096


def test_settings_build_would_change_are_read_back_reported_and_refused_at_runtime(tmp_path, fake_trtllm):
    ckpt = write_checkpoint(tmp_path / "ckpt", kv_algo="INT8")
    spec = prepare_build(ckpt, gpu="l40s")
    asked = dict(spec.settings.plugin_config, use_paged_context_fmha=True)  # as settings that ignore the rule
    spec = replace(spec, settings=replace(spec.settings, plugin_config=asked))
    warnings = []
    out = build_engine(spec, tmp_path / "engine", on_warning=warnings.append)
    m = read_engine_manifest(out)
    assert m["plugin_config"]["use_paged_context_fmha"] is False  # the engine's value, not the request
    assert m["build_overrides"] == [{"field": "plugin_config.use_paged_context_fmha", "requested": True,
                                     "built": False}]
    assert warnings == ["tensorrt_llm build() changed plugin_config.use_paged_context_fmha from true to false"]

    spec = replace(spec, settings=replace(spec.settings, runtime=dict(spec.settings.runtime,
                                                                      enable_chunked_context=True)))
    with pytest.raises(PlanError, match="runtime enable_chunked_context=true needs an engine with use_paged_context"):
        build_engine(spec, tmp_path / "engine2")
    assert not (tmp_path / "engine2").exists()


def test_build_config_values_build_clips_are_recorded_as_built(tmp_path, fake_trtllm):
    ckpt = write_checkpoint(tmp_path / "ckpt")
    spec = prepare_build(ckpt, gpu="h100", max_batch_size=1, max_seq_len=2048, max_num_tokens=4096)
    warnings = []
    m = read_engine_manifest(build_engine(spec, tmp_path / "engine", on_warning=warnings.append))
    assert m["build_config"]["max_num_tokens"] == 2048  # max_seq_len * max_batch_size (check_max_num_tokens)
    assert warnings == ["tensorrt_llm build() changed build_config.max_num_tokens from 4096 to 2048"]


def test_fake_build_stores_kv_cache_type_as_the_enum_and_writes_its_name(tmp_path, fake_trtllm):
    from tensorrt_llm.builder import BuildConfig, KVCacheType, build
    from tensorrt_llm.models import QWenForCausalLM

    ckpt = write_checkpoint(tmp_path / "ckpt")
    model = QWenForCausalLM.from_checkpoint(str(ckpt), rank=0)
    config = BuildConfig(max_seq_len=64, max_input_len=64)
    engine = build(model, config)
    assert config.kv_cache_type is None and config.plugin_config.paged_state  # the caller's copy is untouched
    (_, _, built), = calls(fake_trtllm, "build")
    assert built["kv_cache_type"] == KVCacheType.PAGED.name and built["plugin_config"]["paged_state"] is False
    engine.save(str(tmp_path / "engine"))
    saved = json.loads((tmp_path / "engine" / "config.json").read_text())["build_config"]
    assert saved["kv_cache_type"] == "PAGED" and "dry_run" not in saved and saved["plugin_config"]["dtype"] == "bfloat16"


def test_plugin_config_drops_unknown_keywords_and_validates_assignments(fake_trtllm):
    from tensorrt_llm.plugin import PluginConfig

    p = PluginConfig(no_such_plugin="x", gemm_plugin="auto", dtype="bfloat16")
    assert not hasattr(p, "no_such_plugin")  # dropped silently, as pydantic's extra="ignore" does
    assert p.gemm_plugin == "bfloat16" and p.model_dump()["gemm_plugin"] == "auto"
    with pytest.raises(ValueError):
        p.gemm_plugin = "bf16"
    with pytest.raises(ValueError):
        p.no_such_plugin = True


def test_a_plugin_value_tensorrt_llm_refuses_is_one_line_naming_the_field(tmp_path, fake_trtllm):
    spec = prepare_build(write_checkpoint(tmp_path / "ckpt"), gpu="h100")
    spec = replace(spec, settings=replace(spec.settings, plugin_config=dict(spec.settings.plugin_config,
                                                                            gemm_plugin="bf16")))
    with pytest.raises(MissingDependencyError, match=r"PluginConfig.gemm_plugin = 'bf16' refused: Input should be"):
        build_engine(spec, tmp_path / "engine")
    assert not (tmp_path / "engine").exists()


# ---- sm >= 100 --------------------------------------------------------------------------------------
def test_integer_quantization_is_refused_for_sm100_before_building(tmp_path, fake_trtllm, monkeypatch):
    from tensorrt_llm.models import QWenForCausalLM

    sm100 = replace(get_gpu("h200"), key="sm100-test", name="sm100 test GPU", compute_capability="10.0")
    ckpt = write_checkpoint(tmp_path / "ckpt", WEIGHT_ONLY_BUILDABLE, quant_algo="W4A16_AWQ")
    info = read_checkpoint(ckpt)
    settings, _ = settings_for_checkpoint(info, get_gpu("h200"), None)
    with pytest.raises(PlanError, match=r"sm100: TensorRT-LLM 1.2.1 builds no INT8/INT4 quantization .*w4a16_awq"):
        check_compat(settings, info, sm100)
    with pytest.raises(PlanError, match="sm100"):
        settings_for_checkpoint(info, sm100, None)
    # ...as upstream's build() refuses on such a GPU
    monkeypatch.setattr(fake_trtllm, "SM_VERSION", 100)
    with pytest.raises(RuntimeError, match="INT8/INT4 quantization is not supported on SM>=100"):
        fake_trtllm.build(QWenForCausalLM.from_checkpoint(str(ckpt), rank=0), fake_trtllm.BuildConfig(max_seq_len=64))


# ---- parallel build ---------------------------------------------------------------------------------
class InlinePool:
    """ProcessPoolExecutor stand-in: runs each task at submit, records the pool size and the calls."""

    made: list = []

    def __init__(self, max_workers, mp_context=None):
        self.max_workers, self.calls = max_workers, []
        InlinePool.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        from concurrent.futures import Future

        self.calls.append(args)
        future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def test_workers_are_capped_at_the_visible_gpus_and_rank_r_builds_on_gpu_r_mod_workers(tmp_path, fake_trtllm,
                                                                                     monkeypatch):
    import torch

    InlinePool.made = []
    devices = []
    monkeypatch.setattr(builder, "ProcessPoolExecutor", InlinePool)
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    spec = prepare_build(write_checkpoint(tmp_path / "ckpt", "tiny-gqa5", tp=2, pp=2), gpu="h100")
    monkeypatch.setattr(builder, "visible_gpu_count", lambda: 2)
    build_engine(spec, tmp_path / "a", workers=8)
    (pool,) = InlinePool.made
    assert pool.max_workers == 2
    assert [(call[1], call[-1]) for call in pool.calls] == [(0, 0), (1, 1), (2, 0), (3, 1)]  # (rank, gpu index)
    assert devices == [0, 1, 0, 1]
    monkeypatch.setattr(builder, "visible_gpu_count", lambda: 1)
    fake_trtllm.CALLS.clear()
    build_engine(spec, tmp_path / "b", workers=8)  # one GPU: every rank in turn on it, no pool
    assert len(InlinePool.made) == 1 and devices == [0, 1, 0, 1, 0, 0, 0, 0]
    assert [c[2] for c in calls(fake_trtllm, "save")] == [0, 1, 2, 3]




# ---- stdout stays JSON ----------------------------------------------------------------------------
def test_importing_and_building_writes_nothing_to_stdout(tmp_path, fake_trtllm, capfd):
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[name]  # import afresh: the banner prints at import
    from fathom.engine.trtllm import import_tensorrt_llm

    trtllm = import_tensorrt_llm()
    trtllm.CALLS.clear()
    build_engine(prepare_build(write_checkpoint(tmp_path / "ckpt", kv_algo="INT8"), gpu="l40s"), tmp_path / "engine")
    trtllm.logger.warning("after the build")
    out, err = capfd.readouterr()
    assert out == ""
    assert "TensorRT LLM version: 1.2.1" in err and "[TensorRT] fake native builder output" in err
    assert "Overriding paged_state to False" in err and "after the build" in err


def test_build_refuses_weight_only_widths_tensorrt_llm_would_pad(tmp_path, fake_trtllm):
    ckpt = write_checkpoint(tmp_path / "ckpt", quant_algo="W8A16")  # tiny: MLP width 160 = 2.5 * 64
    with pytest.raises(PlanError, match=r"TensorRT-LLM cannot build this checkpoint: w8a16 at tp 1: "
                                        r"transformer.layers.0.mlp.fc has 160 output features.*pads it to 192"):
        prepare_build(ckpt, gpu="l40s")
