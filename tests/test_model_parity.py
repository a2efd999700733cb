"""fathom's Qwen2 against transformers' Qwen2ForCausalLM on the same weights."""

import pytest
import torch

from fathom.build.sources import resolve_model
from fathom.runtime.executor import Request, stream
from fathom.runtime.loader import load_model
from fathom.runtime.reference import ReferenceExecutor, StaticKVCache
from fathom.runtime.sampling import SamplingParams

# kv-head ratios 1 (tiny-mha), 2 (tiny), 5 (tiny-gqa5), 6 with an odd hidden size (tiny-odd);
# tied embeddings in tiny-mha and tiny-odd.
PRESETS = ["tiny", "tiny-mha", "tiny-gqa5", "tiny-odd"]


def hf_model(path, dtype=torch.float32):
    from transformers import Qwen2ForCausalLM

    return Qwen2ForCausalLM.from_pretrained(str(path), dtype=dtype).eval()


def full_logits(model, ids):
    B, T = ids.shape
    cache = StaticKVCache(model, [0] * B, T)
    cache.begin(T)
    with torch.inference_mode():
        return model(ids, cache.positions(T), cache)


@pytest.mark.parametrize("name", PRESETS)
def test_logits_match_transformers_float32(hf_dirs, name):
    path = hf_dirs(name)
    ours = load_model(resolve_model(str(path)), "float32", "cpu", max_seq_len=256)
    ids = torch.randint(0, ours.cfg.vocab_size, (3, 17), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = hf_model(path)(ids).logits
    assert (full_logits(ours, ids) - ref).abs().max().item() <= 1e-4


def test_logits_match_transformers_bfloat16(hf_dirs):
    path = hf_dirs("tiny-gqa5")
    ours = load_model(resolve_model(str(path)), "bfloat16", "cpu", max_seq_len=256)
    ids = torch.randint(0, ours.cfg.vocab_size, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = hf_model(path, torch.bfloat16)(ids).logits.float()
    got = full_logits(ours, ids)
    # bf16 has 8 mantissa bits: compare relative to the logit scale.
    assert (got - ref).abs().max().item() <= 2e-2 * ref.abs().max().item()


def test_bad_rope_theta_changes_logits(hf_dirs):
    """The parity test can fail: a wrong RoPE base (TRT-LLM's 10000 default trap) is detected."""
    import dataclasses

    path = hf_dirs("tiny")
    src = resolve_model(str(path))
    src.config = dataclasses.replace(src.config, rope_theta=10000.0)
    ours = load_model(src, "float32", "cpu", max_seq_len=256)
    ids = torch.arange(20)[None] % ours.cfg.vocab_size
    with torch.inference_mode():
        ref = hf_model(path)(ids).logits
    assert (full_logits(ours, ids) - ref).abs().max().item() > 1e-3


@pytest.mark.parametrize("name", ["tiny", "tiny-odd"])
def test_greedy_batch_matches_hf_generate(hf_dirs, name):
    path = hf_dirs(name)
    ours = load_model(resolve_model(str(path)), "float32", "cpu", max_seq_len=256)
    hf = hf_model(path)
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [3, 4], [1, 2, 3, 4, 5]]
    got: dict[str, list[int]] = {}
    requests = [Request(str(i), p, SamplingParams(max_new_tokens=16)) for i, p in enumerate(prompts)]
    for ev in stream(ReferenceExecutor(ours, eos_ids=[]), requests):
        got.setdefault(ev.request_id, []).append(ev.token_id)
    for i, p in enumerate(prompts):
        with torch.inference_mode():
            out = hf.generate(torch.tensor([p]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert got[str(i)] == out[0, len(p):].tolist()


def test_prefill_then_decode_equals_full_forward(hf_dirs):
    ours = load_model(resolve_model(str(hf_dirs("tiny"))), "float32", "cpu", max_seq_len=256)
    ids = torch.randint(0, ours.cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(2))
    full = full_logits(ours, ids)
    cache = StaticKVCache(ours, [0], 12)
    steps = []
    with torch.inference_mode():
        for t in range(12):
            cache.begin(1)
            steps.append(ours(ids[:, t:t + 1], cache.positions(1), cache))
            cache.advance(1)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_is_bit_identical_to_transformers(dtype):
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    from fathom.runtime.model import rms_norm

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 120, generator=gen).to(dtype)
    hf = Qwen2RMSNorm(120, eps=1e-6).to(dtype)
    with torch.no_grad():
        hf.weight.copy_(torch.randn(120, generator=gen))
        want = hf(x)
    got = rms_norm(x, hf.weight.detach(), torch.tensor(1e-6), torch.tensor(120.0))
    assert got.dtype == want.dtype and torch.equal(got, want)
