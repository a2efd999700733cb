import json
import sys

from click.testing import CliRunner

from fathom.engine.demo import demo_text
from fathom.engine.presets import load_preset
from fathom.runtime.cli import main
from test_engine_build import fake_trtllm, write_checkpoint  # noqa: F401 (fixture)


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_plan_json_for_fathom_fp8_on_h100():
    r = run("plan", "random:fathom-r1-14b", "--gpu", "h100", "--precision", "fp8", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["fits"] and d["concurrent_sequences"] == 37
    assert d["deployment"]["kv_cache"] == "fp8"  # FP8 weights default to an FP8 KV cache
    assert round(d["memory_per_gpu"]["weights_total_bytes"] / 1e9, 1) == 16.3
    assert d["roofline"]["decode_batch1_tok_s"]["ceiling"] > d["roofline"]["decode_batch1_tok_s"]["expected"]


def test_plan_that_does_not_fit_exits_1_with_options_and_no_traceback():
    r = run("plan", "random:fathom-r1-14b", "--gpu", "l4")
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert "DOES NOT FIT" in r.output
    assert "Error: fathom-r1-14b bf16" in r.output and "--tp 2" in r.output and "Traceback" not in r.output
    r = run("plan", "random:fathom-r1-14b", "--gpu", "l4", "--json")
    assert r.exit_code == 1
    d = json.loads(r.output[: r.output.index("\nError:")])
    assert not d["fits"] and {o["flags"] for o in d["options_that_fit"]} >= {"--tp 2", "--precision fp8 --kv-cache fp8"}


def test_plan_reads_precision_and_mapping_from_a_checkpoint(tmp_path):
    ckpt = write_checkpoint(tmp_path / "ckpt", "tiny", tp=2, quant_algo="FP8", kv_algo="FP8")
    d = json.loads(run("plan", str(ckpt), "--gpu", "l40s", "--json").output)
    assert (d["deployment"]["precision"], d["deployment"]["kv_cache"], d["deployment"]["tp"]) == ("fp8", "fp8", 2)
    d = json.loads(run("plan", str(ckpt), "--gpu", "l40s", "--precision", "bf16", "--tp", "1", "--json").output)
    assert (d["deployment"]["precision"], d["deployment"]["kv_cache"], d["deployment"]["tp"]) == ("bf16", "model", 1)


def test_plan_kv_cache_words_are_the_kv_cache_formats():
    r = run("plan", "random:fathom-r1-14b", "--gpu", "h100", "--kv-cache", "model")
    assert r.exit_code == 0 and "bf16 weights, model KV cache" in r.output
    r = run("plan", "random:fathom-r1-14b", "--gpu", "h100", "--kv-cache", "bf16")
    assert r.exit_code == 2 and "'bf16' is not one of 'model', 'fp8', 'int8'" in r.output
    r = run("plan", "random:fathom-r1-14b", "--gpu", "h100", "--precision", "fp16", "--json")
    d = json.loads(r.output)
    dep = d["deployment"]
    assert (dep["precision"], dep["kv_cache"], d["concurrent_sequences"]) == ("fp16", "model", 14)


def test_plan_refuses_fp32_with_the_reason_in_one_line():
    r = run("plan", "random:fathom-r1-14b", "--gpu", "h100", "--precision", "fp32")
    assert r.exit_code == 1 and "--precision fp32: not an engine precision" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    r = run("plan", "random:fathom-r1-14b", "--gpu", "h100", "--precision", "int4")
    assert r.exit_code == 1 and "expected one of bf16, fp16, fp8, w8a16, w4a16_awq" in r.output


def test_plan_reads_precision_and_mapping_from_an_engine(tmp_path, fake_trtllm):  # noqa: F811
    # Fathom widths: tiny's (hidden 64) are ones TensorRT-LLM pads for int4 at tp 2, which the fake refuses.
    ckpt = write_checkpoint(tmp_path / "ckpt", "fathom-r1-14b-4l", tp=2, quant_algo="W4A16_AWQ", kv_algo="INT8")
    assert run("build", str(ckpt), str(tmp_path / "engine"), "--gpu", "l40s").exit_code == 0
    d = json.loads(run("plan", str(tmp_path / "engine"), "--gpu", "l40s", "--json").output)
    dep = d["deployment"]
    assert (dep["precision"], dep["kv_cache"], dep["tp"]) == ("w4a16_awq", "int8", 2)


def test_plan_rejects_unknown_gpu_and_fp8_on_sm80():
    r = run("plan", "random:fathom-r1-14b", "--gpu", "v100")
    assert r.exit_code == 1 and "valid names" in r.output
    r = run("plan", "random:fathom-r1-14b", "--gpu", "a100", "--precision", "fp8")
    assert r.exit_code == 1 and "sm80" in r.output


def test_build_dry_run_prints_plan_build_config_and_command_without_tensorrt_llm(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    ckpt = write_checkpoint(tmp_path / "ckpt", quant_algo="FP8", kv_algo="FP8")
    r = run("build", str(ckpt), str(tmp_path / "engine"), "--preset", "h100-sxm-fp8", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["dry_run"] and d["build_config"] == {k: v for k, v in load_preset("h100-sxm-fp8").build_config.items()}
    assert d["trtllm_build"].startswith(f"trtllm-build --checkpoint_dir {ckpt} --output_dir {tmp_path / 'engine'}")
    assert d["plan"]["fits"] and d["plugin_config"]["use_fp8_context_fmha"] is True
    r = run("build", str(ckpt), str(tmp_path / "engine"), "--preset", "h100-sxm-fp8", "--dry-run")
    assert r.exit_code == 0 and "BuildConfig(max_input_len=16384" in r.output and "trtllm-build" in r.output
    assert not (tmp_path / "engine").exists()


def test_build_without_tensorrt_llm_exits_1_with_the_install_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    r = run("build", str(write_checkpoint(tmp_path / "ckpt")), str(tmp_path / "engine"), "--gpu", "h100")
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert "pip install 'fathom-engine[trtllm]'" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "engine").exists()


def test_build_with_tensorrt_llm_writes_the_engine(tmp_path, fake_trtllm):  # noqa: F811
    ckpt = write_checkpoint(tmp_path / "ckpt", tp=2)
    r = run("build", str(ckpt), str(tmp_path / "engine"), "--gpu", "h100", "--max-batch-size", "8", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output[r.output.index("{"):])  # rank progress lines go to stderr, mixed in by CliRunner
    assert d["manifest"]["build_config"]["max_batch_size"] == 8
    assert (tmp_path / "engine" / "rank1.engine").is_file()


def test_build_refuses_a_preset_that_contradicts_the_checkpoint(tmp_path):
    r = run("build", str(write_checkpoint(tmp_path / "ckpt")), str(tmp_path / "engine"), "--preset", "l40s-fp8",
            "--dry-run")
    assert r.exit_code == 1 and "bf16 checkpoint" in r.output and "l40s-bf16" in r.output


def test_build_refuses_a_checkpoint_that_does_not_fit_its_target(tmp_path):
    ckpt = write_checkpoint(tmp_path / "ckpt", "fathom-r1-14b")
    r = run("build", str(ckpt), str(tmp_path / "engine"), "--gpu", "l4", "--dry-run")
    assert r.exit_code == 1 and "does not fit NVIDIA L4" in r.output


def test_demo_text_plans_h100_and_l40s_in_bf16_and_fp8_and_shows_the_build():
    text = demo_text()
    for gpu in ("NVIDIA H100 SXM 80GB", "NVIDIA L40S 48GB"):
        assert text.count(f"on {gpu}") == 2
    assert "bf16 weights" in text and "fp8 weights" in text
    assert "fathom build ./fathom-r1-14b-fp8-ckpt" in text and "trtllm-build --checkpoint_dir" in text


def test_build_refuses_an_fp8_checkpoint_for_an_sm80_gpu(tmp_path):
    ckpt = write_checkpoint(tmp_path / "ckpt", quant_algo="FP8", kv_algo="FP8")
    r = run("build", str(ckpt), str(tmp_path / "engine"), "--gpu", "a100", "--dry-run")
    assert r.exit_code == 1 and "needs FP8 tensor cores (sm >= 89)" in r.output and "sm80" in r.output


def test_build_json_stays_one_json_object_while_tensorrt_llm_prints(tmp_path, fake_trtllm):  # noqa: F811
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[name]  # imported by the command itself: its banner prints then
    ckpt = write_checkpoint(tmp_path / "ckpt", kv_algo="INT8")
    r = run("build", str(ckpt), str(tmp_path / "engine"), "--gpu", "l40s", "--max-batch-size", "1",
            "--max-seq-len", "2048", "--max-num-tokens", "4096", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["manifest"]["build_config"]["max_num_tokens"] == 2048  # what the engine holds
    assert d["manifest"]["runtime"]["enable_chunked_context"] is False
    assert "TensorRT LLM version: 1.2.1" in r.stderr
    assert "warning: tensorrt_llm build() changed build_config.max_num_tokens from 4096 to 2048" in r.stderr
