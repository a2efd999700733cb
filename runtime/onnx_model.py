"""The Qwen2 decoder as one ONNX-exportable graph with the KV cache as explicit inputs and outputs.

`OnnxQwen2.forward(input_ids, attention_mask, position_ids, past)` -> `(logits, *present)`:

- input_ids, position_ids (B, T) int64; attention_mask (B, P + T) int64, 1 for a real token and 0
  for padding, over the past and the new columns;
- past: per layer a key then a value (B, Hkv, P, D) in the model dtype, P = 0 for prefill;
- logits (B, T, V) float32; present: per layer the key and value (B, Hkv, P + T, D).

The same graph serves prefill and decode; batch, sequence and past-sequence stay dynamic. Nothing in
it branches on a shape: RoPE gathers rows of a cos/sin table by position_ids (the table holds
`max_positions` rows), GQA groups the query heads of each KV head in a 5-D matmul that broadcasts
K/V instead of repeating them, and the causal mask is built from the past length of the past key.
Padding is the caller's, through attention_mask (left or right) and position_ids; a query whose
every key is masked attends uniformly, so padding rows stay finite.

The weights carry fathom's TensorRT-LLM checkpoint names (`transformer.layers.{i}.attention.qkv.weight`,
...), which become the ONNX initializer names; `from_state_dict` takes tensors by those names (a
checkpoint's, or a `Qwen2Model.state_dict()`) without copying them. A model with tied embeddings
(`tie_word_embeddings`) has no lm_head parameter: its output projection reads the embedding, so the
graph holds that matrix once. Inference only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fathom.build.config import ModelConfig

from .model import QwenAttention, QwenMLP


def rope_tables(cfg: ModelConfig, max_positions: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (max_positions, D) of GPT-NeoX style RoPE (rotate_half) with base rope_theta,
    computed in float32 then cast, as fathom.runtime.model's RotaryEmbedding computes them."""
    D = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)  # (S, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (S, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """HF Qwen2RMSNorm's op order: normalize in float32, scale in the model dtype."""
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(QwenAttention):
    """The executor model's attention parameters (qkv, dense), computed for the graph."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.cfg = cfg

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                past_k: torch.Tensor, past_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, H), cos/sin (B, 1, T, D), mask (B, 1, 1, T, P + T) bool, past K/V (B, Hkv, P, D)
        -> output (B, T, H), present K/V (B, Hkv, P + T, D)."""
        cfg = self.cfg
        Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q, k, v = self.qkv(x).split((cfg.q_size, cfg.kv_size, cfg.kv_size), dim=-1)
        q = q.unflatten(-1, (Hq, D)).transpose(1, 2)  # (B, Hq, T, D)
        k = k.unflatten(-1, (Hkv, D)).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.unflatten(-1, (Hkv, D)).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = torch.cat((past_k, k), dim=2)  # (B, Hkv, P + T, D)
        v = torch.cat((past_v, v), dim=2)
        # Query head h reads KV head h // G (as SDPA's enable_gqa): group the G query heads of each
        # KV head and broadcast K/V over them.
        q = q.unflatten(1, (Hkv, Hq // Hkv))  # (B, Hkv, G, T, D)
        scores = torch.matmul(q, k.unsqueeze(2).transpose(-1, -2)) * (D ** -0.5)  # (B, Hkv, G, T, P + T)
        scores = scores.float().masked_fill(~mask, torch.finfo(torch.float32).min)
        probs = scores.softmax(dim=-1).to(v.dtype)
        out = torch.matmul(probs, v.unsqueeze(2))  # (B, Hkv, G, T, D)
        out = out.flatten(1, 2).transpose(1, 2).flatten(2)  # (B, T, Hq * D)
        return self.dense(out), k, v


class MLP(QwenMLP):
    """The executor model's MLP parameters (fc = gate_proj, gate = up_proj, proj), computed for the graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.silu(self.fc(x)) * self.gate(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = Attention(cfg)
        self.post_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, past_k, past_v):
        h, k, v = self.attention(self.input_layernorm(x), cos, sin, mask, past_k, past_v)
        x = x + h
        return x + self.mlp(self.post_layernorm(x)), k, v


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.vocab_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.ln_f = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class OnnxQwen2(nn.Module):
    """See the module docstring. Build it with `from_state_dict`."""

    def __init__(self, cfg: ModelConfig, max_positions: int):
        super().__init__()
        self.cfg = cfg
        self.transformer = Transformer(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.register_buffer("rope_cos", torch.empty(max_positions, cfg.head_dim))
        self.register_buffer("rope_sin", torch.empty(max_positions, cfg.head_dim))

    @classmethod
    def from_state_dict(cls, cfg: ModelConfig, state: dict[str, torch.Tensor], max_positions: int) -> "OnnxQwen2":
        """Share the tensors of `state` (TensorRT-LLM names, one floating dtype; a tied model's
        lm_head.weight, if there, is left out); the RoPE tables are made in that dtype."""
        with torch.device("meta"):
            model = cls(cfg, max_positions)
        state = dict(state)
        if cfg.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        dtype = state["transformer.vocab_embedding.weight"].dtype
        state["rope_cos"], state["rope_sin"] = rope_tables(cfg, max_positions, dtype)
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        t = self.transformer
        (B, T), P = input_ids.shape, past[0].shape[2]
        x = t.vocab_embedding(input_ids)  # (B, T, H)
        cos = F.embedding(position_ids, self.rope_cos).unsqueeze(1)  # (B, 1, T, D)
        sin = F.embedding(position_ids, self.rope_sin).unsqueeze(1)
        # A mask of another shape than (B, P + T) fails in this Reshape instead of broadcasting.
        mask = causal_padding_mask(attention_mask.reshape(B, P + T), T, P)
        present = []
        for i, layer in enumerate(t.layers):
            x, k, v = layer(x, cos, sin, mask, past[2 * i], past[2 * i + 1])
            present += [k, v]
        head = t.vocab_embedding.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(t.ln_f(x), head).float()
        return (logits, *present)


def causal_padding_mask(attention_mask: torch.Tensor, T: int, P) -> torch.Tensor:
    """(B, 1, 1, T, P + T) bool: key column j is visible to new token t when attention_mask marks it
    a real token and j <= P + t; attention_mask is (B, P + T)."""
    cols = torch.arange(P + T, device=attention_mask.device)  # (P + T,)
    rows = torch.arange(T, device=attention_mask.device) + P  # (T,)
    causal = cols[None, :] <= rows[:, None]  # (T, P + T)
    return (causal[None] & attention_mask.bool()[:, None, :])[:, None, None]


# ---- the graph's inputs and outputs ------------------------------------------------------------
# Axis names of the dynamic dimensions; an output's past + new axis is named by the exporter.
BATCH, SEQUENCE, PAST_SEQUENCE, TOTAL_SEQUENCE = "batch", "sequence", "past_sequence", "total_sequence"


def past_names(layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def input_names(layers: int) -> list[str]:
    return ["input_ids", "attention_mask", "position_ids", *past_names(layers)]


def output_names(layers: int) -> list[str]:
    return ["logits", *(f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value"))]


def example_inputs(cfg: ModelConfig, dtype: torch.dtype) -> tuple:
    """Inputs to trace with: every dynamic size >= 2 and distinct (torch.export specializes sizes 0
    and 1, and equal sizes may be taken for one), every past tensor its own (the exporter merges
    inputs that are one tensor)."""
    B, T, P = 2, 3, 5
    ids = torch.zeros(B, T, dtype=torch.int64)
    mask = torch.ones(B, P + T, dtype=torch.int64)
    positions = torch.arange(P, P + T).repeat(B, 1)
    past = [torch.zeros(B, cfg.num_key_value_heads, P, cfg.head_dim, dtype=dtype)
            for _ in range(2 * cfg.num_hidden_layers)]
    return ids, mask, positions, past


def dynamic_shapes(cfg: ModelConfig) -> tuple:
    """torch.export dynamic shapes of `example_inputs`, with the axis names above."""
    Dim = torch.export.Dim
    batch, seq, past, total = Dim(BATCH), Dim(SEQUENCE), Dim(PAST_SEQUENCE), Dim(TOTAL_SEQUENCE)
    return ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
            [{0: batch, 2: past} for _ in range(2 * cfg.num_hidden_layers)])
