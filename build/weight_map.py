"""HF Qwen2 tensor names -> TensorRT-LLM checkpoint names, as tables.

The TRT-LLM names are also the native names of fathom's PyTorch executor ("one artifact, two
executors"), so this table is the only place where HF naming is known.
"""

from __future__ import annotations

from .config import ModelConfig

# Per-layer tensors ({} = layer index): TRT-LLM name -> HF name.
LAYER_MAP = {
    "transformer.layers.{}.input_layernorm.weight": "model.layers.{}.input_layernorm.weight",
    "transformer.layers.{}.post_layernorm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "transformer.layers.{}.attention.dense.weight": "model.layers.{}.self_attn.o_proj.weight",
    # TRT-LLM's "fc" is the activated branch (HF gate_proj) and its "gate" is HF up_proj.
    # The names look swapped; they are not (tensorrt_llm/models/qwen/convert.py).
    "transformer.layers.{}.mlp.fc.weight": "model.layers.{}.mlp.gate_proj.weight",
    "transformer.layers.{}.mlp.gate.weight": "model.layers.{}.mlp.up_proj.weight",
    "transformer.layers.{}.mlp.proj.weight": "model.layers.{}.mlp.down_proj.weight",
}

# Stacked tensors: TRT-LLM name -> HF parts concatenated on dim 0, in this order.
STACKED_MAP = {
    "transformer.layers.{}.attention.qkv.weight": (
        "model.layers.{}.self_attn.q_proj.weight",
        "model.layers.{}.self_attn.k_proj.weight",
        "model.layers.{}.self_attn.v_proj.weight",
    ),
    "transformer.layers.{}.attention.qkv.bias": (
        "model.layers.{}.self_attn.q_proj.bias",
        "model.layers.{}.self_attn.k_proj.bias",
        "model.layers.{}.self_attn.v_proj.bias",
    ),
}

# HF tensors that carry no weights of their own (recomputed buffers).
IGNORED_HF_SUFFIXES = (".rotary_emb.inv_freq",)


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a HF Qwen2 checkpoint of this config must contain, with its shape."""
    h, i, q, kv = cfg.hidden_size, cfg.intermediate_size, cfg.q_size, cfg.kv_size
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (cfg.vocab_size, h),
        "model.norm.weight": (h,),
    }
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    per_layer = {
        "model.layers.{}.input_layernorm.weight": (h,),
        "model.layers.{}.post_attention_layernorm.weight": (h,),
        "model.layers.{}.self_attn.q_proj.weight": (q, h),
        "model.layers.{}.self_attn.k_proj.weight": (kv, h),
        "model.layers.{}.self_attn.v_proj.weight": (kv, h),
        "model.layers.{}.self_attn.q_proj.bias": (q,),
        "model.layers.{}.self_attn.k_proj.bias": (kv,),
        "model.layers.{}.self_attn.v_proj.bias": (kv,),
        "model.layers.{}.self_attn.o_proj.weight": (h, q),
        "model.layers.{}.mlp.gate_proj.weight": (i, h),
        "model.layers.{}.mlp.up_proj.weight": (i, h),
        "model.layers.{}.mlp.down_proj.weight": (h, i),
    }
    for layer in range(cfg.num_hidden_layers):
        for name, shape in per_layer.items():
            shapes[name.format(layer)] = shape
    return shapes


def trtllm_sources(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Unsharded TRT-LLM tensor name -> the HF tensor names it is made of (concatenated on dim 0).

    A tied model has no HF lm_head; TRT-LLM still wants `lm_head.weight`, a copy of the embedding.
    """
    out: dict[str, tuple[str, ...]] = {
        "transformer.vocab_embedding.weight": ("model.embed_tokens.weight",),
        "transformer.ln_f.weight": ("model.norm.weight",),
        "lm_head.weight": ("model.embed_tokens.weight",) if cfg.tie_word_embeddings else ("lm_head.weight",),
    }
    for layer in range(cfg.num_hidden_layers):
        for trt, hf in LAYER_MAP.items():
            out[trt.format(layer)] = (hf.format(layer),)
        for trt, parts in STACKED_MAP.items():
            out[trt.format(layer)] = tuple(p.format(layer) for p in parts)
    return out


def trtllm_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Unsharded (tp=1, pp=1) TRT-LLM tensor shapes."""
    hf = hf_shapes(cfg)
    hf.setdefault("lm_head.weight", (cfg.vocab_size, cfg.hidden_size))
    shapes = {}
    for trt, parts in trtllm_sources(cfg).items():
        first = hf[parts[0]]
        shapes[trt] = (sum(hf[p][0] for p in parts),) + tuple(first[1:])
    return shapes
