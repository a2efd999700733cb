"""Describe a TensorRT-LLM engine dir: fathom manifest, TRT-LLM build config, the planner's numbers.

`fathom inspect ENGINE` (fathom.build.verify) calls `describe_engine`; nothing here needs tensorrt_llm.
"""

from __future__ import annotations

from pathlib import Path

from fathom.build.config import read_json
from fathom.build.errors import CheckpointError

from .gpus import get_gpu
from .manifest import MANIFEST_NAME, read_engine_manifest
from .planner import Deployment, plan
from .presets import engine_formats


def describe_engine(path: str | Path) -> dict:
    """Manifest (None if the engine was not built by fathom), build config, engine files and the plan
    for the manifest's GPU (None without a manifest: the target GPU is then unknown)."""
    from fathom.build.checkpoint import checkpoint_info

    path = Path(path)
    source = str(path / "config.json")
    raw = read_json(path / "config.json")
    if not isinstance(raw.get("pretrained_config"), dict) or not isinstance(raw.get("build_config"), dict):
        raise CheckpointError(f"{source}: not a TensorRT-LLM engine config (expected 'pretrained_config' and 'build_config')")
    pretrained, build_config = raw["pretrained_config"], raw["build_config"]
    ckpt = checkpoint_info(pretrained, path, source)
    cfg, mapping = ckpt.cfg, ckpt.mapping
    precision, kv_cache = engine_formats(ckpt)
    notes = []
    manifest = None
    if (path / MANIFEST_NAME).is_file():
        manifest = read_engine_manifest(path)
    else:
        notes.append(f"no {MANIFEST_NAME}: not built by fathom build, target GPU unknown, no plan")
    engines = [{"file": f"rank{r}.engine",
                "bytes": (path / f"rank{r}.engine").stat().st_size if (path / f"rank{r}.engine").is_file() else None}
               for r in range(mapping.world_size)]
    notes += [f"missing {e['file']}" for e in engines if e["bytes"] is None]

    planned = None
    if manifest is not None:
        dep = Deployment(precision=precision, kv_cache=kv_cache, seq_len=build_config["max_seq_len"],
                         tp=mapping.tp_size, pp=mapping.pp_size, max_num_tokens=build_config["max_num_tokens"],
                         max_batch_size=build_config["max_batch_size"])
        planned = plan(cfg, get_gpu(manifest["gpu"]["key"]), dep, model_name=path.name).to_dict()
    return {
        "kind": "engine",
        "path": str(path),
        "tensorrt_llm_version": raw.get("version"),
        "manifest": manifest,
        "model": {"architecture": pretrained.get("architecture"), "dtype": pretrained.get("dtype"),
                  "num_params": cfg.num_params(), "num_hidden_layers": cfg.num_hidden_layers,
                  "hidden_size": cfg.hidden_size},
        "precision": precision,
        "kv_cache": kv_cache,
        "mapping": {"tp_size": mapping.tp_size, "pp_size": mapping.pp_size, "world_size": mapping.world_size},
        "build_config": build_config,
        "engine_files": engines,
        "plan": planned,
        "notes": notes,
    }
