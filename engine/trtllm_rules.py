"""What tensorrt_llm 1.2.1 does with the attention settings fathom asks for, and what the runtime
can then do with the engine.

`tensorrt_llm.build()` (tensorrt_llm/builder.py, v1.2.1) rewrites the PluginConfig it is given
before building, with a logged warning only:
- `use_fp8_context_fmha` stays on only for the FP8 quantization workflow (`quant_algo` FP8,
  W4A8_AWQ or NVFP4; fathom's formats have FP8 alone) and, with paged context FMHA, only beside an
  FP8 KV cache; with FP8 weights and an FP8 KV cache it is switched on;
- `use_paged_context_fmha` is switched off for an FP8 KV cache outside that workflow
  ("FP8 Paged Context FMHA is disabled because FP8 context FMHA is disabled") and for an INT8 KV
  cache with any weights ("it doesn't work with int8 kv cache currently").

The C++ runtime then needs paged context FMHA for chunked context and for KV block reuse: the
executor switches both off with a warning on an engine without it (cpp/tensorrt_llm/batch_manager/
trtGptModelInflightBatching.cpp, `fixExecutorConfig` / `fixOptionalParams`; constructed directly,
the model refuses instead: "Chunked context requires context FMHA, paged kv_cache and paged context
FMHA all enabled at the same time"), and then rejects each prompt longer than one step. fathom
never asks for what would be switched off: presets follow this rule, and the build and the trtllm
executor refuse a manifest that asks for it (`check_runtime`). Without chunked context one engine step must hold a whole
prompt: the scheduler's maximum context length is `max_num_tokens` when context FMHA is on, so
`max_num_tokens` must be at least `max_input_len`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fathom.build.errors import PlanError
from fathom.build.precision import KvCacheFormat, QuantAlgo, WeightFormat

# tensorrt_llm/builder.py build(): the quant_algo values of the FP8 quantization workflow, as far
# as fathom's weight formats reach (upstream lists FP8, W4A8_AWQ and NVFP4).
FP8_WORKFLOW_ALGOS = (QuantAlgo.FP8,)
# Runtime settings (engine manifest "runtime" keys, ModelRunnerCpp.from_dir argument names) that
# need an engine built with paged context FMHA.
NEEDS_PAGED_CONTEXT_FMHA = ("enable_chunked_context", "kv_cache_enable_block_reuse")


@dataclass(frozen=True)
class ContextAttention:
    """The context-phase attention an engine of these formats gets from build()."""

    paged_context_fmha: bool
    fp8_context_fmha: bool
    reason: str | None = None  # why paged context FMHA is off

    @property
    def chunked_context(self) -> bool:
        return self.paged_context_fmha


def context_attention(weights: WeightFormat, kv_cache: KvCacheFormat) -> ContextAttention:
    """What build() leaves of `context_fmha=True, use_paged_context_fmha=True` for these formats
    (`use_fp8_context_fmha` ends the same whatever is asked)."""
    fp8_workflow = weights.quant_algo in FP8_WORKFLOW_ALGOS
    fp8_kv = kv_cache.quant_algo is QuantAlgo.FP8
    if kv_cache.quant_algo is QuantAlgo.INT8:
        return ContextAttention(False, False, f"TensorRT-LLM builds no paged context FMHA beside an {kv_cache} "
                                              f"KV cache")
    if fp8_kv and not fp8_workflow:
        return ContextAttention(False, False, f"TensorRT-LLM builds paged context FMHA beside an {kv_cache} KV "
                                              f"cache only for {WeightFormat.FP8} weights")
    return ContextAttention(True, fp8_workflow and fp8_kv)


def check_runtime(runtime: dict, plugin_config: dict, where: str) -> None:
    """Refuse runtime settings an engine with this plugin config cannot honour."""
    if plugin_config.get("use_paged_context_fmha"):
        return
    refused = [key for key in NEEDS_PAGED_CONTEXT_FMHA if runtime.get(key)]
    if refused:
        raise PlanError(f"{where}: runtime {', '.join(f'{k}=true' for k in refused)} needs an engine with "
                        f"use_paged_context_fmha, which this one lacks; set it false")


def check_step_holds_a_prompt(build_config: dict, runtime: dict, where: str) -> None:
    """Without chunked context one step must hold a whole prompt: max_num_tokens >= max_input_len."""
    tokens, prompt = build_config["max_num_tokens"], build_config["max_input_len"]
    if not runtime.get("enable_chunked_context") and tokens < prompt:
        raise PlanError(f"{where}: max_num_tokens {tokens} is below max_input_len {prompt} and chunked context is "
                        f"off, so a prompt must fit one step; raise --max-num-tokens to {prompt} or lower "
                        f"--max-input-len")
