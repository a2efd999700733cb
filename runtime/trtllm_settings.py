"""The engine manifest's "runtime" section -> TensorRT-LLM's C++ `ExecutorConfig`, and the MPI ranks.

The section keeps the keyword names of `ModelRunnerCpp.from_dir` (presets write them), and each
lands where `from_dir` puts it (NVIDIA/TensorRT-LLM 1.2, tensorrt_llm/runtime/model_runner_cpp.py),
with `from_dir`'s default when the manifest leaves it out:

    kv_cache_free_gpu_memory_fraction  KvCacheConfig.free_gpu_memory_fraction   (None: the C++ default)
    max_tokens_in_paged_kv_cache       KvCacheConfig.max_tokens                  (None: no cap)
    kv_cache_enable_block_reuse        KvCacheConfig.enable_block_reuse          (False; the binding's own
                                                                                  default is True)
    enable_chunked_context             ExecutorConfig.enable_chunked_context     (False)
    multi_block_mode                   ExtendedRuntimePerfKnobConfig.multi_block_mode  (True)
    enable_context_fmha_fp32_acc       ExtendedRuntimePerfKnobConfig.enable_context_fmha_fp32_acc
    cuda_graph_mode                    ExtendedRuntimePerfKnobConfig.cuda_graph_mode   (None: not set)

Triton's tensorrtllm_backend fills the same fields from its model parameters
(inflight_batcher_llm/src/model_instance_state.cc, `getKvCacheConfigFromParams`,
`getExtendedRuntimePerfKnobConfigFromParams`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from fathom.build.errors import CheckpointError, FathomError


@dataclass(frozen=True)
class RuntimeSettings:
    kv_cache_free_gpu_memory_fraction: float | None = None
    max_tokens_in_paged_kv_cache: int | None = None
    kv_cache_enable_block_reuse: bool = False
    enable_chunked_context: bool = False
    multi_block_mode: bool = True
    enable_context_fmha_fp32_acc: bool | None = None
    cuda_graph_mode: bool | None = None

    @classmethod
    def from_manifest(cls, runtime: dict, source: str) -> "RuntimeSettings":
        """`runtime`: the manifest's "runtime" section; `source` names the file in errors."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(runtime) - set(known))
        if unknown:
            raise CheckpointError(f"{source}: field 'runtime': unknown options {unknown} (expected some of "
                                  f"{', '.join(known)}: ModelRunnerCpp.from_dir's names)")
        for key, value in runtime.items():
            if key == "kv_cache_free_gpu_memory_fraction":
                ok = value is None or (_is_number(value) and 0 < value <= 1)
                expected = "a number in (0, 1]"
            elif key == "max_tokens_in_paged_kv_cache":
                ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)
                expected = "a positive integer"
            else:
                ok = isinstance(value, bool) or (value is None and key in ("enable_context_fmha_fp32_acc",
                                                                           "cuda_graph_mode"))
                expected = "true or false"
            if not ok:
                raise CheckpointError(f"{source}: runtime.{key} = {value!r}, expected {expected}")
        return cls(**runtime)

    def executor_config(self, bindings, max_batch_size: int):
        """The `tensorrt_llm.bindings.executor.ExecutorConfig` for these settings, leader mode over MPI."""
        kv_cache = bindings.KvCacheConfig(free_gpu_memory_fraction=self.kv_cache_free_gpu_memory_fraction,
                                          max_tokens=self.max_tokens_in_paged_kv_cache,
                                          enable_block_reuse=self.kv_cache_enable_block_reuse)
        knobs = bindings.ExtendedRuntimePerfKnobConfig()
        knobs.multi_block_mode = self.multi_block_mode
        if self.enable_context_fmha_fp32_acc is not None:
            knobs.enable_context_fmha_fp32_acc = self.enable_context_fmha_fp32_acc
        if self.cuda_graph_mode is not None:
            knobs.cuda_graph_mode = self.cuda_graph_mode
        parallel = bindings.ParallelConfig(communication_type=bindings.CommunicationType.MPI,
                                           communication_mode=bindings.CommunicationMode.LEADER)
        return bindings.ExecutorConfig(max_beam_width=1, max_batch_size=max_batch_size, kv_cache_config=kv_cache,
                                       enable_chunked_context=self.enable_chunked_context,
                                       extended_runtime_perf_knob_config=knobs, parallel_config=parallel)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def checked_mpi_rank(trtllm, engine_ranks: int, source: str) -> int:
    """This process's MPI rank, after checking that the MPI world is the engine's `engine_ranks` ranks.

    `tensorrt_llm.mpi_rank()` / `mpi_world_size()` (tensorrt_llm/_utils.py) ask the MPI communicator,
    so they hold under any launcher (Open MPI, MPICH, Slurm's PMI), unlike one launcher's
    environment variables.
    """
    world = trtllm.mpi_world_size()
    if world != engine_ranks:
        raise FathomError(f"{source}: the engine has {engine_ranks} ranks; run under mpirun -n {engine_ranks} "
                          f"(this process sees an MPI world of {world})")
    return trtllm.mpi_rank()
