"""`fathom info`: what a MODEL is and what it costs, from its config alone."""

from __future__ import annotations

from fathom.build.config import DEFAULT_MAX_SEQ_LEN
from fathom.build.precision import DTYPE_BYTES
from fathom.build.sources import resolve_model


def model_info(spec: str) -> dict:
    source = resolve_model(spec)
    cfg = source.config
    params = cfg.num_params()
    data = {
        "model": spec,
        "kind": source.kind,
        "architecture": "Qwen2ForCausalLM",
        "config": {k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")},
        "parameters": params,
        "parameters_b": round(params / 1e9, 3),
        "weight_bytes": {d: params * DTYPE_BYTES[d] for d in ("float32", "bfloat16")},
        "kv_bytes_per_token": {"bfloat16": cfg.kv_bytes_per_token(2), "fp8": cfg.kv_bytes_per_token(1)},
        "kv_bytes_per_16k_sequence": {"bfloat16": cfg.kv_bytes_per_token(2) * DEFAULT_MAX_SEQ_LEN,
                                      "fp8": cfg.kv_bytes_per_token(1) * DEFAULT_MAX_SEQ_LEN},
        "tokenizer": str(source.tokenizer_dir) if source.tokenizer_dir else None,
    }
    if source.kind in ("checkpoint", "engine"):
        from fathom.build.config import read_json

        raw = read_json(source.path / "config.json")
        raw = raw.get("pretrained_config", raw)
        data["quantization"] = raw.get("quantization")
        data["mapping"] = raw.get("mapping")
    return data
