"""Tensor parallelism of the torch model: which rank this is and the collectives its layers call.

A `TensorParallel` is explicit state handed to `Qwen2Model` (and from it to every decoder layer):
rank, size and the torch.distributed group. The shard a rank holds is the one TensorRT-LLM's
checkpoint gives it (fathom.build.mapping, after `tensorrt_llm/models/qwen/convert.py` and
`tensorrt_llm/layers/attention.py`, v1.2.x):

- attention.qkv and mlp.fc / mlp.gate are column-parallel (a rank computes its heads and its slice
  of the MLP width); KV heads are duplicated when tp > num_key_value_heads (ceil(kv / tp) per rank);
- attention.dense and mlp.proj are row-parallel: each rank's product is a partial sum, so one
  all-reduce after attention and one after the MLP make the residual stream whole again (Megatron-LM's
  layout, as TensorRT-LLM's RowLinear with `tp_group`);
- lm_head is vocab-parallel (rows padded to a multiple of tp, `pad_vocab_size`): rank 0 gathers the
  pieces and drops the padding, so it alone gets the full logits;
- the embedding, norms and per-tensor scales are replicated (`use_parallel_embedding` false).

`shard_config` is the ModelConfig of one rank's layers (its query/KV heads and MLP width, the
full hidden and vocabulary sizes): the decoder layer and the paged KV cache read head counts from
it, so the single-process code runs unchanged on a shard.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from fathom.build.config import ModelConfig
from fathom.build.mapping import Mapping, ShardKind, shard_shape


@dataclass(frozen=True)
class TensorParallel:
    rank: int = 0
    size: int = 1
    group: Any = None  # torch.distributed ProcessGroup; None: the default group

    @property
    def mapping(self) -> Mapping:
        return Mapping(tp_size=self.size)

    def shard_config(self, cfg: ModelConfig) -> ModelConfig:
        """The config of this rank's layers: cfg itself for one rank."""
        if self.size == 1:
            return cfg
        q_rows, kv_rows = self.mapping.qkv_rows(cfg)
        _, _, (fc_rows, _), _, _ = self.mapping.linear_shapes(cfg)
        return replace(cfg, num_attention_heads=q_rows // cfg.head_dim, num_key_value_heads=kv_rows // cfg.head_dim,
                       intermediate_size=fc_rows)

    def vocab_rows(self, cfg: ModelConfig) -> int:
        """lm_head rows on this rank (padded vocabulary / tp)."""
        return shard_shape(ShardKind.VOCAB, (cfg.vocab_size, cfg.hidden_size), self.size, cfg)[0]

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of x over the ranks, in place (x itself for one rank)."""
        if self.size > 1:
            import torch.distributed as dist

            dist.all_reduce(x, group=self.group)
        return x

    def gather_vocab(self, logits: torch.Tensor, vocab_size: int) -> torch.Tensor | None:
        """(K, V/tp) per rank -> (K, vocab_size) on rank 0, None elsewhere (logits itself for one rank)."""
        if self.size == 1:
            return logits
        import torch.distributed as dist

        logits = logits.contiguous()
        parts = [torch.empty_like(logits) for _ in range(self.size)] if self.rank == 0 else None
        dist.gather(logits, parts, dst=0, group=self.group)
        return torch.cat(parts, dim=-1)[..., :vocab_size] if self.rank == 0 else None

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's x on every rank, in place."""
        if self.size > 1:
            import torch.distributed as dist

            dist.broadcast(x, src=0, group=self.group)
        return x

    def all_reduce_min(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise minimum of x over the ranks, in place (x itself for one rank)."""
        if self.size > 1:
            import torch.distributed as dist

            dist.all_reduce(x, op=dist.ReduceOp.MIN, group=self.group)
        return x


SINGLE = TensorParallel()
