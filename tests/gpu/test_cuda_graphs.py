"""Decode steps replayed from CUDA graphs against the same steps run eagerly (fathom.runtime.cuda_graphs)."""

import random

import pytest
import torch

from fathom.build.config import preset
from fathom.runtime.torch_executor import TorchExecutor, executor_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

# Six sequences that stop at different times, so the decode-only steps after the last prefill run
# 5 or 6, then 3 or 4, 2 and 1 sequences (batch buckets 8, 4, 2, 1); the 250-token prompt decodes
# past position 256, so those steps gather 256 and then 512 positions (context buckets 256, 512).
PROMPT_LENGTHS = (250, 40, 9, 70, 3, 21)
NEW_TOKENS = [14, 11, 9, 7, 5, 3]
# A replay pads the batch with null rows and the gather to its bucket, attending over masked
# padding: same math, other GEMM shapes and reduction lengths, ~1e-6 on float32 logits.
GRAPH_TOL = 1e-5


@pytest.mark.parametrize("name", ["tiny", "tiny-gqa5"])
def test_cuda_graph_decode_replays_the_eager_tokens_and_logits(build_model, greedy_run, name):
    model = build_model(name, "cuda")
    rng = random.Random(3)
    prompts = [[rng.randrange(preset(name).vocab_size) for _ in range(n)] for n in PROMPT_LENGTHS]

    def executor(cuda_graphs: bool) -> TorchExecutor:
        return TorchExecutor(model, eos_ids=[], config=executor_config(
            max_num_tokens=64, max_num_seqs=8, block_size=16, num_blocks=64, cuda_graphs=cuda_graphs))

    eager = executor(False)
    assert eager.runner.graphs is None
    want_tokens, want_logits = greedy_run(eager, prompts, NEW_TOKENS)
    graphed = executor(True)
    got_tokens, got_logits = greedy_run(graphed, prompts, NEW_TOKENS)

    captured = set(graphed.runner.graphs.graphs)  # (batch bucket, context bucket) of every replayed step
    assert {b for b, _ in captured} == {1, 2, 4, 8}
    assert {s for _, s in captured} == {256, 512}
    assert got_tokens == want_tokens
    for rid, want in want_logits.items():
        assert got_logits[rid].shape == want.shape
        assert (got_logits[rid] - want).abs().max().item() <= GRAPH_TOL, rid
