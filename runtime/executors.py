"""Pick and open an executor by name for a MODEL argument."""

from __future__ import annotations

from fathom.build.config import DEFAULT_MAX_SEQ_LEN
from fathom.build.errors import FathomError
from fathom.build.sources import ModelSource

EXECUTORS = ("auto", "torch", "trtllm", "reference", "onnx")


def resolve_executor_name(name: str, source: ModelSource) -> str:
    """`auto` -> trtllm for an engine directory, onnx for an exported ONNX directory, torch for
    everything else."""
    if name not in EXECUTORS:
        raise FathomError(f"--executor {name!r}: expected one of {', '.join(EXECUTORS)}")
    if name == "auto":
        return {"engine": "trtllm", "onnx": "onnx"}.get(source.kind, "torch")
    if name == "trtllm" and source.kind != "engine":
        raise FathomError(f"{source.spec}: --executor trtllm runs a TensorRT-LLM engine directory "
                          f"(build one with fathom build); this is a {source.kind} source")
    if name == "onnx" and source.kind != "onnx":
        raise FathomError(f"{source.spec}: --executor onnx runs an exported ONNX directory "
                          f"(make one with fathom export onnx); this is a {source.kind} source")
    if source.kind == "onnx" and name != "onnx":
        raise FathomError(f"{source.spec}: an exported ONNX directory runs with --executor onnx, not {name}")
    return name


def resolve_run_dtype(dtype: str | None, device: str | None, source: ModelSource) -> tuple[str, str]:
    """(dtype, device) to run `source` with, defaults filled in: an exported ONNX graph runs in the
    dtype it was exported in, on the cpu unless `device` says otherwise; any other source as
    loader.resolve_dtype (cuda if available; bfloat16 there, float32 on the cpu)."""
    if source.kind == "onnx":
        return (source.config.torch_dtype if dtype in (None, "auto") else dtype), device or "cpu"
    from .loader import resolve_dtype

    return resolve_dtype(dtype, device)


# Below this many weight bytes a CPU decode step is a chain of tiny kernels: extra intra-op threads
# only add synchronization (measured on the demo model on a loaded 2-core VM: 2 threads ran ~50x
# slower than 1, OpenMP's waits costing more than the tiny ops).
SMALL_MODEL_BYTES = 64 << 20


def set_cpu_threads(threads: int | None, source: ModelSource, dtype: str, ranks: int = 1) -> int:
    """Apply `threads` (None = auto: 1 for small models, else torch's default shared by `ranks`
    tensor-parallel processes, at least 1 each); return the count (per rank)."""
    import torch

    from fathom.build.precision import DTYPE_BYTES

    if threads is None:
        small = source.config.num_params() * DTYPE_BYTES.get(dtype, 4) < SMALL_MODEL_BYTES
        threads = 1 if small else max(1, torch.get_num_threads() // ranks)
    if threads < 1:
        raise FathomError(f"--threads {threads}: expected >= 1")
    torch.set_num_threads(threads)
    return threads


def check_tensor_parallel(name: str, tp: int) -> None:
    """Refuse a `--tp` the executor `name` (resolved) cannot take."""
    if tp < 1:
        raise FathomError(f"--tp {tp}: expected >= 1")
    if tp > 1 and name != "torch":
        raise FathomError(f"--tp {tp}: tensor parallelism is a torch executor option, not --executor {name} "
                          "(a TensorRT-LLM engine carries its own mapping)")


def _open_onnx(source: ModelSource, dtype: str, device: str | None, max_seq_len: int | None,
               eos_ids: list[int] | None, threads: int | None):
    """The onnx executor on the graph's own dtype (`dtype` must be it); `device` None: cpu;
    `max_seq_len` at most the graph's positions, None: all of them."""
    from .onnx_executor import OnnxExecutor, OnnxSessionModel

    graph_dtype = source.config.torch_dtype
    if dtype != graph_dtype:
        raise FathomError(f"--dtype {dtype}: {source.spec} is an ONNX graph in {graph_dtype} "
                          f"(export it again with fathom export onnx --dtype {dtype}, or leave --dtype out)")
    device = device or "cpu"
    threads = set_cpu_threads(threads, source, dtype) if device == "cpu" else (threads or 1)
    model = OnnxSessionModel(source, device=device, threads=threads, max_seq_len=max_seq_len)
    return OnnxExecutor(model, eos_ids=eos_ids)


def check_compile(name: str, tp: int, compile: bool) -> None:
    """Refuse `compile` (torch.compile'd decode steps) where the executor `name` (resolved) cannot take it."""
    if not compile:
        return
    if name != "torch":
        raise FathomError(f"--compile: compiles the torch executor's decode steps, not --executor {name}")
    if tp > 1:
        raise FathomError(f"--compile with --tp {tp}: compiled decode steps run in one process (drop one of them)")


def create_executor(name: str, source: ModelSource, dtype: str = "float32", device: str | None = None,
                    max_seq_len: int | None = DEFAULT_MAX_SEQ_LEN, eos_ids: list[int] | None = None, threads: int | None = None,
                    tp: int = 1, **torch_options):
    """Open `name` on `source`. `auto` picks trtllm for an engine directory, onnx for an exported
    ONNX directory (which runs in its own dtype, on the cpu unless `device` says otherwise) and
    torch otherwise.

    `max_seq_len`: tokens per sequence; None with an ONNX graph: the positions it was exported with.
    `threads`: CPU intra-op threads (None = auto, see set_cpu_threads); per rank with `tp` (auto
    divides the machine's default among the ranks).
    `tp`: tensor-parallel ranks of the torch executor, for a checkpoint converted with that `--tp`
    (fathom.runtime.tp_launch; this process is rank 0). Close the executor to end the other ranks.
    `torch_options` go to the torch executor (see torch_executor.executor_config: max_num_tokens,
    max_num_seqs, block_size, kv_format, kv_scales, prefix_reuse, gpu_memory_fraction, compile, ...).
    """
    name = resolve_executor_name(name, source)
    check_tensor_parallel(name, tp)
    check_compile(name, tp, bool(torch_options.get("compile")))
    if name == "trtllm":
        from .trtllm_executor import TrtllmExecutor

        return TrtllmExecutor(source.path, source.config, eos_ids=eos_ids, max_seq_len=max_seq_len)
    if name == "onnx":
        return _open_onnx(source, dtype, device, max_seq_len, eos_ids, threads)
    from .loader import default_device, load_model

    device = device or default_device()
    if device.startswith("cpu"):
        threads = set_cpu_threads(threads, source, dtype, ranks=tp)
    if tp > 1:
        from .torch_executor import executor_config
        from .tp_launch import open_tensor_parallel

        return open_tensor_parallel(source, tp, dtype, device, max_seq_len, eos_ids, threads or 1,
                                    executor_config(**torch_options))
    model = load_model(source, dtype=dtype, device=device, max_seq_len=max_seq_len)
    if name == "reference":
        from .reference import ReferenceExecutor

        return ReferenceExecutor(model, eos_ids=eos_ids)
    from .torch_executor import TorchExecutor, executor_config

    return TorchExecutor(model, eos_ids=eos_ids, max_seq_len=max_seq_len, config=executor_config(**torch_options))
