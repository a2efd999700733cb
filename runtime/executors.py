"""Pick and open an executor by name for a MODEL argument."""

from __future__ import annotations

from fathom.build.errors import FathomError
from fathom.build.sources import ModelSource

EXECUTORS = ("auto", "torch", "trtllm", "reference")


def resolve_executor_name(name: str, source: ModelSource) -> str:
    """`auto` -> trtllm for an engine directory, torch for everything else."""
    if name not in EXECUTORS:
        raise FathomError(f"--executor {name!r}: expected one of {', '.join(EXECUTORS)}")
    if name == "auto":
        return "trtllm" if source.kind == "engine" else "torch"
    if name == "trtllm" and source.kind != "engine":
        raise FathomError(f"{source.spec}: --executor trtllm runs a TensorRT-LLM engine directory "
                          f"(build one with fathom build); this is a {source.kind} source")
    return name


def create_executor(name: str, source: ModelSource, dtype: str = "float32", device: str | None = None,
                    max_seq_len: int = 16384, eos_ids: list[int] | None = None, **torch_options):
    """Open `name` on `source`. `auto` picks trtllm for an engine directory and torch otherwise.

    `torch_options` go to the torch executor (see torch_executor.executor_config: max_num_tokens,
    max_num_seqs, block_size, kv_dtype, kv_scales, prefix_reuse, gpu_memory_fraction, ...).
    """
    name = resolve_executor_name(name, source)
    if name == "trtllm":
        from .trtllm_executor import TrtllmExecutor

        return TrtllmExecutor(source.path, source.config, eos_ids=eos_ids, max_seq_len=max_seq_len)
    from .loader import load_model

    model = load_model(source, dtype=dtype, device=device, max_seq_len=max_seq_len)
    if name == "reference":
        from .reference import ReferenceExecutor

        return ReferenceExecutor(model, eos_ids=eos_ids)
    from .torch_executor import TorchExecutor, executor_config

    return TorchExecutor(model, eos_ids=eos_ids, max_seq_len=max_seq_len, config=executor_config(**torch_options))
