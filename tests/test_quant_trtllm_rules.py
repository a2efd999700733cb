"""Quantized layouts TensorRT-LLM cannot build are refused at convert time: weight-only widths it
would pad (quantization/layers.py) and FP8 exclusions that split the fused gated MLP
(models/modeling_utils.py `fuse_gate_mlp`)."""

import pytest
import torch

from fathom.build.config import preset
from fathom.build.errors import ConfigError
from fathom.build.quant.config import make_quant_config
from fathom.build.quant.quantizer import check_quant_mapping

FATHOM = preset("fathom-r1-14b")  # hidden 5120, MLP 13824, qkv 7168


@pytest.mark.parametrize("precision, group, exclude, tp, refused", [
    ("w8a16", 128, None, 8, None),  # 64 * 8 = 512 divides 5120, 13824 and 7168
    ("w4a16_awq", 128, ["lm_head", "*.mlp.proj"], 4, None),  # 128 * 4 = 512
    ("w4a16_awq", 64, ["lm_head", "*.mlp.proj"], 8, None),  # max(64, 64) * 8 = 512
    # The case: mlp.proj excluded passes the per-rank group check, but 13824 % 1024 != 0.
    ("w4a16_awq", 128, ["lm_head", "*.mlp.proj"], 8, "mlp.fc has 13824 output features"),
    ("w4a16_awq", 128, ["lm_head", "*.mlp.proj", "*.mlp.fc", "*.mlp.gate"], 8, None),
])
def test_fathom_weight_only_widths_against_trtllm_padding(precision, group, exclude, tp, refused):
    qcfg = make_quant_config(FATHOM, precision, exclude=exclude, group_size=group)
    if refused is None:
        check_quant_mapping(qcfg, FATHOM, tp)
        return
    with pytest.raises(ConfigError) as e:
        check_quant_mapping(qcfg, FATHOM, tp)
    msg = str(e.value)
    assert refused in msg and "\n" not in msg
    assert "max(64, group size 128) * tp 8 = 1024" in msg and "pads it to 14336" in msg
    assert msg.startswith("--precision w4a16_awq --tp 8: transformer.layers.0.mlp.fc")


def test_w8a16_refuses_widths_padded_even_at_tp1():
    demo = preset("demo")  # MLP width 352 = 5.5 * 64
    qcfg = make_quant_config(demo, "w8a16")
    with pytest.raises(ConfigError, match=r"mlp.fc has 352 output features, not a multiple of 64 \* tp 1 = 64; "
                                          r"TensorRT-LLM pads it to 384"):
        check_quant_mapping(qcfg, demo, 1)
    check_quant_mapping(make_quant_config(demo, "w8a16", exclude=["lm_head", "*.mlp.*"]), demo, 1)


def test_padding_counts_qkv_with_duplicated_kv_heads():
    # tiny: 4 heads, 2 KV heads of 16; at tp 4 each rank holds 1 q head + 1 k + 1 v head: 4 * 48 = 192 rows.
    tiny = preset("tiny")
    qcfg = make_quant_config(tiny, "w8a16", exclude=["lm_head", "*.mlp.*", "*.attention.dense"])
    with pytest.raises(ConfigError, match="attention.qkv has 192 output features, not a multiple of 64 \\* tp 4"):
        check_quant_mapping(qcfg, tiny, 4)


def test_fp8_refuses_excluding_one_half_of_the_fused_mlp():
    tiny = preset("tiny")
    for exclude, left, kept in ((["lm_head", "*.mlp.fc"], "mlp.fc", "mlp.gate"),
                                (["lm_head", "transformer.layers.1.mlp.gate"], "layers.1.mlp.gate", "layers.1.mlp.fc")):
        with pytest.raises(ConfigError, match=f"{left} is excluded but .*{kept} is not; .*use_fused_mlp"):
            make_quant_config(tiny, "fp8", exclude=exclude)
    # W8A16 / AWQ layers are not fused (fuse_gate_mlp skips them): one half may stay unquantized.
    make_quant_config(tiny, "w8a16", exclude=["lm_head", "*.mlp.fc"])


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
