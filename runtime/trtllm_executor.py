"""The TensorRT-LLM executor ("trtllm"): runs an engine directory built by `fathom build`.

It drives TensorRT-LLM's C++ executor (`tensorrt_llm.bindings.executor.Executor`), the in-flight
batching runtime that `ModelRunnerCpp` wraps and Triton's tensorrtllm_backend runs. The API maps one
to one onto fathom's executor interface: `submit` = `enqueue_request` (the request joins the next
iteration, with its own sampling parameters, seed, max_new_tokens and stop ids), `step` =
`await_responses` with a short timeout, `cancel` = `cancel_request`. Names and semantics below come
from the NVIDIA/TensorRT-LLM sources of the 1.2 line: cpp/tensorrt_llm/{nanobind,pybind}/executor/
{executor,request}.cpp (the bindings; both declare the keyword names used here),
cpp/tensorrt_llm/executor/executorImpl.cpp (ranks, cancel, shutdown) and
tensorrt_llm/runtime/model_runner_cpp.py (how `from_dir` and `generate` build the same objects).

Requests:
- Greedy (temperature 0) = `top_k=1`; sampling passes temperature, top_k (0 = no limit) and top_p.
  A request without a seed gets a drawn one (the C++ default would give every request seed 0), as
  in the torch executor.
- `end_id=-1` (never stop on end_id: what tensorrt_llm/executor/base_worker.py passes for
  ignore_eos) and the eos ids plus the request's stop ids as one-token `stop_words`. TRT-LLM keeps a
  stop word in the output (tensorrt_llm/executor/result.py strips it afterwards), so the stop token
  is emitted with finish_reason "stop", exactly as the torch and reference executors do.
- max_tokens is capped at max_seq_len - prompt length, so a request reaching max_seq_len ends with
  finish reason LENGTH -> "length", like the other executors.
- Streaming with beam width 1: each response carries only the tokens produced since the previous
  one (`ModelRunnerCpp._fill_output` appends them); the final one names its FinishReason.
- Cancel: `cancel_request` at once; the request ends at the next step with "cancelled" and
  whatever the executor still sends for it (its final CANCELLED response) is dropped.
- An error response (`Response.has_error()`) ends that request only, with finish_reason "abort";
  the executor's message is logged.
- Log-probs: refused at submit(). `OutputConfig(return_log_probs=True)` gives the sampled token's
  log-prob only, no alternatives (`Result.log_probs`), and the TensorRT backend computes it after
  temperature is applied to the logits (TensorRT-LLM PR #12514, the comment on
  `BaseDecodingOutputs::outputLogProbs`), not from the raw distribution the other executors report.
- KV capacity: from the executor's iteration stats (`get_latest_iteration_stats()[-1]
  .kv_cache_stats`: max/used blocks of tokens_per_block tokens), None until the first iteration.

Ranks: an engine with tp x pp > 1 runs under `mpirun -n tp*pp`, every rank running this code in
leader mode (`CommunicationMode.LEADER`, as `ModelRunnerCpp.from_dir` by default and Triton's
backend unless TRTLLM_ORCHESTRATOR is set). Orchestrator mode is not used: there the orchestrator
process spawns `executorWorker` processes itself with MPI_Comm_spawn (executorImpl.cpp,
`initializeOrchestrator`), which needs the `executorWorker` binary of the wheel and an MPI that
supports dynamic process creation, and adds one process that holds no GPU; under mpirun every
rank is a plain `fathom` process with one GPU. Rank 0 is the leader: `can_enqueue_requests()` is
true there only. Every other rank calls `serve_follower()` (see `exit_if_follower`), which blocks
in `shutdown()` until the leader shuts down, and exits 0. The leader shuts its Executor down (which
releases the followers) on `close()`, when the TrtllmExecutor is collected, or at interpreter exit
(`weakref.finalize`), whichever comes first: a leader that ends with an exception still releases
its followers instead of leaving mpirun waiting on them.
"""

from __future__ import annotations

import logging
import random
import weakref
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from fathom.build.config import ModelConfig, read_json
from fathom.build.errors import FathomError

from .executor import KVUsage, Request, TokenEvent, now
from .sampling import SamplingParams
from .trtllm_settings import RuntimeSettings, checked_mpi_rank

log = logging.getLogger("fathom.trtllm")

AWAIT_TIMEOUT_MS = 20  # how long one step() waits for a response before returning none
# tensorrt_llm.bindings.executor.FinishReason names -> fathom finish reasons. TIMED_OUT only follows
# a Request(allotted_time_ms=...), which fathom does not set.
FINISH_REASONS = {"END_ID": "stop", "STOP_WORDS": "stop", "LENGTH": "length", "CANCELLED": "cancelled",
                  "TIMED_OUT": "cancelled"}


@dataclass(eq=False)
class _Tracked:
    request: Request
    executor_id: int  # the id enqueue_request returned


def sampling_config(bindings, params: SamplingParams, seed: int):
    """SamplingParams -> `SamplingConfig` (keyword names of the binding)."""
    if params.greedy:
        return bindings.SamplingConfig(beam_width=1, top_k=1, seed=seed)
    return bindings.SamplingConfig(beam_width=1, top_k=params.top_k, top_p=params.top_p,
                                   temperature=params.temperature, seed=seed)


def local_gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        raise FathomError("the trtllm executor needs a CUDA GPU and none is visible")
    return torch.cuda.get_device_name(0)


class TrtllmExecutor:
    name = "trtllm"

    def __init__(self, engine_dir: str | Path, config: ModelConfig, eos_ids: list[int] | None = None,
                 max_seq_len: int | None = None, gpu_name: str | None = None):
        from fathom.build.checkpoint import read_checkpoint
        from fathom.engine.manifest import MANIFEST_NAME, check_engine_compat, engine_ranks, read_engine_manifest
        from fathom.engine.presets import engine_formats
        from fathom.engine.trtllm import import_tensorrt_llm, stdout_to_stderr
        from fathom.engine.trtllm_rules import check_runtime

        self.engine_dir, self.config = Path(engine_dir), config
        engine = read_checkpoint(self.engine_dir)  # the engine's pretrained_config, read before loading it
        self.dtype = engine.dtype
        self.precision, self.kv_cache = engine_formats(engine)
        self.kv_bytes = self.kv_cache.bytes_per_element(self.dtype)
        self.eos_ids = list(eos_ids if eos_ids is not None else config.eos_token_ids)
        trtllm = import_tensorrt_llm()
        self.manifest = read_engine_manifest(self.engine_dir)
        self.gpu_name = gpu_name or local_gpu_name()
        self.trtllm_version = getattr(trtllm, "__version__", "unknown")
        check_engine_compat(self.manifest, self.trtllm_version, self.gpu_name)
        self.settings = RuntimeSettings.from_manifest(dict(self.manifest.get("runtime") or {}),
                                                      f"{self.engine_dir}/{MANIFEST_NAME}")
        self.rank = checked_mpi_rank(trtllm, engine_ranks(self.manifest),
                                     str(self.engine_dir))
        build = read_json(self.engine_dir / "config.json")["build_config"]
        check_runtime(self.manifest.get("runtime") or {}, build["plugin_config"], f"{self.engine_dir}/{MANIFEST_NAME}")
        self.max_batch_size, self.max_input_len = build["max_batch_size"], build["max_input_len"]
        self.max_seq_len = min(max_seq_len or build["max_seq_len"], build["max_seq_len"])
        from tensorrt_llm.bindings import executor as bindings

        self.bindings = bindings
        with stdout_to_stderr():  # engine loading logs must not reach a --json stdout
            self.executor = bindings.Executor(self.engine_dir, bindings.ModelType.DECODER_ONLY,
                                              self.settings.executor_config(bindings, self.max_batch_size))
        self.is_leader = self.executor.can_enqueue_requests()
        # Only the leader's shutdown() ends the run on every rank (a follower's blocks until then).
        self._shutdown = weakref.finalize(self, self.executor.shutdown) if self.is_leader else None
        self.tracked: dict[int, _Tracked] = {}  # executor request id -> request in flight
        self.executor_ids: dict[str, int] = {}  # fathom request id -> executor request id
        self.cancelled: list[str] = []  # cancel_request sent, "cancelled" not reported yet
        self.dropped: set[int] = set()  # executor ids ended here whose final response has not arrived
        self.kv_stats = None  # the latest KvCacheStats

    # ---- executor interface ----------------------------------------------------------
    def submit(self, request: Request) -> None:
        rid, ids, p = request.request_id, request.prompt_ids, request.params
        if not self.is_leader:
            raise FathomError(f"request {rid}: MPI rank {self.rank} is not the leader; only rank 0 takes requests")
        if rid in self.executor_ids:
            raise FathomError(f"request {rid}: a request with this id is already in flight")
        if not ids:
            raise FathomError(f"request {rid}: empty prompt")
        if len(ids) > self.max_input_len:
            raise FathomError(f"request {rid}: prompt has {len(ids)} tokens, the engine's max_input_len is "
                              f"{self.max_input_len}")
        if len(ids) >= self.max_seq_len:
            raise FathomError(f"request {rid}: prompt has {len(ids)} tokens, max_seq_len is {self.max_seq_len}")
        if p.logprobs is not None:
            raise FathomError(f"request {rid}: logprobs: not supported by the trtllm executor")
        stops = sorted(set(p.stop_token_ids) | (set() if p.ignore_eos else set(self.eos_ids)))
        seed = p.seed if p.seed is not None else random.SystemRandom().getrandbits(63)
        b = self.bindings
        executor_request = b.Request(
            input_token_ids=list(ids), max_tokens=min(p.max_new_tokens, self.max_seq_len - len(ids)), streaming=True,
            sampling_config=sampling_config(b, p, seed), output_config=b.OutputConfig(), end_id=-1,
            pad_id=self.eos_ids[0] if self.eos_ids else 0, stop_words=[[s] for s in stops] or None)
        try:
            executor_id = self.executor.enqueue_request(executor_request)
        except RuntimeError as e:
            raise FathomError(f"request {rid}: tensorrt_llm refused it: {_first_line(e)}") from e
        self.executor_ids[rid] = executor_id
        self.tracked[executor_id] = _Tracked(request, executor_id)

    def cancel(self, request_id: str) -> None:
        if request_id in self.executor_ids and request_id not in self.cancelled:
            self.executor.cancel_request(self.executor_ids[request_id])
            self.cancelled.append(request_id)

    def has_pending(self) -> bool:
        return bool(self.tracked)

    def kv_usage(self) -> KVUsage:
        """Blocks the executor holds and has, in tokens, from its latest iteration stats."""
        per_token = self.config.kv_bytes_per_token(self.kv_bytes)
        if self.kv_stats is None:
            return KVUsage(0, None, per_token)
        block = self.kv_stats.tokens_per_block
        return KVUsage(self.kv_stats.used_num_blocks * block, self.kv_stats.max_num_blocks * block, per_token)

    def describe(self) -> dict:
        return {"executor": self.name, "device": "cuda", "gpu": self.gpu_name, "dtype": self.dtype,
                "engine_dir": str(self.engine_dir), "tensorrt_llm_version": self.trtllm_version,
                "precision": self.precision.value, "kv_cache_format": self.kv_cache.value,
                "api": "tensorrt_llm.bindings.executor.Executor", "communication_mode": "leader",
                "runtime_args": self.settings.to_dict(), "kv_capacity_tokens": self.kv_usage().capacity_tokens,
                "max_batch_size": self.max_batch_size, "max_seq_len": self.max_seq_len}

    def step(self) -> list[TokenEvent]:
        events: list[TokenEvent] = []
        t = now()
        for rid in self.cancelled:
            executor_id = self.executor_ids.pop(rid)
            del self.tracked[executor_id]
            self.dropped.add(executor_id)
            events.append(TokenEvent(rid, None, t, "cancelled"))
        self.cancelled.clear()
        if not self.tracked:
            return events
        responses = self.executor.await_responses(timeout=timedelta(milliseconds=AWAIT_TIMEOUT_MS))
        t = now()
        for response in responses:
            events += self._events(response, t)
        for stats in self.executor.get_latest_iteration_stats():
            if stats.kv_cache_stats is not None:
                self.kv_stats = stats.kv_cache_stats
        return events

    def close(self) -> None:
        """Shut the leader's Executor down (once), releasing the follower ranks."""
        if self._shutdown is not None:
            self._shutdown()

    # ---- ranks ------------------------------------------------------------------------
    def serve_follower(self) -> None:
        """Run this non-leader rank's share of the engine until the leader shuts down.

        On a rank that is not the leader, `Executor.shutdown()` sends no terminate request; it joins
        the execution thread, which ends when the leader's terminate request reaches this rank
        (executorImpl.cpp: `shutdown`, `fetchNewRequests`).
        """
        self.executor.shutdown()

    # ---- internals --------------------------------------------------------------------
    def _events(self, response, t: float) -> list[TokenEvent]:
        executor_id = response.request_id
        if executor_id in self.dropped:
            if response.has_error() or response.result.is_final:
                self.dropped.discard(executor_id)
            return []
        tracked = self.tracked.get(executor_id)
        if tracked is None:
            return []
        rid = tracked.request.request_id
        if response.has_error():
            log.error("request %s: tensorrt_llm: %s", rid, response.error_msg)
            self._finish(tracked)
            return [TokenEvent(rid, None, t, "abort")]
        result = response.result
        events = [TokenEvent(rid, token, t) for token in result.output_token_ids[0]]
        if result.is_final:
            self._finish(tracked)
            name = result.finish_reasons[0].name
            reason = FINISH_REASONS.get(name)
            if reason is None:
                log.error("request %s: tensorrt_llm ended it with finish reason %s", rid, name)
                reason = "abort"
            events = events[:-1] + [replace(events[-1], finish_reason=reason)] if events else \
                [TokenEvent(rid, None, t, reason)]
        return events

    def _finish(self, tracked: _Tracked) -> None:
        del self.tracked[tracked.executor_id]
        del self.executor_ids[tracked.request.request_id]


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def exit_if_follower(executor) -> None:
    """On a TensorRT-LLM rank other than the leader: serve the engine until the leader shuts down,
    then exit 0. Commands call it right after opening their executor, before they print, write a
    record or bind a port, so only rank 0 does any of that."""
    if isinstance(executor, TrtllmExecutor) and not executor.is_leader:
        executor.serve_follower()
        raise SystemExit(0)
