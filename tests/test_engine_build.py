"""Engine builds through the fake tensorrt_llm in tests/fakes (records calls, writes placeholder engines)."""

import hashlib
import json
import sys
from pathlib import Path

import pytest

from fathom.build.checkpoint import checkpoint_info
from fathom.build.config import preset
from fathom.build.safetensors_io import encode_header
from fathom.build.errors import CheckpointError, MissingDependencyError, OutputExistsError, PlanError
from fathom.engine import builder
from fathom.engine.builder import BUILD_CONFIG_FIELDS, build_engine, prepare_build, trtllm_build_command
from fathom.engine.inspect import describe_engine
from fathom.engine.manifest import EngineCompatError, check_engine_compat, read_engine_manifest
from fathom.engine.presets import load_preset

FAKES = Path(__file__).parent / "fakes"


# tiny's widths are ones TensorRT-LLM pads for weight-only formats (build refuses them); these are not.
WEIGHT_ONLY_BUILDABLE = "fathom-r1-14b-4l"


def write_checkpoint(root: Path, name: str = "tiny", tp: int = 1, pp: int = 1, quant_algo=None, kv_algo=None,
                     manifest: bool = True) -> Path:
    """A checkpoint dir as fathom convert lays it out: config.json (the QWenConfig keys), one rank
    file per rank with the planned tensor names and shapes (data left as a sparse hole: the fake
    from_checkpoint reads headers only), fathom.json."""
    cfg = preset(name)
    root.mkdir(parents=True)
    config = {
        "architecture": "Qwen2ForCausalLM", "qwen_type": "qwen2", "dtype": "bfloat16",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
        "head_size": cfg.head_dim, "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings, "hidden_act": "silu", "norm_epsilon": cfg.rms_norm_eps,
        "position_embedding_type": "rope_gpt_neox", "rotary_base": cfg.rope_theta, "rotary_scaling": None,
        "seq_length": 16384, "tie_word_embeddings": cfg.tie_word_embeddings, "use_parallel_embedding": False,
        "mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp},
        "quantization": {"quant_algo": quant_algo, "kv_cache_quant_algo": kv_algo, "group_size": 128,
                         "has_zero_point": False, "pre_quant_scale": False,
                         "exclude_modules": ["lm_head"] if quant_algo else None},
    }
    (root / "config.json").write_text(json.dumps(config))
    for plan in checkpoint_info(config, root, "config.json").rank_plans():
        header = encode_header(plan.entries())
        with open(root / plan.info.file_name, "wb") as f:
            f.write(header)
            f.truncate(len(header) + plan.nbytes)
    if manifest:
        (root / "fathom.json").write_text(json.dumps({"format": "test", "ranks": tp * pp}))
    return root


@pytest.fixture
def fake_trtllm(monkeypatch):
    """Import tests/fakes/tensorrt_llm for this test only, with a clean call record."""
    monkeypatch.syspath_prepend(str(FAKES))
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        monkeypatch.delitem(sys.modules, name)
    import tensorrt_llm

    tensorrt_llm.CALLS.clear()
    tensorrt_llm.FAIL_AT_RANK = None
    monkeypatch.setattr(builder, "local_gpu_names", lambda: [])  # no GPU seen: TensorRT-LLM decides
    yield tensorrt_llm
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[name]


def calls(trtllm, kind):
    return [c for c in trtllm.CALLS if c[0] == kind]


def test_each_rank_of_a_tp2_pp2_checkpoint_is_built_with_its_rank(tmp_path, fake_trtllm):
    ckpt = write_checkpoint(tmp_path / "ckpt", "tiny-gqa5", tp=2, pp=2)
    spec = prepare_build(ckpt, gpu="h100")
    out = build_engine(spec, tmp_path / "engine")
    assert [c[2] for c in calls(fake_trtllm, "from_checkpoint")] == [0, 1, 2, 3]
    assert all(c[1] == str(ckpt) for c in calls(fake_trtllm, "from_checkpoint"))
    built = calls(fake_trtllm, "build")
    assert [c[1] for c in built] == [0, 1, 2, 3]
    for _, _, bc in built:
        assert bc["max_seq_len"] == bc["max_input_len"] == 16384
        assert bc["max_batch_size"] == spec.plan.deployment.max_batch_size
        assert bc["max_num_tokens"] == spec.plan.deployment.max_num_tokens
        assert bc["kv_cache_type"] == "PAGED" and bc["plugin_config"]["dtype"] == "bfloat16"
        assert bc["plugin_config"]["gemm_plugin"] == "auto" and bc["plugin_config"]["use_paged_context_fmha"]
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "fathom-engine.json", "rank0.engine", "rank1.engine", "rank2.engine", "rank3.engine"]
    assert json.loads((out / "config.json").read_text())["pretrained_config"]["mapping"]["tp_size"] == 2


def test_preset_maps_to_build_config_and_plugin_fields(tmp_path, fake_trtllm):
    ckpt = write_checkpoint(tmp_path / "ckpt", quant_algo="FP8", kv_algo="FP8")
    spec = prepare_build(ckpt, preset="h100-sxm-fp8")
    build_engine(spec, tmp_path / "engine")
    p = load_preset("h100-sxm-fp8")
    (_, kwargs), = calls(fake_trtllm, "BuildConfig")
    assert {k: kwargs[k] for k in BUILD_CONFIG_FIELDS} == {k: p.build_config[k] for k in BUILD_CONFIG_FIELDS}
    (_, _, bc), = calls(fake_trtllm, "build")
    for key, value in p.plugin_config.items():
        assert bc["plugin_config"][key] == value, key
    assert bc["plugin_config"]["gemm_plugin"] is None and bc["plugin_config"]["use_fp8_context_fmha"] is True


def test_manifest_records_versions_gpu_build_config_and_checkpoint_hash(tmp_path, fake_trtllm):
    ckpt = write_checkpoint(tmp_path / "ckpt", tp=2)
    out = build_engine(prepare_build(ckpt, gpu="l40s", max_seq_len=8192), tmp_path / "engine")
    m = read_engine_manifest(out)
    assert m["tensorrt_llm_version"] == "1.2.1"
    assert m["tensorrt_version"] is None  # the fake has no tensorrt module: unknown, not invented
    assert m["gpu"]["key"] == "l40s" and m["gpu"]["compute_capability"] == "8.9"
    assert m["build_config"]["max_seq_len"] == m["build_config"]["max_input_len"] == 8192
    assert m["mapping"] == {"tp_size": 2, "pp_size": 1, "world_size": 2}
    assert m["checkpoint"]["manifest_sha256"] == hashlib.sha256((ckpt / "fathom.json").read_bytes()).hexdigest()
    assert m["preset"] is None and m["precision"] == "bf16" and m["created_at"]


def test_checkpoint_without_fathom_manifest_records_a_null_hash(tmp_path, fake_trtllm):
    ckpt = write_checkpoint(tmp_path / "ckpt", manifest=False)
    out = build_engine(prepare_build(ckpt, gpu="h100"), tmp_path / "engine")
    assert read_engine_manifest(out)["checkpoint"]["manifest_sha256"] is None


def test_a_failing_rank_leaves_no_partial_output(tmp_path, fake_trtllm):
    ckpt = write_checkpoint(tmp_path / "ckpt", "tiny-gqa5", tp=2, pp=2)
    fake_trtllm.FAIL_AT_RANK = 2
    with pytest.raises(RuntimeError, match="rank 2"):
        build_engine(prepare_build(ckpt, gpu="h100"), tmp_path / "engine")
    assert [c[2] for c in calls(fake_trtllm, "save")] == [0, 1]  # ranks 0 and 1 had been written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_existing_output_needs_force(tmp_path, fake_trtllm):
    ckpt = write_checkpoint(tmp_path / "ckpt")
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "old").write_text("x")
    spec = prepare_build(ckpt, gpu="h100")
    with pytest.raises(OutputExistsError):
        build_engine(spec, tmp_path / "engine")
    build_engine(spec, tmp_path / "engine", force=True)
    assert not (tmp_path / "engine" / "old").exists() and (tmp_path / "engine" / "rank0.engine").exists()


def test_parallel_workers_build_every_rank(tmp_path, fake_trtllm):
    ckpt = write_checkpoint(tmp_path / "ckpt", tp=2)
    done = []
    out = build_engine(prepare_build(ckpt, gpu="h100"), tmp_path / "engine", workers=2,
                       on_rank=lambda r, s: done.append(r))
    assert sorted(done) == [0, 1]
    assert (out / "rank0.engine").is_file() and (out / "rank1.engine").is_file() and (out / "config.json").is_file()


def test_missing_rank_file_is_refused_before_building(tmp_path):
    ckpt = write_checkpoint(tmp_path / "ckpt", tp=2)
    (ckpt / "rank1.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing rank1.safetensors for tp=2 pp=1"):
        prepare_build(ckpt, gpu="h100")


def test_hf_dir_is_not_a_checkpoint(hf_dirs):
    with pytest.raises(CheckpointError, match="convert it first"):
        prepare_build(hf_dirs("tiny"), gpu="h100")


def test_build_needs_a_target(tmp_path):
    with pytest.raises(PlanError, match="--preset NAME or --gpu NAME"):
        prepare_build(write_checkpoint(tmp_path / "ckpt"))


def test_preset_and_gpu_must_agree(tmp_path):
    ckpt = write_checkpoint(tmp_path / "ckpt")
    with pytest.raises(PlanError, match="is for NVIDIA H100 SXM 80GB but --gpu names NVIDIA L40S"):
        prepare_build(ckpt, preset="h100-sxm-bf16", gpu="l40s")
    assert prepare_build(ckpt, preset="h100-sxm-bf16", gpu="h100").gpu.key == "h100-sxm"


def test_without_tensorrt_llm_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import raises ImportError
    spec = prepare_build(write_checkpoint(tmp_path / "ckpt"), gpu="h100")
    with pytest.raises(MissingDependencyError) as e:
        build_engine(spec, tmp_path / "engine")
    assert "pip install 'fathom-engine[trtllm]' --extra-index-url https://pypi.nvidia.com" in str(e.value)
    assert "3.10 or 3.12" in str(e.value)
    assert not (tmp_path / "engine").exists()


def test_other_tensorrt_llm_versions_are_refused(tmp_path, fake_trtllm, monkeypatch):
    monkeypatch.setattr(fake_trtllm, "__version__", "1.3.0")
    with pytest.raises(MissingDependencyError, match="tensorrt_llm 1.3.0 is installed"):
        build_engine(prepare_build(write_checkpoint(tmp_path / "ckpt"), gpu="h100"), tmp_path / "engine")


def test_building_on_another_gpu_model_than_the_target_is_refused(tmp_path, fake_trtllm, monkeypatch):
    monkeypatch.setattr(builder, "local_gpu_names", lambda: ["NVIDIA L40S"])
    spec = prepare_build(write_checkpoint(tmp_path / "ckpt"), gpu="h100")
    with pytest.raises(PlanError, match="this machine has NVIDIA L40S but the engine is for NVIDIA H100"):
        build_engine(spec, tmp_path / "engine")
    monkeypatch.setattr(builder, "local_gpu_names", lambda: ["NVIDIA H100 80GB HBM3"])
    out = build_engine(spec, tmp_path / "engine")
    assert read_engine_manifest(out)["build_gpu_nvml_name"] == "NVIDIA H100 80GB HBM3"


def test_trtllm_build_command_uses_only_real_flags():
    # Flags of tensorrt_llm/commands/build.py parse_arguments() and plugin/plugin.py cli_plugin_args (1.2.x).
    known = {"--checkpoint_dir", "--output_dir", "--max_batch_size", "--max_input_len", "--max_seq_len",
             "--max_beam_width", "--max_num_tokens", "--kv_cache_type", "--workers", "--gpt_attention_plugin",
             "--gemm_plugin", "--context_fmha", "--use_paged_context_fmha", "--use_fp8_context_fmha",
             "--remove_input_padding", "--tokens_per_block"}
    cmd = trtllm_build_command(load_preset("l40s-fp8"), "ck", "en", workers=2)
    flags = [a for a in cmd if a.startswith("--")]
    assert set(flags) <= known and len(flags) == len(set(flags))
    args = dict(zip(cmd[1::2], cmd[2::2]))
    assert args["--max_seq_len"] == "16384" and args["--gemm_plugin"] == "disable"
    assert args["--use_fp8_context_fmha"] == "enable" and args["--kv_cache_type"] == "paged"
    assert args["--workers"] == "2"


def test_engine_compat_accepts_the_same_version_and_gpu(tmp_path, fake_trtllm):
    out = build_engine(prepare_build(write_checkpoint(tmp_path / "ckpt"), gpu="h100"), tmp_path / "engine")
    m = read_engine_manifest(out)
    check_engine_compat(m, "1.2.1", "NVIDIA H100 80GB HBM3")
    check_engine_compat(m, "1.2.1", "h100")


def test_engine_compat_mismatches_explain_themselves_in_one_line(tmp_path, fake_trtllm):
    out = build_engine(prepare_build(write_checkpoint(tmp_path / "ckpt"), gpu="h100"), tmp_path / "engine")
    m = read_engine_manifest(out)
    with pytest.raises(EngineCompatError) as e:
        check_engine_compat(m, "1.3.0", "NVIDIA H100 80GB HBM3")
    assert "built with tensorrt_llm 1.2.1, but 1.3.0 is installed" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(EngineCompatError, match=r"built for NVIDIA H100 SXM 80GB \(sm90\), but this GPU is NVIDIA L40S"):
        check_engine_compat(m, "1.2.1", "NVIDIA L40S")
    with pytest.raises(EngineCompatError, match="this GPU is NVIDIA H100 PCIe"):
        check_engine_compat(m, "1.2.1", "NVIDIA H100 PCIe")
    with pytest.raises(EngineCompatError, match="NVIDIA B200"):
        check_engine_compat(m, "1.2.1", "NVIDIA B200")


def test_engine_manifest_must_exist_and_have_the_format(tmp_path):
    with pytest.raises(CheckpointError, match="no engine manifest"):
        read_engine_manifest(tmp_path)
    (tmp_path / "fathom-engine.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="'format' = 'other'"):
        read_engine_manifest(tmp_path)


def test_describe_engine_shows_manifest_build_config_and_plan(tmp_path, fake_trtllm):
    ckpt = write_checkpoint(tmp_path / "ckpt", quant_algo="FP8", kv_algo="FP8")
    out = build_engine(prepare_build(ckpt, preset="l40s-fp8"), tmp_path / "engine")
    d = describe_engine(out)
    assert d["kind"] == "engine" and d["tensorrt_llm_version"] == "1.2.1"
    assert d["manifest"]["preset"] == "l40s-fp8" and d["precision"] == "fp8" and d["kv_cache"] == "fp8"
    assert d["build_config"]["max_seq_len"] == 16384 and d["build_config"]["kv_cache_type"] == "PAGED"
    assert d["plan"]["gpu"]["key"] == "l40s" and d["plan"]["fits"]
    assert d["plan"]["deployment"]["max_batch_size"] == load_preset("l40s-fp8").build_config["max_batch_size"]
    assert [e["bytes"] > 0 for e in d["engine_files"]] == [True]

    (out / "fathom-engine.json").unlink()
    bare = describe_engine(out)
    assert bare["manifest"] is None and bare["plan"] is None and "not built by fathom" in bare["notes"][0]
