"""The fast PyTorch executor ("torch"): continuous batching over a paged KV cache.

Each `step()` is one forward pass over a packed row of tokens: one decode token for every running
sequence that has its prompt cached, then prefill chunks of the sequences still reading their
prompt, up to `max_num_tokens` in all. Requests join between steps as soon as blocks are free and
leave as soon as they finish, so a 16K prompt is read a chunk per step while the others keep
decoding. When the pool runs dry mid-generation the youngest sequence is preempted: its blocks go
back and it is recomputed later from prompt + generated tokens (its sampler state is kept, so a
seeded request still draws the same numbers).

CPU: eager float32, nothing else. CUDA: the same code, plus decode-only steps replayed from CUDA
graphs (`CudaGraphDecoder` at the end of this file, built only when the model is on a CUDA device).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

import torch

from fathom.build.errors import ConfigError, FathomError

from .executor import KVUsage, Request, TokenEvent, finish_reason, now
from .model import Qwen2Model
from .paged_kv import KVCacheConfig, PagedAttention, PagedKVCache, block_key, plan_num_blocks
from .sampling import make_generator, sample

_KV_DTYPE_OF_ALGO = {"FP8": "fp8", "INT8": "int8"}  # fathom.build.quant QuantAlgo value -> kv_dtype


@dataclass(frozen=True)
class TorchExecutorConfig:
    max_num_tokens: int = 512  # tokens per step: decodes first, prefill chunks fill the rest
    max_num_seqs: int = 64  # running sequences (one slot-table row each)
    kv: KVCacheConfig = field(default_factory=KVCacheConfig)
    cuda_graphs: bool = True  # decode steps on CUDA; ignored on CPU

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs = {self.max_num_seqs}, expected >= 1")
        if self.max_num_tokens <= self.max_num_seqs:
            raise ConfigError(f"max_num_tokens = {self.max_num_tokens}, expected > max_num_seqs "
                              f"({self.max_num_seqs}) so that prefill always gets part of a step")


@dataclass(eq=False)
class Sequence:
    request: Request
    tokens: list[int]  # prompt + generated; KV exists for tokens[:num_computed]
    generator: torch.Generator | None
    order: int  # admission order: the youngest is preempted first
    row: int = -1
    blocks: list[int] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)  # prefix keys of its full, registered blocks
    num_computed: int = 0
    generated: int = 0

    @property
    def id(self) -> str:
        return self.request.request_id


class TorchExecutor:
    name = "torch"

    def __init__(self, model: Qwen2Model, eos_ids: list[int] | None = None, max_seq_len: int | None = None,
                 config: TorchExecutorConfig = TorchExecutorConfig()):
        kv = config.kv
        quant = getattr(model, "kv_cache_quant", None)  # a quantized checkpoint's KV format and scales
        if quant is not None and kv.kv_dtype == "auto":
            kv = replace(kv, kv_dtype=_KV_DTYPE_OF_ALGO[quant.algo.value], kv_scales=tuple(quant.scales.tolist()))
            config = replace(config, kv=kv)
        self.model, self.config, self.opts = model, model.cfg, config
        self.eos_ids = list(eos_ids if eos_ids is not None else model.cfg.eos_token_ids)
        self.max_seq_len = min(max_seq_len or model.max_seq_len, model.max_seq_len)
        self.device = model.device
        cfg = model.cfg
        itemsize = (torch.int8.itemsize if kv.kv_dtype != "auto" else model.dtype.itemsize)
        per_token = cfg.kv_bytes_per_token(itemsize)
        num_blocks = plan_num_blocks(cfg, kv, self.device, per_token, self._workspace_bytes(),
                                     config.max_num_seqs * self.max_seq_len)
        # One spare slot-table row stays all-null: padded CUDA-graph rows point there.
        self.cache = PagedKVCache(cfg, kv, num_blocks, model.dtype, self.device, config.max_num_seqs + 1,
                                  self.max_seq_len)
        self.attn = PagedAttention(self.cache)
        # Plain modules: the module-free forward (same numbers), its weights looked up once.
        self.packed_weights = None
        if model.packed_ok():
            if self.device.type == "cpu":
                column_major_linears(model)
            self.packed_weights = model.packed_weights()
        self.bs = kv.block_size
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.free_rows = list(range(config.max_num_seqs - 1, -1, -1))
        self.cancelled: set[str] = set()
        self.known: set[str] = set()
        self._order = 0
        self.stats = {"preemptions": 0, "prefix_hit_tokens": 0}
        self.graphs = None
        if self.device.type == "cuda" and config.cuda_graphs:
            self.graphs = CudaGraphDecoder(self._run_model, self.attn, config.max_num_seqs, self.max_seq_len, self.device)

    # ---- executor interface ----------------------------------------------------------
    def submit(self, request: Request) -> None:
        rid, ids = request.request_id, request.prompt_ids
        if rid in self.known:
            raise FathomError(f"request {rid}: a request with this id is already in flight")
        if not ids:
            raise FathomError(f"request {rid}: empty prompt")
        if len(ids) >= self.max_seq_len:
            raise FathomError(f"request {rid}: prompt has {len(ids)} tokens, max_seq_len is {self.max_seq_len}")
        if min(ids) < 0 or max(ids) >= self.config.vocab_size:
            raise FathomError(f"request {rid}: token ids must be in [0, {self.config.vocab_size})")
        need = min(len(ids) + request.params.max_new_tokens - 1, self.max_seq_len)
        if -(-need // self.bs) > self.cache.allocator.usable_blocks:
            raise FathomError(f"request {rid}: may need {need} tokens of KV cache, the whole cache holds "
                              f"{self.cache.capacity_tokens}; lower max_new_tokens or give the cache more memory")
        self.known.add(rid)
        self.waiting.append(Sequence(request, list(ids), None, order=-1))

    def cancel(self, request_id: str) -> None:
        if request_id in self.known:
            self.cancelled.add(request_id)

    def has_pending(self) -> bool:
        return bool(self.waiting) or bool(self.running)

    def kv_usage(self) -> KVUsage:
        """Tokens whose K/V are held for running sequences; a shared prefix block counts once."""
        alloc = self.cache.allocator
        slack = sum(len(s.blocks) * self.bs - s.num_computed for s in self.running)
        return KVUsage(alloc.num_used() * self.bs - slack, self.cache.capacity_tokens, self.cache.bytes_per_token)

    def describe(self) -> dict:
        from .quant_linear import describe_model_precision

        kv = self.opts.kv
        info = {"executor": self.name, "device": str(self.device), "dtype": str(self.model.dtype).removeprefix("torch."),
                "attention": "sdpa", "kv_cache": "paged", "kv_cache_dtype": str(self.cache.storage).removeprefix("torch."),
                "block_size": self.bs, "kv_capacity_tokens": self.cache.capacity_tokens,
                "max_num_tokens": self.opts.max_num_tokens, "max_num_seqs": self.opts.max_num_seqs,
                "max_seq_len": self.max_seq_len, "prefix_reuse": kv.prefix_reuse, "packed_forward": self.packed_weights is not None,
                "cuda_graphs": sorted(self.graphs.graphs) if self.graphs is not None else None,
                "torch_compile": False, "threads": torch.get_num_threads(), **describe_model_precision(self.model)}
        if self.device.type == "cuda":
            b = torch.backends.cuda
            info["sdpa_kernels_enabled"] = [name for name, on in (("flash", b.flash_sdp_enabled()),
                                            ("mem_efficient", b.mem_efficient_sdp_enabled()),
                                            ("math", b.math_sdp_enabled())) if on]
        return info

    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        events: list[TokenEvent] = []
        if self.cancelled:
            self._drop_cancelled(events)
        self._admit()
        decodes, chunks = self._schedule()
        if not decodes and not chunks:
            return events
        logits = self._forward(decodes, chunks)  # (K, V): decodes, then chunks that end their prompt
        samplers = decodes + [s for s, n in chunks if s.num_computed + n == len(s.tokens)]
        for s in decodes:
            s.num_computed += 1
        for s, n in chunks:
            s.num_computed += n
        tokens = self._sample(logits, samplers)
        t = now()
        for s, token in zip(samplers, tokens):
            s.tokens.append(token)
            s.generated += 1
            reason = finish_reason(token, s.generated, s.request.params, self.eos_ids)
            if reason is None and s.num_computed >= self.max_seq_len:
                reason = "length"
            events.append(TokenEvent(s.id, token, t, reason))
            if reason is not None:
                self._finish(s)
        if self.opts.kv.prefix_reuse:
            for s in self.running:
                self._register_full_blocks(s)
        return events

    # ---- scheduling ------------------------------------------------------------------
    def _admit(self) -> None:
        alloc = self.cache.allocator
        while self.waiting and self.free_rows:
            s = self.waiting[0]
            hits = self._lookup_prefix(s) if self.opts.kv.prefix_reuse else []
            need = -(-len(s.tokens) // self.bs) - len(hits)
            if need > alloc.num_free():
                for block in hits:
                    alloc.release(block)
                s.keys = []
                return  # FIFO: it waits for blocks, and so does everyone behind it
            self.waiting.popleft()
            s.row, s.order = self.free_rows.pop(), self._order
            self._order += 1
            for block in hits:
                self._append_block(s, block)
            s.num_computed = len(hits) * self.bs
            self.stats["prefix_hit_tokens"] += s.num_computed
            self.running.append(s)

    def _schedule(self) -> tuple[list[Sequence], list[tuple[Sequence, int]]]:
        """This step's work: decodes (one token each), then prefill chunks within the token budget."""
        decodes: list[Sequence] = []
        chunks: list[tuple[Sequence, int]] = []
        prefills = []
        capacity = self.bs
        for s in list(self.running):
            if s.num_computed < len(s.tokens) - 1:
                prefills.append(s)
            elif len(s.blocks) * capacity > s.num_computed:  # room for its token: the common case
                decodes.append(s)
            elif s.row >= 0 and self._reserve(s, s.num_computed + 1, decodes, chunks):
                decodes.append(s)
        budget = self.opts.max_num_tokens - len(decodes)
        for s in prefills:
            if budget <= 0:
                break
            n = min(len(s.tokens) - s.num_computed, budget)
            if s.row >= 0 and self._reserve(s, s.num_computed + n, decodes, chunks):
                chunks.append((s, n))
                budget -= n
        return decodes, chunks

    def _reserve(self, s: Sequence, upto: int, decodes, chunks) -> bool:
        """Blocks for positions < upto, preempting the youngest sequences if the pool is dry."""
        alloc = self.cache.allocator
        while len(s.blocks) * self.bs < upto:
            block = alloc.allocate()
            if block is None:
                victim = max(self.running, key=lambda r: r.order)
                self._preempt(victim, decodes, chunks)
                if victim is s:
                    return False
                continue
            self._append_block(s, block)
        return True

    def _preempt(self, s: Sequence, decodes, chunks) -> None:
        if s in decodes:
            decodes.remove(s)
        chunks[:] = [(c, n) for c, n in chunks if c is not s]
        self._release(s)
        self.stats["preemptions"] += 1
        s.num_computed, s.keys = 0, []
        self.waiting.appendleft(s)

    # ---- blocks --------------------------------------------------------------------------
    def _append_block(self, s: Sequence, block: int) -> None:
        self.cache.set_block(s.row, len(s.blocks), block)
        s.blocks.append(block)

    def _release(self, s: Sequence) -> None:
        self.running.remove(s)
        for block in s.blocks:
            self.cache.allocator.release(block)
        self.cache.clear_row(s.row, len(s.blocks))
        self.free_rows.append(s.row)
        s.blocks, s.row = [], -1

    def _finish(self, s: Sequence) -> None:
        if self.opts.kv.prefix_reuse:
            self._register_full_blocks(s)
        self._release(s)
        self.known.discard(s.id)

    def _lookup_prefix(self, s: Sequence) -> list[int]:
        """Cached blocks for the longest run of full blocks of tokens[:-1] (one token must be fed)."""
        hits, parent = [], b""
        for i in range((len(s.tokens) - 1) // self.bs):
            parent = block_key(parent, s.tokens[i * self.bs:(i + 1) * self.bs])
            block = self.cache.allocator.lookup(parent)
            if block is None:
                break
            hits.append(block)
            s.keys.append(parent)
        return hits

    def _register_full_blocks(self, s: Sequence) -> None:
        for i in range(len(s.keys), s.num_computed // self.bs):
            parent = s.keys[-1] if s.keys else b""
            key = block_key(parent, s.tokens[i * self.bs:(i + 1) * self.bs])
            self.cache.allocator.register(s.blocks[i], key)
            s.keys.append(key)

    def _drop_cancelled(self, events: list[TokenEvent]) -> None:
        t = now()
        for s in [s for s in (*self.waiting, *self.running) if s.id in self.cancelled]:
            if s.row >= 0:
                self._release(s)
            else:
                self.waiting.remove(s)
            self.known.discard(s.id)
            events.append(TokenEvent(s.id, None, t, "cancelled"))
        self.cancelled.clear()

    # ---- compute ---------------------------------------------------------------------------
    def _forward(self, decodes: list[Sequence], chunks: list[tuple[Sequence, int]]) -> torch.Tensor:
        bs, n = self.bs, len(decodes)
        ids, positions, slots, rows = [], [], [], []
        for s in decodes:
            p = s.num_computed
            ids.append(s.tokens[-1])
            positions.append(p)
            slots.append(s.blocks[p // bs] * bs + p % bs)
            rows.append(s.row)
        if not chunks and self.graphs is not None:
            return self.graphs.run(ids, positions, slots, rows)
        plan, index = [], []
        if chunks:
            index = list(range(n))
            for s, count in chunks:
                start = s.num_computed
                plan.append((len(ids), count, s.row, start))
                ids.extend(s.tokens[start:start + count])
                positions.extend(range(start, start + count))
                if start + count == len(s.tokens):
                    index.append(len(ids) - 1)
        N = len(ids)
        # One host->device copy for all of this step's integers.
        data = torch.tensor(ids + positions + slots + rows + index, dtype=torch.int64, device=self.device)
        ids_t, pos_t = data[:N], data[N:2 * N]
        slots_t, rows_t, index_t = data[2 * N:2 * N + n], data[2 * N + n:2 * N + 2 * n], data[2 * N + 2 * n:]
        if chunks:
            slots_t = torch.cat([slots_t] + [self.cache.slot_table[row, start:start + count]
                                             for _, count, row, start in plan])
        self.attn.plan_step(slots_t, plan)
        if n:
            max_len = max(positions[:n]) + 1
            self.attn.plan_decode(rows_t, None if min(positions[:n]) + 1 == max_len else pos_t[:n] + 1, max_len)
        return self._run_model(ids_t, pos_t, index_t if chunks else None)

    def _run_model(self, ids: torch.Tensor, positions: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """(N,) ids/positions -> logits (N, V), or (K, V) at `index`: packed path, else the modules."""
        if self.packed_weights is not None:
            return self.model.forward_packed(ids, positions, self.attn, index, self.packed_weights)
        return self.model(ids[None], positions[None], self.attn, None if index is None else index[None])[0]

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
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

    def _workspace_bytes(self) -> int:
        """Activation memory of the largest step, kept out of the KV budget on CUDA (an estimate)."""
        cfg, opts, item = self.config, self.opts, self.model.dtype.itemsize
        per_token = (cfg.q_size + 2 * cfg.kv_size + 2 * cfg.intermediate_size + 4 * cfg.hidden_size) * 4
        decode_gather = opts.max_num_seqs * self.max_seq_len * cfg.kv_size * 2 * item  # one layer's K and V
        chunk_kv = self.max_seq_len * cfg.q_size * 2 * item  # a chunk's context, K/V repeated to Hq heads
        logits = opts.max_num_seqs * cfg.vocab_size * 4 * 2
        return opts.max_num_tokens * per_token + decode_gather + chunk_kv + logits


def executor_config(max_num_tokens: int | None = None, max_num_seqs: int | None = None,
                    cuda_graphs: bool | None = None, **kv_options) -> TorchExecutorConfig:
    """A TorchExecutorConfig from flat options; None keeps a default (max_num_seqs: 64, or fewer
    than max_num_tokens). KV options: KVCacheConfig fields."""
    base = TorchExecutorConfig()
    kv_options = {k: v for k, v in kv_options.items() if v is not None}
    unknown = sorted(set(kv_options) - set(KVCacheConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"torch executor options {unknown}: expected max_num_tokens, max_num_seqs, cuda_graphs "
                          f"or one of {', '.join(KVCacheConfig.__dataclass_fields__)}")
    if "kv_scales" in kv_options:
        kv_options["kv_scales"] = tuple(float(x) for x in kv_options["kv_scales"])
    max_num_tokens = max_num_tokens or base.max_num_tokens
    return TorchExecutorConfig(max_num_tokens=max_num_tokens,
                               max_num_seqs=max_num_seqs or min(base.max_num_seqs, max_num_tokens - 1),
                               kv=replace(base.kv, **kv_options),
                               cuda_graphs=base.cuda_graphs if cuda_graphs is None else cuda_graphs)


def column_major_linears(model: torch.nn.Module) -> None:
    """Store every nn.Linear weight column-major (same values, strides (1, out)).

    MKL's batch-1 GEMV streams a (out, in) weight ~1.5x faster when `in` is the outer dimension
    (measured on the 2-core AVX2 dev CPU: 11 -> 19 GB/s out of cache), and at batch 1 a CPU decode
    step is little else. Done in place (the Parameter objects stay, tied weights are converted once);
    sums are reordered, so logits move by ~1e-6, the same for every executor sharing the model.
    """
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.weight.is_contiguous() and m.weight.dim() == 2:
            m.weight.data = m.weight.data.t().contiguous().t()


# ---- CUDA only -------------------------------------------------------------------------------------
class CudaGraphDecoder:
    """Decode-only steps replayed from CUDA graphs, one per (batch bucket, context bucket).

    A graph replays fixed shapes at fixed addresses, so the step's integers are copied into static
    buffers, the batch is padded up to a bucket with rows that read and write only the null block
    (they use the spare all-null slot-table row), and the gather length is rounded up to a power of
    two (>= 256): one graph then serves many steps, attending over masked padding. Graphs share one
    memory pool and are captured on first use. Never constructed for a CPU model.
    """

    BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

    def __init__(self, forward, attn: PagedAttention, max_seqs: int, max_seq_len: int, device: torch.device):
        self.forward, self.attn, self.max_seq_len = forward, attn, max_seq_len  # forward(ids, positions, None)
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
