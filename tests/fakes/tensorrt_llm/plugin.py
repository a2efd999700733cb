"""Fake tensorrt_llm.plugin: PluginConfig with the 1.2.1 field names and defaults (plugin/plugin.py)."""

FIELDS = {
    "dtype": "float16", "bert_attention_plugin": "auto", "gpt_attention_plugin": "auto", "gemm_plugin": None,
    "gemm_swiglu_plugin": None, "fp8_rowwise_gemm_plugin": None, "qserve_gemm_plugin": None,
    "identity_plugin": None, "nccl_plugin": "auto", "lora_plugin": None, "dora_plugin": False,
    "weight_only_groupwise_quant_matmul_plugin": None, "weight_only_quant_matmul_plugin": None,
    "smooth_quant_plugins": True, "smooth_quant_gemm_plugin": None, "layernorm_quantization_plugin": None,
    "rmsnorm_quantization_plugin": None, "quantize_per_token_plugin": False, "quantize_tensor_plugin": False,
    "moe_plugin": "auto", "mamba_conv1d_plugin": "auto", "low_latency_gemm_plugin": None,
    "low_latency_gemm_swiglu_plugin": None, "gemm_allreduce_plugin": None, "context_fmha": True,
    "bert_context_fmha_fp32_acc": False, "paged_kv_cache": None, "remove_input_padding": True,
    "norm_quant_fusion": False, "reduce_fusion": False, "user_buffer": False, "tokens_per_block": 32,
    "use_paged_context_fmha": True, "use_fp8_context_fmha": True, "fuse_fp4_quant": False,
    "multiple_profiles": False, "paged_state": True, "streamingllm": False, "manage_weights": False,
    "use_fused_mlp": True, "pp_reduce_scatter": False,
}


class PluginConfig:
    def __init__(self, **kwargs):
        unknown = set(kwargs) - set(FIELDS)
        if unknown:
            raise TypeError(f"PluginConfig got unexpected arguments {sorted(unknown)}")
        for key, value in {**FIELDS, **kwargs}.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, key, value):
        if key not in FIELDS:
            raise AttributeError(f"PluginConfig has no field {key!r}")
        object.__setattr__(self, key, value)

    def to_dict(self) -> dict:
        return {key: getattr(self, key) for key in FIELDS}
