"""Fake `tensorrt_llm.runtime` (1.2.1): a ModelRunnerCpp that records calls and streams scripted tokens.

Signatures copy tensorrt_llm/runtime/model_runner_cpp.py of 1.2.1 (`from_dir`, `generate`), so a
misspelled argument raises TypeError here as it would there. Stricter than the real one in one
place: an unknown sampling keyword (the real `generate` silently drops it) raises TypeError.

Streaming follows `ModelRunnerCpp._stream` / `_fill_output`: output ids start as a copy of the
prompt, each yield appends the tokens of that iteration, rows are padded with end_id up to
max_seq_len, `sequence_lengths` counts prompt + generated. Stop words stay in the output; end_id
ends a request without being appended (as the C++ executor does).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch

CALLS: list = []  # ("from_dir" | "generate", kwargs) in call order; tests clear it
VOCAB = 256


def default_script(prompt: list[int], generated: list[int], sampling: dict) -> int:
    """Next token: a deterministic function of the sequence so far and (when sampling) the seed."""
    key = repr((prompt, generated, None if sampling.get("top_k") == 1 else sampling.get("random_seed")))
    return zlib.crc32(key.encode()) % VOCAB


SCRIPT = default_script  # tests may replace it

# ModelRunnerCpp.generate: the kwargs its `accepted_parameters` list forwards to SamplingConfig.
ACCEPTED_SAMPLING = {"num_beams", "top_k", "top_p", "top_p_min", "top_p_reset_ids", "top_p_decay", "temperature",
                     "min_tokens", "beam_search_diversity_rate", "repetition_penalty", "presence_penalty",
                     "frequency_penalty", "length_penalty", "early_stopping", "no_repeat_ngram_size", "random_seed",
                     "num_return_sequences", "min_p", "beam_width_array"}


class ModelRunnerCpp:
    def __init__(self, engine_dir: str, max_batch_size: int, max_input_len: int, max_seq_len: int):
        self.engine_dir = engine_dir
        self.max_batch_size, self.max_input_len, self.max_seq_len = max_batch_size, max_input_len, max_seq_len
        self.max_beam_width = 1

    @classmethod
    def from_dir(cls, engine_dir: str, *, lora_dir=None, rank: int = 0, max_batch_size=None, max_input_len=None,
                 max_output_len=None, max_beam_width=None, max_attention_window_size=None, sink_token_length=None,
                 kv_cache_free_gpu_memory_fraction=None, cross_kv_cache_fraction=None, medusa_choices=None,
                 eagle_choices=None, eagle_posterior_threshold=None, eagle_use_dynamic_tree=False,
                 eagle_dynamic_tree_max_top_k=None, lookahead_config=None, debug_mode=False, lora_ckpt_source="hf",
                 use_gpu_direct_storage=False, gpu_weights_percent=1, max_tokens_in_paged_kv_cache=None,
                 kv_cache_enable_block_reuse=False, enable_chunked_context=False, is_enc_dec=False,
                 multi_block_mode=True, enable_context_fmha_fp32_acc=None, cuda_graph_mode=None,
                 logits_processor_map=None, device_ids=None, is_orchestrator_mode=False, use_runtime_defaults=True,
                 gather_generation_logits=False, use_variable_beam_width_search=False,
                 mm_embedding_offloading=False) -> "ModelRunnerCpp":
        args = {k: v for k, v in locals().items() if k not in ("cls",)}
        CALLS.append(("from_dir", args))
        build = json.loads((Path(engine_dir) / "config.json").read_text())["build_config"]
        return cls(engine_dir, max_batch_size or build["max_batch_size"], max_input_len or build["max_input_len"],
                   build["max_seq_len"])

    def generate(self, batch_input_ids: list[torch.Tensor], *, position_ids=None, encoder_input_ids=None,
                 encoder_input_features=None, encoder_output_lengths=None, cross_attention_masks=None,
                 mrope_params=None, sampling_config=None, lora_uids=None, lookahead_config=None, streaming=False,
                 stopping_criteria=None, logits_processor_names=None, max_new_tokens: int = 1, end_id=None,
                 pad_id=None, bad_words_list=None, stop_words_list=None, return_dict=False,
                 output_sequence_lengths=False, output_generation_logits=False, output_log_probs=False,
                 output_cum_log_probs=False, prompt_table=None, prompt_tasks=None, input_token_extra_ids=None,
                 return_all_generated_tokens=False, language_adapter_uids=None, mm_embedding_offloading=False,
                 **kwargs):
        unknown = set(kwargs) - ACCEPTED_SAMPLING
        if unknown:
            raise TypeError(f"generate() got sampling keywords the runner would ignore: {sorted(unknown)}")
        prompts = [t.tolist() for t in batch_input_ids]
        CALLS.append(("generate", {"batch_input_ids": prompts, "streaming": streaming, "max_new_tokens": max_new_tokens,
                                   "end_id": end_id, "pad_id": pad_id, "stop_words_list": stop_words_list,
                                   "return_dict": return_dict, "output_sequence_lengths": output_sequence_lengths,
                                   **kwargs}))
        if len(prompts) > self.max_batch_size:
            raise RuntimeError(f"Input batch size ({len(prompts)}) exceeds the engine or specified limit ({self.max_batch_size})")
        if max(map(len, prompts)) + max_new_tokens > self.max_seq_len:
            raise RuntimeError("Maximum input length + maximum new tokens exceeds the engine or specified limit")
        stops = stop_words_list or [None] * len(prompts)
        run = self._run(prompts, stops, max_new_tokens, end_id, kwargs, return_dict, output_sequence_lengths)
        if streaming:
            return run
        last = None
        for last in run:
            pass
        return last

    def _run(self, prompts, stops, max_new_tokens, end_id, sampling, return_dict, output_sequence_lengths):
        outputs = [list(p) for p in prompts]
        done = [False] * len(prompts)
        while not all(done):
            for b, p in enumerate(prompts):
                if done[b]:
                    continue
                token = SCRIPT(p, outputs[b][len(p):], sampling)
                if token == end_id:
                    done[b] = True
                    continue
                outputs[b].append(token)
                words = [w for w in (stops[b] or []) if outputs[b][-len(w):] == w]
                done[b] = bool(words) or len(outputs[b]) - len(p) >= max_new_tokens
            yield self._fill(outputs, end_id, return_dict, output_sequence_lengths)

    def _fill(self, outputs, end_id, return_dict, output_sequence_lengths):
        lengths = [[len(o)] for o in outputs]
        ids = torch.tensor([[o + [end_id] * (self.max_seq_len - len(o))] for o in outputs], dtype=torch.int32)
        if not return_dict:
            return ids
        out = {"output_ids": ids}
        if output_sequence_lengths:
            out["sequence_lengths"] = torch.tensor(lengths, dtype=torch.int32)
        return out
