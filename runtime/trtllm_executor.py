"""The TensorRT-LLM executor ("trtllm"): runs an engine directory built by `fathom build`.

Why `tensorrt_llm.runtime.ModelRunnerCpp.from_dir(...)` + `generate(..., streaming=True)` and not
the `_tensorrt_engine.LLM` API: `generate` with streaming is a plain Python generator that yields
after every decode iteration of the C++ executor, which maps one-to-one onto `step()` without
threads or an asyncio loop; the LLM API runs its executor in an MPI worker process behind an
asyncio event loop and a tokenizer, none of which this token-level interface needs. Argument names
below are those of tensorrt_llm 1.2.1 (tensorrt_llm/runtime/model_runner_cpp.py:
`ModelRunnerCpp.from_dir`, `ModelRunnerCpp.generate` and its `accepted_parameters` list).

What `generate` dictates, and how it is mapped:
- One `generate` call takes one max_new_tokens and one set of sampling parameters for its whole
  batch, so a batch is the waiting requests that share them (FIFO, up to the engine's
  max_batch_size); requests with other parameters wait for the next batch. Inside a batch the C++
  executor does its own in-flight batching; requests submitted meanwhile start with the next batch.
- Greedy (temperature 0) = `top_k=1`. Sampling passes temperature, top_k (0 = no limit) and top_p.
  seed -> `random_seed`. The seed is per call too, so sampled requests batch together only when
  they share a seed; a request without one gets its own random seed (the C++ default would give
  every request seed 0), as in the torch executor, and so runs in a batch of its own.
- End of sequence: `end_id=-1` (never stop on end_id, the value tensorrt_llm/executor/base_worker.py
  uses for ignore_eos) and the eos ids plus the request's stop ids as `stop_words_list`. TRT-LLM
  keeps stop words in the output (tensorrt_llm/executor/result.py strips them afterwards), so the
  stop token is emitted with finish_reason "stop", exactly as the torch and reference executors do.
- Streaming output ids start with the prompt (`_stream` seeds them with `batch_input_ids`); the
  prompt is stripped here and every new token becomes a TokenEvent stamped when it arrived.
- Cancel: `generate` gives no per-request cancel (its request ids stay inside it). A cancelled
  request ends at the next step with finish_reason "cancelled"; the engine finishes its batch and
  the remaining tokens are dropped.
- Log-probs: refused at submit(). `generate(output_log_probs=True)` returns the sampled token's
  log-prob only, no alternatives (`_fill_output` reads `result.log_probs`), and the TensorRT
  backend computes it after temperature is applied to the logits (TensorRT-LLM PR #12514, the
  comment on `BaseDecodingOutputs::outputLogProbs`), not from the raw distribution the other
  executors report.
- KV capacity: the C++ runtime sizes its pool from kv_cache_free_gpu_memory_fraction and does not
  expose it through ModelRunnerCpp, so `kv_usage().capacity_tokens` is None (unknown), not a guess.
"""

from __future__ import annotations

import os
import random
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from fathom.build.config import ModelConfig
from fathom.build.errors import CheckpointError, FathomError

from .executor import KVUsage, Request, TokenEvent, now
from .sampling import SamplingParams

# ModelRunnerCpp.from_dir keyword arguments an engine manifest's "runtime" section may set.
FROM_DIR_RUNTIME_ARGS = ("enable_chunked_context", "kv_cache_free_gpu_memory_fraction", "kv_cache_enable_block_reuse",
                         "max_tokens_in_paged_kv_cache", "multi_block_mode", "cuda_graph_mode",
                         "enable_context_fmha_fp32_acc")


@dataclass(eq=False)
class _Tracked:
    request: Request
    max_new_tokens: int
    stops: frozenset[int]
    seed: int  # the request's seed, or one drawn for it
    generated: int = 0
    done: bool = False

    def batch_key(self) -> tuple:
        """Requests that one generate() call can serve together."""
        p = self.request.params
        return (self.max_new_tokens, "greedy") if p.greedy else (self.max_new_tokens, self.seed, p.temperature, p.top_k, p.top_p)


@dataclass
class _Batch:
    requests: list[_Tracked]
    stream: object  # the generator returned by generate(streaming=True)
    input_lens: list[int] = field(default_factory=list)


def sampling_kwargs(params: SamplingParams, seed: int) -> dict:
    """SamplingParams -> generate() kwargs (names from ModelRunnerCpp.generate's accepted_parameters)."""
    if params.greedy:
        return {"top_k": 1, "random_seed": seed}
    return {"temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p, "random_seed": seed}


def local_gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        raise FathomError("the trtllm executor needs a CUDA GPU and none is visible")
    return torch.cuda.get_device_name(0)


class TrtllmExecutor:
    name = "trtllm"

    def __init__(self, engine_dir: str | Path, config: ModelConfig, eos_ids: list[int] | None = None,
                 max_seq_len: int | None = None, gpu_name: str | None = None):
        from fathom.engine.manifest import check_engine_compat, read_engine_manifest
        from fathom.engine.trtllm import import_tensorrt_llm

        from fathom.build.checkpoint import read_checkpoint
        from fathom.engine.presets import engine_formats

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
        world = int(self.manifest.get("mapping", {}).get("world_size", 1))
        launched = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", "1")))
        if world != launched:
            raise FathomError(f"{self.engine_dir}: the engine has {world} ranks; run under mpirun -n {world} "
                              f"(this process sees an MPI world of {launched})")
        runtime = dict(self.manifest.get("runtime") or {})
        unknown = sorted(set(runtime) - set(FROM_DIR_RUNTIME_ARGS))
        if unknown:
            raise CheckpointError(f"{self.engine_dir}/fathom-engine.json: runtime options {unknown} are not "
                                  f"ModelRunnerCpp.from_dir arguments (expected some of {', '.join(FROM_DIR_RUNTIME_ARGS)})")
        self.runtime_args = runtime
        from tensorrt_llm.runtime import ModelRunnerCpp

        rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
        self.runner = ModelRunnerCpp.from_dir(engine_dir=str(self.engine_dir), rank=rank, **runtime)
        self.max_seq_len = min(max_seq_len or self.runner.max_seq_len, self.runner.max_seq_len)
        self.waiting: deque[_Tracked] = deque()
        self.batch: _Batch | None = None
        self.cancelled: set[str] = set()
        self.known: set[str] = set()

    # ---- executor interface ----------------------------------------------------------
    def submit(self, request: Request) -> None:
        rid, ids, p = request.request_id, request.prompt_ids, request.params
        if rid in self.known:
            raise FathomError(f"request {rid}: a request with this id is already in flight")
        if not ids:
            raise FathomError(f"request {rid}: empty prompt")
        if len(ids) > self.runner.max_input_len:
            raise FathomError(f"request {rid}: prompt has {len(ids)} tokens, the engine's max_input_len is "
                              f"{self.runner.max_input_len}")
        if len(ids) >= self.max_seq_len:
            raise FathomError(f"request {rid}: prompt has {len(ids)} tokens, max_seq_len is {self.max_seq_len}")
        if p.logprobs is not None:
            raise FathomError(f"request {rid}: logprobs: not supported by the trtllm executor")
        stops = frozenset(p.stop_token_ids) | (frozenset() if p.ignore_eos else frozenset(self.eos_ids))
        seed = p.seed if p.seed is not None else random.SystemRandom().getrandbits(63)
        self.known.add(rid)
        # Like the other executors, a request that reaches max_seq_len ends with "length".
        self.waiting.append(_Tracked(request, min(p.max_new_tokens, self.max_seq_len - len(ids)), stops, seed))

    def cancel(self, request_id: str) -> None:
        if request_id in self.known:
            self.cancelled.add(request_id)

    def has_pending(self) -> bool:
        return bool(self.waiting) or self.batch is not None

    def kv_usage(self) -> KVUsage:
        used = 0
        if self.batch is not None:
            used = sum(n + t.generated for n, t in zip(self.batch.input_lens, self.batch.requests) if not t.done)
        return KVUsage(used, None, self.config.kv_bytes_per_token(self.kv_bytes))

    def describe(self) -> dict:
        return {"executor": self.name, "device": "cuda", "gpu": self.gpu_name, "dtype": self.dtype,
                "engine_dir": str(self.engine_dir), "tensorrt_llm_version": self.trtllm_version,
                "precision": self.precision.value, "kv_cache_format": self.kv_cache.value,
                "api": "ModelRunnerCpp.generate(streaming=True)", "runtime_args": self.runtime_args,
                "max_batch_size": self.runner.max_batch_size, "max_seq_len": self.max_seq_len}

    def step(self) -> list[TokenEvent]:
        events: list[TokenEvent] = []
        if self.cancelled:
            self._drop_cancelled(events)
        if self.batch is None:
            if not self.waiting:
                return events
            self.batch = self._start_batch()
        try:
            out = next(self.batch.stream)
        except StopIteration:
            self._end_batch(events)
            return events
        t = now()
        lengths = [row[0] for row in out["sequence_lengths"].tolist()]  # prompt included
        live = [(b, tr) for b, tr in enumerate(self.batch.requests) if not tr.done]
        starts = {b: self.batch.input_lens[b] + tr.generated for b, tr in live}
        lo = min(starts.values(), default=0)
        # One device->host copy per step: the columns that can hold new tokens, for every row.
        window = out["output_ids"][:, 0, lo:max(lengths)].tolist()
        for b, tracked in live:
            for token in window[b][starts[b] - lo:lengths[b] - lo]:
                tracked.generated += 1
                reason = None
                if token in tracked.stops:
                    reason = "stop"
                elif tracked.generated >= tracked.max_new_tokens:
                    reason = "length"
                events.append(TokenEvent(tracked.request.request_id, token, t, reason))
                if reason is not None:
                    self._finish(tracked)
                    break
        return events

    # ---- internals --------------------------------------------------------------------
    def _start_batch(self) -> _Batch:
        import torch

        first = self.waiting[0]
        key = first.batch_key()
        picked = [t for t in self.waiting if t.batch_key() == key][: self.runner.max_batch_size]
        for t in picked:
            self.waiting.remove(t)
        stop_words = [[[s] for s in sorted(t.stops)] for t in picked]
        inputs = [torch.tensor(t.request.prompt_ids, dtype=torch.int32) for t in picked]
        stream = self.runner.generate(
            inputs, max_new_tokens=first.max_new_tokens, end_id=-1,
            pad_id=self.eos_ids[0] if self.eos_ids else 0,
            stop_words_list=stop_words if any(stop_words) else None,
            streaming=True, return_dict=True, output_sequence_lengths=True,
            **sampling_kwargs(first.request.params, first.seed))
        return _Batch(picked, stream, [len(t.request.prompt_ids) for t in picked])

    def _end_batch(self, events: list[TokenEvent]) -> None:
        """The engine finished the batch; a request it ended without our stop condition hit its length cap."""
        t = now()
        for tracked in self.batch.requests:
            if not tracked.done:
                events.append(TokenEvent(tracked.request.request_id, None, t, "length"))
                self._finish(tracked)
        self.batch = None

    def _finish(self, tracked: _Tracked) -> None:
        tracked.done = True
        self.known.discard(tracked.request.request_id)

    def _drop_cancelled(self, events: list[TokenEvent]) -> None:
        t = now()
        running = self.batch.requests if self.batch is not None else []
        for tracked in [x for x in (*self.waiting, *running) if x.request.request_id in self.cancelled and not x.done]:
            if tracked in self.waiting:
                self.waiting.remove(tracked)
            self._finish(tracked)
            events.append(TokenEvent(tracked.request.request_id, None, t, "cancelled"))
        self.cancelled.clear()
