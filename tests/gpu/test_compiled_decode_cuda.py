"""Compiled decode steps on CUDA (fathom.runtime.compiled_decode): replayed from CUDA graphs that
capture the compiled function, against the eager executor; model-dtype and fp8 KV caches."""

import random

import pytest
import torch

from fathom.build.config import preset
from fathom.runtime.compiled_decode import compile_unavailable
from fathom.runtime.torch_executor import TorchExecutor, executor_config

CANNOT_COMPILE = compile_unavailable(torch.device("cuda")) if torch.cuda.is_available() else None
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
    pytest.mark.skipif(CANNOT_COMPILE is not None, reason=f"torch.compile cannot build CUDA kernels: {CANNOT_COMPILE}"),
]

# Two sequences that stop together: every decode step is a batch of 2 (one compiled graph per KV
# format, captured at the context buckets 256 and 512: the 250-token prompt decodes past 256).
PROMPT_LENGTHS = (250, 40)
NEW_TOKENS = [12, 12]
# Fused reductions in float32 against SDPA, over the padded context of a graph bucket: ~1e-6.
TOL = {"model": 1e-4, "fp8": 1e-3}


@pytest.mark.parametrize("kv_format", ["model", "fp8"])
def test_compiled_decode_in_cuda_graphs_gives_the_eager_tokens_and_logits(build_model, greedy_run, kv_format):
    model = build_model("tiny", "cuda")
    rng = random.Random(4)
    prompts = [[rng.randrange(preset("tiny").vocab_size) for _ in range(n)] for n in PROMPT_LENGTHS]
    kv = {} if kv_format == "model" else {"kv_format": kv_format, "kv_scales": (0.05,) * model.cfg.num_hidden_layers}

    def executor(compile: bool) -> TorchExecutor:
        return TorchExecutor(model, eos_ids=[], config=executor_config(
            max_num_tokens=512, max_num_seqs=2, block_size=16, num_blocks=64, cuda_graphs=compile, compile=compile,
            **kv))

    want_tokens, want_logits = greedy_run(executor(False), prompts, NEW_TOKENS)
    compiled = executor(True)
    got_tokens, got_logits = greedy_run(compiled, prompts, NEW_TOKENS)

    assert set(compiled.runner.graphs.graphs) == {(2, 256), (2, 512)}  # each replays the compiled step
    assert compiled.runner.compiled.graphs_compiled == 1  # one graph for batch 2, every context bucket
    assert got_tokens == want_tokens
    for rid, want in want_logits.items():
        assert (got_logits[rid] - want).abs().max().item() <= TOL[kv_format], rid
