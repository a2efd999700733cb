"""The tensors of the tensorrtllm_backend's inflight_batcher_llm models: names, data types, dims.

Read from NVIDIA/TensorRT-LLM triton_backend/all_models/inflight_batcher_llm/*/config.pbtxt and the
python models' 1/model.py (1.2 line), the folder the pinned tensorrt-llm release ships the backend in.
The lists are complete, in the templates' order: the container's python models look up some of these
configs by name at load time (preprocessing's `initialize` reads the output configs of PIXEL_VALUES and
IMAGE_SIZES), and the C++ backend sends every output it produces, so a config that drops a tensor fails
there, not here. The ensemble template lists kv_cache_alloc_total_blocks twice; it is listed once here.

Data types are Triton's `TYPE_*` names without the prefix. Two depend on the engine: the logits
type (config.json `pretrained_config.logits_dtype`) and the prompt-table type, FP16 because the
ensemble template fixes its `prompt_embedding_table` input to FP16 and an ensemble input must have
the type of the step input it feeds (encoder_input_features, used by encoder-decoder engines only,
takes the same type, as in the backend's docs/ examples).
"""

from __future__ import annotations

from dataclasses import dataclass

PROMPT_TABLE_TYPE = "FP16"


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False
    ragged: bool = False  # allow_ragged_batch
    scalar: bool = False  # reshape: { shape: [ ] }: the backend reads one value per request


def _opt(name: str, data_type: str, dims: tuple[int, ...] = (1,), ragged: bool = False) -> Tensor:
    return Tensor(name, data_type, dims, optional=True, ragged=ragged)


def _scalar(name: str, data_type: str, optional: bool = True) -> Tensor:
    return Tensor(name, data_type, (1,), optional=optional, scalar=True)


def _ragged(name: str, data_type: str, dims: tuple[int, ...] = (-1,)) -> Tensor:
    return Tensor(name, data_type, dims, optional=True, ragged=True)


def tensorrt_llm_inputs(logits_type: str) -> list[Tensor]:
    return [
        _ragged("input_ids", "INT32"),
        _ragged("encoder_input_features", PROMPT_TABLE_TYPE, (-1, -1)),
        _scalar("encoder_output_lengths", "INT32"),
        _scalar("input_lengths", "INT32", optional=False),
        _scalar("request_output_len", "INT32", optional=False),
        _scalar("num_return_sequences", "INT32"),
        _ragged("draft_input_ids", "INT32"),
        _ragged("decoder_input_ids", "INT32"),
        _scalar("decoder_input_lengths", "INT32"),
        _ragged("draft_logits", logits_type, (-1, -1)),
        _scalar("draft_acceptance_threshold", "FP32"),
        _scalar("end_id", "INT32"),
        _scalar("pad_id", "INT32"),
        _ragged("stop_words_list", "INT32", (2, -1)),
        _ragged("bad_words_list", "INT32", (2, -1)),
        _ragged("embedding_bias", "FP32"),
        _scalar("beam_width", "INT32"),
        _scalar("temperature", "FP32"),
        _scalar("runtime_top_k", "INT32"),
        _scalar("runtime_top_p", "FP32"),
        _scalar("runtime_top_p_min", "FP32"),
        _scalar("runtime_top_p_decay", "FP32"),
        _scalar("runtime_top_p_reset_ids", "INT32"),
        _scalar("len_penalty", "FP32"),
        _scalar("early_stopping", "BOOL"),
        _scalar("repetition_penalty", "FP32"),
        _scalar("min_tokens", "INT32"),
        _scalar("beam_search_diversity_rate", "FP32"),
        _scalar("presence_penalty", "FP32"),
        _scalar("frequency_penalty", "FP32"),
        _scalar("seed", "UINT64"),
        _scalar("return_log_probs", "BOOL"),
        _scalar("return_context_logits", "BOOL"),
        _scalar("return_generation_logits", "BOOL"),
        _scalar("return_perf_metrics", "BOOL"),
        _scalar("return_num_input_tokens", "BOOL"),
        _scalar("return_num_output_tokens", "BOOL"),
        _scalar("exclude_input_in_output", "BOOL"),
        _scalar("stop", "BOOL"),
        _scalar("streaming", "BOOL"),
        _ragged("prompt_embedding_table", PROMPT_TABLE_TYPE, (-1, -1)),
        _ragged("prompt_table_extra_ids", "UINT64"),
        _scalar("prompt_vocab_size", "INT32"),
        _ragged("cross_attention_mask", "BOOL", (-1, -1)),
        _opt("mrope_rotary_cos_sin", "FP32", (-1,)),
        _opt("mrope_position_deltas", "INT64"),
        _scalar("lora_task_id", "UINT64"),
        _ragged("lora_weights", "FP16", (-1, -1)),
        _ragged("lora_config", "INT32", (-1, 3)),
        _ragged("context_phase_params", "UINT8"),
        _ragged("skip_cross_attn_blocks", "BOOL", (1,)),
        _ragged("retention_token_range_starts", "INT32"),
        _ragged("retention_token_range_ends", "INT32"),
        _ragged("retention_token_range_priorities", "INT32"),
        _ragged("retention_token_range_durations_ms", "INT32"),
        _ragged("retention_decode_priority", "INT32", (1,)),
        _ragged("retention_decode_duration_ms", "INT32", (1,)),
        _ragged("guided_decoding_guide_type", "STRING", (1,)),
        _ragged("guided_decoding_guide", "STRING", (1,)),
        _ragged("lookahead_window_size", "INT32", (1,)),
        _ragged("lookahead_ngram_size", "INT32", (1,)),
        _ragged("lookahead_verification_set_size", "INT32", (1,)),
    ]


# tensorrt_llm outputs that the ensemble does not pass through under their own name
_ENGINE_ONLY_OUTPUTS = ("output_ids", "sequence_length", "context_phase_params")


def tensorrt_llm_outputs(logits_type: str) -> list[Tensor]:
    return [
        Tensor("output_ids", "INT32", (-1, -1)),
        Tensor("sequence_length", "INT32", (-1,)),
        Tensor("cum_log_probs", "FP32", (-1,)),
        Tensor("output_log_probs", "FP32", (-1, -1)),
        Tensor("context_logits", logits_type, (-1, -1)),
        Tensor("generation_logits", logits_type, (-1, -1, -1)),
        Tensor("batch_index", "INT32", (1,)),
        Tensor("sequence_index", "INT32", (1,)),
        Tensor("context_phase_params", "UINT8", (-1,)),
        Tensor("kv_cache_alloc_new_blocks", "INT32", (1,)),
        Tensor("kv_cache_reused_blocks", "INT32", (1,)),
        Tensor("kv_cache_alloc_total_blocks", "INT32", (1,)),
        Tensor("arrival_time_ns", "INT64", (1,)),
        Tensor("first_scheduled_time_ns", "INT64", (1,)),
        Tensor("first_token_time_ns", "INT64", (1,)),
        Tensor("last_token_time_ns", "INT64", (1,)),
        Tensor("acceptance_rate", "FP32", (1,)),
        Tensor("total_accepted_draft_tokens", "INT32", (1,)),
        Tensor("total_draft_tokens", "INT32", (1,)),
        Tensor("num_input_tokens", "INT32", (1,)),
        Tensor("num_output_tokens", "INT32", (1,)),
    ]


PREPROCESSING_INPUTS = [
    Tensor("QUERY", "STRING", (1,)),
    _opt("DECODER_QUERY", "STRING"),
    _opt("IMAGE_BYTES", "UINT8", (-1, -1, -1, -1)),
    _opt("IMAGE_URL", "STRING"),
    _opt("IMAGES", "STRING", (-1,)),
    _opt("VIDEO_BYTES", "UINT8", (-1, -1, -1, -1)),
    Tensor("REQUEST_OUTPUT_LEN", "INT32", (1,)),
    _opt("BAD_WORDS_DICT", "STRING", (-1,)),
    _opt("STOP_WORDS_DICT", "STRING", (-1,)),
    _opt("EMBEDDING_BIAS_WORDS", "STRING", (-1,)),
    _opt("EMBEDDING_BIAS_WEIGHTS", "FP32", (-1,)),
    _opt("END_ID", "INT32"),
    _opt("PAD_ID", "INT32"),
    _opt("PROMPT_TABLE_EXTRA_ID", "UINT64"),
]

PREPROCESSING_OUTPUTS = [
    Tensor("INPUT_ID", "INT32", (-1,)),
    Tensor("REQUEST_INPUT_LEN", "INT32", (1,)),
    Tensor("DECODER_INPUT_ID", "INT32", (-1,)),
    Tensor("REQUEST_DECODER_INPUT_LEN", "INT32", (1,)),
    Tensor("BAD_WORDS_IDS", "INT32", (2, -1)),
    Tensor("STOP_WORDS_IDS", "INT32", (2, -1)),
    Tensor("EMBEDDING_BIAS", "FP32", (-1,)),
    Tensor("REQUEST_OUTPUT_LEN", "INT32", (-1,)),
    Tensor("OUT_END_ID", "INT32", (1,)),
    Tensor("OUT_PAD_ID", "INT32", (1,)),
    Tensor("OUT_PROMPT_TABLE_EXTRA_IDS", "UINT64", (-1,)),
    Tensor("PIXEL_VALUES", "FP16", (-1, -1, -1, -1)),
    Tensor("ASPECT_RATIO_IDS", "INT64", (-1,)),
    Tensor("ASPECT_RATIO_MASK", "INT64", (-1, -1)),
    Tensor("CROSS_ATTENTION_MASK", "INT64", (-1, -1, -1)),
    Tensor("IMAGE_SIZES", "INT64", (-1, 2)),
    Tensor("IS_VIDEO_INPUT", "BOOL", (1,)),
    Tensor("ATTENTION_MASK", "INT64", (-1,)),
    Tensor("IMAGE_GRID_THW", "INT64", (3,)),
    Tensor("VISION_INPUT_ID", "INT32", (-1,)),
]

POSTPROCESSING_INPUTS = [Tensor("TOKENS_BATCH", "INT32", (-1, -1)), Tensor("SEQUENCE_LENGTH", "INT32", (-1,))]
POSTPROCESSING_OUTPUTS = [Tensor("OUTPUT", "STRING", (-1,))]

ENSEMBLE_INPUTS = [
    Tensor("text_input", "STRING", (1,)),
    _opt("decoder_text_input", "STRING"),
    Tensor("max_tokens", "INT32", (1,)),
    _opt("num_return_sequences", "INT32"),
    _opt("bad_words", "STRING", (-1,)),
    _opt("stop_words", "STRING", (-1,)),
    _opt("exclude_input_in_output", "BOOL"),
    _opt("end_id", "INT32"),
    _opt("pad_id", "INT32"),
    _opt("top_k", "INT32"),
    _opt("top_p", "FP32"),
    _opt("temperature", "FP32"),
    _opt("length_penalty", "FP32"),
    _opt("repetition_penalty", "FP32"),
    _opt("min_tokens", "INT32"),
    _opt("presence_penalty", "FP32"),
    _opt("frequency_penalty", "FP32"),
    _opt("seed", "UINT64"),
    _opt("return_log_probs", "BOOL"),
    _opt("return_context_logits", "BOOL"),
    _opt("return_generation_logits", "BOOL"),
    _opt("return_perf_metrics", "BOOL"),
    _opt("return_num_input_tokens", "BOOL"),
    _opt("return_num_output_tokens", "BOOL"),
    _opt("beam_width", "INT32"),
    _opt("stream", "BOOL"),
    _opt("prompt_embedding_table", PROMPT_TABLE_TYPE, (-1, -1)),
    _opt("prompt_table_extra_id", "UINT64"),
    _opt("prompt_vocab_size", "INT32"),
    _opt("embedding_bias_words", "STRING", (-1,)),
    _opt("embedding_bias_weights", "FP32", (-1,)),
    _opt("lora_task_id", "UINT64"),
    _ragged("lora_weights", "FP16", (-1, -1)),
    _ragged("lora_config", "INT32", (-1, 3)),
    _ragged("guided_decoding_guide_type", "STRING", (1,)),
    _ragged("guided_decoding_guide", "STRING", (1,)),
]


def ensemble_outputs(logits_type: str) -> list[Tensor]:
    passed = [t for t in tensorrt_llm_outputs(logits_type) if t.name not in _ENGINE_ONLY_OUTPUTS]
    return [Tensor("text_output", "STRING", (-1,)), *passed]


# Ensemble steps: (model, input_map {step tensor: ensemble tensor}, output_map {step tensor: ensemble tensor}).
# Names starting with "_" are the ensemble's internal tensors between steps.
PREPROCESSING_INPUT_MAP = {
    "QUERY": "text_input", "DECODER_QUERY": "decoder_text_input", "REQUEST_OUTPUT_LEN": "max_tokens",
    "BAD_WORDS_DICT": "bad_words", "STOP_WORDS_DICT": "stop_words", "EMBEDDING_BIAS_WORDS": "embedding_bias_words",
    "EMBEDDING_BIAS_WEIGHTS": "embedding_bias_weights", "END_ID": "end_id", "PAD_ID": "pad_id",
    "PROMPT_TABLE_EXTRA_ID": "prompt_table_extra_id",
}
PREPROCESSING_OUTPUT_MAP = {
    "REQUEST_INPUT_LEN": "_REQUEST_INPUT_LEN", "INPUT_ID": "_INPUT_ID",
    "REQUEST_DECODER_INPUT_LEN": "_REQUEST_DECODER_INPUT_LEN", "DECODER_INPUT_ID": "_DECODER_INPUT_ID",
    "REQUEST_OUTPUT_LEN": "_REQUEST_OUTPUT_LEN", "STOP_WORDS_IDS": "_STOP_WORDS_IDS",
    "BAD_WORDS_IDS": "_BAD_WORDS_IDS", "EMBEDDING_BIAS": "_EMBEDDING_BIAS", "OUT_END_ID": "_PREPROCESSOR_END_ID",
    "OUT_PAD_ID": "_PREPROCESSOR_PAD_ID", "OUT_PROMPT_TABLE_EXTRA_IDS": "_OUT_PROMPT_TABLE_EXTRA_IDS",
}
_SAME_NAME_INPUTS = ("exclude_input_in_output", "temperature", "repetition_penalty", "min_tokens", "presence_penalty",
                     "frequency_penalty", "seed", "return_log_probs", "return_context_logits",
                     "return_generation_logits", "return_perf_metrics", "return_num_input_tokens",
                     "return_num_output_tokens", "num_return_sequences", "beam_width", "prompt_embedding_table",
                     "prompt_vocab_size", "lora_task_id", "lora_weights", "lora_config", "guided_decoding_guide_type",
                     "guided_decoding_guide")
TENSORRT_LLM_INPUT_MAP = {
    "input_ids": "_INPUT_ID", "decoder_input_ids": "_DECODER_INPUT_ID", "input_lengths": "_REQUEST_INPUT_LEN",
    "decoder_input_lengths": "_REQUEST_DECODER_INPUT_LEN", "request_output_len": "_REQUEST_OUTPUT_LEN",
    "end_id": "_PREPROCESSOR_END_ID", "pad_id": "_PREPROCESSOR_PAD_ID", "embedding_bias": "_EMBEDDING_BIAS",
    "runtime_top_k": "top_k", "runtime_top_p": "top_p", "len_penalty": "length_penalty", "streaming": "stream",
    "stop_words_list": "_STOP_WORDS_IDS", "bad_words_list": "_BAD_WORDS_IDS",
    "prompt_table_extra_ids": "_OUT_PROMPT_TABLE_EXTRA_IDS",
    **{name: name for name in _SAME_NAME_INPUTS},
}


def tensorrt_llm_output_map(logits_type: str) -> dict[str, str]:
    passed = {t.name: t.name for t in ensemble_outputs(logits_type)[1:]}
    return {"output_ids": "_TOKENS_BATCH", "sequence_length": "_SEQUENCE_LENGTH", **passed}


POSTPROCESSING_INPUT_MAP = {"TOKENS_BATCH": "_TOKENS_BATCH", "SEQUENCE_LENGTH": "_SEQUENCE_LENGTH"}
POSTPROCESSING_OUTPUT_MAP = {"OUTPUT": "text_output"}
