"""Quantized checkpoints end to end on the tiny model: calibration, tensors written, TP/PP splits,
the torch executor running them, and `fathom quality` / `fathom convert --precision` on the CLI."""

import json

import pytest
import torch
from click.testing import CliRunner

from fathom.build.checkpoint import load_native_tensors, read_checkpoint
from fathom.build.convert import ConvertOptions, convert
from fathom.build.errors import ConfigError
from fathom.build.quant.awq import unpack_int4
from fathom.build.quant.calib_data import load_token_set
from fathom.build.quant.calibrate import CalibConfig, run_calibration
from fathom.build.quant.config import make_quant_config
from fathom.build.quant.quantizer import QuantTransform
from fathom.build.sources import resolve_model
from fathom.build.mapping import ShardKind
from fathom.build.tp_split import split_shards
from fathom.build.verify import verify_checkpoint
from fathom.build.weights import SafetensorsDir
from fathom.runtime.cli import main
from fathom.runtime.loader import load_model
from fathom.runtime.quality import compare_logits
from fathom.runtime.quant_linear import DEQUANT, QuantLinear

CALIB = CalibConfig(samples=4, seq_len=32, seed=0, awq_rows=64)
FORMATS = {  # name -> make_quant_config kwargs (tiny: hidden 64, intermediate 160, so int4 groups of 32)
    "fp8": dict(precision="fp8"),
    "w8a16": dict(precision="w8a16"),
    "awq": dict(precision="w4a16_awq", kv_cache="int8", group_size=32),
}


@pytest.fixture(scope="module")
def tiny():
    return resolve_model("random:tiny")


@pytest.fixture(scope="module")
def stats(tiny):
    return run_calibration(tiny, CALIB, device="cpu")


@pytest.fixture(scope="module")
def ckpts(tiny, stats, tmp_path_factory):
    """format -> checkpoint dir (tp 1), plus "base" (unquantized float32)."""
    root = tmp_path_factory.mktemp("quant-ckpts")
    out = {"base": root / "base"}
    convert(tiny, out["base"], ConvertOptions(dtype="float32"))
    for name, kwargs in FORMATS.items():
        out[name] = root / name
        qcfg = make_quant_config(tiny.config, **kwargs)
        convert(tiny, out[name], ConvertOptions(dtype="float32"), transform=QuantTransform(qcfg, tiny.config, stats))
    return out


def test_calibration_is_reproducible_for_a_seed(tiny, stats):
    again = run_calibration(tiny, CALIB, device="cpu")
    other = run_calibration(tiny, CalibConfig(samples=4, seq_len=32, seed=1, awq_rows=64), device="cpu")
    assert again.k_amax == stats.k_amax and again.v_amax == stats.v_amax
    for name, s in stats.linears.items():
        a = again.linears[name]
        assert a.amax == s.amax and a.tokens == s.tokens == 4 * 32
        assert torch.equal(a.act_mean, s.act_mean) and torch.equal(a.samples(), s.samples())
        assert s.samples().shape == (64, s.in_features)
    assert other.linears["transformer.layers.0.mlp.fc"].amax != stats.linears["transformer.layers.0.mlp.fc"].amax
    assert stats.summary()["source"] == "builtin:random-tokens"


def _header(ckpt, rank=0):
    d = SafetensorsDir(ckpt, pattern=f"rank{rank}.safetensors")
    return {n: (d.dtype(n), d.shape(n)) for n in d.names()}, d


def test_fp8_checkpoint_tensor_names_shapes_and_dtypes(ckpts):
    h, _ = _header(ckpts["fp8"])
    qkv = "transformer.layers.0.attention.qkv"
    assert h[f"{qkv}.weight"] == (torch.float8_e4m3fn, (128, 64))
    assert h[f"{qkv}.bias"] == (torch.float32, (128,))
    for leaf in ("weights_scaling_factor", "activation_scaling_factor"):
        for module in (qkv, "transformer.layers.1.mlp.proj", "transformer.layers.1.mlp.gate"):
            assert h[f"{module}.{leaf}"] == (torch.float32, (1,))
    assert h["transformer.layers.1.attention.kv_cache_scaling_factor"] == (torch.float32, (1,))
    assert h["lm_head.weight"] == (torch.float32, (256, 64)) and "lm_head.weights_scaling_factor" not in h
    assert h["transformer.vocab_embedding.weight"][0] == torch.float32
    q = json.loads((ckpts["fp8"] / "config.json").read_text())["quantization"]
    assert q["quant_algo"] == "FP8" and q["kv_cache_quant_algo"] == "FP8" and "lm_head" in q["exclude_modules"]
    verify_checkpoint(ckpts["fp8"])


def test_fp8_fc_and_gate_share_one_weight_scale(ckpts):
    _, d = _header(ckpts["fp8"])
    for i in range(2):
        fc, gate = (d.get(f"transformer.layers.{i}.mlp.{m}.weights_scaling_factor") for m in ("fc", "gate"))
        assert torch.equal(fc, gate)
        fc_w, gate_w = (d.get(f"transformer.layers.{i}.mlp.{m}.weight").float() for m in ("fc", "gate"))
        assert max(fc_w.abs().max(), gate_w.abs().max()) == 448.0  # the larger of the two fills the range


def test_w8a16_checkpoint_keeps_float_weights_for_trtllm_to_quantize(ckpts):
    h, _ = _header(ckpts["w8a16"])
    assert h["transformer.layers.0.mlp.fc.weight"] == (torch.float32, (160, 64))
    assert not any(n.endswith(("scaling_factor", "per_channel_scale")) for n in h)


def test_awq_checkpoint_tensor_names_shapes_and_dtypes(ckpts):
    h, _ = _header(ckpts["awq"])
    assert h["transformer.layers.0.attention.qkv.weight"] == (torch.int8, (64, 64))  # (out/2, in)
    assert h["transformer.layers.0.attention.qkv.weights_scaling_factor"] == (torch.float32, (128, 2))
    assert h["transformer.layers.0.attention.qkv.prequant_scaling_factor"] == (torch.float32, (64,))
    assert h["transformer.layers.0.mlp.proj.weight"] == (torch.int8, (32, 160))
    assert h["transformer.layers.0.mlp.proj.weights_scaling_factor"] == (torch.float32, (64, 5))
    assert h["transformer.layers.0.attention.kv_cache_scaling_factor"] == (torch.float32, (1,))
    q = json.loads((ckpts["awq"] / "config.json").read_text())["quantization"]
    assert q["quant_algo"] == "W4A16_AWQ" and q["pre_quant_scale"] is True and q["group_size"] == 32
    verify_checkpoint(ckpts["awq"])


@pytest.mark.parametrize("name, max_kl_mean", [("w8a16", 0.002), ("fp8", 0.03), ("awq", 0.2)])
def test_quantized_logits_close_to_base(ckpts, name, max_kl_mean):
    base = load_model(resolve_model(str(ckpts["base"])), "float32", "cpu", 64)
    quant = load_model(resolve_model(str(ckpts[name])), "float32", "cpu", 64)
    seqs = load_token_set("builtin", 3, 32, 5, 256).sequences
    m = compare_logits(base, quant, seqs)
    assert 0 < m["kl_mean"] < max_kl_mean
    assert m["top1_agreement"] > 0.6
    assert abs(m["ppl_candidate"] / m["ppl_base"] - 1) < 0.1


def test_executor_reports_kernel_paths_and_they_match_dequantization(ckpts):
    for name in FORMATS:
        model = load_model(resolve_model(str(ckpts[name])), "float32", "cpu", 64)
        info = model.quant_info
        assert sum(info["linear_paths"].values()) == 11 and info["linear_paths"]["unquantized"] == 1  # lm_head
        x = torch.randn(3, 5, model.cfg.hidden_size)
        layer = model.get_submodule("transformer.layers.0.attention.qkv")
        assert isinstance(layer, QuantLinear)
        fast = layer(x)
        chosen, layer.path = layer.path, DEQUANT
        slow = layer(x)
        layer.path = chosen
        assert torch.allclose(fast, slow, atol=1e-3 * float(slow.abs().max()), rtol=0)
    assert model.quant_info["kv_cache"].startswith("K/V rounded to INT8")


def _assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for n in a:
        x, y = a[n], b[n]
        assert x.dtype == y.dtype and x.shape == y.shape, n
        if x.dtype == torch.float8_e4m3fn:
            x, y = x.view(torch.uint8), y.view(torch.uint8)
        assert torch.equal(x, y), n


@pytest.mark.parametrize("name, tp, pp, group", [("fp8", 2, 2, None), ("fp8", 4, 1, None),
                                                 ("awq", 2, 1, 16), ("awq", 4, 2, 8)])
def test_tp_pp_splits_of_quantized_tensors_merge_back_exactly(tiny, stats, tmp_path, name, tp, pp, group):
    kwargs = dict(FORMATS[name], **({"group_size": group} if group else {}))
    qcfg = make_quant_config(tiny.config, **kwargs)
    one, split = tmp_path / "tp1", tmp_path / "split"
    for out, (t, p) in ((one, (1, 1)), (split, (tp, pp))):
        convert(tiny, out, ConvertOptions(dtype="float32", tp=t, pp=p),
                transform=QuantTransform(qcfg, tiny.config, stats))
    verify_checkpoint(split)
    full = load_native_tensors(read_checkpoint(one))
    _assert_same_tensors(full, load_native_tensors(read_checkpoint(split)))
    # Per-tensor scales are replicated: every tp rank of a stage holds the same value.
    scale = "transformer.layers.0.attention.kv_cache_scaling_factor"
    for rank in range(tp):
        _, d = _header(split, rank)
        assert torch.equal(d.get(scale), full[scale])
    if name == "awq":  # each rank's packed qkv = the unpacked full qkv split by the plain QKV rule, repacked
        want = split_shards(ShardKind.QKV, unpack_int4(full["transformer.layers.0.attention.qkv.weight"]), tp,
                            tiny.config)
        for rank in range(tp):
            _, d = _header(split, rank)
            got = unpack_int4(d.get("transformer.layers.0.attention.qkv.weight"))
            assert torch.equal(got, want[rank])


def test_awq_refuses_a_tp_split_that_breaks_groups(tiny):
    from fathom.build.quant.quantizer import check_quant_mapping

    with pytest.raises(ConfigError, match="not a multiple of the group size 32"):
        check_quant_mapping(make_quant_config(tiny.config, precision="w4a16_awq", group_size=32), tiny.config, 4)


def test_quality_cli_reports_and_records(ckpts, tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_RESULTS_DIR", str(tmp_path / "results"))
    runner = CliRunner()
    args = ["--sequences", "2", "--seq-len", "16", "--json"]
    same = runner.invoke(main, ["quality", str(ckpts["base"]), str(ckpts["base"]), *args])
    assert same.exit_code == 0, same.output
    m = json.loads(same.output)["metrics"]
    assert m["top1_agreement"] == 1.0 and m["kl_max"] == pytest.approx(0, abs=1e-6)
    assert m["task_accuracy_candidate"] is None and "no tokenizer" in m["task_skipped"]
    fp8 = runner.invoke(main, ["quality", str(ckpts["base"]), str(ckpts["fp8"]), *args])
    assert fp8.exit_code == 0, fp8.output
    out = json.loads(fp8.output)
    assert out["metrics"]["kl_mean"] > 0 and out["candidate"]["quantization"]["quant_algo"] == "FP8"
    records = [json.loads(line) for line in open(out["record_file"])]
    assert [r["kind"] for r in records] == ["quality", "quality"]
    assert records[1]["metrics"]["kl_mean"] == out["metrics"]["kl_mean"]


def test_convert_cli_quantizes_and_rejects_bad_options(tmp_path):
    runner = CliRunner()
    out = tmp_path / "fp8"
    ok = runner.invoke(main, ["convert", "random:tiny", str(out), "--precision", "fp8", "--kv-cache", "model",
                              "--calib-samples", "2", "--calib-seq-len", "16", "--dtype", "float32", "--json"])
    assert ok.exit_code == 0, ok.output
    result = json.loads(ok.output)
    assert result["quantization"]["quant_algo"] == "FP8" and result["quantization"]["kv_cache_quant_algo"] is None
    assert result["quantization_report"]["calibration"]["sequences"] == 2
    bad = runner.invoke(main, ["convert", "random:tiny", str(tmp_path / "x"), "--precision", "fp8", "--exclude", "lm_hed"])
    assert bad.exit_code == 1 and bad.output.startswith("Error: --exclude 'lm_hed'") and "Traceback" not in bad.output
    assert not (tmp_path / "x").exists()


def test_calibration_data_file_is_read_and_checked(tmp_path):
    good = tmp_path / "calib.jsonl"
    good.write_text('{"input_ids": [1, 2, 3, 4, 5]}\n\n{"input_ids": [7, 8]}\n')
    ts = load_token_set(str(good), 5, 4, 0, 256)
    assert ts.sequences == [[1, 2, 3, 4], [7, 8]] and ts.source == f"file:{good}"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input_ids": [1, 2]}\n{"text": "hello"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: has 'text' but the model has no tokenizer"):
        load_token_set(str(bad), 5, 4, 0, 256)
