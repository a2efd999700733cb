"""fathom's own Qwen2 decoder in PyTorch.

Parameter names are the TensorRT-LLM checkpoint names (`transformer.layers.{i}.attention.qkv.weight`,
...), so a fathom checkpoint loads with `load_state_dict` and an HF directory goes through the
same table as `fathom convert` (build/weight_map.py). The KV cache and masking live outside the
model: `forward` receives an attention backend (`Attention`) that stores k/v and attends, so the
same weights serve the reference static cache and the paged continuous-batching executor.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fathom.build.config import ModelConfig


class Attention(Protocol):
    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, Hq, T, D), k/v (B, Hkv, T, D) of the new tokens -> attention output (B, Hq, T, D)."""


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same op order as HF Qwen2RMSNorm: normalize in float32, scale in the model dtype.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """GPT-NeoX style RoPE (rotate_half) with base rope_theta; cos/sin cached per position."""

    def __init__(self, head_dim: int, theta: float, max_positions: int):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)  # (S, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (S, D)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor):
        cos = self.cos[positions].to(q.dtype).unsqueeze(1)  # (B, 1, T, D)
        sin = self.sin[positions].to(q.dtype).unsqueeze(1)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class QwenAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, bias=True)
        self.dense = nn.Linear(cfg.q_size, cfg.hidden_size, bias=False)

    def forward(self, x, positions, rope: RotaryEmbedding, attn: Attention, layer: int):
        cfg = self.cfg
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
        q = q.view(B, T, cfg.num_attention_heads, cfg.head_dim).transpose(1, 2)  # (B, Hq, T, D)
        k = k.view(B, T, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
        q, k = rope(q, k, positions)
        out = attn(layer, q, k, v)  # (B, Hq, T, D)
        return self.dense(out.transpose(1, 2).reshape(B, T, cfg.q_size))


class QwenMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # TRT-LLM naming: fc = gate_proj (activated), gate = up_proj, proj = down_proj.
        self.fc = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.gate = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.proj(F.silu(self.fc(x)) * self.gate(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = QwenAttention(cfg)
        self.post_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = QwenMLP(cfg)

    def forward(self, x, positions, rope, attn, layer):
        x = x + self.attention(self.input_layernorm(x), positions, rope, attn, layer)
        return x + self.mlp(self.post_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.vocab_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.ln_f = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Qwen2Model(nn.Module):
    def __init__(self, cfg: ModelConfig, max_seq_len: int = 16384):
        super().__init__()
        self.cfg = cfg
        self.max_seq_len = max_seq_len
        self.transformer = Transformer(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, max_seq_len)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: Attention,
                logits_index: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids/positions (B, T) -> logits (B, T, V) in float32.

        `logits_index` (B,) selects one position per row before lm_head (the last prompt token in
        prefill), returning (B, 1, V): prefill then skips the lm_head matmul for every other token.
        """
        x = self.transformer.vocab_embedding(input_ids)  # (B, T, H)
        for i, layer in enumerate(self.transformer.layers):
            x = layer(x, positions, self.rope, attn, i)
        if logits_index is not None:
            x = x[torch.arange(x.shape[0], device=x.device), logits_index].unsqueeze(1)  # (B, 1, H)
        return self.lm_head(self.transformer.ln_f(x)).float()

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.vocab_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.vocab_embedding.weight.device

    @classmethod
    def from_tensors(cls, cfg: ModelConfig, tensors: dict[str, torch.Tensor], dtype: torch.dtype,
                     device: str | torch.device = "cpu", max_seq_len: int = 16384) -> "Qwen2Model":
        """Build from native (TRT-LLM named, unsharded) tensors without a second copy in memory."""
        max_seq_len = min(max_seq_len, cfg.max_position_embeddings) if max_seq_len else cfg.max_position_embeddings
        with torch.device("meta"):
            model = cls(cfg, max_seq_len=max_seq_len)
        state = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() and v.dtype.itemsize > 1 else v.to(device)
                 for k, v in tensors.items()}
        if cfg.tie_word_embeddings and "lm_head.weight" not in state:
            state["lm_head.weight"] = state["transformer.vocab_embedding.weight"]
        model.load_state_dict(state, strict=True, assign=True)
        # Buffers were created on meta; rebuild RoPE on the real device.
        model.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, max_seq_len).to(device)
        return model.eval()


def param_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
