"""fathom's own Qwen2 decoder in PyTorch.

Parameter names are the TensorRT-LLM checkpoint names (`transformer.layers.{i}.attention.qkv.weight`,
...), so a fathom checkpoint loads with `load_state_dict` and an HF directory goes through the
same table as `fathom convert` (build/weight_map.py). The KV cache and masking live outside the
model: every forward receives an attention backend (`Attention`) that stores K/V and attends, so the
same weights serve the reference static cache, passes without a cache (`CausalAttention`: quality,
calibration) and the paged continuous-batching executor.

One decoder-layer computation (`decoder_layer`) serves both entry points: `forward` (B rows of T
tokens) and `forward_packed` (one packed row of N tokens from many sequences, the executor's hot
path); both run it on 2-D (tokens, features) activations, so they agree bit for bit. It reads
`ModelWeights` (fathom.runtime.model_weights), looked up once: norm weights, and each linear as a
plain callable, torch.mm/addmm bound to an `nn.Linear`'s tensors (a module call costs ~2 us on a CPU,
F.linear's argument handling ~1 us, and a small model makes dozens per token) or a quantized
module's forward (fathom.runtime.quant_linear). The MLP's fc and gate take one matmul once
`fuse_gate_up` made their weights halves of one tensor (the executor does, on every rank).
Inference only: RoPE is applied in place, so run it under torch.inference_mode() or torch.no_grad().

Tensor parallelism is explicit state too (`tp`, fathom.runtime.tensor_parallel): a rank's model
holds its shard of every layer (`shard_cfg`: its heads and MLP width), `decoder_layer` all-reduces
after attention and after the MLP, and lm_head's vocabulary pieces are gathered on rank 0.

Quantization is explicit state, fixed when the model is built: quantized linears are modules of
their own (`from_tensors(modules=...)`), the checkpoint's KV cache format and scales are `kv_quant`
(the executors hand it to the object that stores K/V), `quant_info` describes the kernels in use.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fathom.build.config import DEFAULT_MAX_SEQ_LEN, ModelConfig

from .model_weights import LayerWeights, LinearObserver, ModelWeights, as_linear, gated_linears, observed
from .tensor_parallel import SINGLE, TensorParallel

if TYPE_CHECKING:
    from fathom.build.quant.kv_cache import KVAmax, KVCacheQuant

class Attention(Protocol):
    def attend(self, layer: int, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """q (*tokens, Hq, D), kv (*tokens, 2, Hkv, D) (K after RoPE, then V) of the new tokens ->
        output (*tokens, Hq, D). `tokens` is (B, T) in `Qwen2Model.forward`, (N,) in `forward_packed`."""


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """F.scaled_dot_product_attention of q (B, Hq, T, D) over k/v (B, Hkv, L, D), each KV head shared
    by Hq / Hkv query heads; causal when `mask` is None."""
    gqa = q.shape[1] != k.shape[1]
    if gqa and q.is_cuda:
        # CUDA's fused kernels want equal head counts; with enable_gqa a masked call could fall back to
        # the math kernel and its (Hq, T, L) score matrix (GBs at 16K).
        group = q.shape[1] // k.shape[1]
        k, v, gqa = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=gqa)


def causal_attention(q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Rows attending to themselves with no cache: q (B, T, Hq, D), kv (B, T, 2, Hkv, D) -> (B, T, Hq, D),
    token t seeing tokens 0..t."""
    k, v = kv.unbind(2)
    return sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


class CausalAttention:
    """Attention backend for whole sequences without a cache (`causal_attention`).

    `kv_quant`: K/V are rounded to that cache format first, as a cache in it would return them
    (pass the model's `kv_quant`). `observer` (fathom.build.quant.kv_cache.KVAmax) sees K/V as a
    cache would store them (calibration).
    """

    def __init__(self, kv_quant: KVCacheQuant | None = None, observer: KVAmax | None = None):
        self.kv_quant, self.observer = kv_quant, observer

    def attend(self, layer: int, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        if self.kv_quant is not None:
            kv = self.kv_quant.round(layer, kv)
        if self.observer is not None:
            self.observer.observe(layer, kv)
        return causal_attention(q, kv)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """HF Qwen2RMSNorm's op order: normalize in float32, scale in the model dtype. `eps` and `width`
    (the size of the last dimension) are 0-d float32 tensors: mean(x^2) + eps is computed as
    eps + sum(x^2) / width in one addcdiv, bit for bit (`mean` divides its sum by the width too, at
    twice the cost of a sum on a CPU). torch 2.13 has no fused kernel to use instead on the CPU:
    F.rms_norm and aten::_fused_rms_norm run these same ops (measured no faster), and there is no
    fused residual add + RMSNorm. On CUDA `mean` multiplies its sum by 1/width instead (a different
    rounding), so there it stays `mean`, as HF's."""
    if x.is_cuda:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(x.dtype)
    if x.dtype == torch.float32:
        return x * torch.rsqrt(torch.addcdiv(eps, (x * x).sum(-1, keepdim=True), width)) * weight  # x * x == x.pow(2)
    h = x.float()
    h = h * torch.rsqrt(torch.addcdiv(eps, (h * h).sum(-1, keepdim=True), width))
    return weight * h.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, bit for bit (see RotaryEmbedding); `in_place` writes it into x.
    In place is mul_/add_, not `out=x`: torch.compile cannot trace `out=` into a strided view (q and
    k inside a packed qkv row), and the op count is the same."""
    rotated = x.roll(x.shape[-1] // 2, dims=-1) * sin_signed
    return x.mul_(cos).add_(rotated) if in_place else x * cos + rotated


class RotaryEmbedding(nn.Module):
    """GPT-NeoX style RoPE (rotate_half) with base rope_theta; cos/sin cached per position.

    rotate_half(x) * sin is computed as roll(x, D/2) * sin_signed with sin_signed = (-sin1, sin2):
    the same products (x2 * -s == -x2 * s exactly), one op instead of chunk + neg + cat. Fewer ops
    measured no faster on the CPU: one product with a per-position 2x2 rotation then a sum over it
    (the same bits; its strided reduction costs more), or addcmul for the last product and add (fused
    multiply-add: other bits).
    """

    def __init__(self, head_dim: int, theta: float, max_positions: int):
        super().__init__()
        # On the CPU even inside a meta-device model (`from_tensors` builds it again on its device):
        # on meta, `theta ** tensor` imports torch's reference ops (~800 modules, ~75 MB of RSS).
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim))
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32, device="cpu"), inv_freq)  # (S, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (S, D)
        sin_signed = torch.cat((-freqs.sin(), freqs.sin()), dim=-1)  # (S, D)
        # cos and sin side by side: one index_select fetches both.
        self.register_buffer("cos_sin", torch.stack((emb.cos(), sin_signed), dim=1)[:, :, None], persistent=False)  # (S, 2, 1, D)

    def table(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (*tokens) -> cos, sin_signed (*tokens, 1, D), broadcasting over heads. Once per forward."""
        cs = self.cos_sin.index_select(0, positions.reshape(-1)).view(*positions.shape, *self.cos_sin.shape[1:])
        return cs.to(dtype).unbind(-3)


class RMSNorm(nn.Module):
    """The weight of one `rms_norm`."""

    def __init__(self, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))


class QwenAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.qkv = nn.Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, bias=True)
        self.dense = nn.Linear(cfg.q_size, cfg.hidden_size, bias=False)


class QwenMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # TRT-LLM naming: fc = gate_proj (activated), gate = up_proj, proj = down_proj.
        self.fc = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.gate = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up: torch.Tensor | None = None  # (2I, H) whose halves fc and gate are views of (`fuse_gate_up`)

    def fused_weight(self) -> torch.Tensor | None:
        """`gate_up` while fc.weight and gate.weight are still its halves (a move or re-layout of either
        makes them tensors of their own again)."""
        w = self.gate_up
        if w is not None and (self.fc.weight.data_ptr() != w.data_ptr()
                              or self.gate.weight.data_ptr() != w[w.shape[0] // 2:].data_ptr()):
            self.gate_up = w = None  # stale: let the old tensor go
        return w


class DecoderLayer(nn.Module):
    """The parameters of one layer; `decoder_layer` computes it."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size)
        self.attention = QwenAttention(cfg)
        self.post_layernorm = RMSNorm(cfg.hidden_size)
        self.mlp = QwenMLP(cfg)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, shard_cfg: ModelConfig):
        super().__init__()
        # Replicated on every rank. No random init (`from_tensors` assigns every weight): normal_ on the
        # meta device imports torch's reference ops (as RotaryEmbedding says).
        self.vocab_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                            _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(shard_cfg) for _ in range(cfg.num_hidden_layers))
        self.ln_f = RMSNorm(cfg.hidden_size)


def decoder_layer(cfg: ModelConfig, w: LayerWeights, layer: int, x: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, tokens: torch.Size, attn: Attention, eps: torch.Tensor, width: torch.Tensor,
                  tp: TensorParallel = SINGLE) -> torch.Tensor:
    """One decoder layer on x (N, H), cos/sin (N, 1, D) -> (N, H): N tokens, whose shape for attention
    is `tokens` ((B, T) or (N,)). `cfg` is the rank's shard config (its heads, its MLP width); the
    row-parallel outputs are summed over `tp`.

    The residual adds stay separate ops: folding one into its matmul (torch.addmm(x, h, W^T)) saves
    ~1 us per call on the dev CPU but rounds differently from adding the ranks' summed products:
    one process then differs from its 2-rank run by 1.2e-5 on the logits of tests/test_torch_tp.py's
    768-wide model (6e-6 with the adds apart), over the 1e-5 that test allows."""
    Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    qkv = w.qkv(rms_norm(x, w.input_norm, eps, width))  # (N, q + 2 kv)
    qk = qkv[:, :cfg.q_size + cfg.kv_size].view(-1, Hq + Hkv, D)
    apply_rope(qk, cos, sin, in_place=True)  # RoPE on q and k heads together, in place: K lands next to V
    q = qkv[:, :cfg.q_size].view(*tokens, Hq, D)
    kv = qkv[:, cfg.q_size:].view(*tokens, 2, Hkv, D)
    x = x + tp.all_reduce(w.dense(attn.attend(layer, q, kv).reshape(x.shape[0], cfg.q_size)))
    a, b = w.fc_gate(rms_norm(x, w.post_norm, eps, width))
    return x + tp.all_reduce(w.proj(F.silu(a) * b))


class Qwen2Model(nn.Module):
    def __init__(self, cfg: ModelConfig, max_seq_len: int = DEFAULT_MAX_SEQ_LEN, kv_quant: KVCacheQuant | None = None,
                 quant_info: dict | None = None, tp: TensorParallel = SINGLE):
        """`kv_quant`: the checkpoint's KV cache format and per-layer scales (None: the model dtype).
        `quant_info`: what runs where for a quantized checkpoint (fathom.runtime.quant_linear.describe_quantization).
        `tp`: this rank of a tensor-parallel group; the model holds the rank's shard (`shard_cfg`)."""
        super().__init__()
        if kv_quant is not None:
            kv_quant.check_layers(cfg.num_hidden_layers)
        self.cfg = cfg
        self.tp = tp
        self.shard_cfg = tp.shard_config(cfg)
        self.max_seq_len = max_seq_len
        self.kv_quant = kv_quant
        self.quant_info = quant_info
        self.transformer = Transformer(cfg, self.shard_cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, tp.vocab_rows(cfg), bias=False)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, max_seq_len)

    def weights(self, observer: LinearObserver | None = None) -> ModelWeights:
        """The tensors and linears a forward reads, looked up once (nn.Module attribute access is
        slow; pass them as `weights` to skip even this). With `observer`, each linear first hands it
        its module name and input (`mlp.fc` and `mlp.gate` the same input, fused or not)."""
        t = self.transformer
        layers = []
        for i, l in enumerate(t.layers):
            p = f"transformer.layers.{i}"
            layers.append(LayerWeights(
                l.input_layernorm.weight, observed(as_linear(l.attention.qkv), observer, f"{p}.attention.qkv"),
                observed(as_linear(l.attention.dense), observer, f"{p}.attention.dense"), l.post_layernorm.weight,
                observed(gated_linears(l.mlp), observer, f"{p}.mlp.fc", f"{p}.mlp.gate"),
                observed(as_linear(l.mlp.proj), observer, f"{p}.mlp.proj")))
        scalar = partial(torch.tensor, dtype=torch.float32, device=self.device)
        return ModelWeights(tuple(layers), t.vocab_embedding.weight, t.ln_f.weight,
                            observed(as_linear(self.lm_head), observer, "lm_head"), scalar(self.cfg.rms_norm_eps),
                            scalar(float(self.cfg.hidden_size)))

    def _hidden(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: Attention,
                w: ModelWeights) -> torch.Tensor:
        """input_ids/positions (*tokens) -> hidden states (N, H), N tokens in order."""
        tokens = input_ids.shape
        x = F.embedding(input_ids.reshape(-1), w.embedding)  # (N, H)
        cos, sin = self.rope.table(positions.reshape(-1), x.dtype)  # (N, 1, D) each
        for i, layer in enumerate(w.layers):
            x = decoder_layer(self.shard_cfg, layer, i, x, cos, sin, tokens, attn, w.eps, w.width, self.tp)
        return x

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: Attention,
                logits_index: torch.Tensor | None = None, weights: ModelWeights | None = None) -> torch.Tensor:
        """input_ids/positions (B, T) -> logits (B, T, V) in float32.

        `logits_index` (B,) selects one position per row before lm_head (the last prompt token in
        prefill), returning (B, 1, V): prefill then skips the lm_head matmul for every other token.
        A (B, K) `logits_index` selects K positions per row, returning (B, K, V).
        """
        w = self.weights() if weights is None else weights
        x = self._hidden(input_ids, positions, attn, w).view(*input_ids.shape, -1)  # (B, T, H)
        if logits_index is not None:
            index = logits_index if logits_index.dim() == 2 else logits_index[:, None]  # (B, K)
            x = x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))  # (B, K, H)
        logits = self._logits(x.reshape(-1, x.shape[-1]), w)
        return None if logits is None else logits.view(*x.shape[:-1], -1)

    def forward_packed(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: Attention,
                       logits_index: torch.Tensor | None = None, weights: ModelWeights | None = None) -> torch.Tensor:
        """input_ids/positions (N,) -> logits (N, V), or (K, V) at `logits_index` (K,), float32.

        The continuous-batching executor's hot path: one packed row of tokens from many sequences,
        2-D activations and token-major attention; the same computation as `forward`. With tensor
        parallelism every rank runs it on the same inputs and only rank 0 gets logits (others: None).
        """
        w = self.weights() if weights is None else weights
        x = self._hidden(input_ids, positions, attn, w)  # (N, H)
        if logits_index is not None:
            x = x.index_select(0, logits_index)  # (K, H)
        return self._logits(x, w)

    def _logits(self, x: torch.Tensor, w: ModelWeights) -> torch.Tensor | None:
        """Float32 logits of hidden states x (K, H); across tensor-parallel ranks, gathered on rank 0
        (the other ranks get None)."""
        logits = self.tp.gather_vocab(w.lm_head(rms_norm(x, w.final_norm, w.eps, w.width)), self.cfg.vocab_size)
        return None if logits is None else logits.float()

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.vocab_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.vocab_embedding.weight.device

    @classmethod
    def from_tensors(cls, cfg: ModelConfig, tensors: dict[str, torch.Tensor], dtype: torch.dtype,
                     device: str | torch.device = "cpu", max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
                     modules: dict[str, nn.Module] | None = None, kv_quant: KVCacheQuant | None = None,
                     quant_info: dict | None = None, tp: TensorParallel = SINGLE) -> "Qwen2Model":
        """Build from native (TRT-LLM named) tensors without a second copy in memory: unsharded, or
        with `tp`, the tensors of that rank's file of a tp-sized checkpoint.

        `modules`: submodule name -> a ready module that replaces it (quantized linears,
        fathom.runtime.quant_linear); its tensors are its own, not in `tensors`.
        `kv_quant`, `quant_info`: see `Qwen2Model`.
        """
        max_seq_len = min(max_seq_len, cfg.max_position_embeddings) if max_seq_len else cfg.max_position_embeddings
        with torch.device("meta"):
            model = cls(cfg, max_seq_len=max_seq_len, kv_quant=kv_quant, quant_info=quant_info, tp=tp)
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
