"""`fathom export trtllm-serve`: the trtllm-serve command and extra-options YAML for tp=1 and tp=2
engines built through the fake tensorrt_llm, checked against tensorrt-llm 1.2.1's option names."""

import json
import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fathom.build.sources import DEMO_DIR
from fathom.deploy.trtllm_serve import EXTRA_OPTION_FIELDS, SERVE_FLAGS
from test_trtllm_executor import engine_dir, fake_trtllm, set_manifest_runtime, tp2_engine_dir  # noqa: F401 (fixtures)

# Every option name of `trtllm-serve serve` that takes a value, and its flags, as declared in
# tensorrt_llm/commands/serve.py (NVIDIA/TensorRT-LLM, 1.2 line).
UPSTREAM_VALUE_OPTIONS = {
    "--tokenizer", "--custom_tokenizer", "--host", "--port", "--backend", "--custom_module_dirs", "--log_level",
    "--max_beam_width", "--max_batch_size", "--max_num_tokens", "--max_seq_len", "--tensor_parallel_size",
    "--tp_size", "--pipeline_parallel_size", "--pp_size", "--context_parallel_size", "--cp_size",
    "--moe_expert_parallel_size", "--ep_size", "--moe_cluster_parallel_size", "--cluster_size", "--gpus_per_node",
    "--free_gpu_memory_fraction", "--kv_cache_free_gpu_memory_fraction", "--num_postprocess_workers", "--revision",
    "--config", "--extra_llm_api_options", "--reasoning_parser", "--tool_parser", "--metadata_server_config_file",
    "--server_role", "--otlp_traces_endpoint", "--disagg_cluster_uri", "--media_io_kwargs", "--chat_template"}
UPSTREAM_FLAG_OPTIONS = {"--trust_remote_code", "--fail_fast_on_attention_window_too_large", "--enable_chunked_prefill"}
UPSTREAM_BACKENDS = {"pytorch", "tensorrt", "_autodeploy", "trt"}
# Fields of the llmapi models the YAML sections are built into (tensorrt_llm/llmapi/llm_args.py, 1.2 line).
UPSTREAM_FIELDS = {
    "KvCacheConfig": {"enable_block_reuse", "max_tokens", "max_attention_window", "sink_token_length",
                      "free_gpu_memory_fraction", "host_cache_size", "onboard_blocks", "cross_kv_cache_fraction",
                      "secondary_offload_min_priority", "event_buffer_max_size", "enable_partial_reuse",
                      "copy_on_partial_reuse", "use_uvm", "dtype"},
    "ExtendedRuntimePerfKnobConfig": {"multi_block_mode", "enable_context_fmha_fp32_acc", "cuda_graph_mode",
                                      "cuda_graph_cache_size"},
}
KNOB_TYPES = {"free_gpu_memory_fraction": float, "max_tokens": int}  # the rest are bool


def export(*args):
    from fathom.runtime.cli import main

    return CliRunner().invoke(main, ["export", "trtllm-serve", *map(str, args)])


def parse(command: str) -> tuple[list[str], list[str], dict]:
    """(launcher argv, [trtllm-serve, MODEL], {option: value or True})."""
    argv = shlex.split(command)
    start = argv.index("trtllm-serve")
    options, rest = {}, argv[start + 2:]
    while rest:
        flag, rest = rest[0], rest[1:]
        assert flag in UPSTREAM_VALUE_OPTIONS | UPSTREAM_FLAG_OPTIONS, flag
        if flag in UPSTREAM_FLAG_OPTIONS:
            options[flag] = True
        else:
            options[flag], rest = rest[0], rest[1:]
    return argv[:start], argv[start:start + 2], options


def manifest(engine):
    return json.loads((Path(engine) / "fathom-engine.json").read_text())


def test_the_module_tables_use_upstream_names():
    assert set(SERVE_FLAGS.values()) <= UPSTREAM_VALUE_OPTIONS | UPSTREAM_FLAG_OPTIONS
    for model, fields in EXTRA_OPTION_FIELDS.values():
        assert set(fields) <= UPSTREAM_FIELDS[model]


def test_a_tp1_engine_gets_one_trtllm_serve_command_with_the_engines_limits(engine_dir, tmp_path):
    out = tmp_path / "serve.yaml"
    r = export(engine_dir, "--out", out, "--tokenizer", DEMO_DIR, "--host", "0.0.0.0", "--port", "9000")
    assert r.exit_code == 0, r.output
    launcher, serve, options = parse(r.stdout.strip())
    m = manifest(engine_dir)
    assert launcher == [] and serve == ["trtllm-serve", str(Path(engine_dir).absolute())]
    assert options["--backend"] == "tensorrt" and options["--backend"] in UPSTREAM_BACKENDS
    assert options["--tokenizer"] == str(Path(DEMO_DIR).absolute())
    assert (options["--host"], options["--port"]) == ("0.0.0.0", "9000")
    assert int(options["--max_batch_size"]) == m["build_config"]["max_batch_size"]
    assert int(options["--max_num_tokens"]) == m["build_config"]["max_num_tokens"]
    assert (options["--tp_size"], options["--pp_size"]) == ("1", "1")
    assert float(options["--kv_cache_free_gpu_memory_fraction"]) == m["runtime"]["kv_cache_free_gpu_memory_fraction"]
    assert options["--enable_chunked_prefill"] is True and m["runtime"]["enable_chunked_context"] is True
    assert options["--extra_llm_api_options"] == str(out)
    extra = yaml.safe_load(out.read_text())
    assert extra == {"kv_cache_config": {"free_gpu_memory_fraction": 0.9, "enable_block_reuse": False},
                     "extended_runtime_perf_knob_config": {"multi_block_mode": True,
                                                           "enable_context_fmha_fp32_acc": False,
                                                           "cuda_graph_mode": False}}


def test_a_tp2_engine_runs_under_mpirun_with_trtllm_llmapi_launch(tp2_engine_dir, tmp_path):
    r = export(tp2_engine_dir, "--out", tmp_path / "serve.yaml", "--tokenizer", DEMO_DIR, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    launcher, serve, options = parse(out["command_line"])
    assert launcher == ["mpirun", "-n", "2", "trtllm-llmapi-launch"] and out["ranks"] == 2
    assert shlex.split(out["command_line"]) == out["command"]
    assert (options["--tp_size"], options["--pp_size"]) == ("2", "1")
    assert out["extra_options"] == yaml.safe_load((tmp_path / "serve.yaml").read_text())


def test_every_runtime_setting_lands_in_a_flag_or_the_yaml_with_upstream_types(engine_dir, tmp_path):
    set_manifest_runtime(engine_dir, {"enable_chunked_context": False, "kv_cache_free_gpu_memory_fraction": 0.5,
                                      "kv_cache_enable_block_reuse": True, "max_tokens_in_paged_kv_cache": 4096,
                                      "multi_block_mode": False, "cuda_graph_mode": True,
                                      "enable_context_fmha_fp32_acc": True})
    r = export(engine_dir, "--out", tmp_path / "o.yaml", "--tokenizer", DEMO_DIR)
    assert r.exit_code == 0, r.output
    _, _, options = parse(r.stdout.strip())
    assert "--enable_chunked_prefill" not in options and options["--kv_cache_free_gpu_memory_fraction"] == "0.5"
    extra = yaml.safe_load((tmp_path / "o.yaml").read_text())
    assert extra["kv_cache_config"] == {"free_gpu_memory_fraction": 0.5, "max_tokens": 4096, "enable_block_reuse": True}
    assert extra["extended_runtime_perf_knob_config"] == {"multi_block_mode": False, "enable_context_fmha_fp32_acc": True,
                                                          "cuda_graph_mode": True}
    for section, (model, _) in EXTRA_OPTION_FIELDS.items():
        for field, value in extra[section].items():
            assert isinstance(value, KNOB_TYPES.get(field, bool)) and field in UPSTREAM_FIELDS[model]

    set_manifest_runtime(engine_dir, {})  # nothing set: the C++ defaults, no fraction flag
    r = export(engine_dir, "--out", tmp_path / "o.yaml", "--tokenizer", DEMO_DIR, "--force")
    _, _, options = parse(r.stdout.strip())
    assert "--kv_cache_free_gpu_memory_fraction" not in options
    assert yaml.safe_load((tmp_path / "o.yaml").read_text())["kv_cache_config"] == {"enable_block_reuse": False}


def test_bad_input_is_refused_in_one_line_and_nothing_is_written(engine_dir, tmp_path):
    out = tmp_path / "o.yaml"
    no_manifest = tmp_path / "bare"
    no_manifest.mkdir()
    (Path(engine_dir) / "config.json").replace(no_manifest / "config.json")
    r = export(no_manifest, "--out", out, "--tokenizer", DEMO_DIR)
    assert r.exit_code == 1 and "fathom-engine.json: no engine manifest" in r.output
    (no_manifest / "config.json").replace(Path(engine_dir) / "config.json")

    r = export(engine_dir, "--out", out)  # random:tiny: no tokenizer in the engine or the checkpoint
    assert r.exit_code == 1 and r.output.endswith("; pass --tokenizer DIR\n")

    set_manifest_runtime(engine_dir, {"kv_cache_free_gpu_memory_fraction": 2})
    r = export(engine_dir, "--out", out, "--tokenizer", DEMO_DIR)
    assert r.exit_code == 1 and "runtime.kv_cache_free_gpu_memory_fraction = 2, expected a number in (0, 1]" in r.output
    assert r.output.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".fathom-tmp-*"))

    set_manifest_runtime(engine_dir, {})
    out.write_text("mine\n")
    r = export(engine_dir, "--out", out, "--tokenizer", DEMO_DIR)
    assert r.exit_code == 1 and r.output == f"Error: {out}: already exists (pass --force to overwrite)\n"
    assert out.read_text() == "mine\n"


@pytest.mark.parametrize("field, value", [("max_batch_size", 0), ("tp_size", None)])
def test_a_manifest_without_the_engines_limits_is_refused(engine_dir, tmp_path, field, value):
    path = Path(engine_dir) / "fathom-engine.json"
    m = manifest(engine_dir)
    section = "build_config" if field == "max_batch_size" else "mapping"
    m[section][field] = value
    path.write_text(json.dumps(m))
    r = export(engine_dir, "--out", tmp_path / "o.yaml", "--tokenizer", DEMO_DIR)
    assert r.exit_code == 1
    assert r.output == f"Error: {path}: field '{section}.{field}' = {value!r}, expected a positive integer\n"


def test_the_upstream_copies_read_are_named_once_in_the_reference_and_the_code_cites_paths_only():
    root = Path(__file__).resolve().parents[1]
    reference = (root / "docs" / "REFERENCE.md").read_text()
    section = reference.split("## Deployment sources\n", 1)[1].split("\n## ", 1)[0]
    for flag in SERVE_FLAGS.values():  # every option the command writes, checked in the serve.py copies named
        assert f"`{flag}`" in section, flag
    for name in ("commands/serve.py", "llm_args.py", "trtllm-llmapi-launch", "launch_triton_server.py",
                 "inflight_batcher_llm"):
        assert name in section, name
    for module in (root / "deploy").glob("*.py"):
        text = module.read_text()
        assert "not available" not in text and "copy read" not in text and "at commit" not in text, module.name
