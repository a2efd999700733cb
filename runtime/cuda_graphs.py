"""Decode-only steps of the torch executor replayed from CUDA graphs (never built for a CPU model)."""

from __future__ import annotations

from typing import Callable

import torch

from .paged_kv import PagedAttention

# (ids (n,), positions (n,), logits index or None) -> logits (n, V)
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
# (ids (n,), positions (n,), slot-table rows (n,), context length) -> logits (n, V): CompiledDecoder.step
Decode = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


class CudaGraphDecoder:
    """Decode-only steps replayed from CUDA graphs, one per (batch bucket, context bucket).

    A graph replays fixed shapes at fixed addresses, so the step's integers are copied into static
    buffers, the batch is padded up to a bucket with rows that read and write only the null block
    (they use the spare all-null slot-table row), and the gather length is rounded up to a power of
    two (>= 256): one graph then serves many steps, attending over masked padding. Graphs share one
    memory pool and are captured on first use. With `decode` (fathom.runtime.compiled_decode) a graph
    captures that compiled step instead of `forward` over `attn`.
    """

    BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

    def __init__(self, forward: Forward, attn: PagedAttention, max_seqs: int, max_seq_len: int, device: torch.device,
                 decode: Decode | None = None):
        self.forward, self.attn, self.max_seq_len, self.decode = forward, attn, max_seq_len, decode
        self.null_row = max_seqs  # PagedKVCache has max_seqs + 1 rows; the last stays null
        self.max_batch = next(b for b in self.BATCH_BUCKETS if b >= max_seqs)
        self.host = torch.zeros((5, self.max_batch), dtype=torch.int64)
        if device.type == "cuda":
            self.host = self.host.pin_memory()
        self.static = torch.zeros((5, self.max_batch), dtype=torch.int64, device=device)
        self.ids, self.positions, self.slots, self.rows, self.lens = self.static.unbind(0)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None

    def run(self, ids: list[int], positions: list[int], slots: list[int], rows: list[int]) -> torch.Tensor:
        """One decode step for len(ids) sequences -> logits (n, V)."""
        n = len(ids)
        b = next(x for x in self.BATCH_BUCKETS if x >= n)
        longest = max(positions) + 1
        S = min(max(256, 1 << (longest - 1).bit_length()), self.max_seq_len)
        pad = b - n
        values = [ids + [0] * pad, positions + [0] * pad, slots + [0] * pad, rows + [self.null_row] * pad,
                  [p + 1 for p in positions] + [1] * pad]
        self.host[:, :b] = torch.tensor(values, dtype=torch.int64)
        self.static[:, :b].copy_(self.host[:, :b], non_blocking=True)
        if (b, S) not in self.graphs:
            self.graphs[(b, S)] = self._capture(b, S)
        graph, logits = self.graphs[(b, S)]
        graph.replay()
        return logits[:n]

    def _step(self, b: int, S: int) -> torch.Tensor:
        if self.decode is not None:
            return self.decode(self.ids[:b], self.positions[:b], self.rows[:b], S)
        self.attn.plan_step(self.slots[:b], [])
        self.attn.plan_decode(self.rows[:b], self.lens[:b], S)
        return self.forward(self.ids[:b], self.positions[:b], None)

    def _capture(self, b: int, S: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        saved = self.static.clone()
        # Warm-up and capture run on null rows: they must not write into any real sequence's KV.
        self.static.zero_()
        self.rows.fill_(self.null_row)
        self.lens.fill_(1)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step(b, S)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self._step(b, S)
        self.pool = graph.pool()
        self.static.copy_(saved)
        return graph, logits
