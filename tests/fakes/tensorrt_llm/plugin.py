"""Fake tensorrt_llm.plugin: PluginConfig as the pydantic model of tensorrt_llm/plugin/plugin.py (1.2 line).

What fathom depends on, as upstream does it:
- `model_config = ConfigDict(validate_assignment=True, extra="ignore")`: unknown constructor keywords
  are dropped silently, assigning an unknown name raises, assigning a field validates the value;
- plugin fields take only their Literal dtype words, "auto" or None (gemm_plugin also "fp8" and
  "nvfp4"); "enable"/"disable" are read as True/False (None for plugin fields);
- reading a plugin field whose value is "auto" returns `dtype` (`__getattribute__`), while
  `model_dump()` (what Engine.save writes) keeps "auto".
"""

from typing import Any, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationInfo, field_validator

DefaultPluginDtype = Literal["auto", "float16", "float32", "bfloat16", "int32", None]


class PluginConfig(BaseModel):
    model_config = ConfigDict(validate_assignment=True, extra="ignore")

    dtype: str = "float16"
    bert_attention_plugin: Optional[DefaultPluginDtype] = "auto"
    gpt_attention_plugin: Optional[DefaultPluginDtype] = "auto"
    gemm_plugin: Optional[Literal["auto", "float16", "float32", "bfloat16", "int32", "fp8", "nvfp4", None]] = None
    _explicitly_disable_gemm_plugin: bool = PrivateAttr(default=False)
    gemm_swiglu_plugin: Optional[Literal["fp8", None]] = None
    fp8_rowwise_gemm_plugin: Optional[DefaultPluginDtype] = None
    qserve_gemm_plugin: Optional[DefaultPluginDtype] = None
    identity_plugin: Optional[DefaultPluginDtype] = None
    nccl_plugin: Optional[DefaultPluginDtype] = "auto"
    lora_plugin: Optional[DefaultPluginDtype] = None
    dora_plugin: bool = False
    weight_only_groupwise_quant_matmul_plugin: Optional[DefaultPluginDtype] = None
    weight_only_quant_matmul_plugin: Optional[DefaultPluginDtype] = None
    smooth_quant_plugins: bool = True
    smooth_quant_gemm_plugin: Optional[DefaultPluginDtype] = None
    layernorm_quantization_plugin: Optional[DefaultPluginDtype] = None
    rmsnorm_quantization_plugin: Optional[DefaultPluginDtype] = None
    quantize_per_token_plugin: bool = False
    quantize_tensor_plugin: bool = False
    moe_plugin: Optional[DefaultPluginDtype] = "auto"
    mamba_conv1d_plugin: Optional[DefaultPluginDtype] = "auto"
    low_latency_gemm_plugin: Optional[Literal["fp8", None]] = None
    low_latency_gemm_swiglu_plugin: Optional[Literal["fp8", None]] = None
    gemm_allreduce_plugin: Optional[Literal["float16", "bfloat16", None]] = None
    context_fmha: bool = True
    bert_context_fmha_fp32_acc: bool = False
    paged_kv_cache: Optional[bool] = None
    remove_input_padding: bool = True
    norm_quant_fusion: bool = False
    reduce_fusion: bool = False
    user_buffer: bool = False
    tokens_per_block: int = 32
    use_paged_context_fmha: bool = True
    use_fp8_context_fmha: bool = True
    fuse_fp4_quant: bool = False
    multiple_profiles: bool = False
    paged_state: bool = True
    streamingllm: bool = False
    manage_weights: bool = False
    use_fused_mlp: bool = True
    pp_reduce_scatter: bool = False

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if name != "dtype" and value == "auto":
            return self.dtype
        return value

    @field_validator("dtype")
    @classmethod
    def validate_dtype_not_auto(cls, v: str) -> str:
        if v == "auto":
            raise ValueError("Plugin dtype cannot be 'auto'")
        return v

    @field_validator("*", mode="before")
    @classmethod
    def convert_enable_disable(cls, value, info: ValidationInfo):
        if value == "enable":
            return True
        if value == "disable":
            annotation = cls.model_fields[info.field_name].annotation
            if annotation is bool or (get_origin(annotation) is Union and bool in get_args(annotation)):
                return False
            return None
        return value

    def set_nccl_plugin(self, dtype: str = "auto"):
        self.nccl_plugin = dtype
        return self
