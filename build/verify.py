"""`fathom inspect` (a summary of a checkpoint or engine dir) and `fathom verify` (format rules + hashes)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .checkpoint import CONFIG_NAME, check_rank_file, read_checkpoint, trtllm_config
from .config import read_json
from .errors import CheckpointError
from .manifest import check_hashes, read_manifest

RANK_FILE_RE = re.compile(r"^rank(\d+)\.safetensors$")


def is_engine_dir(path: Path) -> bool:
    cfg = Path(path) / CONFIG_NAME
    if not cfg.is_file():
        return False
    raw = read_json(cfg)
    return "pretrained_config" in raw and "build_config" in raw


def inspect_path(path: str | Path) -> dict[str, Any]:
    """Summary of a checkpoint dir, or of an engine dir (delegated to fathom.engine.inspect)."""
    path = Path(path)
    if is_engine_dir(path):
        from fathom.engine.inspect import describe_engine

        return {"kind": "engine", **describe_engine(path)}
    ckpt = read_checkpoint(path)
    cfg = ckpt.cfg
    manifest = read_manifest(path)
    ranks = []
    for info in ckpt.mapping.ranks(cfg.num_hidden_layers):
        file = path / info.file_name
        ranks.append({"rank": info.rank, "tp_rank": info.tp_rank, "pp_rank": info.pp_rank,
                      "layers": [info.layers.start, info.layers.stop], "file": info.file_name,
                      "bytes": file.stat().st_size if file.is_file() else None})
    sizes = [r["bytes"] for r in ranks]
    return {
        "kind": "checkpoint",
        "path": str(path.absolute()),
        "architecture": ckpt.raw["architecture"],
        "dtype": ckpt.dtype,
        "precision": ckpt.weights.value,
        "kv_cache": ckpt.kv_cache.value,
        "quantization": ckpt.quantization.to_trtllm_dict(),
        "mapping": ckpt.mapping.to_dict(),
        "max_seq_len": ckpt.max_seq_len,
        "model": {"num_hidden_layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size,
                  "intermediate_size": cfg.intermediate_size, "num_attention_heads": cfg.num_attention_heads,
                  "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
                  "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_word_embeddings,
                  "rope_theta": cfg.rope_theta, "max_position_embeddings": cfg.max_position_embeddings,
                  "num_params": cfg.num_params()},
        "ranks": ranks,
        "total_bytes": None if None in sizes else sum(sizes),
        "manifest": None if manifest is None else {k: manifest.get(k) for k in
                                                   ("fathom_version", "created_at", "target", "source")},
    }


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Raise CheckpointError listing every problem found; return what was checked."""
    path = Path(path)
    ckpt = read_checkpoint(path)  # architecture, qwen_type, rotary_base, mapping vs model
    problems: list[str] = []
    expected = trtllm_config(ckpt.cfg, ckpt.mapping, ckpt.dtype, ckpt.max_seq_len, ckpt.quantization)
    for key, value in expected.items():
        if key not in ckpt.raw:
            problems.append(f"{CONFIG_NAME}: missing field '{key}'")
        elif key not in ("mapping", "quantization") and ckpt.raw[key] != value:
            problems.append(f"{CONFIG_NAME}: field '{key}' = {ckpt.raw[key]!r}, expected {value!r}")
    present = {int(m.group(1)) for p in path.iterdir() if (m := RANK_FILE_RE.match(p.name))}
    extra = sorted(present - set(range(ckpt.mapping.world_size)))
    if extra:
        problems.append(f"rank{extra[0]}.safetensors: not part of a world_size {ckpt.mapping.world_size} mapping")
    tensor_count = 0
    for plan in ckpt.rank_plans():
        try:
            tensor_count += len(check_rank_file(path, plan, relative_names=True))
        except CheckpointError as e:
            problems.append(str(e))
    manifest = read_manifest(path)
    if manifest is not None:
        for key, value in (("dtype", ckpt.dtype), ("mapping", ckpt.mapping.to_dict()),
                           ("quantization", ckpt.quantization.to_trtllm_dict())):
            if manifest[key] != value:
                problems.append(f"fathom.json: field '{key}' = {manifest[key]!r}, config.json says {value!r}")
        problems += check_hashes(path, manifest)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} problems)" if len(problems) > 5 else "")
        raise CheckpointError(f"{path}: verify failed: {shown}")
    return {"path": str(path.absolute()), "ok": True, "ranks": ckpt.mapping.world_size,
            "tensors": tensor_count, "hashes_checked": manifest is not None,
            "files_hashed": 0 if manifest is None else len(manifest["ranks"]) + len(manifest["files"])}
