"""The engine manifest (`fathom-engine.json`, next to TRT-LLM's config.json) and compatibility checks.

A TensorRT engine loads only under the exact tensorrt_llm version that built it and runs only on
the GPU model it was built for; loading it elsewhere fails deep inside TensorRT. The manifest
records both, so the runtime can refuse with one line before it tries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from fathom.build.config import read_json
from fathom.build.errors import CheckpointError, PlanError
from fathom.build.manifest import read_json_manifest, sha256_file, write_json_manifest

from .gpus import get_gpu, gpu_from_nvml_name

MANIFEST_NAME = "fathom-engine.json"
MANIFEST_FORMAT = "fathom-engine/1"
CHECKPOINT_MANIFEST = "fathom.json"  # written by fathom convert


class EngineCompatError(CheckpointError):
    """An engine was built for another tensorrt_llm version or GPU model than the one at hand."""


@dataclass(frozen=True)
class BuiltSettings:
    """The build and plugin settings an engine was built with, as its own config.json records them
    (tensorrt_llm/builder.py `Engine.save`: `build_config`, with `plugin_config` inside it), and
    where they differ from what fathom asked for."""

    build_config: dict
    plugin_config: dict
    overrides: list[dict] = field(default_factory=list)  # {"field", "requested", "built"}

    def warnings(self) -> list[str]:
        return [f"tensorrt_llm build() changed {o['field']} from {json.dumps(o['requested'])} to "
                f"{json.dumps(o['built'])}" for o in self.overrides]


def read_built_settings(engine_dir: str | Path, requested_build: dict, requested_plugin: dict) -> BuiltSettings:
    """The requested keys' values in the engine's config.json, and which of them build() changed."""
    path = Path(engine_dir) / "config.json"
    build_config = read_json(path).get("build_config")
    if not isinstance(build_config, dict) or not isinstance(build_config.get("plugin_config"), dict):
        raise CheckpointError(f"{path}: expected 'build_config' with 'plugin_config' (tensorrt_llm Engine.save)")
    built, overrides = {}, []
    for section, requested, values in (("build_config", requested_build, build_config),
                                       ("plugin_config", requested_plugin, build_config["plugin_config"])):
        built[section] = {}
        for key, want in requested.items():
            if key not in values:
                raise CheckpointError(f"{path}: missing field '{section}.{key}'")
            built[section][key] = values[key]
            if values[key] != want:
                overrides.append({"field": f"{section}.{key}", "requested": want, "built": values[key]})
    return BuiltSettings(built["build_config"], built["plugin_config"], overrides)


def engine_manifest(spec, built: BuiltSettings, trtllm_version: str, tensorrt_version: str | None,
                    build_gpu_name: str | None) -> dict:
    """The manifest of an engine built from `spec` (a builder.BuildSpec) with the settings `built`
    read back from the engine."""
    from fathom.runtime import version as fathom_version

    ckpt = spec.checkpoint
    ckpt_manifest = ckpt.path / CHECKPOINT_MANIFEST
    return {
        "format": MANIFEST_FORMAT,
        "fathom_version": fathom_version(),
        "tensorrt_llm_version": trtllm_version,
        "tensorrt_version": tensorrt_version,  # null: the tensorrt module was not importable to ask
        "gpu": {"key": spec.gpu.key, "name": spec.gpu.name, "compute_capability": spec.gpu.compute_capability,
                "nvml_names": list(spec.gpu.nvml_names)},
        "build_gpu_nvml_name": build_gpu_name,  # null: NVML saw no GPU on the build machine
        "preset": spec.settings.name,
        "precision": spec.settings.precision,
        "kv_cache": spec.settings.kv_cache,
        "mapping": {"tp_size": ckpt.mapping.tp_size, "pp_size": ckpt.mapping.pp_size,
                    "world_size": ckpt.mapping.world_size},
        "build_config": built.build_config,
        "plugin_config": built.plugin_config,
        "build_overrides": built.overrides,  # what build() changed of the requested settings
        "runtime": spec.settings.runtime,
        "checkpoint": {
            "path": str(ckpt.path.absolute()),
            "config_sha256": sha256_file(ckpt.path / "config.json"),
            "manifest_sha256": sha256_file(ckpt_manifest) if ckpt_manifest.is_file() else None,
        },
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_engine_manifest(engine_dir: str | Path, manifest: dict) -> Path:
    return write_json_manifest(Path(engine_dir) / MANIFEST_NAME, manifest)


def read_engine_manifest(engine_dir: str | Path) -> dict:
    """The manifest of an engine dir; CheckpointError when it is absent or malformed."""
    path = Path(engine_dir) / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: no engine manifest (was this engine built by fathom build?)")
    return read_json_manifest(path, MANIFEST_FORMAT, ("tensorrt_llm_version", "gpu"))


def engine_ranks(manifest: dict) -> int:
    """tp x pp of the engine a manifest describes (`mapping.world_size`; 1 when absent)."""
    return int(manifest.get("mapping", {}).get("world_size", 1))


def _gpu_key(name: str) -> str | None:
    """Catalogue key for a catalogue name/alias or an NVML device name; None when unknown."""
    gpu = gpu_from_nvml_name(name)
    if gpu is not None:
        return gpu.key
    if name.lower() == "auto":
        return None
    try:
        return get_gpu(name).key
    except PlanError:  # not a catalogue name either
        return None


def check_engine_compat(manifest: dict, trtllm_version: str, gpu_name: str) -> None:
    """Raise EngineCompatError (one line) unless this tensorrt_llm version and GPU can load the engine.

    `gpu_name` is the running GPU's NVML name (or a catalogue name)."""
    built = manifest["tensorrt_llm_version"]
    target = manifest["gpu"]
    if built != trtllm_version:
        raise EngineCompatError(f"engine built with tensorrt_llm {built}, but {trtllm_version} is installed: TensorRT "
                                f"engines load only under the version that built them; install tensorrt-llm=={built} "
                                f"or rebuild with fathom build CKPT OUT --gpu auto")
    running = _gpu_key(gpu_name)
    if running is not None:
        same = running == target["key"]
    else:
        same = gpu_name.strip().lower() in {n.lower() for n in target.get("nvml_names", [])}
    if not same:
        raise EngineCompatError(f"engine built for {target['name']} (sm{target['compute_capability'].replace('.', '')}), "
                                f"but this GPU is {gpu_name}: TensorRT engines run only on the GPU model they were "
                                f"built for; rebuild here with fathom build CKPT OUT --gpu auto")
