"""`fathom export trtllm-serve`: the `trtllm-serve` command that serves a fathom engine as it was built.

trtllm-serve (NVIDIA/TensorRT-LLM tensorrt_llm/commands/serve.py, 1.2 line) loads a TensorRT engine
directory with `--backend tensorrt` through the LLM API (`tensorrt_llm._tensorrt_engine.LLM`, arguments
validated by `TrtLlmArgs` in tensorrt_llm/llmapi/llm_args.py). Everything comes from the engine's
manifest (fathom-engine.json): its build limits as flags, its "runtime" section (the settings fathom's
own trtllm executor runs with, runtime/trtllm_settings.py) as flags and an extra-options YAML
(`--extra_llm_api_options`).

The YAML is always written: `serve` merges it with `update_llm_args_with_extra_dict`
(tensorrt_llm/llmapi/llm_utils.py), which builds each section it names (e.g. `kv_cache_config`) anew
from the YAML alone, so the KV fraction is repeated there, and the LLM API's `KvCacheConfig` reuses
blocks by default while fathom's executor does so only when the manifest says so.

A multi-rank engine (tp x pp = N > 1) runs as `mpirun -n N trtllm-llmapi-launch trtllm-serve ...`:
the docs' multi-node form (docs/source/commands/trtllm-serve/trtllm-serve.rst, "Multi-node Serving
with Slurm", with srun) under mpirun; tensorrt_llm/llmapi/trtllm-llmapi-launch runs the server on
rank 0 and an MPI worker on every other rank, reading the rank from OMPI_COMM_WORLD_RANK (mpirun) or
SLURM_PROCID (srun).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from fathom.build.errors import CheckpointError, OutputExistsError

# What the command sets -> the trtllm-serve option (tensorrt_llm/commands/serve.py, `serve`).
SERVE_FLAGS = {
    "backend": "--backend",  # Choice pytorch | tensorrt | _autodeploy; tensorrt loads an engine dir
    "tokenizer": "--tokenizer",
    "host": "--host",
    "port": "--port",
    "max_batch_size": "--max_batch_size",
    "max_num_tokens": "--max_num_tokens",
    "tp_size": "--tp_size",  # alias of --tensor_parallel_size
    "pp_size": "--pp_size",  # alias of --pipeline_parallel_size
    "kv_cache_free_gpu_memory_fraction": "--kv_cache_free_gpu_memory_fraction",  # alias of --free_gpu_memory_fraction
    "enable_chunked_context": "--enable_chunked_prefill",  # a flag: present = on
    "extra_llm_api_options": "--extra_llm_api_options",  # alias --config
}
ENGINE_BACKEND = "tensorrt"
# The YAML's sections -> the pydantic model each is built into (tensorrt_llm/llmapi/llm_args.py) and
# the fields written, each from the manifest's runtime setting of the same meaning.
EXTRA_OPTION_FIELDS = {
    "kv_cache_config": ("KvCacheConfig", {"free_gpu_memory_fraction": "kv_cache_free_gpu_memory_fraction",
                                          "max_tokens": "max_tokens_in_paged_kv_cache",
                                          "enable_block_reuse": "kv_cache_enable_block_reuse"}),
    "extended_runtime_perf_knob_config": ("ExtendedRuntimePerfKnobConfig",
                                          {"multi_block_mode": "multi_block_mode",
                                           "enable_context_fmha_fp32_acc": "enable_context_fmha_fp32_acc",
                                           "cuda_graph_mode": "cuda_graph_mode"}),
}
LAUNCHER = "trtllm-llmapi-launch"


@dataclass(frozen=True)
class TrtllmServeLaunch:
    engine_dir: Path
    argv: list[str]  # the whole command, launcher included
    extra_options: dict  # the --extra_llm_api_options YAML
    extra_options_path: Path
    ranks: int

    def command_line(self) -> str:
        return shlex.join(self.argv)

    def to_dict(self) -> dict:
        return {"command": self.argv, "command_line": self.command_line(), "ranks": self.ranks,
                "extra_llm_api_options": str(self.extra_options_path), "extra_options": self.extra_options}


def trtllm_serve_launch(engine_dir: str | Path, extra_options_path: str | Path, tokenizer: str | Path | None = None,
                        host: str = "127.0.0.1", port: int = 8000) -> TrtllmServeLaunch:
    """The trtllm-serve command and extra options for a fathom engine; CheckpointError (one line)
    for an engine without a usable manifest or a tokenizer."""
    from fathom.engine.manifest import MANIFEST_NAME, read_engine_manifest
    from fathom.runtime.trtllm_settings import RuntimeSettings

    engine = Path(engine_dir).absolute()
    manifest = read_engine_manifest(engine)
    source = f"{engine}/{MANIFEST_NAME}"
    settings = RuntimeSettings.from_manifest(dict(manifest.get("runtime") or {}), source).to_dict()
    build, mapping = manifest.get("build_config"), manifest.get("mapping")
    for name, section, keys in (("build_config", build, ("max_batch_size", "max_num_tokens")),
                                ("mapping", mapping, ("tp_size", "pp_size"))):
        for key in keys:
            value = (section or {}).get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CheckpointError(f"{source}: field '{name}.{key}' = {value!r}, expected a positive integer")
    values = {"backend": ENGINE_BACKEND, "tokenizer": str(_tokenizer_dir(engine, manifest, tokenizer)),
              "host": host, "port": port, "max_batch_size": build["max_batch_size"],
              "max_num_tokens": build["max_num_tokens"], "tp_size": mapping["tp_size"], "pp_size": mapping["pp_size"],
              "kv_cache_free_gpu_memory_fraction": settings["kv_cache_free_gpu_memory_fraction"],
              "enable_chunked_context": settings["enable_chunked_context"],
              "extra_llm_api_options": str(Path(extra_options_path).absolute())}
    serve = ["trtllm-serve", str(engine)]
    for key, flag in SERVE_FLAGS.items():
        value = values[key]
        if value is True:
            serve.append(flag)
        elif value is not None and value is not False:
            serve += [flag, str(value)]
    ranks = mapping["tp_size"] * mapping["pp_size"]
    argv = ["mpirun", "-n", str(ranks), LAUNCHER, *serve] if ranks > 1 else serve
    return TrtllmServeLaunch(engine, argv, extra_options(settings), Path(values["extra_llm_api_options"]), ranks)


def extra_options(settings: dict) -> dict:
    """The YAML sections for a RuntimeSettings dict; a setting left unset (None) takes the binding's
    default (False for the two knobs, no cap for max_tokens, the C++ default KV fraction)."""
    out = {}
    for section, (_, fields) in EXTRA_OPTION_FIELDS.items():
        out[section] = {}
        for field, setting in fields.items():
            value = settings[setting]
            if value is None and section == "extended_runtime_perf_knob_config":
                value = False
            if value is not None:
                out[section][field] = value
    return out


def write_extra_options(launch: TrtllmServeLaunch, force: bool = False) -> Path:
    """Write the YAML to its path (temp file + rename); OutputExistsError when it exists unless `force`."""
    import yaml

    path = launch.extra_options_path
    if path.exists() and not force:
        raise OutputExistsError(f"{path}: already exists (pass --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".fathom-tmp-{path.name}-{os.getpid()}")
    try:
        tmp.write_text(f"# trtllm-serve --extra_llm_api_options for {launch.engine_dir} (fathom export trtllm-serve)\n"
                       + yaml.safe_dump(launch.extra_options, sort_keys=False))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _tokenizer_dir(engine: Path, manifest: dict, tokenizer: str | Path | None) -> Path:
    """--tokenizer, else the engine dir, else the checkpoint the engine was built from, whichever
    holds a tokenizer (fathom convert copies it into the checkpoint)."""
    from fathom.build.errors import ConfigError
    from fathom.build.sources import resolve_model

    if tokenizer is not None:
        return resolve_model(str(engine), tokenizer=tokenizer).tokenizer_dir.absolute()
    checkpoint = (manifest.get("checkpoint") or {}).get("path")
    for folder in (engine, checkpoint):
        if folder is None:
            continue
        try:
            found = resolve_model(str(folder)).tokenizer_dir
        except ConfigError:  # the checkpoint has moved or gone
            continue
        if found is not None:
            return Path(found).absolute()
    raise CheckpointError(f"{engine}: no tokenizer in the engine dir or its checkpoint ({checkpoint}); pass "
                          f"--tokenizer DIR")
