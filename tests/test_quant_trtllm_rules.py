"""Quantized layouts TensorRT-LLM cannot build are refused at convert time: weight-only widths it
would pad (quantization/layers.py) and FP8 exclusions that split the fused gated MLP
(models/modeling_utils.py `fuse_gate_mlp`)."""

import pytest

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
