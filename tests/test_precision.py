"""The precision vocabulary: one set of words, their TensorRT-LLM values and storage facts, used by
every command."""

import json

import pytest
import torch
from click.testing import CliRunner

from fathom.build.errors import ConfigError
from fathom.build.precision import (DTYPES, KvCacheFormat, QuantAlgo, WeightFormat, check_dtype, torch_dtype)
from fathom.runtime.cli import main


def test_weight_formats_carry_their_trtllm_algo_and_bytes():
    assert [f.value for f in WeightFormat] == ["bf16", "fp16", "fp32", "fp8", "w8a16", "w4a16_awq"]
    assert WeightFormat.FP8.quant_algo is QuantAlgo.FP8 and WeightFormat.BF16.quant_algo is None
    assert [f.bytes_per_weight() for f in WeightFormat] == [2, 2, 4, 1, 1, 0.5 + 2 / 128]
    # an int4 linear: packed weights + one 16-bit scale per group and output row + the prequant scale
    assert WeightFormat.W4A16_AWQ.linear_bytes(256, 512) == 256 * 512 // 2 + 2 * 4 * 256 + 2 * 512
    assert WeightFormat.FP16.linear_bytes(3, 5) == 30 and WeightFormat.FP32.linear_bytes(3, 5) == 60


@pytest.mark.parametrize("fmt", list(WeightFormat))
def test_a_checkpoint_block_reads_back_as_the_format_that_wrote_it(fmt):
    dtype = fmt.dtype or "bfloat16"
    algo = fmt.quant_algo.value if fmt.quant_algo else None
    assert WeightFormat.of_checkpoint(algo, dtype, "config.json") is fmt


@pytest.mark.parametrize("kv", list(KvCacheFormat))
def test_kv_cache_formats_round_trip_and_size_per_model_dtype(kv):
    algo = kv.quant_algo.value if kv.quant_algo else None
    assert KvCacheFormat.of_checkpoint(algo, "config.json") is kv
    expected = {"model": 2, "fp8": 1, "int8": 1}[kv.value]
    assert kv.bytes_per_element("bfloat16") == expected
    assert kv.torch_dtype("bfloat16") == {"model": torch.bfloat16, "fp8": torch.float8_e4m3fn,
                                          "int8": torch.int8}[kv.value]
    assert KvCacheFormat.MODEL.bytes_per_element("float32") == 4


def test_the_kv_default_is_fp8_beside_fp8_weights_only():
    assert {f: KvCacheFormat.default_for(f) for f in WeightFormat} == {
        f: KvCacheFormat.FP8 if f is WeightFormat.FP8 else KvCacheFormat.MODEL for f in WeightFormat}


def test_bad_words_name_the_option_and_the_valid_words():
    with pytest.raises(ConfigError, match=r"^--precision 'int4': expected one of bf16, fp16, fp32, fp8, w8a16, w4a16_awq$"):
        WeightFormat.parse("int4", "--precision")
    with pytest.raises(ConfigError, match=r"^--kv-cache 'bf16': expected one of model, fp8, int8$"):
        KvCacheFormat.parse("bf16", "--kv-cache")
    with pytest.raises(ConfigError, match=r"^--dtype 'fp16': expected one of float32, bfloat16, float16$"):
        torch_dtype("fp16")
    with pytest.raises(ConfigError, match=r"quant_algo' = 'NVFP4', expected null or one of FP8, W8A16, W4A16_AWQ"):
        WeightFormat.of_checkpoint("NVFP4", "bfloat16", "ckpt/config.json")
    assert check_dtype("float16", "--dtype") == "float16" and DTYPES == ("float32", "bfloat16", "float16")


@pytest.mark.parametrize("command", [["convert", "random:tiny", "{out}"], ["plan", "random:tiny", "--gpu", "l40s"]])
def test_convert_and_plan_take_the_same_precision_and_kv_words(command, tmp_path):
    runner = CliRunner()
    for i, (precision, kv) in enumerate([("bf16", "model"), ("fp16", "int8"), ("fp8", "fp8"), ("w8a16", "model")]):
        args = [a.format(out=tmp_path / str(i)) for a in command]
        if command[0] == "convert" and precision == "w8a16":  # tiny's MLP width 160 would be padded by TRT-LLM
            args += ["--exclude", "lm_head,*.mlp.*"]
        result = runner.invoke(main, [*args, "--precision", precision, "--kv-cache", kv, "--json"])
        assert result.exit_code == 0, (args, precision, kv, result.output)
    old = runner.invoke(main, [*[a.format(out=tmp_path / "old") for a in command], "--kv-cache", "bf16"])
    assert old.exit_code == 2 and "'bf16' is not one of 'model', 'fp8', 'int8'" in old.output


def test_convert_reports_precision_words_and_refuses_a_contradicting_dtype(tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["convert", "random:tiny", str(tmp_path / "fp32"), "--precision", "fp32", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert (result["precision"], result["kv_cache"], result["dtype"]) == ("fp32", "model", "float32")
    inspected = json.loads(runner.invoke(main, ["inspect", str(tmp_path / "fp32"), "--json"]).output)
    assert (inspected["precision"], inspected["kv_cache"]) == ("fp32", "model")

    bad = runner.invoke(main, ["convert", "random:tiny", str(tmp_path / "x"), "--precision", "bf16", "--dtype", "float16"])
    assert bad.exit_code == 1 and "--precision bf16 stores weights as bfloat16; --dtype float16 contradicts it" in bad.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("executor", ["torch", "reference"])
def test_executors_and_run_records_name_the_checkpoint_formats_with_the_same_words(executor, tmp_path):
    from fathom.build.sources import resolve_model
    from fathom.runtime.executors import create_executor
    from fathom.runtime.records import environment

    ckpt = tmp_path / "w8"
    # tiny's MLP width (160) is one TensorRT-LLM would pad for W8A16: only attention is quantized.
    result = CliRunner().invoke(main, ["convert", "random:tiny", str(ckpt), "--precision", "w8a16", "--kv-cache", "int8",
                                       "--exclude", "lm_head,*.mlp.*"])
    assert result.exit_code == 0, result.output
    ex = create_executor(executor, resolve_model(str(ckpt)), dtype="float32", device="cpu", max_seq_len=64)
    info = ex.describe()
    assert (info["precision"], info["kv_cache_format"]) == ("w8a16", "int8")
    env = environment(info)
    assert (env["precision"], env["kv_cache"]) == ("w8a16", "int8")

    plain = create_executor(executor, resolve_model("random:tiny"), dtype="float32", device="cpu", max_seq_len=64)
    env = environment(plain.describe())
    assert (env["precision"], env["kv_cache"]) == ("fp32", "model")


def test_the_record_names_the_kv_cache_actually_built_when_kv_format_overrides_it():
    from fathom.build.sources import resolve_model
    from fathom.runtime.executors import create_executor
    from fathom.runtime.records import environment

    ex = create_executor("torch", resolve_model("random:tiny"), dtype="float32", device="cpu", max_seq_len=64,
                         kv_format="int8", kv_scales=(1.0,) * 2)
    assert ex.describe()["kv_cache_dtype"] == "int8" and environment(ex.describe())["kv_cache"] == "int8"


def test_the_demo_engine_recipe_is_a_command_fathom_accepts(tmp_path):
    from fathom.engine.demo import demo_text

    line = next(l for l in demo_text().splitlines() if "fathom convert" in l).split()
    args = ["convert", "demo", str(tmp_path / "ck"), *line[4:]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (args, result.output)
