"""Shared set-up of the CUDA suite (tests/gpu): models with one set of weights on either device,
greedy runs that keep the logits behind every token, IEEE float32 matmuls.

Every module here is marked `gpu` and skipped without CUDA, so the CPU run reports them as skipped;
`pytest -m gpu tests/gpu` runs them alone (profiles/gpu_check.sh does, before its measurement).
"""

import pytest
import torch

from fathom.build.config import preset
from fathom.build.sources import resolve_model
from fathom.runtime.executor import Request, collect
from fathom.runtime.loader import native_tensors_from_hf
from fathom.runtime.model import Qwen2Model
from fathom.runtime.sampling import SamplingParams
from logits_recorder import record_logits

MAX_SEQ_LEN = 512  # room for a context past the first CUDA-graph context bucket (256)


@pytest.fixture(autouse=True)
def ieee_float32_matmuls():
    """float32 comparisons need float32 GEMMs: TF32 (10-bit mantissa) would move logits by ~1e-3."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    matmul.fp32_precision = "ieee"
    yield
    matmul.fp32_precision = saved


@pytest.fixture(scope="session")
def build_model():
    """(preset, device, dtype) -> a fresh Qwen2Model holding the weights of random:<preset>.

    The weights are generated once, on the CPU: RandomWeights drawn on a CUDA generator are other
    numbers, so `load_model(random:..., device="cuda")` would not be the same model.
    """
    tensors: dict[str, dict[str, torch.Tensor]] = {}

    def build(name: str, device: str, dtype: torch.dtype = torch.float32) -> Qwen2Model:
        if name not in tensors:
            tensors[name] = native_tensors_from_hf(resolve_model(f"random:{name}"), device="cpu")
        return Qwen2Model.from_tensors(preset(name), tensors[name], dtype, device, MAX_SEQ_LEN)

    return build


@pytest.fixture(scope="session")
def greedy_run():
    """(executor, prompts, max_new_tokens per prompt) -> (token ids, logits) per request id "0", "1", ...

    logits[rid] is (tokens, V) float32 on the CPU: the logits each token was taken from (argmax).
    """

    def run(executor, prompts: list[list[int]], max_new_tokens: list[int]):
        seen = record_logits(executor)
        requests = [Request(str(i), p, SamplingParams(max_new_tokens=n, ignore_eos=True))
                    for i, (p, n) in enumerate(zip(prompts, max_new_tokens))]
        tokens = {rid: [e.token_id for e in events] for rid, events in collect(executor, requests).items()}
        return tokens, {rid: torch.stack(rows) for rid, rows in seen.items()}

    return run
