"""fathom.json: what a checkpoint was made from and how, with a sha256 for every file.

TensorRT-LLM ignores it; `fathom verify` re-hashes the files against it, `fathom inspect` shows it,
and the runtime reads the bos/eos ids from its `model` block (the TRT-LLM config has no place for
them).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from .checkpoint import MANIFEST_NAME
from .config import read_json
from .errors import CheckpointError

FORMAT = "fathom-trtllm-checkpoint"
FORMAT_VERSION = 1
TARGET = "tensorrt-llm 1.2.1"
HASH_CHUNK_BYTES = 8 << 20


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            sha.update(chunk)
    return sha.hexdigest()


def file_records(paths: Iterable[Path], root: Path) -> list[dict[str, Any]]:
    """[{name (relative to root), bytes, sha256}] for each file."""
    return [{"name": str(p.relative_to(root)), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in paths]


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_manifest(*, source: dict[str, Any], model: dict[str, Any], dtype: str, quantization: dict,
                   mapping: dict, max_seq_len: int, ranks: list[dict[str, Any]], files: list[dict[str, Any]],
                   ignored_source_tensors: list[str]) -> dict[str, Any]:
    from fathom.runtime import version

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fathom_version": version(),
        "target": TARGET,
        "created_at": utc_now_iso(),
        "source": source,
        "model": model,
        "dtype": dtype,
        "quantization": quantization,
        "mapping": mapping,
        "max_seq_len": max_seq_len,
        "ranks": ranks,
        "files": files,
        "ignored_source_tensors": ignored_source_tensors,
    }


def write_json_manifest(path: Path, manifest: dict[str, Any]) -> Path:
    """Write one of fathom's manifests (checkpoint, engine, ONNX) as indented JSON."""
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_json_manifest(path: Path, format: str, required: Iterable[str]) -> dict[str, Any]:
    """One of fathom's manifests: a JSON object whose "format" is `format` and which has every
    `required` field; CheckpointError naming the file and field otherwise."""
    manifest = read_json(path)
    if manifest.get("format") != format:
        raise CheckpointError(f"{path}: field 'format' = {manifest.get('format')!r}, expected {format!r}")
    for key in required:
        if key not in manifest:
            raise CheckpointError(f"{path}: missing field {key!r}")
    return manifest


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    return write_json_manifest(out_dir / MANIFEST_NAME, manifest)


def read_manifest(ckpt_dir: Path) -> dict[str, Any] | None:
    """The manifest, or None when the directory has none (e.g. a checkpoint made by another tool)."""
    path = Path(ckpt_dir) / MANIFEST_NAME
    if not path.exists():
        return None
    return read_json_manifest(path, FORMAT, ("ranks", "files", "mapping", "dtype", "quantization"))


def check_hashes(ckpt_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Re-hash every file the manifest lists; return one problem line per file that differs."""
    problems = []
    records = [{"name": r["file"], "bytes": r["bytes"], "sha256": r["sha256"]} for r in manifest["ranks"]]
    for rec in records + list(manifest["files"]):
        path = Path(ckpt_dir) / rec["name"]
        if not path.is_file():
            problems.append(f"{rec['name']}: listed in {MANIFEST_NAME} but missing")
        elif path.stat().st_size != rec["bytes"]:
            problems.append(f"{rec['name']}: {path.stat().st_size} bytes, {MANIFEST_NAME} says {rec['bytes']}")
        elif sha256_file(path) != rec["sha256"]:
            problems.append(f"{rec['name']}: sha256 differs from {MANIFEST_NAME}")
    return problems
