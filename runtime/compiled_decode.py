"""Decode-only steps of the torch executor as one torch.compile'd function (`TorchExecutorConfig.compile`).

A decode step (one new token for each of n running sequences) is `Qwen2Model.forward_packed` over
the n tokens with `PoolAttention` as its attention backend, compiled whole by inductor: embedding,
RoPE, every layer's norms, linears, attention and MLP, the final norm and lm_head. The model math
is the model's own (`decoder_layer`); only attention is written for the compiler.

Why it looks like this:
- Attention reads the paged pool where it is. `PoolAttention.attend` writes the step's K/V with
  `index_put_` on the whole pool tensor (a write through a per-layer view makes the compiled graph
  copy the pool back every step) and reads a sequence's K/V as `pool[layer][context]`, `context`
  being its (S,) row of the slot table, inside pointwise products and sums (scores, masked softmax,
  weighted sum of V in chunks of CHUNK_TOKENS). Inductor fuses those reads into the loops of one
  kernel per layer, so the context is never copied into a gathered (n, S, 2, Hkv, D) tensor, unlike
  `PagedAttention`'s index_select + SDPA. `TORCH_LOGS=output_code` shows the kernels (no loop runs
  over the pool); the tests check that a step writes its slots in place and allocates nothing of
  the pool's size.
- Scores, softmax and the weighted sum run in float32 whatever the model dtype (the accumulation
  precision of SDPA's fused kernels); fp8/int8 caches are dequantized inside the same loops.
- Shapes: the batch n, the context length S (whole chunks, at least two) and the pool and
  slot-table sizes are dynamic (`maybe_mark_dynamic`), so one graph serves every S and every cache.
  Dynamo specializes a size of 1, so a process compiles two graphs per model and KV format: batch
  1, and every other batch. `decode_logits` is compiled once per process and its graphs are shared
  by every `CompiledDecoder` of a same-shaped model (dynamo's guards tell models apart, and the
  intra-op thread count: it is part of the graph's global state); past RECOMPILE_LIMIT graphs a
  step is a one-line error. `fullgraph=True` turns any graph break in the model code into an error
  instead of a slow step.
- CUDA: `CudaGraphDecoder` captures `CompiledDecoder.step` when CUDA graphs are on too (the
  compiled Triton kernels replayed as one graph per batch and context bucket).
- What it refuses (a one-line ConfigError, before any step): tensor parallelism, quantized linear
  weights, a missing C++ compiler or Python headers (the CPU kernels are C++) or a missing triton
  (CUDA).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import sysconfig
from typing import Callable

import torch

from fathom.build.errors import ConfigError, FathomError
from fathom.build.quant.kv_cache import KVCacheQuant, quantize_kv

from .model import ModelWeights, Qwen2Model
from .paged_kv import PagedKVCache

KERNEL = "inductor_paged_reduction"  # describe()'s name for the decode attention of a compiled step
# Context tokens per partial weighted sum of V (see PoolAttention). The CPU value is measured: on
# the 2-core dev VM one layer's decode attention of random:tiny at 16K context took ~1.2 ms as one
# pass, ~0.75 ms in 16-, 64- or 256-token chunks (64 the best at 256 tokens, batch 8). CUDA: 256, whose partial sums of
# a Fathom-size layer (40 x 128 float32 per chunk) add ~4% to its 16K-context KV read; CUDA-graph
# context buckets (powers of two from 256) are whole chunks.
CHUNK_TOKENS = {"cpu": 64, "cuda": 256}
RECOMPILE_LIMIT = 64  # graphs of `decode_logits` per process (see compiled_decode_logits)


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile (inductor) cannot build kernels for `device` here; None when it can."""
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "inductor's CUDA kernels are Triton kernels and triton is not installed (pip install triton)"
        return None
    import torch._inductor.config as inductor

    compilers = [c for c in inductor.cpp.cxx if c]
    if not any(shutil.which(c) for c in compilers):
        return (f"inductor's CPU kernels are C++ and no C++ compiler was found: {', '.join(compilers)} is not on "
                "the PATH (install g++, or point the CXX environment variable at a compiler)")
    include = sysconfig.get_paths()["include"]
    if not os.path.isfile(os.path.join(include, "Python.h")):
        return (f"inductor's CPU kernels include Python.h and it is not in {include} "
                "(install the Python development headers)")
    return None


def check_compilable(model: Qwen2Model, device: torch.device) -> None:
    """A one-line ConfigError when `model` on `device` cannot run compiled decode steps."""
    from .quant_linear import describe_model_precision

    if model.tp.size > 1:
        raise ConfigError(f"compile: decode steps are compiled in one process; this model is rank {model.tp.rank} "
                          f"of --tp {model.tp.size} (drop --compile or --tp)")
    precision = describe_model_precision(model)["precision"]
    if precision is not None:
        raise ConfigError(f"compile: {precision} weights run in quantized linears, which are not compiled; "
                          "run this checkpoint without --compile")
    reason = compile_unavailable(device)
    if reason is not None:
        raise ConfigError(f"compile: {reason}")


class PoolAttention:
    """Attention backend of a compiled decode step: n sequences, one new token each.

    `kv` is the whole pool (layers, slots, 2, Hkv, D) in its storage dtype, `slots` (n,) where the
    new tokens' K/V go, `context` (n, S) the slots of every position up to S, a whole number of
    `chunk`-token chunks, `mask` (n, S) the positions each sequence sees (its own, up to and
    including the new token). `kv_quant`: the cache's fp8/int8 format and scales (None: the model
    dtype).

    The weighted sum of V runs in two levels, per chunk of context tokens and then over the chunks:
    inductor emits a reduction as one pass over the context per output vector (head x group x
    SIMD width), and per chunk those passes re-read V from the L1 cache instead of memory.
    """

    def __init__(self, kv: torch.Tensor, slots: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
                 kv_quant: KVCacheQuant | None, chunk: int):
        self.kv, self.slots, self.context, self.mask, self.kv_quant = kv, slots, context, mask, kv_quant
        self.chunk = chunk

    def attend(self, layer: int, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """q (n, Hq, D), kv (n, 2, Hkv, D) of the new tokens -> (n, Hq, D)."""
        n, Hq, D = q.shape
        Hkv = kv.shape[-2]
        quant = self.kv_quant
        if quant is not None:
            kv = quantize_kv(kv, quant.scales[layer], quant.format.quant_algo)
        self.kv.index_put_((torch.full_like(self.slots, layer), self.slots), kv)
        past = self.kv[layer][self.context].float()  # (n, S, 2, Hkv, D): read inside the kernels below
        if quant is not None:
            past = past * quant.scales[layer]
        k, v = past[:, :, 0, :, None], past[:, :, 1, :, None]  # (n, S, Hkv, 1, D)
        G, C = Hq // Hkv, self.chunk
        qg = q.float().view(n, 1, Hkv, G, D)  # query head h uses KV head h // G
        scores = (qg * k).sum(-1) * D ** -0.5  # (n, S, Hkv, G)
        scores = scores.masked_fill(~self.mask[:, :, None, None], float("-inf"))
        e = torch.exp(scores - scores.amax(1, keepdim=True))  # softmax, divided once after the sums below
        partial = (e.view(n, -1, C, Hkv, G, 1) * v.view(n, -1, C, Hkv, 1, D)).sum(2)  # (n, S / C, Hkv, G, D)
        out = partial.sum(1) / e.sum(1)[..., None]  # (n, Hkv, G, D)
        return out.view(n, Hq, D).to(q.dtype)


def pool_attention(kv: torch.Tensor, slot_table: torch.Tensor, kv_quant: KVCacheQuant | None,
                   positions: torch.Tensor, rows: torch.Tensor, chunks: torch.Tensor) -> PoolAttention:
    """The attention of n decoding sequences at `positions` (n,) with slot-table `rows` (n,): each
    writes its position's slot and reads the first S positions of its row, `chunks` (S / C, C) giving
    S and the chunk size C (its values are unused). Positions past the slot table's width read its
    last slot (masked, as every position past a sequence's own)."""
    S = chunks.shape[0] * chunks.shape[1]
    span = torch.arange(S, device=positions.device)
    context = slot_table[rows[:, None], span.clamp(max=slot_table.shape[1] - 1)[None, :]]  # (n, S)
    mask = span[None, :] <= positions[:, None]
    return PoolAttention(kv, slot_table[rows, positions], context, mask, kv_quant, chunks.shape[1])


def decode_logits(model: Qwen2Model, weights: ModelWeights, kv: torch.Tensor, slot_table: torch.Tensor,
                  kv_quant: KVCacheQuant | None, ids: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor,
                  chunks: torch.Tensor) -> torch.Tensor:
    """Logits (n, V) of one decode step: ids (n,) at `positions` of slot-table `rows`, attending as
    `pool_attention` plans it."""
    attn = pool_attention(kv, slot_table, kv_quant, positions, rows, chunks)
    return model.forward_packed(ids, positions, attn, None, weights)


class GraphCount:
    """The inductor backend of `decode_logits`, counting the graphs it compiles."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        from torch._inductor.compile_fx import compile_fx

        self.graphs += 1
        return compile_fx(gm, example_inputs)


@functools.cache
def compiled_decode_logits() -> tuple[Callable[..., torch.Tensor], GraphCount]:
    """`decode_logits` compiled, once per process, and its graph counter."""
    count = GraphCount()
    # Each model shape, KV format and intra-op thread count gets graphs of its own (two each); a
    # process that runs several models (a benchmark) passes dynamo's default limit of 8, which
    # fullgraph=True turns into a failure.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(decode_logits, fullgraph=True, backend=count), count


class CompiledDecoder:
    """Decode-only steps of one executor's model and cache through `compiled_decode_logits`.

    `graphs_compiled`: graphs compiled during this decoder's steps (0 when another decoder of a
    same-shaped model compiled them first).
    """

    def __init__(self, model: Qwen2Model, weights: ModelWeights, cache: PagedKVCache, device: torch.device):
        check_compilable(model, device)
        self.model, self.weights, self.cache = model, weights, cache
        self.chunk = CHUNK_TOKENS[device.type]
        width = max(2, -(-cache.slot_table.shape[1] // self.chunk))
        self.chunks = torch.empty((width, self.chunk), dtype=torch.int8, device=device)
        torch._dynamo.maybe_mark_dynamic(cache.kv, 1)  # pool and slot-table sizes: one graph for every cache
        torch._dynamo.maybe_mark_dynamic(cache.slot_table, 0)
        torch._dynamo.maybe_mark_dynamic(cache.slot_table, 1)
        self.fn, self.count = compiled_decode_logits()
        self.graphs_compiled = 0

    @torch.inference_mode()  # the graphs are compiled under it (grad mode, or inputs made outside it, recompile)
    def run(self, ids: list[int], positions: list[int], rows: list[int]) -> torch.Tensor:
        """One decode step for len(ids) sequences -> logits (n, V)."""
        data = torch.tensor([ids, positions, rows], dtype=torch.int64).to(self.chunks.device, non_blocking=True)
        return self.step(data[0], data[1], data[2], max(positions) + 1)

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor, context_len: int) -> torch.Tensor:
        """ids/positions/rows (n,) on the device, attending over the first `context_len` positions
        of each row, rounded up to whole chunks, two at least (dynamo specializes a size of 1), positions
        past a sequence's own masked -> logits (n, V)."""
        chunks = self.chunks[:max(2, -(-context_len // self.chunk))]
        for t in (ids, positions, rows, chunks):
            torch._dynamo.maybe_mark_dynamic(t, 0)
        before = self.count.graphs
        try:
            logits = self.fn(self.model, self.weights, self.cache.kv, self.cache.slot_table, self.cache.kv_quant, ids,
                             positions, rows, chunks)
        except torch._dynamo.exc.FailOnRecompileLimitHit as e:
            limit = torch._dynamo.config.recompile_limit
            raise FathomError(f"compile: this process reached dynamo's recompile limit of {limit} decode graphs (two "
                              "per model shape, KV format and thread count); run further models in another process") from e
        except torch._dynamo.exc.BackendCompilerFailed as e:
            cause = str(e.inner_exception).strip().splitlines() or [type(e.inner_exception).__name__]
            raise FathomError(f"compile: inductor could not compile the decode step ({cause[0]}); "
                              "run without --compile") from e
        self.graphs_compiled += self.count.graphs - before
        return logits
