"""Paged KV cache: fixed-size blocks, a slot table per running sequence, optional prefix reuse.

Why it is laid out this way:
- Storage: per layer one pool of shape (num_slots, 2, Hkv, D), K and V of a token side by side,
  num_slots = num_blocks x block_size, so a step writes and gathers a layer's K and V with one op
  each. Token p of a sequence lives at slot `block_table[p // block_size] * block_size +
  p % block_size`. Sequences grow one block at a time, so no sequence reserves 16K tokens up front
  and memory is shared by whoever is running (vLLM's PagedAttention layout, token-major).
- Block 0 is the null block: zero at start, never handed out. Slot tables point padding there and
  padded batch rows write there, so everything a gather reads is finite: attention masks padding
  with -inf, but 0 x NaN in `p @ V` would still poison a row. For the same reason every other
  block is zeroed when first handed out (the pools are allocated empty, so untouched CPU memory
  is never committed); a reused block holds its previous owner's finite values.
- Slot table: a (max_seqs, max_seq_len rounded up to whole blocks) int64 tensor, one row per running sequence, holding the
  slot of every position. It is updated when a block is appended (once per block_size tokens), so
  a decode step finds every sequence's KV with one `index_select` and no per-step Python loop.
- Reading K/V (`PagedAttention`): a decode step gathers its sequences' slots with one
  `index_select` into a contiguous (n, S, 2, Hkv, D) (on the CPU into one reused buffer) and runs one
  SDPA whose "query length" is the G query heads of a KV head. A lone decode, or a prefill chunk,
  whose blocks are consecutive in the pool (the usual case for one sequence: the free list hands
  blocks out in order) reads a view of the pool instead. One layer of one decode step on the dev CPU
  (2-core AMD EPYC VM, AVX2, torch 2.13, float32, 1 thread; profiles/attention_cpu.py, the minimum
  over rounds, each started while the shared machine was otherwise idle), in us:

      model (Hkv, G, D)           batch  context  in place  gather into  gather into  head-major gather
                                                            the buffer   a new tensor   + baddbmm/bmm
      tiny (2, 2, 16)               1       160        27         29           26             25
      tiny                          8       160         -         79           73             77
      tiny                          1     2,048        75         99           92            111
      tiny                          8     2,048         -        645          656            882
      fathom-r1-14b (8, 5, 128)     1     2,048     3,757      4,969        5,312          7,029
      fathom-r1-14b                 8     2,048         -     41,467      127,594        141,667
      fathom-r1-14b                 1    16,384    31,403     45,205      135,243        132,709

  Small contexts are dominated by per-call overhead, so the ways tie there; from 2K on, reading in
  place saves a quarter to a third. The gather's cost at 16K with Fathom-R1's shape (134 MB of K/V
  per layer): +14 ms per layer over reading in place (+44%), and a new tensor per layer triples it
  again (a fresh allocation that large is mmap'ed and page-faulted on every call). A single SDPA
  over the whole batch with a block-diagonal mask, the other batched layout tried, was slower
  still at batch 8 (compute grows with the batch squared). On CUDA a gather adds a read and a
  write of the context to attention's own read. Decode steps that read every sequence's blocks
  where they are, batched, on the CPU and CUDA alike: `--compile` (fathom.runtime.compiled_decode,
  inductor's fused kernels index the pool through the slot table).
- Storage format (fathom.build.precision.KvCacheFormat): the model dtype, or fp8 / int8 with one
  scale per layer shared by K and V (TRT-LLM's `kv_cache_scaling_factor`), quantized and
  dequantized by fathom.build.quant.kv_cache.KVCacheQuant (stored = value / scale, read back as
  stored x scale). Scales are required for fp8 and int8 (a default of 1.0 silently clips or wastes
  the int8 range); fathom.build.quant.calibrate.calibrate_kv_scales measures them with the
  quantizer's own rule (`kv_cache_scale`).
- Capacity: CUDA gets `gpu_memory_fraction` of the memory free after the weights are loaded, minus
  a workspace estimate for one step; the CPU gets a fixed `cpu_budget_bytes`. Either is capped at
  what max_seqs sequences of max_seq_len tokens can ever use.
- Tensor parallelism: every rank holds a cache of its own KV heads with the same blocks and slot
  table. Only rank 0 allocates; with `edits` set to a list, `set_block` and `clear_row` also
  record themselves there, and the other ranks replay them (`replay`) before each step.
- Prefix reuse: a full block is keyed by blake2b(parent key, its token ids), so equal keys mean
  equal whole prefixes. Blocks are ref-counted; one whose count drops to zero stays cached and is
  evicted least-recently-released first, only when no never-used block is left.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fathom.build.config import ModelConfig
from fathom.build.errors import ConfigError
from fathom.build.precision import KvCacheFormat, dtype_word
from fathom.build.quant.kv_cache import KVCacheQuant

from .model import causal_attention, sdpa

NULL_BLOCK = 0


@dataclass(frozen=True)
class KVCacheConfig:
    block_size: int = 16
    kv_format: KvCacheFormat | None = None  # None: the model's own (a quantized checkpoint's, else the model dtype)
    kv_scales: tuple[float, ...] | None = None  # one dequantization scale per layer (fp8, int8)
    gpu_memory_fraction: float = 0.9
    cpu_budget_bytes: int = 512 * 2**20
    num_blocks: int | None = None  # explicit pool size (tests); None = sized from memory
    prefix_reuse: bool = False

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ConfigError(f"block_size = {self.block_size}, expected >= 1")
        if self.kv_format is not None:
            object.__setattr__(self, "kv_format", KvCacheFormat.parse(self.kv_format, "kv_format"))
        if self.kv_format is not None and self.kv_format.quantized and self.kv_scales is None:
            raise ConfigError(f"kv_format {self.kv_format.value}: kv_scales (one kv_cache_scaling_factor per layer) "
                              "are required; measure them with fathom.build.quant.calibrate.calibrate_kv_scales")
        if self.kv_scales is not None and any(not s > 0 for s in self.kv_scales):
            raise ConfigError(f"kv_scales = {list(self.kv_scales)}, expected positive numbers")
        if not 0 < self.gpu_memory_fraction <= 1:
            raise ConfigError(f"gpu_memory_fraction = {self.gpu_memory_fraction}, expected a number in (0, 1]")
        if self.num_blocks is not None and self.num_blocks < 2:
            raise ConfigError(f"num_blocks = {self.num_blocks}, expected >= 2 (block 0 is the null block)")

    def kv_quant(self, own: KVCacheQuant | None, device: torch.device) -> KVCacheQuant | None:
        """The format K/V are stored in: the one asked for, else `own` (the model's `kv_quant`);
        None for the model dtype."""
        if self.kv_format is None:
            return own
        if not self.kv_format.quantized:
            return None
        return KVCacheQuant(self.kv_format, torch.tensor(self.kv_scales, dtype=torch.float32, device=device))


def plan_num_blocks(cfg: ModelConfig, kv: KVCacheConfig, device: torch.device, bytes_per_token: int,
                    workspace_bytes: int, max_tokens: int) -> int:
    """How many blocks the pools get (null block included); see "Capacity" in the module docstring."""
    if kv.num_blocks is not None:
        return kv.num_blocks
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        budget = int(free_bytes * kv.gpu_memory_fraction) - workspace_bytes
    else:
        budget = kv.cpu_budget_bytes
    wanted = -(-max_tokens // kv.block_size) + 1
    blocks = min(budget // (bytes_per_token * kv.block_size), wanted)
    if blocks < 2:
        raise ConfigError(f"KV cache: {budget} bytes left for it hold no {kv.block_size}-token block of "
                          f"{bytes_per_token} bytes/token (lower max_seq_len/max_num_tokens or free memory)")
    return int(blocks)


def block_key(parent: bytes, tokens: list[int]) -> bytes:
    """Key of a full block: its parent's key and its token ids (equal keys = equal whole prefixes)."""
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(b",".join(str(t).encode() for t in tokens))
    return h.digest()


class BlockAllocator:
    """Free list + reference counts + the prefix table (key -> block) with LRU eviction."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.free: deque[int] = deque(range(1, num_blocks))  # never-used or evicted blocks
        self.refs = [0] * num_blocks
        self.key_of: list[bytes | None] = [None] * num_blocks
        self.table: dict[bytes, int] = {}
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached blocks with no reference

    @property
    def usable_blocks(self) -> int:
        return self.num_blocks - 1

    def num_free(self) -> int:
        return len(self.free) + len(self.evictable)

    def num_used(self) -> int:
        return self.usable_blocks - self.num_free()

    def allocate(self) -> int | None:
        if self.free:
            block = self.free.popleft()
        elif self.evictable:
            block, _ = self.evictable.popitem(last=False)
            del self.table[self.key_of[block]]
            self.key_of[block] = None
        else:
            return None
        self.refs[block] = 1
        return block

    def release(self, block: int) -> None:
        self.refs[block] -= 1
        assert self.refs[block] >= 0, f"block {block} released twice"
        if self.refs[block] == 0:
            if self.key_of[block] is None:
                self.free.append(block)
            else:
                self.evictable[block] = None

    def lookup(self, key: bytes) -> int | None:
        """The cached block holding this prefix, with a reference taken; None on a miss."""
        block = self.table.get(key)
        if block is None:
            return None
        if self.refs[block] == 0:
            del self.evictable[block]
        self.refs[block] += 1
        return block

    def register(self, block: int, key: bytes) -> None:
        """Offer a just-filled block for reuse (first writer wins; a duplicate stays private)."""
        if key not in self.table and self.key_of[block] is None:
            self.table[key] = block
            self.key_of[block] = key


class PagedKVCache:
    """The pools, the slot table and the storage format. Layout: see the module docstring.

    `kv_quant`: store K/V in that format with its per-layer scales; None: in the model dtype `dtype`.
    """

    def __init__(self, cfg: ModelConfig, block_size: int, num_blocks: int, dtype: torch.dtype, device: torch.device,
                 max_seqs: int, max_seq_len: int, kv_quant: KVCacheQuant | None = None):
        if kv_quant is not None:
            kv_quant.check_layers(cfg.num_hidden_layers)
        self.cfg = cfg
        self.block_size = block_size
        self.dtype = dtype  # compute dtype: what reads return
        self.kv_quant = kv_quant
        self.kv_format = kv_quant.format if kv_quant is not None else KvCacheFormat.MODEL
        self.storage = self.kv_format.torch_dtype(dtype_word(dtype))
        slots = num_blocks * block_size
        shape = (cfg.num_hidden_layers, slots, 2, cfg.num_key_value_heads, cfg.head_dim)
        self.kv = torch.empty(shape, dtype=self.storage, device=device)
        self.kv[:, :block_size].zero_()  # the null block
        self._zeroed = bytearray(num_blocks)
        self._zeroed[NULL_BLOCK] = 1
        # fp8 moves through uint8 views: index_copy_/index_select have no float8 kernels on CPU.
        self.raw = torch.uint8 if self.storage == torch.float8_e4m3fn else self.storage
        self.layers = self.kv.view(self.raw).unbind(0)  # per-layer views, made once
        width = -(-max_seq_len // block_size) * block_size  # whole blocks
        self.slot_table = torch.zeros((max_seqs, width), dtype=torch.int64, device=device)
        self.allocator = BlockAllocator(num_blocks)
        self.bytes_per_token = cfg.kv_bytes_per_token(self.storage.itemsize)
        self.edits: list[tuple[int, int, int]] | None = None  # (row, index, block); index -1: clear `block` blocks

    @property
    def capacity_tokens(self) -> int:
        return self.allocator.usable_blocks * self.block_size

    def set_block(self, row: int, index: int, block: int) -> None:
        """Point positions [index*bs, (index+1)*bs) of slot-table row `row` at `block`."""
        bs = self.block_size
        start = block * bs
        if not self._zeroed[block]:
            self.kv[:, start:start + bs].zero_()
            self._zeroed[block] = 1
        self.slot_table[row, index * bs:(index + 1) * bs] = torch.arange(start, start + bs, device=self.slot_table.device)
        if self.edits is not None:
            self.edits.append((row, index, block))

    def clear_row(self, row: int, num_blocks: int) -> None:
        self.slot_table[row, :num_blocks * self.block_size] = NULL_BLOCK
        if self.edits is not None:
            self.edits.append((row, -1, num_blocks))

    def take_edits(self) -> list[tuple[int, int, int]]:
        """The recorded slot-table edits since the last call, oldest first."""
        edits, self.edits = self.edits, []
        return edits

    def replay(self, edits: list[tuple[int, int, int]]) -> None:
        """Apply another rank's recorded edits (`take_edits`) to this cache."""
        for row, index, block in edits:
            if index < 0:
                self.clear_row(row, block)
            else:
                self.set_block(row, index, block)

    # ---- storage ----------------------------------------------------------------------
    def write(self, layer: int, slots: torch.Tensor, kv: torch.Tensor) -> None:
        """slots (N,), kv (N, 2, Hkv, D) in the compute dtype."""
        if self.kv_quant is not None:
            kv = self.kv_quant.quantize(layer, kv).view(self.raw)
        self.layers[layer].index_copy_(0, slots, kv)

    def read(self, layer: int, slots: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """slots (M,) -> kv (M, 2, Hkv, D) in the compute dtype; the gather lands in `out` when given
        ((M, 2, Hkv, D) of the storage's raw dtype, `raw`)."""
        kv = torch.index_select(self.layers[layer], 0, slots, out=out)
        return self._stored(layer, kv)

    def read_range(self, layer: int, start: int, length: int) -> torch.Tensor:
        """Slots [start, start + length) -> kv (length, 2, Hkv, D) in the compute dtype: a view of the
        pool when it stores the compute dtype."""
        return self._stored(layer, self.layers[layer][start:start + length])

    def _stored(self, layer: int, kv: torch.Tensor) -> torch.Tensor:
        if self.kv_quant is not None:
            kv = self.kv_quant.dequantize(layer, kv.view(self.storage), self.dtype)
        return kv


class PagedAttention:
    """Attention backend for one packed step: N tokens from many sequences in one row.

    Tokens [0, n_decode) are one decode token per sequence, attended together: one gather, one
    SDPA whose "query length" is the G query heads sharing a KV head (no K/V repeat), masked with an
    additive float mask built once per step when the contexts differ in length. A lone decode whose
    blocks are consecutive in the pool reads its K/V in place instead (a view, no gather, no mask).
    Each prefill chunk after them attends to its sequence's cached prefix plus itself (causal; with
    no prefix, the causal attention of a pass without a cache), in place too when its blocks are
    consecutive. `plan_step` and `plan_decode` run once per step; every layer reuses the plan. On the
    CPU gathers land in one buffer reused by every layer and step, as large as one layer's largest
    gather so far (a fresh multi-MB tensor per layer costs its page faults each time). The backend of
    `Qwen2Model.forward_packed`.
    """

    def __init__(self, cache: PagedKVCache):
        self.cache = cache
        cfg = cache.cfg
        self.Hq, self.Hkv, self.D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        device = cache.slot_table.device
        self.positions = torch.arange(cache.slot_table.shape[1], device=device)
        self.reuse_buffer = device.type == "cpu"  # CUDA's caching allocator already reuses (and graphs keep addresses)
        self.buffer = torch.empty((0, 2, self.Hkv, self.D), dtype=cache.raw, device=device)
        self.neg_inf, self.zero = (torch.tensor(v, dtype=cache.dtype, device=device) for v in (float("-inf"), 0.0))
        self.slots: torch.Tensor | None = None
        self.n_decode = 0
        self.decode_len = 0
        self.decode_slots: torch.Tensor | None = None  # (n*S,); None: read in place from decode_first_slot
        self.decode_first_slot = -1
        self.decode_mask: torch.Tensor | None = None  # (n, 1, 1, S) 0 / -inf, None when every row is full
        # (first token, count, its slots or None, first slot when read in place, context length, mask or None)
        self.chunks: list[tuple[int, int, torch.Tensor | None, int, int, torch.Tensor | None]] = []

    def plan_decode(self, rows: torch.Tensor, lens: torch.Tensor | None, max_len: int, first_slot: int = -1) -> None:
        """Decode rows: slot-table `rows` (n,), context lengths `lens` (n,) after this step (None:
        all equal to max_len, no mask). `first_slot` >= 0: one row whose max_len slots are
        consecutive from there, read in place."""
        self.n_decode, self.decode_len, self.decode_first_slot = rows.shape[0], max_len, first_slot
        self.decode_slots = None
        if first_slot < 0:
            self.decode_slots = self.cache.slot_table[:, :max_len].index_select(0, rows).view(-1)
        self.decode_mask = None
        if lens is not None:
            self.decode_mask = self._mask(torch.ge(self.positions[:max_len], lens.view(-1, 1))).view(-1, 1, 1, max_len)

    def plan_step(self, slots: torch.Tensor, chunks: list[tuple[int, int, int, int, int]]) -> None:
        """slots (N,): where each token's K/V goes. chunks: (first token, count, row, start position,
        first slot: the row's slots are consecutive from there and read in place; -1: gathered)."""
        self.slots = slots
        self.n_decode = 0
        self.chunks = []
        for first, count, row, start, first_slot in chunks:
            end = start + count
            mask = None
            if start:  # query i sits at position start + i and sees keys 0 .. start + i
                mask = self._mask(self.positions[:end][None, :] > self.positions[start:end][:, None])  # (T, L)
            slots_of = self.cache.slot_table[row, :end] if first_slot < 0 else None
            self.chunks.append((first, count, slots_of, first_slot, end, mask))

    def _mask(self, hidden: torch.Tensor) -> torch.Tensor:
        """Additive attention mask: -inf where `hidden`, else 0, in the compute dtype (SDPA turns a
        boolean mask into this itself, on every call)."""
        return torch.where(hidden, self.neg_inf, self.zero)

    def _read(self, layer: int, slots: torch.Tensor | None, first_slot: int, length: int) -> torch.Tensor:
        """`length` slots' K/V: a view from `first_slot` when `slots` is None, else gathered (on the CPU
        into the buffer, grown to the next power of two when a step needs more, capped at the slot
        table's size)."""
        cache = self.cache
        if slots is None:
            return cache.read_range(layer, first_slot, length)
        if not self.reuse_buffer:
            return cache.read(layer, slots)
        if self.buffer.shape[0] < length:  # at most every row's whole slot-table width
            size = min(1 << (length - 1).bit_length(), cache.slot_table.numel())
            self.buffer = self.buffer.new_empty((size, *self.buffer.shape[1:]))
        return cache.read(layer, slots, self.buffer[:length])

    def attend(self, layer: int, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """q (N, Hq, D), kv (N, 2, Hkv, D) -> (N, Hq, D)."""
        self.cache.write(layer, self.slots, kv)
        outs = []
        n = self.n_decode
        if n:
            S, Hkv, D = self.decode_len, self.Hkv, self.D
            past = self._read(layer, self.decode_slots, self.decode_first_slot, n * S).view(n, S, 2, Hkv, D)
            qd = q[:n].view(n, Hkv, self.Hq // Hkv, D)  # (n, Hkv, G, D): head h uses KV head h // G
            out = F.scaled_dot_product_attention(qd, past[:, :, 0].transpose(1, 2), past[:, :, 1].transpose(1, 2),
                                                 attn_mask=self.decode_mask)  # (n, Hkv, G, D)
            outs.append(out.view(n, self.Hq, D))
        for first, count, slots, first_slot, end, mask in self.chunks:
            past = self._read(layer, slots, first_slot, end)  # (L, 2, Hkv, D): the cached prefix, then the chunk
            qc = q[first:first + count][None]  # (1, T, Hq, D)
            if mask is None:  # the chunk starts its sequence
                outs.append(causal_attention(qc, past[None])[0])
            else:
                k, v = past.transpose(0, 2)[None].unbind(2)  # (1, Hkv, L, D) each
                outs.append(sdpa(qc.transpose(1, 2), k, v, mask)[0].transpose(0, 1))  # (T, Hq, D)
        return outs[0] if len(outs) == 1 else torch.cat(outs)
