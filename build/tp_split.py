"""Tensor-parallel split and merge, one pure function pair per tensor kind.

The rules are TensorRT-LLM's (v1.2.x), read from:
- `tensorrt_llm/models/qwen/convert.py` (convert_hf_qwen): q, k and v are split separately per rank
  and concatenated (`torch.concat((wq, wk, wv))`); KV heads are duplicated with `dup_kv_weight` when
  num_key_value_heads < tp_size; attention.dense and mlp.proj use `split_matrix_tp(..., dim=1)`;
  mlp.fc and mlp.gate use dim=0; lm_head is zero-padded to `pad_vocab_size(vocab, tp)` rows and then
  split on dim 0; norms are replicated; the embedding is replicated unless use_parallel_embedding.
- `tensorrt_llm/layers/linear.py` (Linear.postprocess, the unified loader's qkv path): duplicates each
  KV head `tp // kv` times in place (h0 h0 h1 h1 ...), also for the bias, then chunks per rank.
- `tensorrt_llm/models/convert_utils.py`: `split` / `split_matrix_tp` require even splits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import ModelConfig
from .mapping import Mapping, ShardKind


def _dup_kv_heads(t: torch.Tensor, num_kv_heads: int, reps: int) -> torch.Tensor:
    """(kv * D, ...) -> (kv * reps * D, ...): each head repeated `reps` times in place (h0 h0 h1 h1 ...)."""
    rest = t.shape[1:]
    heads = t.reshape(num_kv_heads, 1, -1, *rest)  # (kv, 1, D, ...)
    return heads.expand(num_kv_heads, reps, *heads.shape[2:]).reshape(-1, *rest)


def split_shards(kind: ShardKind, t: torch.Tensor, tp: int, cfg: ModelConfig) -> list[torch.Tensor]:
    """All tp pieces of unsharded tensor `t` (views where possible; the writer makes each contiguous)."""
    if kind is ShardKind.REPLICATED:
        return [t] * tp
    if kind in (ShardKind.QKV, ShardKind.QKV_INT4):
        unit = kind.rows_per_stored_row
        q, k, v = t.split([cfg.q_size // unit, cfg.kv_size // unit, cfg.kv_size // unit], dim=0)
        kv = cfg.num_key_value_heads
        if kv < tp:
            k, v = _dup_kv_heads(k, kv, tp // kv), _dup_kv_heads(v, kv, tp // kv)
        return [torch.cat(parts, dim=0) for parts in zip(q.chunk(tp, 0), k.chunk(tp, 0), v.chunk(tp, 0))]
    if kind is ShardKind.VOCAB:
        pad_rows = -(-t.shape[0] // tp) * tp - t.shape[0]
        if pad_rows:
            t = F.pad(t, (0, 0) * (t.dim() - 1) + (0, pad_rows))  # zero rows at the end
        return list(t.chunk(tp, dim=0))
    return list(t.chunk(tp, dim=1 if kind is ShardKind.ROW else 0))


def merge_shards(kind: ShardKind, shards: list[torch.Tensor], cfg: ModelConfig,
                 full_rows: int | None = None) -> torch.Tensor:
    """Inverse of split_shards: the unsharded tensor (VOCAB: padding rows dropped down to `full_rows`)."""
    tp = len(shards)
    if kind is ShardKind.REPLICATED or tp == 1:
        return shards[0]
    if kind in (ShardKind.QKV, ShardKind.QKV_INT4):
        q_rows, kv_rows = Mapping(tp_size=tp).qkv_rows(cfg, kind.rows_per_stored_row)
        parts = [s.split([q_rows, kv_rows, kv_rows], dim=0) for s in shards]
        q, k, v = (torch.cat([p[i] for p in parts], dim=0) for i in range(3))
        kv = cfg.num_key_value_heads
        if kv < tp:  # every rank holds one copy of a head; keep the first of each run of tp // kv
            reps = tp // kv
            k = k.reshape(kv, reps, -1, *k.shape[1:])[:, 0].reshape(-1, *k.shape[1:])
            v = v.reshape(kv, reps, -1, *v.shape[1:])[:, 0].reshape(-1, *v.shape[1:])
        return torch.cat([q, k, v], dim=0)
    if kind is ShardKind.ROW:
        return torch.cat(shards, dim=1)
    merged = torch.cat(shards, dim=0)
    if kind is ShardKind.VOCAB and full_rows is not None:
        merged = merged[:full_rows]
    return merged
