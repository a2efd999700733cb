"""`fathom info`: what a MODEL is and what it costs, from its config alone."""

from __future__ import annotations

from fathom.build.config import DEFAULT_MAX_SEQ_LEN
from fathom.build.precision import DTYPE_BYTES, KvCacheFormat
from fathom.build.sources import resolve_model


def model_info(spec: str) -> dict:
    source = resolve_model(spec)
    cfg = source.config
    params = cfg.num_params()
    kv_per_token = {"bfloat16": cfg.kv_bytes_per_token(KvCacheFormat.MODEL.bytes_per_element("bfloat16")),
                    "fp8": cfg.kv_bytes_per_token(KvCacheFormat.FP8.bytes_per_element("bfloat16"))}
    data = {
        "model": spec,
        "kind": source.kind,
        "architecture": "Qwen2ForCausalLM",
        "config": {k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")},
        "parameters": params,
        "parameters_b": round(params / 1e9, 3),
        "weight_bytes": {d: params * DTYPE_BYTES[d] for d in ("float32", "bfloat16")},
        "kv_bytes_per_token": kv_per_token,
        "kv_bytes_per_16k_sequence": {k: v * DEFAULT_MAX_SEQ_LEN for k, v in kv_per_token.items()},
        "tokenizer": str(source.tokenizer_dir) if source.tokenizer_dir else None,
    }
    if source.kind in ("checkpoint", "engine"):
        from fathom.build.checkpoint import read_checkpoint

        ckpt = read_checkpoint(source.path)
        data["precision"], data["kv_cache"] = ckpt.weights.value, ckpt.kv_cache.value
        data["quantization"] = ckpt.quantization.to_trtllm_dict()
        data["mapping"] = ckpt.mapping.to_dict()
    return data
