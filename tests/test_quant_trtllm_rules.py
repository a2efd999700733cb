"""Quantized layouts TensorRT-LLM cannot build: weight-only widths it would pad
(quantization/layers.py; convert warns, build refuses) and FP8 exclusions that split the fused gated
MLP (models/modeling_utils.py `fuse_gate_mlp`; convert refuses)."""

import json
import re

import pytest
import torch

from fathom.build.config import preset
from fathom.build.errors import ConfigError
from fathom.build.quant.config import make_quant_config
from fathom.build.quant.quantizer import trtllm_padding

FATHOM = preset("fathom-r1-14b")  # hidden 5120, MLP 13824, qkv 7168


@pytest.mark.parametrize("precision, group, exclude, tp, refused", [
    ("w8a16", 128, None, 8, None),  # 64 * 8 = 512 divides 5120, 13824 and 7168
    ("w4a16_awq", 128, ["lm_head", "*.mlp.proj"], 4, None),  # 128 * 4 = 512
    ("w4a16_awq", 64, ["lm_head", "*.mlp.proj"], 8, None),  # max(64, 64) * 8 = 512
    # mlp.proj excluded passes the per-rank group check, but 13824 % 1024 != 0.
    ("w4a16_awq", 128, ["lm_head", "*.mlp.proj"], 8, "mlp.fc has 13824 output features"),
    ("w4a16_awq", 128, ["lm_head", "*.mlp.proj", "*.mlp.fc", "*.mlp.gate"], 8, None),
])
def test_fathom_weight_only_widths_against_trtllm_padding(precision, group, exclude, tp, refused):
    qcfg = make_quant_config(FATHOM, precision, exclude=exclude, group_size=group)
    msg = trtllm_padding(qcfg, FATHOM, tp)
    if refused is None:
        assert msg is None
        return
    assert refused in msg and "\n" not in msg
    assert "max(64, group size 128) * tp 8 = 1024" in msg and "pads it to 14336" in msg
    assert msg.startswith("w4a16_awq at tp 8: transformer.layers.0.mlp.fc")


def test_w8a16_refuses_widths_padded_even_at_tp1():
    demo = preset("demo")  # MLP width 352 = 5.5 * 64
    qcfg = make_quant_config(demo, "w8a16")
    assert re.search(r"mlp.fc has 352 output features, not a multiple of 64 \* tp 1 = 64; TensorRT-LLM pads it to 384",
                     trtllm_padding(qcfg, demo, 1))
    assert trtllm_padding(make_quant_config(demo, "w8a16", exclude=["lm_head", "*.mlp.*"]), demo, 1) is None


def test_padding_counts_qkv_with_duplicated_kv_heads():
    # tiny: 4 heads, 2 KV heads of 16; at tp 4 each rank holds 1 q head + 1 k + 1 v head: 4 * 48 = 192 rows.
    tiny = preset("tiny")
    qcfg = make_quant_config(tiny, "w8a16", exclude=["lm_head", "*.mlp.*", "*.attention.dense"])
    assert "attention.qkv has 192 output features, not a multiple of 64 * tp 4" in trtllm_padding(qcfg, tiny, 4)


def test_fp8_refuses_excluding_one_half_of_the_fused_mlp():
    tiny = preset("tiny")
    for exclude, left, kept in ((["lm_head", "*.mlp.fc"], "mlp.fc", "mlp.gate"),
                                (["lm_head", "transformer.layers.1.mlp.gate"], "layers.1.mlp.gate", "layers.1.mlp.fc")):
        with pytest.raises(ConfigError, match=f"{left} is excluded but .*{kept} is not; .*use_fused_mlp"):
            make_quant_config(tiny, "fp8", exclude=exclude)
    # Weight-only: fuse_gate_mlp skips a quantized fc, and concatenates raw weights beside an unquantized one.
    make_quant_config(tiny, "w8a16", exclude=["lm_head", "*.mlp.gate"])
    make_quant_config(tiny, "w4a16_awq", exclude=["lm_head", "*.mlp.fc", "*.mlp.gate", "*.mlp.proj"], group_size=64)
    for precision in ("w8a16", "w4a16_awq"):
        with pytest.raises(ConfigError, match=r"mlp.fc is excluded but .*mlp.gate is not; .*exclude both, or only "
                                              r"the gate"):
            make_quant_config(tiny, precision, exclude=["lm_head", "*.mlp.fc", "*.mlp.proj"], group_size=64)


def test_fp8_pair_excluded_by_glob_is_also_listed_by_exact_fc_name():
    tiny = preset("tiny")
    qcfg = make_quant_config(tiny, "fp8", exclude=["lm_head", "*.mlp.fc", "*.mlp.gate"])
    # fuse_gate_mlp looks the fc up with QuantConfig._get_quant_cfg: exact names or trailing-* prefixes only.
    assert qcfg.exclude_modules == ("lm_head", "*.mlp.fc", "*.mlp.gate", "transformer.vocab_embedding",
                                    "transformer.layers.0.mlp.fc", "transformer.layers.1.mlp.fc")
    assert not qcfg.quantizes("transformer.layers.0.mlp.gate") and qcfg.quantizes("transformer.layers.0.mlp.proj")
    plain = make_quant_config(tiny, "fp8", exclude=["lm_head"])
    assert plain.exclude_modules == ("lm_head", "transformer.vocab_embedding")


def test_w8a16_load_quantization_rounds_halves_away_from_zero_with_scales_in_the_weight_dtype():
    from fathom.build.quant.int8 import quantize_per_channel_int8

    # amax 1 -> scale 1/128: 5/256 and -5/256 sit exactly on +-2.5 steps, 3/256 on 1.5.
    w = torch.tensor([[1.0, 5 / 256, -5 / 256, 3 / 256], [0.0, 0.0, 0.0, 0.0]], dtype=torch.bfloat16)
    q, scale = quantize_per_channel_int8(w)
    assert q.tolist() == [[127, 3, -3, 2], [0, 0, 0, 0]]  # torch.round would give 2 and -2
    assert scale.dtype == torch.bfloat16 and scale.tolist() == [[1 / 128, 0.0]]


def test_w8a16_row_parallel_scales_are_per_rank_shard():
    from fathom.build.quant.int8 import dequantize_per_channel_int8, quantize_per_channel_int8

    small = 2.0 ** -10
    w = torch.cat([torch.full((2, 4), small), torch.full((2, 4), 64.0)], dim=1)  # (out 2, in 8), rank 1 larger
    q, scale = quantize_per_channel_int8(w, parts=2)
    assert scale.tolist() == [[small / 128] * 2, [64 / 128] * 2]
    # amax maps to 128 steps, clamped to 127; one scale over the row (64/128) would flush rank 0's weights to 0
    assert torch.equal(dequantize_per_channel_int8(q, scale), w * 127 / 128)


def test_torch_executor_quantizes_a_tp2_w8a16_checkpoint_per_rank_like_trtllm(tmp_path):
    from fathom.build.convert import ConvertOptions, convert
    from fathom.build.quant.int8 import quantize_per_channel_int8
    from fathom.build.quant.quantizer import QuantTransform
    from fathom.build.sources import resolve_model
    from fathom.build.tp_split import split_shards
    from fathom.build.mapping import ShardKind
    from fathom.runtime.loader import load_model, native_tensors_from_hf

    src = resolve_model("random:tiny")
    qcfg = make_quant_config(src.config, "w8a16", exclude=["lm_head", "*.mlp.*"])
    convert(src, tmp_path / "tp2", ConvertOptions(dtype="bfloat16", tp=2), transform=QuantTransform(qcfg, src.config))
    model = load_model(resolve_model(str(tmp_path / "tp2")), "float32", "cpu", 64)
    dense = model.get_submodule("transformer.layers.0.attention.dense")
    w = native_tensors_from_hf(src)["transformer.layers.0.attention.dense.weight"].to(torch.bfloat16)
    want = [quantize_per_channel_int8(shard)[1][0] for shard in split_shards(ShardKind.ROW, w, 2, src.config)]
    assert dense.per_channel_scale.dtype == torch.bfloat16
    assert torch.equal(dense.per_channel_scale, torch.stack(want))
    qkv = model.get_submodule("transformer.layers.0.attention.qkv")  # column-parallel: whole rows, one scale each
    assert qkv.per_channel_scale.shape == (1, qkv.out_features)


def test_convert_warns_that_tensorrt_llm_would_pad_and_still_writes_the_checkpoint(tmp_path):
    from click.testing import CliRunner

    from fathom.runtime.cli import main

    out = tmp_path / "w8"
    result = CliRunner().invoke(main, ["convert", "random:tiny", str(out), "--precision", "w8a16", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["trtllm_build_refusal"].startswith("w8a16 at tp 1: transformer.layers.0.mlp.fc")
    assert result.stderr.startswith("warning: TensorRT-LLM cannot build this checkpoint: w8a16 at tp 1:")
    assert result.stderr.count("\n") == 1
