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
  weighted sum of V). Inductor fuses those reads into the loops of one kernel per layer, so the
  context is never copied into a gathered (n, S, 2, Hkv, D) tensor, unlike `PagedAttention`'s
  index_select + SDPA. `TORCH_LOGS=output_code` shows the kernels; the tests check that a step
  writes the pool in place and costs the same on a larger pool.
- Scores, softmax and the weighted sum run in float32 whatever the model dtype (the accumulation
  precision of SDPA's fused kernels); fp8/int8 caches are dequantized inside the same loops.
- Shapes: the batch n and the context length S are dynamic (`maybe_mark_dynamic`), so one graph
  serves every S. Dynamo specializes a size of 1, so a process compiles at most two graphs per
  model: batch 1, and every other batch. `decode_logits` is compiled once per process and its
  graphs are shared by every `CompiledDecoder` of a same-shaped model (dynamo's guards tell models
  apart); `fullgraph=True` turns any graph break in the model code into an error instead of a slow
  step.
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
        return f"inductor's CPU kernels include Python.h and it is not in {include} (install the Python development headers)"
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
    new tokens' K/V go, `context` (n, S) the slots of every position up to S, `mask` (n, S) the
    positions each sequence sees (its own, up to and including the new token). `kv_quant`: the
    cache's fp8/int8 format and scales (None: the model dtype).
    """

    def __init__(self, kv: torch.Tensor, slots: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
                 kv_quant: KVCacheQuant | None):
        self.kv, self.slots, self.context, self.mask, self.kv_quant = kv, slots, context, mask, kv_quant

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
        qg = q.float().view(n, 1, Hkv, Hq // Hkv, D)  # query head h uses KV head h // G
        scores = (qg * k).sum(-1) * D ** -0.5  # (n, S, Hkv, G)
        p = torch.softmax(scores.masked_fill(~self.mask[:, :, None, None], float("-inf")), dim=1)
        out = (p[..., None] * v).sum(1)  # (n, Hkv, G, D)
        return out.view(n, Hq, D).to(q.dtype)


def decode_logits(model: Qwen2Model, weights: ModelWeights, kv: torch.Tensor, slot_table: torch.Tensor,
                  kv_quant: KVCacheQuant | None, ids: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor,
                  span: torch.Tensor) -> torch.Tensor:
    """Logits (n, V) of one decode step: ids/positions/rows (n,) (token, its position, its slot-table
    row); the context is the first S = len(span) positions of each row (span's values are unused)."""
    context = slot_table[rows, :span.shape[0]]  # (n, S)
    slots = slot_table[rows, positions]
    mask = torch.arange(span.shape[0], device=positions.device)[None, :] <= positions[:, None]
    attn = PoolAttention(kv, slots, context, mask, kv_quant)
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
    return torch.compile(decode_logits, fullgraph=True, backend=count), count


class CompiledDecoder:
    """Decode-only steps of one executor's model and cache through `compiled_decode_logits`.

    `graphs_compiled`: graphs compiled during this decoder's steps (0 when another decoder of a
    same-shaped model compiled them first).
    """

    def __init__(self, model: Qwen2Model, weights: ModelWeights, cache: PagedKVCache, device: torch.device):
        check_compilable(model, device)
        self.model, self.weights, self.cache = model, weights, cache
        self.span = torch.empty(cache.slot_table.shape[1], dtype=torch.int8, device=device)
        self.fn, self.count = compiled_decode_logits()
        self.graphs_compiled = 0

    @torch.inference_mode()  # the graphs are compiled under it (grad mode, or inputs made outside it, recompile)
    def run(self, ids: list[int], positions: list[int], rows: list[int]) -> torch.Tensor:
        """One decode step for len(ids) sequences -> logits (n, V)."""
        data = torch.tensor([ids, positions, rows], dtype=torch.int64).to(self.span.device, non_blocking=True)
        return self.step(data[0], data[1], data[2], max(positions) + 1)

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor, context_len: int) -> torch.Tensor:
        """ids/positions/rows (n,) on the device, attending over the first `context_len` positions
        of each row (positions past a sequence's own are masked) -> logits (n, V)."""
        span = self.span[:context_len]
        for t in (ids, positions, rows, span):
            torch._dynamo.maybe_mark_dynamic(t, 0)
        kv, slot_table = self.cache.kv, self.cache.slot_table
        torch._dynamo.maybe_mark_dynamic(kv, 1)  # pool and slot-table sizes: one graph for every cache
        torch._dynamo.maybe_mark_dynamic(slot_table, 0)
        torch._dynamo.maybe_mark_dynamic(slot_table, 1)
        before = self.count.graphs
        try:
            logits = self.fn(self.model, self.weights, kv, slot_table, self.cache.kv_quant, ids, positions, rows, span)
        except torch._dynamo.exc.BackendCompilerFailed as e:
            cause = str(e.inner_exception).strip().splitlines() or [type(e.inner_exception).__name__]
            raise FathomError(f"compile: inductor could not compile the decode step ({cause[0]}); "
                              "run without --compile") from e
        self.graphs_compiled += self.count.graphs - before
        return logits
