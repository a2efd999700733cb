"""Compute of one torch-executor step: pack the scheduled tokens, run the model, sample.

The step's tokens form one packed row for `Qwen2Model.forward_packed`: one decode token per
decoding sequence first, then the prefill chunks. Their ids, positions, cache slots and slot-table
rows reach the device in one host->device copy, `PagedAttention` is planned once for every layer,
and logits come back only for positions that sample (each decode, each chunk that ends its
prompt). Decode-only steps may go another way: through one torch.compile'd function
(`compile_decode`, fathom.runtime.compiled_decode), replayed from a CUDA graph on CUDA
(fathom.runtime.cuda_graphs; one process only; the graph captures the compiled function when both
are on). Tensor parallel: rank 0 packs the step, hands its `StepPlan` and integers to the other
ranks, and every rank runs the same `run` on its shard.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fathom.build.config import ModelConfig

from .compiled_decode import CompiledDecoder
from .cuda_graphs import CudaGraphDecoder
from .model import Qwen2Model
from .model_weights import fuse_gate_up
from .paged_kv import PagedAttention, PagedKVCache
from .sampling import make_generator, sample
from .scheduler import Chunk, Sequence

if TYPE_CHECKING:
    from .tp_launch import TPWorkers


@dataclass(frozen=True)
class StepPlan:
    """The shape of one packed step: what every rank needs besides the step's integers
    (ids, positions, decode slots, decode rows, sampled positions, then the decodes' context lengths
    when they differ: `ModelRunner.forward`)."""

    num_tokens: int  # N, decodes first
    num_decodes: int  # n
    # (first token, count, slot-table row, start position, first slot when the row's blocks are consecutive, else -1)
    chunks: tuple[tuple[int, int, int, int, int], ...]
    decode_len: int  # longest decode context after this step (0: no decodes)
    ragged: bool  # decode contexts differ in length, so attention needs a mask
    decode_first_slot: int  # a lone decode whose blocks are consecutive: its first slot (read in place); else -1
    num_sampled: int  # positions given to logits_index (0: every token samples, the step is all decodes)
    data_len: int  # integers in the step's data tensor


class ModelRunner:
    """`workers`: the other ranks of a tensor-parallel group (fathom.runtime.tp_launch.TPWorkers),
    handed each step's plan and data before this rank runs its shard. `compile_decode`: decode-only
    steps through `CompiledDecoder`."""

    def __init__(self, model: Qwen2Model, cache: PagedKVCache, max_num_seqs: int, max_seq_len: int,
                 cuda_graphs: bool, workers: TPWorkers | None = None, compile_decode: bool = False):
        self.model, self.cache, self.device = model, cache, model.device
        self.workers = workers
        self.attn = PagedAttention(cache)
        if self.device.type == "cpu":
            column_major_linears(model)
        fuse_gate_up(model)  # after the re-layout, whose layout it keeps
        self.weights = model.weights()
        self.compiled = CompiledDecoder(model, self.weights, cache, self.device) if compile_decode else None
        self.graphs = None
        if self.device.type == "cuda" and cuda_graphs and model.tp.size == 1:
            self.graphs = CudaGraphDecoder(self.run_model, self.attn, max_num_seqs, max_seq_len, self.device,
                                           decode=self.compiled.step if self.compiled is not None else None)

    def forward(self, decodes: list[Sequence], chunks: list[Chunk]) -> torch.Tensor:
        """Logits (K, V) of the step's sampling positions: decodes, then chunks that end their prompt."""
        bs, n = self.cache.block_size, len(decodes)
        ids = [s.tokens[-1] for s in decodes]
        positions = [s.num_computed for s in decodes]
        slots = [s.blocks[p // bs] * bs + p % bs for s, p in zip(decodes, positions)]
        rows = [s.row for s in decodes]
        if not chunks and self.graphs is not None:
            return self.graphs.run(ids, positions, slots, rows)
        if not chunks and self.compiled is not None:
            return self.compiled.run(ids, positions, rows)
        plan, index = [], []
        if chunks:
            index = list(range(n))
            for s, count in chunks:
                start = s.num_computed
                plan.append((len(ids), count, s.row, start, s.blocks[0] * bs if s.consecutive else -1))
                ids.extend(s.tokens[start:start + count])
                positions.extend(range(start, start + count))
                if start + count == len(s.tokens):
                    index.append(len(ids) - 1)
        max_len = max(positions[:n]) + 1 if n else 0
        ragged = n > 1 and min(positions[:n]) + 1 != max_len
        first_slot = decodes[0].blocks[0] * bs if n == 1 and decodes[0].consecutive else -1
        data = ids + positions + slots + rows + index
        if ragged:
            data += [p + 1 for p in positions[:n]]  # context lengths, for the mask
        step = StepPlan(len(ids), n, tuple(plan), max_len, ragged, first_slot, len(index), len(data))
        # One host->device copy for all of this step's integers (an int64 array wrapped without
        # parsing: torch.tensor of a list costs ~3x more).
        return self.run(step, torch.frombuffer(array("q", data), dtype=torch.int64).to(self.device))

    def run(self, step: StepPlan, data: torch.Tensor) -> torch.Tensor | None:
        """Plan attention and run the model on one step (every rank of a tensor-parallel group runs
        this on the same `step` and `data`; rank 0 hands them to the others first)."""
        if self.workers is not None:
            self.workers.send_step(step, self.cache.take_edits(), data)
        N, n = step.num_tokens, step.num_decodes
        ids_t, pos_t, slots_t, rows_t, index_t, lens_t = data.split_with_sizes(
            (N, N, n, n, step.num_sampled, n if step.ragged else 0))
        if step.chunks:
            slots_t = torch.cat([slots_t] + [self.cache.slot_table[row, start:start + count]
                                             for _, count, row, start, _ in step.chunks])
        self.attn.plan_step(slots_t, step.chunks)
        if n:
            self.attn.plan_decode(rows_t, lens_t if step.ragged else None, step.decode_len, step.decode_first_slot)
        index = index_t if step.chunks else None
        if self.workers is None:
            return self.run_model(ids_t, pos_t, index)
        return self.workers.collective(lambda: self.run_model(ids_t, pos_t, index))

    def run_model(self, ids: torch.Tensor, positions: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """(N,) ids/positions -> logits (N, V), or (K, V) at `index`."""
        return self.model.forward_packed(ids, positions, self.attn, index, self.weights)

    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """logits (K, V) -> one token per sequence: batched argmax, per-request generators otherwise."""
        if not seqs:
            return []
        tokens = logits.argmax(dim=-1)
        sampled = [i for i, s in enumerate(seqs) if not s.request.params.greedy]
        if sampled:
            tokens = tokens.clone()
            for i in sampled:
                s = seqs[i]
                if s.generator is None:
                    s.generator = make_generator(s.request.params.seed, self.device)
                tokens[i] = sample(logits[i:i + 1], s.request.params, s.generator)[0]
        return tokens.tolist()


def step_workspace_bytes(cfg: ModelConfig, dtype: torch.dtype, max_num_tokens: int, max_num_seqs: int,
                         max_seq_len: int) -> int:
    """Activation memory of the largest step, kept out of the KV budget on CUDA (an estimate)."""
    item = dtype.itemsize
    per_token = (cfg.q_size + 2 * cfg.kv_size + 2 * cfg.intermediate_size + 4 * cfg.hidden_size) * 4
    decode_gather = max_num_seqs * max_seq_len * cfg.kv_size * 2 * item  # one layer's K and V
    chunk_kv = max_seq_len * cfg.q_size * 2 * item  # a chunk's context, K/V repeated to Hq heads
    logits = max_num_seqs * cfg.vocab_size * 4 * 2
    return max_num_tokens * per_token + decode_gather + chunk_kv + logits


def column_major_linears(model: torch.nn.Module) -> None:
    """Store every nn.Linear weight column-major (same values, strides (1, out)).

    MKL's batch-1 GEMV streams a (out, in) weight ~1.5x faster when `in` is the outer dimension
    (measured on the 2-core AVX2 dev CPU: 11 -> 19 GB/s out of cache), and at batch 1 a CPU decode
    step is little else. Done in place (the Parameter objects stay, tied weights are converted once);
    sums are reordered, so logits move by ~1e-6, the same for every executor sharing the model.
    `fuse_gate_up` runs after it and keeps the layout: the fused (2I, H) weight column-major took
    4.6 / 10.8 / 1,377 us at batch 1 for hidden 64 / 128 / 1024 (row-major 5.3 / 14.4 / 1,571, the two
    column-major halves apart 7.4 / 15.3 / 1,572) and tied with row-major at batch 8 (9.4 / 33.4 /
    5,123 against 9.4 / 33.6 / 5,556; halves apart 12.5 / 35.2 / 5,062), medians of calls alternated.
    Weights already column-major (the fused halves too) are left as they are.
    """
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.weight.is_contiguous() and m.weight.dim() == 2:
            m.weight.data = m.weight.data.t().contiguous().t()
