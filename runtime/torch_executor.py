"""The fast PyTorch executor ("torch"): continuous batching over a paged KV cache.

Each `step()` is one forward pass over a packed row of tokens: one decode token for every running
sequence that has its prompt cached, then prefill chunks of the sequences still reading their
prompt, up to `max_num_tokens` in all. Requests join between steps as soon as blocks are free and
leave as soon as they finish, so a 16K prompt is read a chunk per step while the others keep
decoding.

The parts, one job each: fathom.runtime.scheduler (admission, the step's work, preemption),
fathom.runtime.block_manager (blocks and rows per sequence, prefix reuse), fathom.runtime.model_runner
(packing, forward, sampling), fathom.runtime.cuda_graphs (decode steps replayed on CUDA),
fathom.runtime.paged_kv (pools, slot table, paged attention). This module validates requests, turns
sampled tokens (with their log-probs, for requests that ask) into events and describes the whole.

CPU: eager, or with `compile` decode-only steps through one torch.compile'd function
(fathom.runtime.compiled_decode). CUDA: the same, plus decode-only steps replayed from CUDA graphs.
Tensor parallel (`--tp N`, fathom.runtime.tp_launch): this object is rank 0; it keeps the
scheduler, sampling and the interface, and its runner hands every step to the other ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from fathom.build.errors import ConfigError, FathomError
from fathom.build.precision import KvCacheFormat, dtype_word
from fathom.build.quant.kv_cache import KVCacheQuant

from . import compiled_decode
from .block_manager import BlockManager
from .executor import KVUsage, Request, TokenEvent, finish_reason, now
from .model import Qwen2Model
from .model_runner import ModelRunner, step_workspace_bytes
from .paged_kv import KVCacheConfig, PagedKVCache, plan_num_blocks
from .sampling import token_logprobs
from .scheduler import Scheduler, Sequence

if TYPE_CHECKING:
    from .tp_launch import TPWorkers


@dataclass(frozen=True)
class TorchExecutorConfig:
    max_num_tokens: int = 512  # tokens per step: decodes first, prefill chunks fill the rest
    max_num_seqs: int = 64  # running sequences (one slot-table row each)
    kv: KVCacheConfig = field(default_factory=KVCacheConfig)
    cuda_graphs: bool = True  # decode steps on CUDA; ignored on CPU
    compile: bool = False  # decode steps through torch.compile (fathom.runtime.compiled_decode)

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs = {self.max_num_seqs}, expected >= 1")
        if self.max_num_tokens <= self.max_num_seqs:
            raise ConfigError(f"max_num_tokens = {self.max_num_tokens}, expected > max_num_seqs "
                              f"({self.max_num_seqs}) so that prefill always gets part of a step")


class TorchExecutor:
    name = "torch"

    def __init__(self, model: Qwen2Model, eos_ids: list[int] | None = None, max_seq_len: int | None = None,
                 config: TorchExecutorConfig = TorchExecutorConfig(), workers: TPWorkers | None = None):
        """`workers`: with a tensor-parallel `model` (rank 0's shard), the other ranks
        (fathom.runtime.tp_launch); this executor drives them and `close` shuts them down."""
        self.model, self.config, self.opts = model, model.cfg, config
        self.eos_ids = list(eos_ids if eos_ids is not None else model.cfg.eos_token_ids)
        self.max_seq_len = min(max_seq_len or model.max_seq_len, model.max_seq_len)
        self.device = model.device
        self.workers = workers
        plan = plan_cache(model, config, self.max_seq_len)  # rank 0's own errors come before the others are involved
        if workers is not None:
            plan = replace(plan, num_blocks=workers.open_cache(config, self.max_seq_len, plan.num_blocks))
        self.cache = open_cache(model, config, self.max_seq_len, plan)
        if workers is not None:
            self.cache.edits = []  # replayed by the other ranks
        self.blocks = BlockManager(self.cache, config.max_num_seqs, config.kv.prefix_reuse)
        self.scheduler = Scheduler(self.blocks, config.max_num_tokens)
        self.runner = ModelRunner(model, self.cache, config.max_num_seqs, self.max_seq_len, config.cuda_graphs,
                                  workers, compile_decode=config.compile)
        self.cancelled: set[str] = set()
        self.known: set[str] = set()

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
        if -(-need // self.cache.block_size) > self.cache.allocator.usable_blocks:
            raise FathomError(f"request {rid}: may need {need} tokens of KV cache, the whole cache holds "
                              f"{self.cache.capacity_tokens}; lower max_new_tokens or give the cache more memory")
        self.known.add(rid)
        self.scheduler.add(Sequence(request, list(ids), None, order=-1))

    def cancel(self, request_id: str) -> None:
        if request_id in self.known:
            self.cancelled.add(request_id)

    def has_pending(self) -> bool:
        return self.scheduler.has_pending()

    def kv_usage(self) -> KVUsage:
        """Tokens whose K/V are held for running sequences; a shared prefix block counts once."""
        return KVUsage(self.blocks.used_tokens(self.scheduler.running), self.cache.capacity_tokens,
                       self.cache.bytes_per_token)

    @property
    def stats(self) -> dict:
        """Counters since start: preemptions, prompt tokens found in the prefix cache."""
        return self.scheduler.stats

    def describe(self) -> dict:
        from .quant_linear import describe_model_precision

        graphs, compiled = self.runner.graphs, self.runner.compiled
        info = {"executor": self.name, "device": str(self.device), "dtype": dtype_word(self.model.dtype),
                "attention": "sdpa", "kv_cache": "paged", "kv_cache_dtype": dtype_word(self.cache.storage),
                "block_size": self.cache.block_size, "kv_capacity_tokens": self.cache.capacity_tokens,
                "max_num_tokens": self.opts.max_num_tokens, "max_num_seqs": self.opts.max_num_seqs,
                "max_seq_len": self.max_seq_len, "prefix_reuse": self.blocks.prefix_reuse, "packed_forward": True,
                "cuda_graphs": sorted(graphs.graphs) if graphs is not None else None,
                "torch_compile": compiled is not None,
                "decode_attention": compiled_decode.KERNEL if compiled is not None else "gather_sdpa_or_view",
                "compiled_graphs": compiled.graphs_compiled if compiled is not None else None,
                "threads": torch.get_num_threads(), **describe_model_precision(self.model),
                "kv_cache_format": self.cache.kv_format.value}  # the cache built, which --kv-cache may override
        if self.workers is not None:
            info["tensor_parallel"] = self.workers.describe()
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
        self.scheduler.admit()
        decodes, chunks = self.scheduler.schedule()
        if not decodes and not chunks:
            return events
        logits = self.runner.forward(decodes, chunks)  # (K, V): decodes, then chunks that end their prompt
        samplers = self.scheduler.computed(decodes, chunks)
        tokens = self.runner.sample(logits, samplers)
        logprobs = token_logprobs(logits, tokens, [s.request.params.logprobs for s in samplers])
        t = now()
        for s, token, (logprob, top) in zip(samplers, tokens, logprobs):
            s.tokens.append(token)
            s.generated += 1
            reason = finish_reason(token, s.generated, s.request.params, self.eos_ids)
            if reason is None and s.num_computed >= self.max_seq_len:
                reason = "length"
            events.append(TokenEvent(s.id, token, t, reason, logprob, top))
            if reason is not None:
                self.scheduler.finish(s)
                self.known.discard(s.id)
        self.scheduler.register_computed_blocks()
        return events

    def close(self) -> None:
        """Shut the other tensor-parallel ranks down (nothing to do in one process)."""
        if self.workers is not None:
            self.workers.close()

    def _drop_cancelled(self, events: list[TokenEvent]) -> None:
        t = now()
        for s in [s for s in (*self.scheduler.waiting, *self.scheduler.running) if s.id in self.cancelled]:
            self.scheduler.remove(s)
            self.known.discard(s.id)
            events.append(TokenEvent(s.id, None, t, "cancelled"))
        self.cancelled.clear()


@dataclass(frozen=True)
class CachePlan:
    """One rank's paged cache before it is allocated: its K/V storage and the blocks its memory holds."""

    kv_quant: KVCacheQuant | None
    num_blocks: int


def plan_cache(model: Qwen2Model, config: TorchExecutorConfig, max_seq_len: int) -> CachePlan:
    """The cache of the model's KV heads (a tensor-parallel rank: its own), sized from this rank's memory."""
    cfg, kv, device = model.shard_cfg, config.kv, model.device
    kv_quant = kv.kv_quant(model.kv_quant, device)
    kv_format = kv_quant.format if kv_quant is not None else KvCacheFormat.MODEL
    per_token = cfg.kv_bytes_per_token(kv_format.bytes_per_element(dtype_word(model.dtype)))
    workspace = step_workspace_bytes(cfg, model.dtype, config.max_num_tokens, config.max_num_seqs, max_seq_len)
    return CachePlan(kv_quant, plan_num_blocks(cfg, kv, device, per_token, workspace,
                                               config.max_num_seqs * max_seq_len))


def open_cache(model: Qwen2Model, config: TorchExecutorConfig, max_seq_len: int, plan: CachePlan) -> PagedKVCache:
    """Allocate the planned cache (across tensor-parallel ranks: the blocks the tightest rank holds)."""
    # One spare slot-table row stays all-null: padded CUDA-graph rows point there.
    return PagedKVCache(model.shard_cfg, config.kv.block_size, plan.num_blocks, model.dtype, model.device,
                        config.max_num_seqs + 1, max_seq_len, kv_quant=plan.kv_quant)


def executor_config(max_num_tokens: int | None = None, max_num_seqs: int | None = None,
                    cuda_graphs: bool | None = None, compile: bool | None = None, **kv_options) -> TorchExecutorConfig:
    """A TorchExecutorConfig from flat options; None keeps a default (max_num_seqs: 64, or fewer
    than max_num_tokens). KV options: KVCacheConfig fields."""
    base = TorchExecutorConfig()
    kv_options = {k: v for k, v in kv_options.items() if v is not None}
    unknown = sorted(set(kv_options) - set(KVCacheConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"torch executor options {unknown}: expected max_num_tokens, max_num_seqs, cuda_graphs, "
                          f"compile or one of {', '.join(KVCacheConfig.__dataclass_fields__)}")
    if "kv_scales" in kv_options:
        kv_options["kv_scales"] = tuple(float(x) for x in kv_options["kv_scales"])
    max_num_tokens = max_num_tokens or base.max_num_tokens
    return TorchExecutorConfig(max_num_tokens=max_num_tokens,
                               max_num_seqs=max_num_seqs or min(base.max_num_seqs, max_num_tokens - 1),
                               kv=replace(base.kv, **kv_options),
                               cuda_graphs=base.cuda_graphs if cuda_graphs is None else cuda_graphs,
                               compile=base.compile if compile is None else compile)
