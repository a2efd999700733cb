"""Fake `tensorrt_llm.bindings.executor`: the C++ executor API with upstream's semantics, no GPU.

Keyword names and defaults copy the nanobind bindings (NVIDIA/TensorRT-LLM,
cpp/tensorrt_llm/nanobind/executor/{executor,request,executorConfig,bindings}.cpp; the pybind twin
under cpp/tensorrt_llm/pybind/executor/ has the same names for what fathom passes), so a misspelled
argument raises TypeError here as it would there. The rules modelled, and where each comes from:

- `Executor.enqueue_request` returns a fresh request id; requests queued before an iteration join
  it, up to max_batch_size active requests (in-flight batching: cpp/tensorrt_llm/executor/
  executorImpl.cpp, `getLeaderNewReqWithIds`). One `await_responses` call here runs one iteration.
- Streaming with beam width 1: each response carries only the tokens generated since the previous
  one (`ModelRunnerCpp._fill_output` appends `output_token_ids[0]` to what it has,
  tensorrt_llm/runtime/model_runner_cpp.py); the last one has `is_final` and `finish_reasons`.
- A stop word stays in the output and ends the request with STOP_WORDS; `end_id` ends it with
  END_ID without being appended; `max_tokens` ends it with LENGTH (FinishReason in request.cpp).
- `cancel_request(id)` ends the request at the next iteration with a final response, no new
  tokens, finish reason CANCELLED; an id already terminated is ignored (`cancelRequest`).
- A request the executor cannot run gets a `Response(request_id, error_msg)`: `has_error()` is
  true and reading `.result` raises, reading `.error_msg` of a good one raises
  (cpp/tensorrt_llm/executor/responseImpl.h). Tests inject one with `fail_request`.
- Leader mode (`ParallelConfig` default, executorImpl.cpp `initializeWorkers`): the MPI world must
  be tp * pp ranks; rank 0 is the leader. On another rank `can_enqueue_requests()` is False and
  `enqueue_request`, `await_responses`, `cancel_request`, `get_latest_iteration_stats` raise
  ("With LEADER communication mode, only leader rank is expected to call ...",
  `checkParallelApiUsage`); its `shutdown()` returns once the leader has shut down (it joins the
  execution thread, which ends when the leader's terminate request arrives). The leader's
  `shutdown()` sets LEADER_DONE, and when the ranks are separate processes started by
  tests/fakes/bin/mpirun it also creates LEADER_DONE_FILE in the job's directory (FAKE_MPI_JOB_DIR,
  which that mpirun sets), standing in for the terminate message; a follower's `shutdown()`
  returns on either. A test playing a follower rank in-process sets LEADER_DONE itself.
- After `shutdown()` nothing may be enqueued ("Shutdown called, cannot enqueue requests").
- `get_latest_iteration_stats()` returns the stats of the iterations since the last call and
  clears them (`std::exchange`); `kv_cache_stats` counts blocks of tokens_per_block tokens
  (trtGptModelInflightBatching.cpp `getCurrentIterationStats`). The fake pool has POOL_BLOCKS
  blocks unless KvCacheConfig.max_tokens asks for fewer.
- Chunked context needs paged context FMHA in the engine; without it the executor turns it off
  (executorImpl.cpp `fixExecutorConfig`); `chunked_context` records what it runs with.
"""

from __future__ import annotations

import enum
import json
import os
import threading
import time
import zlib
from pathlib import Path

import tensorrt_llm

CALLS: list = []  # ("Executor", config) | ("enqueue_request", Request) | ("cancel_request", id) | ("shutdown",)
VOCAB = 256
POOL_BLOCKS = 4096
LEADER_DONE = threading.Event()
LEADER_DONE_FILE = "leader-shutdown"  # in $FAKE_MPI_JOB_DIR: the leader shut down (ranks in separate processes)
FOLLOWER_WAIT_S = 60.0  # a follower whose leader never shuts down fails instead of hanging


def default_script(prompt: list[int], generated: list[int], sampling: "SamplingConfig") -> int:
    """Next token: a deterministic function of the sequence so far and (when sampling) the seed."""
    key = repr((prompt, generated, None if sampling.top_k == 1 else sampling.seed))
    return zlib.crc32(key.encode()) % VOCAB


SCRIPT = default_script  # tests may replace it


class ModelType(enum.Enum):
    DECODER_ONLY = 0
    ENCODER_ONLY = 1
    ENCODER_DECODER = 2


class FinishReason(enum.Enum):
    NOT_FINISHED = 0
    END_ID = 1
    STOP_WORDS = 2
    LENGTH = 3
    TIMED_OUT = 4
    CANCELLED = 5


class CommunicationType(enum.Enum):
    MPI = 0


class CommunicationMode(enum.Enum):
    LEADER = 0
    ORCHESTRATOR = 1


class _Record:
    """Keyword-only attribute holder; subclasses list their fields and defaults."""

    FIELDS: dict = {}

    def __init__(self, **kwargs):
        unknown = set(kwargs) - set(self.FIELDS)
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword arguments {sorted(unknown)}")
        for key, value in {**self.FIELDS, **kwargs}.items():
            setattr(self, key, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in self.FIELDS)})"


class SamplingConfig(_Record):
    FIELDS = dict(top_k=None, top_p=None, top_p_min=None, top_p_reset_ids=None, top_p_decay=None, seed=None,
                  temperature=None, min_tokens=None, beam_search_diversity_rate=None, repetition_penalty=None,
                  presence_penalty=None, frequency_penalty=None, length_penalty=None, early_stopping=None,
                  no_repeat_ngram_size=None, num_return_sequences=None, min_p=None, beam_width_array=None)

    def __init__(self, beam_width: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.beam_width = beam_width


class OutputConfig(_Record):
    FIELDS = dict(return_log_probs=False, return_context_logits=False, return_generation_logits=False,
                  exclude_input_from_output=False, return_encoder_output=False, return_perf_metrics=False,
                  additional_model_outputs=None)


class KvCacheConfig(_Record):
    FIELDS = dict(enable_block_reuse=True, max_tokens=None, max_attention_window=None, sink_token_length=None,
                  free_gpu_memory_fraction=None, host_cache_size=None, onboard_blocks=True,
                  cross_kv_cache_fraction=None, secondary_offload_min_priority=None, event_buffer_max_size=0,
                  enable_partial_reuse=True, copy_on_partial_reuse=True, use_uvm=False, runtime_defaults=None)


class ExtendedRuntimePerfKnobConfig(_Record):
    """The constructor takes two keywords; cuda_graph_mode and cuda_graph_cache_size are properties."""

    FIELDS = dict(multi_block_mode=True, enable_context_fmha_fp32_acc=False)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.cuda_graph_mode = False
        self.cuda_graph_cache_size = 0


class ParallelConfig(_Record):
    FIELDS = dict(communication_type=CommunicationType.MPI, communication_mode=CommunicationMode.LEADER,
                  device_ids=None, participant_ids=None, orchestrator_config=None, num_nodes=None)


class ExecutorConfig(_Record):
    FIELDS = dict(max_beam_width=1, scheduler_config=None, kv_cache_config=None, enable_chunked_context=False,
                  normalize_log_probs=True, iter_stats_max_iterations=1000, request_stats_max_iterations=0,
                  batching_type=None, max_batch_size=None, max_num_tokens=None, parallel_config=None,
                  peft_cache_config=None, logits_post_processor_config=None, decoding_config=None,
                  use_gpu_direct_storage=False, gpu_weights_percent=1.0, max_queue_size=None,
                  extended_runtime_perf_knob_config=None, debug_config=None, recv_poll_period_ms=0,
                  max_seq_idle_microseconds=None, spec_dec_config=None, guided_decoding_config=None,
                  additional_model_outputs=None, cache_transceiver_config=None, gather_generation_logits=False,
                  mm_embedding_offloading=False, enable_trt_overlap=False)


class Request(_Record):
    FIELDS = dict(streaming=False, sampling_config=None, output_config=None, end_id=None, pad_id=None,
                  position_ids=None, bad_words=None, stop_words=None, embedding_bias=None,
                  external_draft_tokens_config=None, prompt_tuning_config=None, multimodal_input=None,
                  multimodal_embedding=None, mrope_config=None, lora_config=None, lookahead_config=None,
                  kv_cache_retention_config=None, logits_post_processor_name=None, logits_post_processor=None,
                  encoder_input_token_ids=None, client_id=None, return_all_generated_tokens=False, priority=0.5,
                  type=None, context_phase_params=None, encoder_input_features=None, encoder_output_length=None,
                  cross_attention_mask=None, num_return_sequences=1, eagle_config=None, skip_cross_attn_blocks=None,
                  guided_decoding_params=None, language_adapter_uid=None, allotted_time_ms=None)

    def __init__(self, input_token_ids: list[int], max_tokens: int, **kwargs):
        super().__init__(**kwargs)
        self.input_token_ids, self.max_tokens = list(input_token_ids), max_tokens
        self.sampling_config = self.sampling_config or SamplingConfig()
        self.output_config = self.output_config or OutputConfig()


class Result:
    def __init__(self, output_token_ids: list[list[int]], is_final: bool, finish_reasons: list[FinishReason]):
        self.output_token_ids, self.is_final, self.finish_reasons = output_token_ids, is_final, finish_reasons
        self.sequence_index, self.log_probs, self.cum_log_probs = 0, None, None


class Response:
    def __init__(self, request_id: int, result: Result | None = None, error_msg: str | None = None):
        self.request_id, self._result, self._error = request_id, result, error_msg

    def has_error(self) -> bool:
        return self._error is not None

    @property
    def error_msg(self) -> str:
        if self._error is None:
            raise RuntimeError("Cannot get the error message for a response without error")
        return self._error

    @property
    def result(self) -> Result:
        if self._error is not None:
            raise RuntimeError(f"Cannot get the result for a response with an error: {self._error}")
        return self._result


class KvCacheStats(_Record):
    FIELDS = dict(max_num_blocks=0, free_num_blocks=0, used_num_blocks=0, tokens_per_block=0, alloc_total_blocks=0,
                  alloc_new_blocks=0, reused_blocks=0, missed_blocks=0, cache_hit_rate=0.0)


class IterationStats(_Record):
    FIELDS = dict(iter=0, num_active_requests=0, num_queued_requests=0, kv_cache_stats=None)


class _Active:
    def __init__(self, request_id: int, request: Request):
        self.id, self.request, self.generated = request_id, request, []


class Executor:
    def __init__(self, model_path, model_type: ModelType, executor_config: ExecutorConfig):
        CALLS.append(("Executor", {"model_path": str(model_path), "model_type": model_type,
                                   "executor_config": executor_config}))
        # The C++ logger writes to std::cout when its level is below WARNING (common/logger.h), as
        # with TLLM_LOG_LEVEL=info while the engine loads; written to fd 1 as native code does.
        os.write(1, b"[TensorRT-LLM][INFO] Loaded engine\n")
        engine = json.loads((Path(model_path) / "config.json").read_text())
        build, mapping = engine["build_config"], engine["pretrained_config"].get("mapping", {})
        parallel = executor_config.parallel_config or ParallelConfig()
        if parallel.communication_mode != CommunicationMode.LEADER:
            raise NotImplementedError("fake executor: only CommunicationMode.LEADER is modelled")
        ranks = mapping.get("tp_size", 1) * mapping.get("pp_size", 1)
        if tensorrt_llm.mpi_world_size() != ranks:
            raise RuntimeError("With communicationMode kLEADER, MPI worldSize is expected to be equal to tp*pp*cp "
                               "when participantIds are not specified")
        self.is_leader = tensorrt_llm.mpi_rank() == 0
        self.config = executor_config
        self.max_batch_size = min(executor_config.max_batch_size or build["max_batch_size"], build["max_batch_size"])
        self.tokens_per_block = build["plugin_config"]["tokens_per_block"]
        self.chunked_context = executor_config.enable_chunked_context and build["plugin_config"]["use_paged_context_fmha"]
        kv = executor_config.kv_cache_config or KvCacheConfig()
        self.pool_blocks = POOL_BLOCKS if kv.max_tokens is None else -(-kv.max_tokens // self.tokens_per_block)
        self.queued: list[_Active] = []
        self.active: list[_Active] = []
        self.cancelled: set[int] = set()
        self.errors: dict[int, str] = {}
        self.terminated: set[int] = set()
        self.stats: list[IterationStats] = []
        self.iterations = 0
        self.shutdown_called = False
        self.next_id = 1

    # ---- the bound methods ------------------------------------------------------------------------
    def can_enqueue_requests(self) -> bool:
        return not self.shutdown_called and self.is_leader

    def enqueue_request(self, request: Request) -> int:
        self._check("enqueueRequests")
        CALLS.append(("enqueue_request", request))
        request_id, self.next_id = self.next_id, self.next_id + 1
        self.queued.append(_Active(request_id, request))
        return request_id

    def cancel_request(self, id: int) -> None:  # noqa: A002 (the binding's keyword name)
        self._check("cancelRequest")
        CALLS.append(("cancel_request", id))
        if id not in self.terminated:
            self.cancelled.add(id)

    def await_responses(self, timeout=None) -> list[Response]:
        self._check("awaitResponses")
        return self._iteration()

    def get_latest_iteration_stats(self) -> list[IterationStats]:
        self._check("getLatestIterationStats")
        stats, self.stats = self.stats, []
        return stats

    def shutdown(self) -> None:
        CALLS.append(("shutdown",))
        if self.shutdown_called:
            return
        self.shutdown_called = True
        job_dir = os.environ.get("FAKE_MPI_JOB_DIR")
        done_file = Path(job_dir) / LEADER_DONE_FILE if job_dir else None
        if self.is_leader:
            LEADER_DONE.set()
            if done_file is not None:
                done_file.touch()
            return
        deadline = time.monotonic() + FOLLOWER_WAIT_S
        while not (LEADER_DONE.wait(0.05) or (done_file is not None and done_file.exists())):
            if time.monotonic() > deadline:
                raise RuntimeError("fake executor: a follower's shutdown() waited for a leader that never shut down")

    # ---- test controls ----------------------------------------------------------------------------
    def fail_request(self, request_id: int, error_msg: str) -> None:
        """The next iteration answers this request with an error response and drops it."""
        self.errors[request_id] = error_msg

    # ---- internals --------------------------------------------------------------------------------
    def _check(self, method: str) -> None:
        if self.shutdown_called:
            raise RuntimeError("Shutdown called, cannot enqueue requests" if method == "enqueueRequests"
                               else "Shutdown called")
        if not self.is_leader:
            raise RuntimeError(f"With LEADER communication mode, only leader rank is expected to call {method}")

    def _iteration(self) -> list[Response]:
        while self.queued and len(self.active) < self.max_batch_size:
            self.active.append(self.queued.pop(0))
        responses = []
        for item in [*self.active, *self.queued]:
            if item.id in self.errors:
                responses.append(Response(item.id, error_msg=self.errors.pop(item.id)))
                self._end(item)
            elif item.id in self.cancelled:
                responses.append(Response(item.id, Result([[]], True, [FinishReason.CANCELLED])))
                self._end(item)
        for item in list(self.active):
            responses.append(self._decode(item))
        if self.active or responses:
            self.iterations += 1
            used = sum(-(-(len(a.request.input_token_ids) + len(a.generated)) // self.tokens_per_block)
                       for a in self.active)
            kv = KvCacheStats(max_num_blocks=self.pool_blocks, free_num_blocks=self.pool_blocks - used,
                              used_num_blocks=used, tokens_per_block=self.tokens_per_block)
            self.stats.append(IterationStats(iter=self.iterations, num_active_requests=len(self.active),
                                             num_queued_requests=len(self.queued), kv_cache_stats=kv))
        return responses

    def _decode(self, item: _Active) -> Response:
        req = item.request
        token = SCRIPT(req.input_token_ids, list(item.generated), req.sampling_config)
        reason = FinishReason.NOT_FINISHED
        new = []
        if req.end_id is not None and token == req.end_id:
            reason = FinishReason.END_ID
        else:
            new = [token]
            item.generated.append(token)
            if any(item.generated[-len(w):] == list(w) for w in (req.stop_words or [])):
                reason = FinishReason.STOP_WORDS
            elif len(item.generated) >= req.max_tokens:
                reason = FinishReason.LENGTH
        final = reason != FinishReason.NOT_FINISHED
        if final:
            self._end(item)
        return Response(item.id, Result([new], final, [reason]))

    def _end(self, item: _Active) -> None:
        for pool in (self.active, self.queued):
            if item in pool:
                pool.remove(item)
        self.cancelled.discard(item.id)
        self.terminated.add(item.id)
