"""`fathom export triton`: the model repository for engines built through the fake tensorrt_llm.

Every config.pbtxt is parsed with protobuf's text_format into Triton's own ModelConfig message
(tritonclient's model_config_pb2), so a field Triton does not know fails here.
"""

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from fathom.build.sources import DEMO_DIR
from test_trtllm_executor import engine_dir, fake_trtllm, set_manifest_runtime, tp2_engine_dir  # noqa: F401 (fixtures)

MODELS = ("preprocessing", "tensorrt_llm", "postprocessing", "fathom")


def export(*args):
    from fathom.runtime.cli import main

    return CliRunner().invoke(main, ["export", "triton", *map(str, args)])


def read_configs(repo: Path) -> dict[str, model_config_pb2.ModelConfig]:
    return {d.name: text_format.Parse((d / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
            for d in repo.iterdir() if d.is_dir()}


def params(config) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def manifest(engine: Path) -> dict:
    return json.loads((engine / "fathom-engine.json").read_text())


@pytest.mark.parametrize("fixture", ["engine_dir", "tp2_engine_dir"])
def test_every_config_parses_with_no_placeholder_and_the_manifests_values(fixture, request, tmp_path):
    engine = request.getfixturevalue(fixture)
    m = manifest(engine)
    r = export(engine, tmp_path / "repo", "--tokenizer", DEMO_DIR)
    assert r.exit_code == 0, r.output
    repo = tmp_path / "repo"
    configs = read_configs(repo)
    assert set(configs) == set(MODELS)
    for name, config in configs.items():
        assert config.name == name and (repo / name / "1").is_dir()
        assert "${" not in (repo / name / "config.pbtxt").read_text()
        assert config.max_batch_size == m["build_config"]["max_batch_size"]
    assert configs["fathom"].platform == "ensemble"
    assert [configs[n].backend for n in MODELS[:3]] == ["python", "tensorrtllm", "python"]

    engine_model = configs["tensorrt_llm"]
    p = params(engine_model)
    assert p["gpt_model_path"] == str(engine.absolute()) and p["gpt_model_type"] == "inflight_fused_batching"
    assert p["max_beam_width"] == str(m["build_config"]["max_beam_width"])
    assert p["kv_cache_free_gpu_mem_fraction"] == str(m["runtime"]["kv_cache_free_gpu_memory_fraction"])
    assert p["enable_chunked_context"] == json.dumps(m["runtime"]["enable_chunked_context"])
    assert p["enable_kv_cache_reuse"] == "false" and p["multi_block_mode"] == "true"  # from_dir's defaults
    assert p["max_tokens_in_paged_kv_cache"] == ""  # not in the manifest: the backend's "not set"
    assert engine_model.model_transaction_policy.decoupled
    assert engine_model.dynamic_batching.preferred_batch_size == [m["build_config"]["max_batch_size"]]
    for name in ("preprocessing", "tensorrt_llm", "postprocessing"):
        assert params(configs[name])["tokenizer_dir"] == str(DEMO_DIR.absolute())
    logits = {t.name: t.data_type for t in engine_model.output}["generation_logits"]
    assert logits == model_config_pb2.TYPE_FP32  # config.json pretrained_config.logits_dtype

    script = repo / "launch.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    ranks = m["mapping"]["world_size"]
    assert text.count("shm-region-prefix-name=prefix") == ranks
    assert ("exec mpirun --allow-run-as-root" in text) == (ranks > 1)
    assert text.count("--load-model=tensorrt_llm") == ranks - 1
    assert "/v2/health/ready" in text and '/v2/models/$MODEL/generate' in text and '"text_input"' in text


def test_the_ensemble_wires_every_step_tensor_to_a_declared_tensor_of_the_same_type(engine_dir, tmp_path):
    assert export(engine_dir, tmp_path / "repo", "--tokenizer", DEMO_DIR).exit_code == 0
    configs = read_configs(tmp_path / "repo")
    ensemble = configs["fathom"]
    ens_in = {t.name: t.data_type for t in ensemble.input}
    ens_out = {t.name: t.data_type for t in ensemble.output}
    produced = dict(ens_in)
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        inputs, outputs = {t.name: t.data_type for t in model.input}, {t.name: t.data_type for t in model.output}
        for key, value in step.input_map.items():
            assert key in inputs and produced[value] == inputs[key], (step.model_name, key, value)
        for key, value in step.output_map.items():
            assert key in outputs, (step.model_name, key)
            produced[value] = outputs[key]
            if not value.startswith("_"):
                assert ens_out[value] == outputs[key]
    assert set(ens_out) <= set(produced)
    required = [t.name for t in configs["tensorrt_llm"].input if not t.optional]
    engine_step = ensemble.ensemble_scheduling.step[1]
    assert set(required) <= set(engine_step.input_map)


def test_python_models_link_to_the_containers_files(engine_dir, tmp_path):
    assert export(engine_dir, tmp_path / "repo", "--tokenizer", DEMO_DIR).exit_code == 0
    for name in ("preprocessing", "postprocessing"):
        link = tmp_path / "repo" / name / "1" / "model.py"
        assert link.is_symlink()
        assert os.readlink(link) == f"/app/all_models/inflight_batcher_llm/{name}/1/model.py"
    assert list((tmp_path / "repo" / "tensorrt_llm" / "1").iterdir()) == []


def test_manifest_runtime_and_options_reach_the_configs(engine_dir, tmp_path):
    set_manifest_runtime(engine_dir, {"enable_chunked_context": False, "kv_cache_free_gpu_memory_fraction": 0.5,
                                      "kv_cache_enable_block_reuse": True, "max_tokens_in_paged_kv_cache": 4096,
                                      "enable_context_fmha_fp32_acc": True})
    assert export(engine_dir, tmp_path / "a", "--tokenizer", DEMO_DIR).exit_code == 0
    p = params(read_configs(tmp_path / "a")["tensorrt_llm"])
    assert (p["enable_chunked_context"], p["kv_cache_free_gpu_mem_fraction"], p["enable_kv_cache_reuse"]) == \
        ("false", "0.5", "true")
    assert p["max_tokens_in_paged_kv_cache"] == "4096" and p["enable_context_fmha_fp32_acc"] == "true"

    r = export(engine_dir, tmp_path / "b", "--tokenizer", DEMO_DIR, "--kv-cache-free-gpu-mem-fraction", "0.7",
               "--max-queue-delay-us", "250", "--model-name", "r1")
    assert r.exit_code == 0, r.output
    configs = read_configs(tmp_path / "b")
    assert set(configs) == {"preprocessing", "tensorrt_llm", "postprocessing", "r1"}
    assert params(configs["tensorrt_llm"])["kv_cache_free_gpu_mem_fraction"] == "0.7"
    assert configs["tensorrt_llm"].dynamic_batching.max_queue_delay_microseconds == 250
    assert configs["preprocessing"].dynamic_batching.max_queue_delay_microseconds == 250
    assert "MODEL=r1\n" in (tmp_path / "b" / "launch.sh").read_text()


def _fake_bin(directory: Path, name: str) -> None:
    path = directory / name
    path.write_text('#!/bin/sh\nprintf "%s\\n" "$0" "$@"\n')
    path.chmod(0o755)


@pytest.mark.parametrize("fixture", ["engine_dir", "tp2_engine_dir"])
def test_launch_sh_runs_tritonserver_per_rank_as_launch_triton_server_builds_it(fixture, request, tmp_path):
    engine = request.getfixturevalue(fixture)
    repo = tmp_path / "repo"
    assert export(engine, repo, "--tokenizer", DEMO_DIR).exit_code == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_bin(bin_dir, "mpirun")
    _fake_bin(bin_dir, "tritonserver")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TRITONSERVER": str(bin_dir / "tritonserver")}

    missing = subprocess.run(["bash", str(repo / "launch.sh")], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and "preprocessing/1/model.py" in missing.stderr
    assert "/app/all_models/inflight_batcher_llm" in missing.stderr and missing.stdout == ""

    for name in ("preprocessing", "postprocessing"):  # what the container provides
        link = repo / name / "1" / "model.py"
        link.unlink()
        link.write_text("")
    run = subprocess.run(["bash", str(repo / "launch.sh")], env={**env, "HTTP_PORT": "9000"}, capture_output=True,
                         text=True, check=True)
    argv = run.stdout.splitlines()
    per_rank = [f"--model-repository={repo}", "--grpc-port=8001", "--http-port=9000", "--metrics-port=8002",
                "--disable-auto-complete-config"]
    if fixture == "engine_dir":
        assert argv == [str(bin_dir / "tritonserver"), *per_rank,
                        "--backend-config=python,shm-region-prefix-name=prefix0_"]
    else:
        assert argv == [str(bin_dir / "mpirun"), "--allow-run-as-root",
                        "-n", "1", str(bin_dir / "tritonserver"), *per_rank,
                        "--backend-config=python,shm-region-prefix-name=prefix0_", ":",
                        "-n", "1", str(bin_dir / "tritonserver"), *per_rank,
                        "--backend-config=python,shm-region-prefix-name=prefix1_",
                        "--model-control-mode=explicit", "--load-model=tensorrt_llm"]


def assert_one_line_error(r, *fragments):
    assert r.exit_code != 0
    message = r.output.strip()
    assert "\n" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def nothing_written(parent: Path, name: str) -> bool:
    return not (parent / name).exists() and not list(parent.glob(f".fathom-tmp-{name}-*"))


def test_an_engine_without_its_manifest_is_refused_and_nothing_is_written(engine_dir, tmp_path):
    (engine_dir / "fathom-engine.json").unlink()
    r = export(engine_dir, tmp_path / "repo", "--tokenizer", DEMO_DIR)
    assert_one_line_error(r, "fathom-engine.json: no engine manifest")
    assert nothing_written(tmp_path, "repo")


@pytest.mark.parametrize("args, fragments", [
    (["--kv-cache-free-gpu-mem-fraction", "1.5"], ["--kv-cache-free-gpu-mem-fraction 1.5: expected a number in (0, 1]"]),
    (["--kv-cache-free-gpu-mem-fraction", "0"], ["--kv-cache-free-gpu-mem-fraction 0.0: expected a number in (0, 1]"]),
    (["--model-name", "tensorrt_llm"], ["--model-name 'tensorrt_llm': expected"]),
    (["--model-name", "a/b"], ["--model-name 'a/b': expected"]),
])
def test_bad_options_give_one_line_errors_and_write_nothing(engine_dir, tmp_path, args, fragments):
    r = export(engine_dir, tmp_path / "repo", "--tokenizer", DEMO_DIR, *args)
    assert_one_line_error(r, *fragments)
    assert nothing_written(tmp_path, "repo")


def test_a_negative_queue_delay_is_a_usage_error(engine_dir, tmp_path):
    r = export(engine_dir, tmp_path / "repo", "--tokenizer", DEMO_DIR, "--max-queue-delay-us", "-1")
    assert r.exit_code == 2 and r.output.splitlines()[-1].startswith("Error: Invalid value for '--max-queue-delay-us'")
    assert nothing_written(tmp_path, "repo")


def test_an_engine_without_a_tokenizer_needs_one(engine_dir, tmp_path):
    r = export(engine_dir, tmp_path / "repo")
    assert_one_line_error(r, "no tokenizer.json or tokenizer_config.json", "--tokenizer DIR")
    assert nothing_written(tmp_path, "repo")


def test_an_existing_out_is_kept_without_force_and_replaced_with_it(engine_dir, tmp_path):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert_one_line_error(export(engine_dir, out, "--tokenizer", DEMO_DIR), "already exists (pass --force")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert export(engine_dir, out, "--tokenizer", DEMO_DIR, "--force").exit_code == 0
    assert not (out / "mine.txt").exists() and set(read_configs(out)) == set(MODELS)


def test_the_tensorrt_llm_version_written_is_the_one_fathom_pins(engine_dir, tmp_path, monkeypatch):
    import fathom.engine.trtllm as trtllm

    monkeypatch.setattr(trtllm, "SUPPORTED_TRTLLM_VERSION", "9.8.7")
    r = export(engine_dir, tmp_path / "repo", "--tokenizer", DEMO_DIR)
    assert r.exit_code == 0, r.output
    repo = tmp_path / "repo"
    for name in MODELS:
        assert "(tensorrt-llm 9.8.7)" in (repo / name / "config.pbtxt").read_text()
    script = (repo / "launch.sh").read_text()
    assert "pairs with tensorrt-llm 9.8.7," in script and "TensorRT-LLM v9.8.7 there" in script
    assert not [f for f in repo.rglob("*") if f.is_file() and "1.2.1" in f.read_text()]
