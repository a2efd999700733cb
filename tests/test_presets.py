import json
from dataclasses import replace
from pathlib import Path

import pytest

from fathom.build.checkpoint import read_checkpoint
from fathom.build.config import preset
from fathom.build.errors import ConfigError, PlanError
from fathom.build.precision import KvCacheFormat, WeightFormat
from fathom.engine.gpus import catalogue, get_gpu
from fathom.engine.planner import Deployment, plan
from fathom.engine.presets import (
    check_compat, describe_model, engine_formats, load_preset, preset_names, preset_text, render_presets,
    with_overrides,
)
from test_engine_build import write_checkpoint

PRESET_DIR = Path(__file__).resolve().parents[1] / "profiles" / "presets"


def test_regenerating_presets_gives_the_committed_files():
    rendered = render_presets()
    assert sorted(p.stem for p in PRESET_DIR.glob("*.json")) == sorted(rendered)
    for name, content in rendered.items():
        assert (PRESET_DIR / f"{name}.json").read_text() == preset_text(content), f"{name}: run profiles/make_presets.py"


def test_one_preset_per_gpu_and_precision_fp8_only_where_supported():
    names = set(preset_names())
    for key, gpu in catalogue().items():
        assert f"{key}-bf16" in names
        assert (f"{key}-fp8" in names) == gpu.fp8
    assert "a100-80gb-fp8" not in names


def test_every_preset_is_sized_for_16k_with_paged_kv_and_chunked_context():
    for name in preset_names():
        s = load_preset(name)
        b, pc = s.build_config, s.plugin_config
        assert b["max_seq_len"] == b["max_input_len"] == 16384
        assert pc["paged_kv_cache"] and pc["use_paged_context_fmha"] and pc["context_fmha"]
        assert s.runtime["enable_chunked_context"]
        if s.precision is WeightFormat.FP8:
            assert pc["gemm_plugin"] is None and pc["use_fp8_context_fmha"] and s.kv_cache is KvCacheFormat.FP8
        else:
            assert pc["gemm_plugin"] == "auto" and not pc["use_fp8_context_fmha"] and s.kv_cache is KvCacheFormat.MODEL


def test_preset_batch_and_tokens_come_from_the_planner():
    for name in ("h100-sxm-fp8", "l40s-bf16", "l4-bf16"):
        s = load_preset(name)
        p = plan(preset("fathom-r1-14b"), get_gpu(s.gpu),
                 Deployment(precision=s.precision, kv_cache=s.kv_cache, tp=s.tp, pp=s.pp))
        assert s.build_config["max_batch_size"] == p.concurrent_sequences == s.planned["concurrent_sequences"]
        assert s.build_config["max_num_tokens"] == p.deployment.max_num_tokens
    assert load_preset("h100-sxm-fp8").build_config["max_batch_size"] == 37


def test_bf16_on_24gb_gpus_takes_the_smallest_tp_that_fits():
    assert load_preset("l4-bf16").tp == 2 and load_preset("rtx4090-bf16").tp == 2
    assert load_preset("l4-fp8").tp == 1 and load_preset("h100-sxm-bf16").tp == 1


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(PlanError) as e:
        load_preset("h100-int4")
    assert "h100-sxm-fp8" in str(e.value) and "l4-bf16" in str(e.value)


@pytest.fixture
def ckpt(tmp_path):
    """A checkpoint's config read by build/checkpoint.py: ckpt("fp8", "model", tp=2) (a new dir per call)."""
    def make(precision="bf16", kv="model", tp=1):
        algo = {"bf16": None, "fp8": "FP8"}[precision]
        kv_algo = {"model": None, "fp8": "FP8", "int8": "INT8"}[kv]
        root = tmp_path / f"ckpt{len(list(tmp_path.iterdir()))}"
        return read_checkpoint(write_checkpoint(root, "tiny", tp=tp, quant_algo=algo, kv_algo=kv_algo))
    return make


def test_fp8_preset_on_a_bf16_checkpoint_is_refused_with_the_reason(ckpt):
    with pytest.raises(PlanError) as e:
        check_compat(load_preset("h100-sxm-fp8"), ckpt("bf16"), get_gpu("h100"))
    msg = str(e.value)
    assert "FP8 context FMHA" in msg and "bf16 checkpoint" in msg and "quant_algo = None" in msg
    assert "h100-sxm-bf16" in msg


def test_bf16_preset_on_an_fp8_checkpoint_is_refused(ckpt):
    msg = r"builds bf16 kernels but \S+/ckpt0 is a fp8 checkpoint \(quantization.quant_algo = 'FP8'\)"
    with pytest.raises(PlanError, match=msg):
        check_compat(load_preset("l40s-bf16"), ckpt("fp8", "fp8"), get_gpu("l40s"))


def test_kv_cache_and_mapping_mismatches_are_refused(ckpt):
    with pytest.raises(PlanError, match="sized for a fp8 KV cache but .* has a model one"):
        check_compat(load_preset("h100-sxm-fp8"), ckpt("fp8", "model"), get_gpu("h100"))
    with pytest.raises(PlanError, match=r"sized for tp=2 pp=1 but \S+/ckpt1 is mapped tp=1 pp=1"):
        check_compat(load_preset("l4-bf16"), ckpt("bf16", tp=1), get_gpu("l4"))


def test_a_checkpoint_matching_the_preset_passes(ckpt):
    check_compat(load_preset("l4-bf16"), ckpt("bf16", tp=2), get_gpu("l4"))
    check_compat(load_preset("h100-sxm-fp8"), ckpt("fp8", "fp8"), get_gpu("h100"))


def test_fp8_checkpoint_on_an_sm80_gpu_is_refused(ckpt):
    s = replace(load_preset("a100-80gb-bf16"), precision=WeightFormat.FP8)  # as if hand-edited
    with pytest.raises(PlanError, match="FP8 needs sm >= 89"):
        check_compat(s, ckpt("fp8", "model"), get_gpu("a100"))


def test_settings_asking_for_what_build_turns_off_are_refused(ckpt):
    # As if hand-edited: an INT8 KV cache with the bf16 preset's paged context FMHA and chunked context.
    s = replace(load_preset("h100-sxm-bf16"), kv_cache=KvCacheFormat.INT8)
    with pytest.raises(PlanError, match="asks for use_paged_context_fmha but TensorRT-LLM builds no paged context "
                                        "FMHA beside an int8 KV cache"):
        check_compat(s, ckpt("bf16", "int8"), get_gpu("h100"))
    s = replace(s, plugin_config=dict(s.plugin_config, use_paged_context_fmha=False))
    with pytest.raises(PlanError, match="runtime enable_chunked_context=true needs an engine with use_paged_context"):
        check_compat(s, ckpt("bf16", "int8"), get_gpu("h100"))
    s = replace(s, runtime=dict(s.runtime, enable_chunked_context=False))
    check_compat(s, ckpt("bf16", "int8"), get_gpu("h100"))  # max_num_tokens 16384 holds a whole prompt
    with pytest.raises(PlanError, match="max_num_tokens 8192 is below max_input_len 16384 and chunked context is off"):
        check_compat(with_overrides(s, max_num_tokens=8192), ckpt("bf16", "int8"), get_gpu("h100"))


def test_fp8_kv_beside_bf16_weights_gets_no_paged_context_fmha(ckpt):
    s = replace(load_preset("h100-sxm-bf16"), kv_cache=KvCacheFormat.FP8)
    with pytest.raises(PlanError, match="paged context FMHA beside an fp8 KV cache only for fp8 weights"):
        check_compat(s, ckpt("bf16", "fp8"), get_gpu("h100"))


def test_overrides_keep_input_within_sequence_length():
    s = with_overrides(load_preset("h100-sxm-bf16"), max_seq_len=8192, max_batch_size=3)
    assert s.build_config["max_seq_len"] == s.build_config["max_input_len"] == 8192
    assert s.build_config["max_batch_size"] == 3
    with pytest.raises(PlanError, match="exceeds --max-seq-len"):
        with_overrides(load_preset("h100-sxm-bf16"), max_seq_len=4096, max_input_len=8192)


def _formats(root, name, dtype="bfloat16", **quant):
    path = write_checkpoint(root / name)
    config = json.loads((path / "config.json").read_text())
    config["dtype"] = dtype
    config["quantization"].update(quant)
    (path / "config.json").write_text(json.dumps(config))
    return engine_formats(read_checkpoint(path))


def test_precision_is_read_from_the_quantization_enum(tmp_path):
    assert _formats(tmp_path, "bf16") == (WeightFormat.BF16, KvCacheFormat.MODEL)
    assert _formats(tmp_path, "fp16", dtype="float16") == (WeightFormat.FP16, KvCacheFormat.MODEL)
    fp8 = _formats(tmp_path, "fp8", quant_algo="FP8", kv_cache_quant_algo="FP8")
    assert fp8 == (WeightFormat.FP8, KvCacheFormat.FP8)
    assert _formats(tmp_path, "awq", quant_algo="W4A16_AWQ", kv_cache_quant_algo="INT8") == (
        WeightFormat.W4A16_AWQ, KvCacheFormat.INT8)
    with pytest.raises(ConfigError, match=r"config.json: quantization: field 'quant_algo' = 'NVFP4'"):
        _formats(tmp_path, "nvfp4", quant_algo="NVFP4")
    with pytest.raises(ConfigError, match=r"config.json: quantization: field 'kv_cache_quant_algo' = 'FP4'"):
        _formats(tmp_path, "kvfp4", kv_cache_quant_algo="FP4")


def test_float32_weights_are_refused_for_an_engine_unless_quantized(tmp_path):
    with pytest.raises(ConfigError, match="field 'dtype' = 'float32', expected 'bfloat16' or 'float16' for an engine"):
        _formats(tmp_path, "fp32", dtype="float32")
    assert _formats(tmp_path, "fp32-fp8", dtype="float32", quant_algo="FP8")[0] is WeightFormat.FP8


def test_describe_model_reads_a_checkpoint_through_the_checkpoint_reader(tmp_path):
    d = describe_model(str(write_checkpoint(tmp_path / "ckpt", "tiny", tp=2, quant_algo="FP8", kv_algo="FP8")))
    assert (d["precision"], d["kv_cache"], d["tp"], d["pp"]) == (WeightFormat.FP8, KvCacheFormat.FP8, 2, 1)
    d = describe_model("random:tiny")
    assert (d["name"], d["precision"], d["kv_cache"], d["tp"]) == ("tiny", None, None, None)
    bad = write_checkpoint(tmp_path / "bad", "tiny-odd")
    config = json.loads((bad / "config.json").read_text())
    config["mapping"] = {"world_size": 6, "tp_size": 6, "pp_size": 1}
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"intermediate_size \(100\) is not divisible by tp \(6\)"):
        describe_model(str(bad))


def test_preset_files_are_plain_readable_json():
    raw = json.loads((PRESET_DIR / "l40s-fp8.json").read_text())
    assert raw["gpu"] == "l40s" and raw["model"] == "fathom-r1-14b" and "generated_by" in raw
