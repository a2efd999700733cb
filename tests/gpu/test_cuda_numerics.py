"""The CUDA model against the CPU float32 model, and bf16 against float32 on CUDA.

Same weights on both sides (tests/gpu/conftest.py `build_model`). The CUDA paths under test: `sdpa`
with K/V repeated for GQA (CUDA's fused kernels want equal head counts), causal and masked;
`PagedAttention` decode with and without a ragged-length mask and chunked prefill over a cached
prefix; the reference executor's static cache.
"""

import random

import pytest
import torch

from fathom.build.config import preset
from fathom.runtime.model import CausalAttention
from fathom.runtime.reference import ReferenceExecutor
from fathom.runtime.torch_executor import TorchExecutor, executor_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

# float32 on both devices: the sums run in other orders (MKL vs cuBLAS, CPU vs CUDA attention
# kernels), ~1e-6 on logits of magnitude ~1; a wrong mask, head mapping or position is >= 1e-2.
FLOAT32_TOL = 1e-4
PRESETS = ["tiny", "tiny-gqa5"]  # query heads per KV head: 2 and 5


def random_ids(vocab_size: int, lengths, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(n)] for n in lengths]


def forward_logits(model, ids: list[list[int]]) -> torch.Tensor:
    """Logits (B, T, V) at every position of equal-length rows, no cache, on the CPU."""
    device = model.device
    x = torch.tensor(ids, device=device)
    positions = torch.arange(x.shape[1], device=device).expand_as(x)
    with torch.inference_mode():
        return model(x, positions, CausalAttention(model.kv_quant)).cpu()


@pytest.mark.parametrize("name", PRESETS)
def test_cuda_float32_forward_matches_cpu_at_every_position(build_model, name):
    cpu, cuda = build_model(name, "cpu"), build_model(name, "cuda")
    ids = random_ids(cpu.cfg.vocab_size, (48, 48, 48))
    want, got = forward_logits(cpu, ids), forward_logits(cuda, ids)
    assert (got - want).abs().max().item() < FLOAT32_TOL


def executor(kind: str, model):
    if kind == "static":
        return ReferenceExecutor(model, eos_ids=[])
    # Chunks of 16 tokens: the 23- and 40-token prompts attend to a cached prefix (masked sdpa);
    # prompts of different lengths make decode steps ragged (masked decode attention).
    return TorchExecutor(model, eos_ids=[], config=executor_config(
        max_num_tokens=16, max_num_seqs=4, block_size=8, num_blocks=64, cuda_graphs=False))


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("kind", ["paged", "static"])
def test_cuda_executor_greedy_tokens_and_logits_match_cpu_float32(build_model, greedy_run, name, kind):
    prompts = random_ids(preset(name).vocab_size, (5, 23, 40, 1), seed=1)
    new_tokens = [6] * len(prompts)
    want_tokens, want_logits = greedy_run(executor(kind, build_model(name, "cpu")), prompts, new_tokens)
    got_tokens, got_logits = greedy_run(executor(kind, build_model(name, "cuda")), prompts, new_tokens)
    assert got_tokens == want_tokens
    for rid, want in want_logits.items():  # prefill's last position, then each decode step
        assert got_logits[rid].shape == want.shape
        assert (got_logits[rid] - want).abs().max().item() < FLOAT32_TOL, rid


# bf16 keeps 8 significant bits, so each rounding moves a value by up to 2^-8 (0.4%) of itself:
# the embedding, every norm, projection and attention output, the residual adds and finally the
# logits themselves (lm_head runs in bf16). These add up like a random walk over the layers: on
# these presets and prompts the largest logit error is 1.0-1.3% of the largest |logit| with the
# CPU's bf16 kernels. 4% leaves room for CUDA's kernels (flash attention's bf16 probabilities); a
# dtype bug (float32 bits read as bf16, RoPE tables in the wrong dtype) is an error of order 100%.
BF16_MAX_ERROR_OF_MAX_LOGIT = 0.04
# Rounding flips the argmax only where the top two float32 logits are closer than the error:
# 98-99% agreement over these 192 positions on the CPU.
BF16_MIN_TOP1_AGREEMENT = 0.9


@pytest.mark.parametrize("name", PRESETS)
def test_bf16_logits_on_cuda_stay_within_bf16_error_of_float32(build_model, name):
    f32, bf16 = build_model(name, "cuda", torch.float32), build_model(name, "cuda", torch.bfloat16)
    ids = random_ids(f32.cfg.vocab_size, (64, 64, 64), seed=2)
    want, got = forward_logits(f32, ids), forward_logits(bf16, ids)
    assert got.dtype == torch.float32 and got.shape == want.shape
    error = (got - want).abs().max().item()
    assert error <= BF16_MAX_ERROR_OF_MAX_LOGIT * want.abs().max().item()
    agreement = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    assert agreement >= BF16_MIN_TOP1_AGREEMENT
