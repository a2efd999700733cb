import pytest

from fathom.build.config import preset
from fathom.build.errors import PlanError
from fathom.build.precision import WeightFormat
from fathom.engine.fit_options import options_that_fit, require_fit
from fathom.engine.gpus import GIB, get_gpu
from fathom.engine.plan_text import render_plan
from fathom.engine.planner import (
    ACTIVATION_SHARE, BANDWIDTH_EFFICIENCY, ENGINE_PRECISIONS, KV_CACHE_FRACTION, Deployment, activation_bytes, plan,
    stages, weight_bytes_total,
)

FATHOM = preset("fathom-r1-14b")
H, L, V = 5120, 48, 152064
LAYER_LINEAR = 5120 * 7168 + 5120 * 5120 + 3 * 5120 * 13824  # qkv, dense, fc, gate, proj elements
EMBEDDING_BYTES = 2 * V * H


BF16, FP8, W8A16, W4A16_AWQ = WeightFormat.BF16, WeightFormat.FP8, WeightFormat.W8A16, WeightFormat.W4A16_AWQ


def fathom_plan(gpu, precision="bf16", kv=None, **kw):
    kv = kv or ("fp8" if precision == "fp8" else "model")
    return plan(FATHOM, get_gpu(gpu), Deployment(precision=precision, kv_cache=kv, **kw), model_name="fathom")


def test_weight_bytes_reproduce_the_model_card():
    assert FATHOM.num_params() == 14_770_033_664
    assert weight_bytes_total(FATHOM, BF16) == 2 * FATHOM.num_params()
    assert round(weight_bytes_total(FATHOM, BF16) / 1e9, 1) == 29.5
    assert round(weight_bytes_total(FATHOM, FP8) / 1e9, 1) == 16.3  # lm_head and embeddings stay bf16
    # fp8: one byte per linear weight, two float32 scales per linear, everything else bf16
    non_linear = FATHOM.num_params() - L * LAYER_LINEAR
    assert weight_bytes_total(FATHOM, FP8) == L * LAYER_LINEAR + L * 5 * 8 + 2 * non_linear


def test_quantized_weight_bytes_include_their_scales():
    non_linear_bytes = 2 * (FATHOM.num_params() - L * LAYER_LINEAR)
    outs = [7168, 5120, 13824, 13824, 5120]
    ins = [5120, 5120, 5120, 5120, 13824]
    w8 = L * (LAYER_LINEAR + 2 * sum(outs))
    assert weight_bytes_total(FATHOM, W8A16) == w8 + non_linear_bytes
    awq = L * sum(o * i // 2 + 2 * (i // 128) * o + 2 * i for o, i in zip(outs, ins))
    assert weight_bytes_total(FATHOM, W4A16_AWQ) == awq + non_linear_bytes


def test_kv_bytes_per_token_and_per_16k_sequence():
    bf16 = fathom_plan("h100", "bf16")
    assert bf16.kv_bytes_per_token_model == 192 * 1024
    assert bf16.kv_bytes_per_sequence_rank == 3 * GIB
    assert fathom_plan("h100", "fp8").kv_bytes_per_token_model == 96 * 1024
    assert fathom_plan("a100", "bf16", kv="int8").kv_bytes_per_token_model == 96 * 1024


@pytest.mark.parametrize("gpu,precision,anchor", [
    ("h100", "bf16", 113), ("h100", "fp8", 205), ("h200", "bf16", 163), ("h200", "fp8", 294),
    ("a100", "bf16", 69), ("l40s", "bf16", 29), ("l40s", "fp8", 53), ("l4", "fp8", 18),
])
def test_bandwidth_over_all_weight_bytes_matches_reference_anchors(gpu, precision, anchor):
    # The anchors (docs/REFERENCE.md, GPU datasheets) divide bandwidth by all weight bytes; the planner's
    # decode ceiling excludes the embedding table (a gather reads one row), so it sits above them by that share.
    g = get_gpu(gpu)
    assert g.bandwidth_bytes_s / weight_bytes_total(FATHOM, WeightFormat(precision)) == pytest.approx(anchor, abs=1)


def test_decode_batch1_ceiling_is_bandwidth_over_streamed_weight_bytes():
    for precision in ("bf16", "fp8"):
        p = fathom_plan("h100", precision)
        streamed = weight_bytes_total(FATHOM, WeightFormat(precision)) - EMBEDDING_BYTES
        assert p.decode_batch1.ceiling == pytest.approx(3.35e12 / streamed, rel=1e-9)
        assert p.decode_batch1.expected == pytest.approx(BANDWIDTH_EFFICIENCY * p.decode_batch1.ceiling, rel=1e-9)
    p = fathom_plan("h100", "bf16")
    assert p.decode_batch1_full_context.ceiling == pytest.approx(
        3.35e12 / (weight_bytes_total(FATHOM, BF16) - EMBEDDING_BYTES + 3 * GIB), rel=1e-9)


def test_prefill_ceiling_is_compute_bound_flops_over_peak():
    p = fathom_plan("h100", "bf16")
    n = 16384
    flops = 2 * (L * LAYER_LINEAR + V * H) * n + 4 * L * H * n * (n + 1) / 2
    assert p.ttft_ms.ceiling == pytest.approx(flops / 989.5e12 * 1000, rel=1e-9)
    assert p.prefill.ceiling == pytest.approx(n / (flops / 989.5e12), rel=1e-9)
    assert fathom_plan("h100", "fp8").ttft_ms.ceiling == pytest.approx(p.ttft_ms.ceiling / 2, rel=0.01)


def test_concurrent_sequences_fill_the_kv_budget():
    for gpu in ("h100", "h200", "l40s", "a100-40gb"):
        p = fathom_plan(gpu)
        free = p.gpu.memory_bytes - p.weights_per_rank_bytes - p.activation_bytes - p.runtime_overhead_bytes
        assert p.kv_budget_bytes == int(KV_CACHE_FRACTION * free)
        assert p.concurrent_sequences == p.kv_budget_bytes // (3 * GIB)
    assert fathom_plan("h100", "bf16").concurrent_sequences == 14
    assert fathom_plan("h100", "fp8").concurrent_sequences == 37
    assert fathom_plan("l40s", "bf16").concurrent_sequences == 5


def test_max_num_tokens_is_the_largest_power_of_two_within_the_activation_share():
    assert fathom_plan("h100").deployment.max_num_tokens == 16384
    l4 = fathom_plan("l4", "fp8")
    assert l4.deployment.max_num_tokens == 8192
    assert activation_bytes(FATHOM, Deployment(), 16384, 0, False) > get_gpu("l4").memory_bytes * ACTIVATION_SHARE
    assert any("chunks" in n for n in l4.notes)
    assert fathom_plan("h100", max_num_tokens=4096).deployment.max_num_tokens == 4096


def test_tensor_parallel_splits_linears_and_kv_but_replicates_the_embedding():
    one = stages(FATHOM, Deployment(tp=1))[0]
    two = stages(FATHOM, Deployment(tp=2))[0]
    assert two.kv_bytes_per_token == one.kv_bytes_per_token // 2
    assert two.embedding_bytes == one.embedding_bytes
    lm_head = 2 * V * H
    assert two.weights_bytes - EMBEDDING_BYTES == pytest.approx((one.weights_bytes - EMBEDDING_BYTES) / 2, rel=1e-4)
    assert two.weights_bytes > (one.weights_bytes + lm_head) / 2


def test_kv_heads_are_duplicated_when_tp_exceeds_them():
    cfg = preset("tiny-odd")  # one KV head
    assert stages(cfg, Deployment(tp=2))[0].kv_bytes_per_token == stages(cfg, Deployment(tp=1))[0].kv_bytes_per_token


def test_pipeline_stages_split_layers_like_tensor_split():
    assert [s.layers for s in stages(FATHOM, Deployment(pp=2))] == [24, 24]
    assert [s.layers for s in stages(preset("tiny-gqa5"), Deployment(pp=2))] == [2, 1]  # 3 layers
    s = stages(FATHOM, Deployment(pp=2))
    assert s[0].embedding_bytes and not s[1].embedding_bytes
    assert s[0].kv_bytes_per_token == s[1].kv_bytes_per_token == 96 * 1024


def test_refusal_lists_the_nearest_options_that_fit():
    p = fathom_plan("l4", "bf16")
    assert not p.fits and p.decode_batch1 is None
    with pytest.raises(PlanError) as e:
        require_fit(p, FATHOM)
    msg = str(e.value)
    assert "does not fit NVIDIA L4" in msg and "exceed 24 GiB" in msg
    assert "--precision fp8 --kv-cache fp8 (4 x" in msg and "--tp 2 (4 x" in msg
    assert "--seq-len" not in msg  # weights alone do not fit: a shorter context cannot help
    assert "\n" not in msg


def test_shorter_context_is_offered_when_only_the_kv_cache_is_too_big():
    p = fathom_plan("l40s", "bf16", seq_len=131072)
    assert not p.fits
    flags = [f for f, _ in options_that_fit(FATHOM, p.gpu, p.deployment)]
    assert "--seq-len 65536" in flags and "--tp 2" in flags
    assert "--seq-len 32768" not in flags  # only the nearest of each kind


def test_a100_is_offered_weight_only_instead_of_fp8():
    p = fathom_plan("a100-40gb", "bf16", seq_len=65536)
    flags = [f for f, _ in options_that_fit(FATHOM, p.gpu, p.deployment)]
    assert not any("fp8" in f for f in flags)
    assert {"--precision w8a16", "--precision w4a16_awq"} <= set(flags)
    # An INT8 KV cache builds without paged context FMHA: no chunked context, so one step holds a
    # whole 65,536-token prompt and its activations leave no room for the KV cache.
    assert "--kv-cache int8" not in flags
    int8 = fathom_plan("a100-40gb", "bf16", kv="int8", seq_len=65536)
    assert int8.deployment.max_num_tokens == 65536 and not int8.fits


def test_without_chunked_context_one_step_holds_a_whole_prompt():
    for precision, kv in (("bf16", "int8"), ("w4a16_awq", "int8"), ("bf16", "fp8"), ("fp8", "int8")):
        p = fathom_plan("l4", precision, kv=kv)
        assert p.deployment.max_num_tokens == 16384 and "no chunked context" in p.notes[0], (precision, kv)
    chunked = fathom_plan("l4", "fp8", kv="model")
    assert chunked.deployment.max_num_tokens < 16384 and "chunked context" in chunked.notes[-1]
    assert fathom_plan("l4", "fp8", kv="int8").activation_bytes > chunked.activation_bytes


def test_gpus_from_sm100_refuse_integer_quantization():
    from dataclasses import replace

    sm100 = replace(get_gpu("h200"), key="sm100-test", name="sm100 test GPU", compute_capability="10.0")
    for precision, kv in (("w8a16", "model"), ("w4a16_awq", "model"), ("bf16", "int8"), ("fp8", "int8")):
        with pytest.raises(PlanError, match=r"sm100: TensorRT-LLM 1.2.1 builds no INT8/INT4 quantization"):
            plan(FATHOM, sm100, Deployment(precision=precision, kv_cache=kv))
    assert plan(FATHOM, sm100, Deployment(precision="fp8", kv_cache="fp8")).fits
    sm120 = replace(sm100, compute_capability="12.0")  # upstream's rule stops below sm120
    assert plan(FATHOM, sm120, Deployment(precision="w4a16_awq")).fits


def test_impossible_deployments_are_refused():
    with pytest.raises(PlanError, match="sm80"):
        fathom_plan("a100", "fp8")
    with pytest.raises(PlanError, match="sm80"):
        fathom_plan("a100", "bf16", kv="fp8")
    with pytest.raises(PlanError, match=r"num_attention_heads \(40\) is not divisible by tp \(3\)"):
        fathom_plan("h100", tp=3)
    with pytest.raises(PlanError, match=r"more pipeline stages \(49\) than layers \(48\)"):
        fathom_plan("h100", pp=49)
    with pytest.raises(PlanError, match="--precision 'int4'"):
        Deployment(precision="int4")
    with pytest.raises(PlanError, match="--kv-cache 'bf16': expected one of model, fp8, int8"):
        Deployment(kv_cache="bf16")


def test_the_mapping_is_checked_as_the_converter_checks_it():
    odd = preset("tiny-odd")  # 6 heads, 1 KV head, intermediate_size 100
    with pytest.raises(PlanError, match=r"intermediate_size \(100\) is not divisible by tp \(6\)"):
        plan(odd, get_gpu("h100"), Deployment(tp=6))
    assert plan(odd, get_gpu("h100"), Deployment(tp=2)).fits


def test_fp32_is_not_an_engine_precision():
    assert [str(w) for w in ENGINE_PRECISIONS] == ["bf16", "fp16", "fp8", "w8a16", "w4a16_awq"]
    with pytest.raises(PlanError) as e:
        Deployment(precision=WeightFormat.FP32)
    assert "not an engine precision" in str(e.value) and "fp32 tensor-core rate" in str(e.value)
    assert "\n" not in str(e.value)


def test_fp16_is_sized_like_bf16():
    bf16, fp16 = fathom_plan("h100", "bf16"), fathom_plan("h100", "fp16")
    assert fp16.deployment.model_dtype == "float16"
    assert (fp16.weights_total_bytes, fp16.kv_bytes_per_token_model, fp16.concurrent_sequences) == (
        bf16.weights_total_bytes, bf16.kv_bytes_per_token_model, bf16.concurrent_sequences)
    assert fp16.decode_batch1 == bf16.decode_batch1 and fp16.ttft_ms == bf16.ttft_ms


def test_batch_override_beyond_capacity_is_kept_with_a_note():
    p = fathom_plan("l40s", "bf16", max_batch_size=64)
    assert p.deployment.max_batch_size == 64 and p.concurrent_sequences == 5
    assert any("exceeds the 5 sequences" in n for n in p.notes)
    assert p.decode_batch == 5  # the decode figure counts only the sequences that fit
    assert p.decode_max_batch.ceiling == fathom_plan("l40s", "bf16", max_batch_size=5).decode_max_batch.ceiling


def test_expected_figures_sit_below_their_ceilings():
    p = fathom_plan("h200", "fp8")
    for e in (p.decode_batch1, p.decode_batch1_full_context, p.decode_max_batch, p.prefill):
        assert 0 < e.expected < e.ceiling
    assert p.ttft_ms.expected > p.ttft_ms.ceiling
    assert p.decode_max_batch.ceiling > 10 * p.decode_batch1.ceiling


def test_rendered_plan_and_json_carry_the_numbers():
    p = fathom_plan("h100", "fp8")
    text = "\n".join(render_plan(p))
    assert "concurrent 16,384-token sequences: 37" in text and "226.8" in text
    d = p.to_dict()
    assert d["fits"] and d["concurrent_sequences"] == 37
    assert d["memory_per_gpu"]["kv_bytes_per_token_model"] == 96 * 1024
    assert d["roofline"]["decode_batch1_tok_s"]["ceiling"] == pytest.approx(p.decode_batch1.ceiling)
