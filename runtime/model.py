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


class PackedAttention(Protocol):
    def attend(self, layer: int, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """Token-major: q (N, Hq, D), kv (N, 2, Hkv, D) (K then V) of the new tokens -> output (N, Hq, D)."""


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """HF Qwen2RMSNorm's op order: normalize in float32, scale in the model dtype. `eps` may be a
    0-d float32 tensor (the packed path: adding a Python float wraps it in a tensor every call)."""
    if x.dtype == torch.float32:
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * weight  # x * x == x.pow(2), bit for bit
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """GPT-NeoX style RoPE (rotate_half) with base rope_theta; cos/sin cached per position.

    rotate_half(x) * sin is computed as roll(x, D/2) * sin_signed with sin_signed = (-sin1, sin2):
    the same products (x2 * -s == -x2 * s exactly), one op instead of chunk + neg + cat.
    """

    def __init__(self, head_dim: int, theta: float, max_positions: int):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)  # (S, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (S, D)
        sin_signed = torch.cat((-freqs.sin(), freqs.sin()), dim=-1)  # (S, D)
        # cos and sin side by side: the packed path fetches both with one index_select.
        self.register_buffer("cos_sin", torch.stack((emb.cos(), sin_signed), dim=1)[:, :, None], persistent=False)  # (S, 2, 1, D)

    def table(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) -> cos, sin_signed (B, 1, T, D); (N,) -> (N, 1, D). Once per forward."""
        if positions.dim() == 1:
            return self.cos_sin.index_select(0, positions).to(dtype).unbind(1)
        cs = self.cos_sin[positions].to(dtype)  # (B, T, 2, 1, D)
        return cs[:, :, 0].transpose(1, 2), cs[:, :, 1].transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor):
        cos, sin = self.table(positions, q.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, bit for bit (see RotaryEmbedding); `out` may be x itself."""
    return torch.add(x * cos, x.roll(x.shape[-1] // 2, dims=-1) * sin_signed, out=out)


class QwenAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, bias=True)
        self.dense = nn.Linear(cfg.q_size, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, attn: Attention, layer: int):
        cfg = self.cfg
        B, T, _ = x.shape
        Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        qkv = self.qkv(x)  # (B, T, q + 2 kv)
        # RoPE on q and k heads together (the same elementwise ops, half the op count).
        qk = qkv[..., :cfg.q_size + cfg.kv_size].view(B, T, Hq + Hkv, D).transpose(1, 2)  # (B, Hq+Hkv, T, D)
        q, k = apply_rope(qk, cos, sin).split([Hq, Hkv], dim=1)  # (B, Hq, T, D), (B, Hkv, T, D)
        v = qkv[..., cfg.q_size + cfg.kv_size:].view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
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

    def forward(self, x, cos, sin, attn, layer):
        x = x + self.attention(self.input_layernorm(x), cos, sin, attn, layer)
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
        A (B, K) `logits_index` selects K positions per row, returning (B, K, V) (the continuous-
        batching executor packs many sequences into one row).
        """
        x = self.transformer.vocab_embedding(input_ids)  # (B, T, H)
        cos, sin = self.rope.table(positions, x.dtype)  # (B, 1, T, D) each
        for i, layer in enumerate(self.transformer.layers):
            x = layer(x, cos, sin, attn, i)
        if logits_index is not None:
            index = logits_index if logits_index.dim() == 2 else logits_index[:, None]  # (B, K)
            x = x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))  # (B, K, H)
        return self.lm_head(self.transformer.ln_f(x)).float()

    def packed_ok(self) -> bool:
        """True when every module is a plain one without hooks, so `forward_packed` computes exactly
        what `forward` would (quantized linears or calibration hooks need the module path)."""
        plain = (Qwen2Model, Transformer, nn.ModuleList, nn.Embedding, DecoderLayer, RMSNorm, QwenAttention,
                 QwenMLP, nn.Linear, RotaryEmbedding)
        from torch.nn.modules import module as mod

        if mod._global_forward_hooks or mod._global_forward_pre_hooks:
            return False
        return all(type(m) in plain and not m._forward_hooks and not m._forward_pre_hooks for m in self.modules())

    def packed_weights(self) -> list[tuple[torch.Tensor, ...]]:
        """The tensors `forward_packed` reads, looked up once (nn.Module attribute access is slow):
        per layer (input norm, qkv w, qkv b, dense, post norm, fc, gate, proj), then the head."""
        t = self.transformer
        layers = [(l.input_layernorm.weight, l.attention.qkv.weight, l.attention.qkv.bias, l.attention.dense.weight,
                   l.post_layernorm.weight, l.mlp.fc.weight, l.mlp.gate.weight, l.mlp.proj.weight) for l in t.layers]
        eps = torch.tensor(self.cfg.rms_norm_eps, dtype=torch.float32, device=self.device)
        return layers + [(t.vocab_embedding.weight, t.ln_f.weight, self.lm_head.weight, eps)]

    def forward_packed(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: PackedAttention,
                       logits_index: torch.Tensor | None = None,
                       weights: list[tuple[torch.Tensor, ...]] | None = None) -> torch.Tensor:
        """input_ids/positions (N,) -> logits (N, V), or (K, V) at `logits_index` (K,), float32.

        The continuous-batching executor's hot path: one packed row of tokens from many sequences,
        2-D activations, weights read directly (a module call costs ~2 us on a CPU, a small model
        makes dozens per token; pass `weights` = packed_weights() to skip even the lookups) and
        token-major attention. The same ops as `forward`, so the same numbers; only for models
        where `packed_ok()` holds.
        """
        cfg = self.cfg
        N = input_ids.shape[0]
        Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        qk_size = cfg.q_size + cfg.kv_size
        *layers, (embedding, ln_f, lm_head, eps) = weights or self.packed_weights()
        x = F.embedding(input_ids, embedding)  # (N, H)
        cos, sin = self.rope.table(positions, x.dtype)  # (N, 1, D) each
        for i, (ln1, qkv_w, qkv_b, dense, ln2, fc, gate, proj) in enumerate(layers):
            qkv = F.linear(rms_norm(x, ln1, eps), qkv_w, qkv_b)  # (N, q + 2 kv)
            qk = qkv[:, :qk_size].view(N, Hq + Hkv, D)
            apply_rope(qk, cos, sin, out=qk)  # in place: K lands next to V for a single cache write
            q, kv = qkv[:, :cfg.q_size].view(N, Hq, D), qkv[:, cfg.q_size:].view(N, 2, Hkv, D)
            out = attn.attend(i, q, kv)  # (N, Hq, D)
            x = x + F.linear(out.reshape(N, cfg.q_size), dense)
            h = rms_norm(x, ln2, eps)
            x = x + F.linear(F.silu(F.linear(h, fc)) * F.linear(h, gate), proj)
        if logits_index is not None:
            x = x.index_select(0, logits_index)  # (K, H)
        return F.linear(rms_norm(x, ln_f, eps), lm_head).float()

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.vocab_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.vocab_embedding.weight.device

    @classmethod
    def from_tensors(cls, cfg: ModelConfig, tensors: dict[str, torch.Tensor], dtype: torch.dtype,
                     device: str | torch.device = "cpu", max_seq_len: int = 16384,
                     modules: dict[str, nn.Module] | None = None) -> "Qwen2Model":
        """Build from native (TRT-LLM named, unsharded) tensors without a second copy in memory.

        `modules`: submodule name -> a ready module that replaces it (quantized linears,
        fathom.runtime.quant_linear); its tensors are its own, not in `tensors`.
        """
        max_seq_len = min(max_seq_len, cfg.max_position_embeddings) if max_seq_len else cfg.max_position_embeddings
        with torch.device("meta"):
            model = cls(cfg, max_seq_len=max_seq_len)
        state = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() and v.dtype.itemsize > 1 else v.to(device)
                 for k, v in tensors.items()}
        for name, module in (modules or {}).items():
            model.set_submodule(name, module)
            state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
        if cfg.tie_word_embeddings and "lm_head.weight" not in state:
            state["lm_head.weight"] = state["transformer.vocab_embedding.weight"]
        model.load_state_dict(state, strict=True, assign=True)
        # Buffers were created on meta; rebuild RoPE on the real device.
        model.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, max_seq_len).to(device)
        return model.eval()


def param_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
