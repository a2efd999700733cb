"""Quantization maths and config: round trips within each format's bound, layouts, the config block."""

import pytest
import torch

from fathom.build.config import preset
from fathom.build.errors import ConfigError
from fathom.build.quant.awq import (dequantize_groupwise_int4, pack_int4, quantize_groupwise_int4,
                                    quantize_linear_awq, search_awq_scale, unpack_int4)
from fathom.build.precision import QuantAlgo
from fathom.build.quant.config import QuantConfig, make_quant_config
from fathom.build.quant.fp8 import E4M3_MAX, dequantize_fp8, quantize_linear_fp8
from fathom.build.quant.int8 import dequantize_per_channel_int8, quantize_per_channel_int8
from fathom.build.quant.kv_cache import dequantize_kv, kv_cache_scale, quantize_kv


def _weight(out_f=48, in_f=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_f, in_f, generator=g) * torch.rand(out_f, 1, generator=g) * 3


def test_fp8_round_trip_within_e4m3_precision():
    w = _weight()
    t = quantize_linear_fp8(w, w.abs().max(), input_amax=5.0)
    assert t["weight"].dtype == torch.float8_e4m3fn and t["weight"].shape == w.shape
    for name in ("weights_scaling_factor", "activation_scaling_factor"):
        assert t[name].dtype == torch.float32 and t[name].shape == (1,)
    scale = t["weights_scaling_factor"]
    assert torch.allclose(scale, w.abs().max() / E4M3_MAX)
    assert torch.allclose(t["activation_scaling_factor"], torch.tensor([5.0 / E4M3_MAX]))
    err = (dequantize_fp8(t["weight"], scale) - w).abs()
    # 3 mantissa bits: half a step is 2^-4 of the value; subnormals have a fixed step of 2^-9 * scale.
    bound = torch.maximum(w.abs() * 2 ** -4, scale * 2 ** -10) * 1.0001
    assert (err <= bound).all()
    assert float(dequantize_fp8(t["weight"], scale).abs().max()) == pytest.approx(float(w.abs().max()), rel=1e-6)


def test_fp8_shared_amax_saturates_nothing_and_keeps_the_larger_scale():
    w = _weight()
    t = quantize_linear_fp8(w, w.abs().max() * 2, input_amax=1.0)  # scale shared with a larger partner
    assert float(t["weight"].float().abs().max()) <= E4M3_MAX / 2 * 1.07


def test_int8_per_channel_round_trip_like_trtllm():
    w = _weight()
    q, scale = quantize_per_channel_int8(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (1, w.shape[0])
    assert torch.allclose(scale[0], w.abs().amax(dim=1) / 128)  # TRT-LLM: amax / 2^(bits-1)
    err = (dequantize_per_channel_int8(q, scale) - w).abs()
    scale = scale[0]
    clamped = q == 127  # the row max maps to 128 and is clamped: error up to one step
    assert (err <= scale[:, None] / 2 * 1.0001).logical_or(clamped).all()
    assert (err <= scale[:, None] * 1.0001).all()


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
def test_int4_groupwise_round_trip_within_half_a_step(scale_dtype):
    w = _weight(in_f=128)
    q, scales = quantize_groupwise_int4(w, 32, scale_dtype)
    assert q.dtype == torch.int8 and int(q.min()) >= -8 and int(q.max()) <= 7
    assert scales.shape == (48, 4) and scales.dtype == scale_dtype
    err = (dequantize_groupwise_int4(q, scales, 32) - w).abs()
    step = scales.float().repeat_interleave(32, dim=1)
    assert (err <= step / 2 * 1.01).all()


def test_int4_packing_matches_hand_computed_bytes():
    # out = 4 rows, in = 2 columns. Byte [j, k] = q[2j, k] (low nibble) | q[2j+1, k] << 4.
    q = torch.tensor([[1, -2], [-8, 7], [3, 0], [-1, 5]], dtype=torch.int8)
    packed = pack_int4(q)
    expected = torch.tensor([[0x81, 0x7E], [0xF3, 0x50]], dtype=torch.uint8).view(torch.int8)
    assert packed.dtype == torch.int8 and packed.shape == (2, 2)
    assert torch.equal(packed, expected)
    assert torch.equal(unpack_int4(packed), q)


def test_int4_packing_equals_modelopt_formula_and_trtllm_preprocess_input():
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-8, 8, (6, 10), generator=g, dtype=torch.int8)
    # modelopt export: int8_tensor.T.reshape(in, out // 2, 2) -> lo | hi << 4 -> .T
    t = q.T.reshape(10, 3, 2)
    modelopt = ((t[..., 0] & 0x0F) | (t[..., 1] << 4)).T
    assert torch.equal(pack_int4(q), modelopt.to(torch.int8))
    # TRT-LLM transposes at load to (in, out/2): byte [k, j] holds output columns 2j (low) and 2j+1 (high).
    loaded = pack_int4(q).T.view(torch.uint8)
    assert torch.equal((loaded & 0x0F).to(torch.int8), (q[0::2].T & 0x0F).to(torch.int8))


def test_awq_search_never_worse_than_rtn_and_helps_with_outlier_channels():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, 128, generator=g)
    x = torch.randn(256, 128, generator=g)
    x[:, :4] *= 30  # a few input channels carry large activations (the case AWQ is for)
    act_mean = x.abs().mean(dim=0)
    pre_quant, q, scales, found = search_awq_scale(w, act_mean, x, 32, torch.float32)
    assert found.loss <= found.loss_rtn
    assert found.loss < 0.8 * found.loss_rtn and found.alpha > 0
    tensors, _ = quantize_linear_awq(w, act_mean, x, 32, torch.bfloat16)
    assert tensors["weight"].shape == (32, 128) and tensors["weight"].dtype == torch.int8
    scales = tensors["weights_scaling_factor"]
    assert scales.shape == (64, 4) and scales.dtype == torch.bfloat16
    assert tensors["prequant_scaling_factor"].shape == (128,)
    w_hat = dequantize_groupwise_int4(unpack_int4(tensors["weight"]), tensors["weights_scaling_factor"], 32)
    y = (x * tensors["prequant_scaling_factor"].float()) @ w_hat.T
    ref = x @ w.T
    assert float((y - ref).pow(2).mean()) < 0.05 * float(ref.pow(2).mean())


def test_kv_cache_scales_and_round_trip():
    fp8 = kv_cache_scale(100.0, 2000.0, QuantAlgo.FP8)
    assert fp8.dtype == torch.float32 and fp8.shape == (1,) and float(fp8) == pytest.approx(2000 / 448)
    assert float(kv_cache_scale(3.0, 4.0, QuantAlgo.FP8)) == 1.0  # modelopt: never below 1
    int8 = kv_cache_scale(3.0, 4.0, QuantAlgo.INT8)
    assert float(int8) == pytest.approx(4.0 / 127)
    x = (torch.randn(2, 2, 5, 8) * 2).clamp(-4, 4)  # within the calibrated amax
    stored = quantize_kv(x, int8, QuantAlgo.INT8)
    assert stored.dtype == torch.int8
    assert (dequantize_kv(stored, int8, torch.float32) - x).abs().max() <= float(int8) / 2 * 1.0001
    assert quantize_kv(x, fp8, QuantAlgo.FP8).dtype == torch.float8_e4m3fn


def test_config_block_has_exactly_trtllm_fields_and_round_trips():
    qcfg = make_quant_config(preset("tiny"), "fp8")
    d = qcfg.to_trtllm_dict()
    assert d == {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8", "group_size": 128, "has_zero_point": False,
                 "pre_quant_scale": False, "exclude_modules": ["lm_head", "transformer.vocab_embedding"]}
    back = QuantConfig.from_trtllm_dict(d)
    assert back.quant_algo is QuantAlgo.FP8 and back.to_trtllm_dict() == d
    awq = make_quant_config(preset("tiny"), "w4a16_awq", kv_cache="int8", group_size=32).to_trtllm_dict()
    assert awq["quant_algo"] == "W4A16_AWQ" and awq["pre_quant_scale"] is True and awq["kv_cache_quant_algo"] == "INT8"
    assert make_quant_config(preset("tiny"), None, kv_cache=None).to_trtllm_dict()["quant_algo"] is None


def test_exclude_list_replaces_defaults_and_is_honored():
    cfg = preset("tiny")
    qcfg = make_quant_config(cfg, "fp8", exclude=["*.mlp.proj"])
    assert not qcfg.quantizes("transformer.layers.1.mlp.proj")
    assert qcfg.quantizes("transformer.layers.1.mlp.fc") and qcfg.quantizes("lm_head")
    assert "transformer.vocab_embedding" in qcfg.exclude_modules
    w8 = make_quant_config(cfg, "w8a16", exclude=["lm_head", "transformer.layers.0.mlp.proj"])
    # TRT-LLM's load-time W8A16 quantizer matches tensor names: both forms are listed.
    assert "transformer.layers.0.mlp.proj.*" in w8.exclude_modules


@pytest.mark.parametrize("kwargs, message", [
    (dict(precision="fp8", exclude=["nonexistent"]), "matches no module"),
    (dict(precision="w8a16", exclude=["*.mlp.proj"]), "keeps lm_head unquantized"),
    (dict(precision="w4a16_awq"), "not a multiple of the group size 128"),
    (dict(precision="int3"), "--precision 'int3'"),
    (dict(precision="fp8", kv_cache="fp4"), "--kv-cache 'fp4'"),
])
def test_bad_quant_options_give_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as e:
        make_quant_config(preset("tiny"), **kwargs)
    assert "\n" not in str(e.value)


def test_unknown_algo_in_checkpoint_config_is_rejected():
    with pytest.raises(ConfigError, match="'quant_algo' = 'NVFP4'"):
        QuantConfig.from_trtllm_dict({"quant_algo": "NVFP4"}, source="ckpt/config.json")
