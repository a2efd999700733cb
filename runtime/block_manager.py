"""Block bookkeeping of the torch executor: which KV blocks and slot-table row each sequence holds.

A sequence gets a slot-table row when it is admitted and a block each time it grows past a block
boundary; both go back when it finishes or is preempted. With prefix reuse, a full block is
registered under its prefix key (fathom.runtime.paged_kv.block_key) once its K/V are computed, and
an admitted sequence first takes the cached blocks of its longest registered prefix. The pools,
the slot table and the allocator itself are fathom.runtime.paged_kv.PagedKVCache's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .paged_kv import PagedKVCache, block_key

if TYPE_CHECKING:
    from .scheduler import Sequence


class BlockManager:
    def __init__(self, cache: PagedKVCache, max_seqs: int, prefix_reuse: bool):
        self.cache = cache
        self.allocator = cache.allocator
        self.block_size = cache.block_size
        self.prefix_reuse = prefix_reuse
        self.free_rows = list(range(max_seqs - 1, -1, -1))

    def num_free_blocks(self) -> int:
        return self.allocator.num_free()

    def used_tokens(self, running: list[Sequence]) -> int:
        """Tokens whose K/V are held for `running`; a shared prefix block counts once."""
        slack = sum(len(s.blocks) * self.block_size - s.num_computed for s in running)
        return self.allocator.num_used() * self.block_size - slack

    def lookup_prefix(self, s: Sequence) -> list[int]:
        """Cached blocks for the longest run of full blocks of tokens[:-1] (one token must be fed),
        each with a reference taken; their keys go to `s.keys`. Empty without prefix reuse."""
        if not self.prefix_reuse:
            return []
        bs, hits, parent = self.block_size, [], b""
        for i in range((len(s.tokens) - 1) // bs):
            parent = block_key(parent, s.tokens[i * bs:(i + 1) * bs])
            block = self.allocator.lookup(parent)
            if block is None:
                break
            hits.append(block)
            s.keys.append(parent)
        return hits

    def return_prefix(self, s: Sequence, hits: list[int]) -> None:
        """Give back the blocks `lookup_prefix` found for a sequence that is not admitted after all."""
        for block in hits:
            self.allocator.release(block)
        s.keys = []

    def admit(self, s: Sequence, hits: list[int]) -> None:
        """A row for `s`, its prefix blocks `hits` in place and counted as computed."""
        s.row = self.free_rows.pop()
        for block in hits:
            self._append(s, block)
        s.num_computed = len(hits) * self.block_size

    def grow(self, s: Sequence) -> bool:
        """One more block at the end of `s`; False when the pool is dry."""
        block = self.allocator.allocate()
        if block is None:
            return False
        self._append(s, block)
        return True

    def release(self, s: Sequence) -> None:
        """Its blocks back to the allocator (cached ones stay findable), its row cleared and freed."""
        for block in s.blocks:
            self.allocator.release(block)
        self.cache.clear_row(s.row, len(s.blocks))
        self.free_rows.append(s.row)
        s.blocks, s.row, s.consecutive = [], -1, True

    def register_full_blocks(self, s: Sequence) -> None:
        """Offer every full block of computed tokens not yet registered for prefix reuse."""
        bs = self.block_size
        for i in range(len(s.keys), s.num_computed // bs):
            parent = s.keys[-1] if s.keys else b""
            key = block_key(parent, s.tokens[i * bs:(i + 1) * bs])
            self.allocator.register(s.blocks[i], key)
            s.keys.append(key)

    def _append(self, s: Sequence, block: int) -> None:
        self.cache.set_block(s.row, len(s.blocks), block)
        if s.blocks and block != s.blocks[-1] + 1:
            s.consecutive = False
        s.blocks.append(block)
