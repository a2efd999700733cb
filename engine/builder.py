"""Build a TensorRT-LLM engine from a fathom checkpoint: one engine per rank, written atomically.

The calls and argument names follow tensorrt-llm 1.2.1 (NVIDIA/TensorRT-LLM):
- tensorrt_llm/builder.py: `BuildConfig(max_input_len, max_seq_len, max_batch_size, max_beam_width,
  max_num_tokens, plugin_config)`, `build(model, build_config) -> Engine`, `Engine.save(engine_dir)`
  (config.json {version, pretrained_config, build_config} from rank 0, then rank{N}.engine).
  build() works on a copy of the BuildConfig and rewrites some plugin settings (engine/trtllm_rules.py);
  fathom reads the saved config.json back into its manifest and refuses runtime settings the
  built engine cannot honour.
- tensorrt_llm/plugin/plugin.py: PluginConfig is a pydantic model (`validate_assignment=True,
  extra="ignore"`): its constructor drops unknown keywords silently, while assigning a field
  validates the value and assigning an unknown name raises. fathom assigns each attribute after
  checking that the field exists.
- tensorrt_llm/models/modeling_utils.py: `PretrainedModel.from_checkpoint(ckpt_dir, rank=None,
  config=None)` reads config.json and rank{rank}.safetensors (QWenForCausalLM inherits it).
- tensorrt_llm/commands/build.py: the trtllm-build flags, and `parallel_build`: workers are capped
  at `torch.cuda.device_count()`, every rank is a task of a spawn-context process pool, and the
  task building rank r selects GPU `r % workers` (`torch.cuda.set_device`) in whichever worker
  runs it. fathom does the same, except that with no GPU visible it leaves the count as asked
  and selects no device (TensorRT-LLM then decides whether it can build).
"""

from __future__ import annotations

import shlex
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from fathom.build.atomic import atomic_output_dir
from fathom.build.errors import CheckpointError, MissingDependencyError, PlanError

from .gpus import GpuSpec, get_gpu, gpu_from_nvml_name, local_gpu_names
from .planner import Plan
from .presets import BuildSettings, load_preset, read_build_checkpoint, settings_for_checkpoint
from .trtllm import import_tensorrt_llm, require_supported_version, stdout_to_stderr
from .trtllm_rules import check_runtime

if TYPE_CHECKING:
    from fathom.build.checkpoint import CheckpointInfo

BUILD_CONFIG_FIELDS = ("max_input_len", "max_seq_len", "max_batch_size", "max_beam_width", "max_num_tokens")
PLUGIN_FIELDS = ("gpt_attention_plugin", "gemm_plugin", "context_fmha", "use_paged_context_fmha",
                 "use_fp8_context_fmha", "paged_kv_cache", "remove_input_padding", "tokens_per_block")


@dataclass(frozen=True)
class BuildSpec:
    checkpoint: CheckpointInfo
    gpu: GpuSpec
    settings: BuildSettings
    plan: Plan

    def build_config_kwargs(self) -> dict:
        return {k: self.settings.build_config[k] for k in BUILD_CONFIG_FIELDS}

    def plugin_config_kwargs(self) -> dict:
        return {k: self.settings.plugin_config[k] for k in PLUGIN_FIELDS}

    def command(self, out: str | Path, workers: int = 1) -> list[str]:
        return trtllm_build_command(self.settings, self.checkpoint.path, out, workers)

    def to_dict(self, out: str | Path, workers: int = 1) -> dict:
        return {
            "checkpoint": str(self.checkpoint.path), "output": str(out), "preset": self.settings.name,
            "gpu": self.gpu.key, "world_size": self.checkpoint.mapping.world_size,
            "build_config": self.build_config_kwargs(), "plugin_config": self.plugin_config_kwargs(),
            "runtime": self.settings.runtime,
            "trtllm_build": shlex.join(self.command(out, workers)),
            "plan": self.plan.to_dict(),
        }


def prepare_build(checkpoint_dir: str | Path, preset: str | None = None, gpu: str | None = None,
                  **overrides) -> BuildSpec:
    """Read the checkpoint, pick and check the settings, plan them; nothing is built or imported."""
    if preset is None and gpu is None:
        raise PlanError("fathom build: pass --preset NAME or --gpu NAME (the GPU the engine is for; 'auto' = this one)")
    ckpt = read_build_checkpoint(checkpoint_dir)
    mapping = ckpt.mapping
    missing = [f"rank{r}.safetensors" for r in range(mapping.world_size)
               if not (ckpt.path / f"rank{r}.safetensors").is_file()]
    if missing:
        raise CheckpointError(f"{ckpt.path}: missing {', '.join(missing)} "
                              f"for tp={mapping.tp_size} pp={mapping.pp_size}")
    if preset is not None:
        target = get_gpu(load_preset(preset).gpu)
        if gpu is not None and get_gpu(gpu).key != target.key:
            raise PlanError(f"--preset {preset} is for {target.name} but --gpu names {get_gpu(gpu).name}; pass one of them")
    else:
        target = get_gpu(gpu)
    settings, p = settings_for_checkpoint(ckpt, target, preset, **overrides)
    return BuildSpec(checkpoint=ckpt, gpu=target, settings=settings, plan=p)


def _flag_value(value) -> str:
    if value is None:
        return "disable"
    if isinstance(value, bool):
        return "enable" if value else "disable"
    return str(value)


def trtllm_build_command(s: BuildSettings, checkpoint_dir: str | Path, output_dir: str | Path,
                         workers: int = 1) -> list[str]:
    """The trtllm-build invocation equivalent to the Python build (tensorrt_llm/commands/build.py)."""
    cmd = ["trtllm-build", "--checkpoint_dir", str(checkpoint_dir), "--output_dir", str(output_dir)]
    for key in BUILD_CONFIG_FIELDS:
        cmd += [f"--{key}", str(s.build_config[key])]
    for key in PLUGIN_FIELDS:
        if key == "paged_kv_cache":  # --paged_kv_cache is deprecated on the command line
            cmd += ["--kv_cache_type", "paged" if s.plugin_config[key] else "continuous"]
        else:
            cmd += [f"--{key}", _flag_value(s.plugin_config[key])]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    return cmd


def make_build_config(trtllm, build_kwargs: dict, plugin_kwargs: dict):
    from tensorrt_llm.plugin import PluginConfig

    plugin_config = PluginConfig()
    for key, value in plugin_kwargs.items():
        if not hasattr(plugin_config, key):
            raise MissingDependencyError(f"tensorrt_llm {trtllm.__version__}: PluginConfig has no attribute {key!r}")
        try:
            setattr(plugin_config, key, value)
        except ValueError as e:  # pydantic's ValidationError
            reason = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e).splitlines()[0]
            raise MissingDependencyError(f"tensorrt_llm {trtllm.__version__}: PluginConfig.{key} = {value!r} "
                                         f"refused: {reason}") from None
    return trtllm.BuildConfig(**build_kwargs, plugin_config=plugin_config)


def build_rank(checkpoint_dir: str, rank: int, build_kwargs: dict, plugin_kwargs: dict, out_dir: str,
               gpu_index: int | None = None) -> float:
    """Build and save one rank's engine on CUDA device `gpu_index` (None: the current one); returns
    the seconds it took. Runs in-process or in a worker; tensorrt_llm's prints go to stderr."""
    start = time.monotonic()
    with stdout_to_stderr():
        trtllm = import_tensorrt_llm()
        from tensorrt_llm.models import QWenForCausalLM

        if gpu_index is not None:
            import torch

            torch.cuda.set_device(gpu_index)
        model = QWenForCausalLM.from_checkpoint(checkpoint_dir, rank=rank)
        engine = trtllm.build(model, make_build_config(trtllm, build_kwargs, plugin_kwargs))
        engine.save(out_dir)
    return time.monotonic() - start


def visible_gpu_count() -> int:
    """CUDA devices this process may use (CUDA_VISIBLE_DEVICES applied), as trtllm-build counts them."""
    import torch

    return torch.cuda.device_count()


def check_build_machine(gpu: GpuSpec) -> str | None:
    """NVML name of the local GPU, after refusing to build on a different GPU model than the target
    (a TensorRT engine runs only on the GPU model it was built on). None when NVML sees no GPU:
    then TensorRT-LLM decides whether it can build."""
    try:
        names = local_gpu_names()
    except MissingDependencyError:
        return None
    for name in names:
        local = gpu_from_nvml_name(name)
        if local is None or local.key != gpu.key:
            raise PlanError(f"this machine has {name} but the engine is for {gpu.name}: TensorRT engines run only "
                            f"on the GPU model they were built on; build on a {gpu.name} or pass --gpu auto")
    return names[0] if names else None


def build_engine(spec: BuildSpec, out: str | Path, force: bool = False, workers: int = 1,
                 on_rank: Callable[[int, float], None] | None = None,
                 on_warning: Callable[[str], None] | None = None) -> Path:
    """Build every rank into a temp dir next to `out`, read the settings the engine was built with
    back from its config.json, write the manifest, then rename: a failure in any rank, or a runtime
    setting the built engine cannot honour, leaves no `out` behind. `on_warning` hears each setting
    build() changed."""
    from .manifest import engine_manifest, read_built_settings, write_engine_manifest
    from .trtllm import tensorrt_version

    if workers < 1:
        raise PlanError(f"--workers {workers}: expected a positive integer")
    trtllm = import_tensorrt_llm()
    version = require_supported_version(trtllm)
    build_gpu = check_build_machine(spec.gpu)
    gpus = visible_gpu_count()
    workers = min(workers, gpus) if gpus else workers
    args = (str(spec.checkpoint.path), spec.build_config_kwargs(), spec.plugin_config_kwargs())
    ranks = range(spec.checkpoint.mapping.world_size)
    with atomic_output_dir(out, force) as tmp:
        if workers == 1:
            for r in ranks:
                seconds = build_rank(args[0], r, args[1], args[2], str(tmp), 0 if gpus else None)
                if on_rank:
                    on_rank(r, seconds)
        else:
            _build_parallel(args, ranks, str(tmp), workers, gpus > 0, on_rank)
        expected = ["config.json"] + [f"rank{r}.engine" for r in ranks]
        absent = [name for name in expected if not (tmp / name).is_file()]
        if absent:
            raise CheckpointError(f"tensorrt_llm {version} did not write {', '.join(absent)}")
        built = read_built_settings(tmp, args[1], args[2])
        for line in built.warnings():
            if on_warning:
                on_warning(line)
        check_runtime(spec.settings.runtime, built.plugin_config, f"the engine built for {out}")
        manifest = engine_manifest(spec, built, trtllm_version=version, tensorrt_version=tensorrt_version(),
                                   build_gpu_name=build_gpu)
        write_engine_manifest(tmp, manifest)
    return Path(out)


def _build_parallel(args: tuple, ranks: range, out_dir: str, workers: int, select_gpu: bool, on_rank) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: CUDA does not survive fork
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(build_rank, args[0], r, args[1], args[2], out_dir, r % workers if select_gpu else None): r
                   for r in ranks}
        try:
            for future in as_completed(futures):
                seconds = future.result()
                if on_rank:
                    on_rank(futures[future], seconds)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
