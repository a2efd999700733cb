"""Scheduling for the torch executor: admission, the work of each step, preemption.

Requests wait in FIFO order and are admitted while a slot-table row and the blocks for their
prompt are free. Each step does one decode token for every running sequence whose prompt is
cached, then prefill chunks of the sequences still reading their prompt, up to `max_num_tokens`
in all. When the pool runs dry the youngest sequence is preempted: its blocks go back and it is
recomputed later from prompt + generated tokens (its sampler state is kept).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from .block_manager import BlockManager
from .executor import Request


@dataclass(eq=False)
class Sequence:
    request: Request
    tokens: list[int]  # prompt + generated; KV exists for tokens[:num_computed]
    generator: torch.Generator | None
    order: int  # admission order: the youngest is preempted first
    row: int = -1
    blocks: list[int] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)  # prefix keys of its full, registered blocks
    consecutive: bool = True  # blocks[i] == blocks[0] + i: its K/V can be read in place from the pool
    num_computed: int = 0
    generated: int = 0

    @property
    def id(self) -> str:
        return self.request.request_id


Chunk = tuple[Sequence, int]  # a sequence and how many prompt tokens it reads this step


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_tokens: int):
        self.blocks = blocks
        self.max_num_tokens = max_num_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._order = 0
        self.stats = {"preemptions": 0, "prefix_hit_tokens": 0}

    def add(self, s: Sequence) -> None:
        self.waiting.append(s)

    def has_pending(self) -> bool:
        return bool(self.waiting) or bool(self.running)

    def admit(self) -> None:
        """Move waiting sequences to running, in order, while rows and blocks for their prompt last."""
        bs = self.blocks.block_size
        while self.waiting and self.blocks.free_rows:
            s = self.waiting[0]
            hits = self.blocks.lookup_prefix(s)
            if -(-len(s.tokens) // bs) - len(hits) > self.blocks.num_free_blocks():
                self.blocks.return_prefix(s, hits)
                return  # FIFO: it waits for blocks, and so does everyone behind it
            self.waiting.popleft()
            s.order = self._order
            self._order += 1
            self.blocks.admit(s, hits)
            self.stats["prefix_hit_tokens"] += s.num_computed
            self.running.append(s)

    def schedule(self) -> tuple[list[Sequence], list[Chunk]]:
        """This step's work: decodes (one token each), then prefill chunks within the token budget."""
        decodes: list[Sequence] = []
        chunks: list[Chunk] = []
        prefills = []
        bs = self.blocks.block_size
        for s in list(self.running):
            if s.num_computed < len(s.tokens) - 1:
                prefills.append(s)
            elif len(s.blocks) * bs > s.num_computed:  # room for its token: the common case
                decodes.append(s)
            elif s.row >= 0 and self.reserve(s, s.num_computed + 1, decodes, chunks):
                decodes.append(s)
        budget = self.max_num_tokens - len(decodes)
        for s in prefills:
            if budget <= 0:
                break
            n = min(len(s.tokens) - s.num_computed, budget)
            if s.row >= 0 and self.reserve(s, s.num_computed + n, decodes, chunks):
                chunks.append((s, n))
                budget -= n
        return decodes, chunks

    def reserve(self, s: Sequence, upto: int, decodes: list[Sequence], chunks: list[Chunk]) -> bool:
        """Blocks for positions < upto, preempting the youngest sequences (and dropping their work
        from `decodes`/`chunks`) while the pool is dry; False when `s` itself was preempted."""
        while len(s.blocks) * self.blocks.block_size < upto:
            if not self.blocks.grow(s):
                victim = max(self.running, key=lambda r: r.order)
                self._preempt(victim, decodes, chunks)
                if victim is s:
                    return False
        return True

    def computed(self, decodes: list[Sequence], chunks: list[Chunk]) -> list[Sequence]:
        """Count this step's tokens as computed; returns the sequences that sample a token (every
        decode, and each chunk that ends its prompt), in the order of the step's logits."""
        samplers = decodes + [s for s, n in chunks if s.num_computed + n == len(s.tokens)]
        for s in decodes:
            s.num_computed += 1
        for s, n in chunks:
            s.num_computed += n
        return samplers

    def register_computed_blocks(self) -> None:
        if self.blocks.prefix_reuse:
            for s in self.running:
                self.blocks.register_full_blocks(s)

    def finish(self, s: Sequence) -> None:
        if self.blocks.prefix_reuse:
            self.blocks.register_full_blocks(s)
        self._release(s)

    def remove(self, s: Sequence) -> None:
        """Drop `s` wherever it is (a cancelled request)."""
        if s.row >= 0:
            self._release(s)
        else:
            self.waiting.remove(s)

    def _release(self, s: Sequence) -> None:
        self.running.remove(s)
        self.blocks.release(s)

    def _preempt(self, s: Sequence, decodes: list[Sequence], chunks: list[Chunk]) -> None:
        if s in decodes:
            decodes.remove(s)
        chunks[:] = [(c, n) for c, n in chunks if c is not s]
        self._release(s)
        self.stats["preemptions"] += 1
        s.num_computed, s.keys = 0, []
        self.waiting.appendleft(s)
