"""FP8 on CUDA: `Fp8Linear` on `torch._scaled_mm` against float32 matmuls of the same fp8 values,
and an FP8 checkpoint's forward on CUDA against the same checkpoint on the CPU."""

import pytest
import torch

from fathom.build.convert import ConvertOptions, convert
from fathom.build.quant.calibrate import CalibConfig, run_calibration
from fathom.build.quant.config import make_quant_config
from fathom.build.quant.fp8 import amax, dequantize_fp8, quantize_fp8, quantize_linear_fp8
from fathom.build.quant.quantizer import QuantTransform
from fathom.build.sources import resolve_model
from fathom.runtime.loader import load_model
from fathom.runtime.model import CausalAttention
from fathom.runtime.quant_linear import Fp8Linear

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

# e4m3 keeps 3 mantissa bits: rounding to nearest moves a normal value by at most 2^-4 of itself,
# a subnormal one (below 2^-6 * scale) by at most half its fixed step, 2^-10 * scale.
E4M3_HALF_STEP = 2 ** -4
E4M3_SUBNORMAL_HALF_STEP = 2 ** -10
# The GEMM's own error: fp8 x fp8 products are exact in float32; what is left is the order and
# precision of the tensor cores' accumulation (cuBLASLt promotes partial sums to float32), well
# under 1e-3 of the largest output for 128-long dot products.
ACCUMULATION_SLACK = 1e-3
BF16_HALF_STEP = 2 ** -8  # 8 significant bits: round to nearest moves a value by at most 2^-8 of itself


@pytest.fixture(scope="module")
def fp8_gpu():
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        pytest.skip(f"torch._scaled_mm FP8 needs sm89 or newer; this GPU is sm{major}{minor}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_fp8_linear_runs_scaled_mm_within_the_e4m3_bound_of_a_float32_matmul(fp8_gpu, dtype):
    g = torch.Generator().manual_seed(0)
    out_features, in_features, rows = 256, 128, 37  # _scaled_mm wants in/out multiples of 16; rows are free
    weight = torch.randn(out_features, in_features, generator=g) * torch.rand(out_features, 1, generator=g) * 3
    x = torch.randn(rows, in_features, generator=g).to(dtype)
    bias = (0.1 * torch.randn(out_features, generator=g)).to(dtype)
    t = quantize_linear_fp8(weight, amax(weight), input_amax=float(amax(x)))  # x saturates nowhere
    linear = Fp8Linear(t["weight"].cuda(), t["weights_scaling_factor"].cuda(), t["activation_scaling_factor"].cuda(),
                       bias.cuda(), dtype)
    assert linear.path == "scaled_mm", linear.fallback_reason
    with torch.inference_mode():
        y = linear(x.cuda()).cpu()
    assert y.dtype == dtype and y.shape == (rows, out_features)
    y = y.float()

    # References in float32 on the CPU, from the dequantized weight.
    a_scale, xf, b = t["activation_scaling_factor"], x.float(), bias.float()
    w = dequantize_fp8(t["weight"], t["weights_scaling_factor"])
    same_operands = dequantize_fp8(quantize_fp8(xf, a_scale), a_scale) @ w.t() + b  # the fp8 input the kernel reads
    unquantized_input = xf @ w.t() + b
    # bf16 output: the GEMM result and the bias add are each rounded to bf16.
    rounding = 2 * BF16_HALF_STEP * (same_operands.abs() + 2 * b.abs()) if dtype == torch.bfloat16 else 0.0
    slack = ACCUMULATION_SLACK * same_operands.abs().max()
    assert ((y - same_operands).abs() <= rounding + slack).all()
    # Against the unquantized input: each input element moves by at most half an e4m3 step.
    input_rounding = (xf.abs() * E4M3_HALF_STEP + a_scale * E4M3_SUBNORMAL_HALF_STEP) @ w.abs().t()
    assert ((y - unquantized_input).abs() <= input_rounding + rounding + slack).all()


@pytest.fixture(scope="module")
def fp8_checkpoint(fp8_gpu, tmp_path_factory):
    """random:tiny as an FP8 checkpoint (FP8 KV cache too, the default beside FP8 weights). Every
    tiny linear has in/out features that are multiples of 16, so every one can run _scaled_mm."""
    source = resolve_model("random:tiny")
    stats = run_calibration(source, CalibConfig(samples=4, seq_len=32, seed=0, awq_rows=0), device="cpu")
    out = tmp_path_factory.mktemp("fp8-checkpoint") / "tiny-fp8"
    qcfg = make_quant_config(source.config, "fp8")
    convert(source, out, ConvertOptions(dtype="float32"), transform=QuantTransform(qcfg, source.config, stats))
    return out


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    ids = ids.to(model.device)
    positions = torch.arange(ids.shape[1], device=model.device).expand_as(ids)
    with torch.inference_mode():
        return model(ids, positions, CausalAttention(model.kv_quant)).cpu()


# Each device rounds activations to e4m3 itself, so a value that lands within float32 noise of a
# rounding boundary can go either way: one element then differs by a whole e4m3 step. Measured
# on the CPU by perturbing the embedding by 3e-7 (relative): such flips move the logits by up to
# 0.3% of the checkpoint's own FP8 error. 5% of that error is the bound; a wrong scale, operand
# layout or KV-cache format moves them by about the FP8 error or more.
MAX_DEVICE_DIFFERENCE_OF_FP8_ERROR = 0.05


def test_fp8_checkpoint_forward_on_cuda_matches_the_cpu_within_a_fraction_of_its_fp8_error(build_model, fp8_checkpoint):
    source = resolve_model(str(fp8_checkpoint))
    cpu = load_model(source, "float32", "cpu", max_seq_len=256)
    cuda = load_model(source, "float32", "cuda", max_seq_len=256)
    info = cuda.quant_info
    assert set(info["linear_paths"]) == {"fp8:scaled_mm", "unquantized"}, info["fallbacks"]  # lm_head stays unquantized
    assert info["kv_cache_quant_algo"] == "FP8"

    ids = torch.randint(cpu.cfg.vocab_size, (3, 48), generator=torch.Generator().manual_seed(4))
    want, got = logits(cpu, ids), logits(cuda, ids)
    fp8_error = (want - logits(build_model("tiny", "cpu"), ids)).abs().max().item()
    assert fp8_error > 0.01  # the comparison below is against a real quantization error
    assert (got - want).abs().max().item() <= MAX_DEVICE_DIFFERENCE_OF_FP8_ERROR * fp8_error
