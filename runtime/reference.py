"""Reference executor: static batch, left-padded prompts, one preallocated KV cache.

The simplest correct implementation of the executor interface; the fast executor's outputs are
tested against it, and it against HF transformers. A batch runs from prefill to the last
finished request; requests submitted meanwhile wait for the next batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fathom.build.precision import dtype_word
from fathom.build.errors import FathomError

from .executor import KVUsage, Request, TokenEvent, finish_reason, now
from .model import Qwen2Model
from .sampling import make_generator, sample, token_logprobs


class StaticKVCache:
    """K/V for a batch: (layers, B, Hkv, S, D) each, filled left to right; rows are left-padded.

    Stored in the model dtype; a model with a quantized KV cache format (`model.kv_quant`) has K/V
    rounded to it on the way in, so reads return what a cache in that format would.
    """

    def __init__(self, model: Qwen2Model, pad_lens: list[int], capacity: int):
        cfg = model.cfg
        B = len(pad_lens)
        shape = (cfg.num_hidden_layers, B, cfg.num_key_value_heads, capacity, cfg.head_dim)
        self.k = torch.empty(shape, dtype=model.dtype, device=model.device)
        self.v = torch.empty(shape, dtype=model.dtype, device=model.device)
        self.kv_quant = model.kv_quant
        cols = torch.arange(capacity, device=model.device)
        self.pad = torch.tensor(pad_lens, device=model.device)
        self.valid = cols[None, :] >= self.pad[:, None]  # (B, S): False on left padding
        self.length = 0
        self.capacity = capacity
        self._mask: torch.Tensor | None = None

    def positions(self, T: int) -> torch.Tensor:
        """(B, T) rotary positions of the next T columns (padding gets position 0)."""
        cols = torch.arange(self.length, self.length + T, device=self.pad.device)
        return (cols[None, :] - self.pad[:, None]).clamp(min=0)

    def begin(self, T: int) -> None:
        end = self.length + T
        rows = torch.arange(self.length, end, device=self.pad.device)[:, None]  # (T, 1)
        cols = torch.arange(end, device=self.pad.device)[None, :]  # (1, end)
        causal = cols <= rows  # (T, end)
        mask = causal[None] & self.valid[:, None, :end]  # (B, T, end)
        # A padding query has no valid key; let it see itself so its output stays finite.
        mask |= (cols == rows)[None]
        self._mask = mask[:, None]  # (B, 1, T, end)

    def attend(self, layer: int, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """q (B, T, Hq, D), kv (B, T, 2, Hkv, D) of the next T columns -> (B, T, Hq, D)."""
        if self.kv_quant is not None:
            kv = self.kv_quant.round(layer, kv)
        end = self.length + q.shape[1]
        self.k[layer, :, :, self.length:end] = kv[:, :, 0].transpose(1, 2)
        self.v[layer, :, :, self.length:end] = kv[:, :, 1].transpose(1, 2)
        return F.scaled_dot_product_attention(q.transpose(1, 2), self.k[layer, :, :, :end], self.v[layer, :, :, :end],
                                              attn_mask=self._mask, enable_gqa=True).transpose(1, 2)

    def advance(self, T: int) -> None:
        self.length += T


class ReferenceExecutor:
    name = "reference"

    def __init__(self, model: Qwen2Model, eos_ids: list[int] | None = None, max_seq_len: int | None = None):
        self.model = model
        self.config = model.cfg
        self.eos_ids = list(eos_ids if eos_ids is not None else model.cfg.eos_token_ids)
        self.max_seq_len = max_seq_len or model.max_seq_len
        self.waiting: list[Request] = []
        self.batch: list[Request] = []
        self.cache: StaticKVCache | None = None
        self.done: list[bool] = []
        self.counts: list[int] = []
        self.generators: list[torch.Generator] = []
        self.cancelled: set[str] = set()
        self.last_tokens: torch.Tensor | None = None

    # ---- executor interface ----------------------------------------------------------
    def submit(self, request: Request) -> None:
        n = len(request.prompt_ids)
        if n == 0:
            raise FathomError(f"request {request.request_id}: empty prompt")
        if n >= self.max_seq_len:
            raise FathomError(f"request {request.request_id}: prompt has {n} tokens, max_seq_len is {self.max_seq_len}")
        self.waiting.append(request)

    def cancel(self, request_id: str) -> None:
        self.cancelled.add(request_id)

    def has_pending(self) -> bool:
        return bool(self.waiting) or bool(self.batch)

    def kv_usage(self) -> KVUsage:
        cfg = self.config
        per_token = cfg.kv_bytes_per_token(self.model.dtype.itemsize)
        if self.cache is None:
            return KVUsage(0, 0, per_token)
        rows = len(self.batch)
        return KVUsage(self.cache.length * rows, self.cache.capacity * rows, per_token)

    def describe(self) -> dict:
        from .quant_linear import describe_model_precision

        return {"executor": self.name, "device": str(self.model.device), "dtype": dtype_word(self.model.dtype),
                "attention": "sdpa", "kv_cache": "static", **describe_model_precision(self.model)}

    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        if not self.batch:
            if not self.waiting:
                return []
            return self._prefill()
        return self._decode()

    # ---- internals --------------------------------------------------------------------
    def _prefill(self) -> list[TokenEvent]:
        self.batch, self.waiting = self.waiting, []
        lens = [len(r.prompt_ids) for r in self.batch]
        T = max(lens)
        need = max(n + r.params.max_new_tokens for n, r in zip(lens, self.batch))
        capacity = min(need, self.max_seq_len)
        pad_lens = [T - n for n in lens]
        self.cache = StaticKVCache(self.model, pad_lens, capacity)
        ids = torch.tensor([[0] * p + r.prompt_ids for p, r in zip(pad_lens, self.batch)], device=self.model.device)
        self.done = [False] * len(self.batch)
        self.counts = [0] * len(self.batch)
        self.generators = [make_generator(r.params.seed, self.model.device) for r in self.batch]
        return self._forward(ids, logits_index=torch.full((len(lens),), T - 1, device=self.model.device))

    def _decode(self) -> list[TokenEvent]:
        return self._forward(self.last_tokens[:, None], logits_index=None)

    def _forward(self, ids: torch.Tensor, logits_index) -> list[TokenEvent]:
        cache = self.cache
        T = ids.shape[1]
        cache.begin(T)
        logits = self.model(ids, cache.positions(T), cache, logits_index=logits_index)[:, -1]  # (B, V)
        cache.advance(T)
        next_ids = self._sample(logits)
        token_ids = next_ids.tolist()
        asks = [None if done or r.request_id in self.cancelled else r.params.logprobs
                for r, done in zip(self.batch, self.done)]
        logprobs = token_logprobs(logits, token_ids, asks)
        t = now()
        events = []
        for row, req in enumerate(self.batch):
            if self.done[row]:
                continue
            if req.request_id in self.cancelled:
                self.done[row] = True
                events.append(TokenEvent(req.request_id, None, t, "cancelled"))
                continue
            token = token_ids[row]
            self.counts[row] += 1
            reason = finish_reason(token, self.counts[row], req.params, self.eos_ids)
            if reason is None and cache.length >= cache.capacity:
                reason = "length"
            self.done[row] = reason is not None
            events.append(TokenEvent(req.request_id, token, t, reason, *logprobs[row]))
        self.last_tokens = next_ids
        if all(self.done):
            self.cancelled -= {r.request_id for r in self.batch}
            self.batch, self.cache = [], None
        return events

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        if all(r.params.greedy for r in self.batch):
            return logits.argmax(dim=-1)
        return torch.stack([sample(logits[row:row + 1], r.params, self.generators[row])[0]
                            for row, r in enumerate(self.batch)])
