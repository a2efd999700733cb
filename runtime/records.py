"""Run records: one versioned JSON object per run, appended as one line to a JSONL file.

bench, quality and eval results share one envelope (docs/records.md):

    {"schema_version": 1, "kind": "bench" | "quality" | "eval", "record_id", "created_at",
     "model": {...}, "environment": {...}, "parameters": {...}, "metrics": {...},
     "profiler": {...} | null, "timeseries_path": str | null, "roofline": {...} | null}

A command appends to the file it is given, else to ./fathom-runs/<host>-<gpu>.jsonl in the current
directory ($FATHOM_RESULTS_DIR moves the directory); records from several machines are merged by
reading several files: `load_records`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from fathom.build.errors import FathomError
from fathom.build.precision import DTYPES, WeightFormat

SCHEMA_VERSION = 1
REQUIRED = {"schema_version": int, "kind": str, "record_id": str, "created_at": str, "environment": dict,
            "parameters": dict, "metrics": dict}
# model dtype -> the --precision word of its unquantized weights (bfloat16 -> bf16)
PRECISION_OF_DTYPE = {dtype: WeightFormat.of_dtype(dtype).value for dtype in DTYPES}
RUNS_DIR = "fathom-runs"  # under the current directory: where records go without --out


class RecordError(FathomError):
    """A records file or record does not follow the schema."""


def results_dir() -> Path:
    """$FATHOM_RESULTS_DIR, else ./fathom-runs/ in the current working directory."""
    env = os.environ.get("FATHOM_RESULTS_DIR")
    return Path(env) if env else Path.cwd() / RUNS_DIR


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def default_results_file(record: dict) -> Path:
    """<host>-<gpu>.jsonl (`cpu` without a GPU; `2x-<gpu>` for two GPUs)."""
    env = record.get("environment", {})
    gpus = env.get("gpus") or []
    device = "cpu" if not gpus else (f"{len(gpus)}x-" if len(gpus) > 1 else "") + _slug(gpus[0].get("name") or "gpu")
    return results_dir() / f"{_slug(env.get('host') or 'host')}-{device}.jsonl"


# ---- environment -------------------------------------------------------------------------
def _package_version(*names: str) -> str | None:
    """Installed version without importing the package (tensorrt_llm is slow and heavy)."""
    from importlib.metadata import PackageNotFoundError, version

    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def fathom_commit() -> str | None:
    """HEAD of the source tree fathom runs from (`-dirty` with uncommitted changes); None if not a git tree."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment(executor_info: dict | None = None, gpus: list[dict] | None = None, preset: str | None = None) -> dict:
    """Where and with what a run happened. `gpus`: the profiler's static GPU facts."""
    from fathom.runtime import version

    info = dict(executor_info or {})
    gpus = list(gpus or [])
    torch_mod = sys.modules.get("torch")  # only when already imported: never pay for it here
    dtype = info.get("dtype")
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count()},
        "gpus": gpus,
        "gpu_name": gpus[0].get("name") if gpus else None,
        "driver_version": gpus[0].get("driver_version") if gpus else None,
        "cuda_driver_version": gpus[0].get("cuda_driver_version") if gpus else None,
        "torch_version": _package_version("torch"),
        "torch_cuda_version": getattr(getattr(torch_mod, "version", None), "cuda", None),
        "tensorrt_llm_version": _package_version("tensorrt-llm", "tensorrt_llm"),
        "fathom_version": version(),
        "fathom_commit": fathom_commit(),
        "executor": info.get("executor"),
        "device": info.get("device"),
        "dtype": dtype,
        "precision": info.get("precision") or PRECISION_OF_DTYPE.get(dtype, dtype),
        "kv_cache": info.get("kv_cache_format"),
        "preset": preset,
        "executor_info": info,
    }


def make_record(kind: str, model: dict, parameters: dict, metrics: dict, env: dict, profiler: dict | None = None,
                timeseries_path: str | None = None, roofline: dict | None = None) -> dict:
    record = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "record_id": uuid.uuid4().hex,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "environment": env,
        "parameters": parameters,
        "metrics": metrics,
        "profiler": profiler,
        "timeseries_path": timeseries_path,
        "roofline": roofline,
    }
    validate_record(record, "new record")
    return record


def validate_record(record: Any, where: str) -> dict:
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a JSON object")
    for key, typ in REQUIRED.items():
        if not isinstance(record.get(key), typ):
            raise RecordError(f"{where}: field '{key}' missing or not a {typ.__name__}")
    if record["schema_version"] > SCHEMA_VERSION:
        raise RecordError(f"{where}: schema_version {record['schema_version']} is newer than this fathom "
                          f"understands ({SCHEMA_VERSION}); upgrade fathom")
    return record


# ---- files ---------------------------------------------------------------------------------
def append_record(record: dict, path: str | Path | None = None) -> Path:
    """Append one line to `path` (default: `default_results_file`). One write call: no partial lines."""
    path = Path(path) if path is not None else default_results_file(record)
    validate_record(record, str(path))
    line = json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return path


def read_jsonl(path: str | Path, error: type[FathomError] = RecordError) -> list[tuple[int, Any]]:
    """(line number, value) of every non-blank line; `error` names the file and line of bad JSON."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from e
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise error(f"{path}:{n}: not valid JSON ({e.msg})") from e
    return out


def read_records(path: str | Path) -> list[dict]:
    return [validate_record(data, f"{path}:{n}") for n, data in read_jsonl(path)]


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; a directory stands for its *.jsonl files."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(p.glob("*.jsonl"))
        elif p.exists():
            out.append(p)
        else:
            raise RecordError(f"{p}: no such records file or directory")
    return out


def load_records(paths: Iterable[str | Path], kind: str | None = None, sources: dict | None = None) -> list[dict]:
    """Records of several files/machines, oldest first, each record once (by record_id).

    `sources`, when given, is filled with record_id -> the file it came from.
    """
    seen: dict[str, dict] = {}
    for path in expand_paths(paths):
        for record in read_records(path):
            seen.setdefault(record["record_id"], record)
            if sources is not None:
                sources.setdefault(record["record_id"], path)
    records = [r for r in seen.values() if kind is None or r["kind"] == kind]
    return sorted(records, key=lambda r: r["created_at"])


def load_timeseries(record: dict, records_file: str | Path) -> list[dict] | None:
    """The profiler readings a record points to (its path is relative to its records file)."""
    rel = record.get("timeseries_path")
    if not rel:
        return None
    return [row for _, row in read_jsonl(Path(records_file).parent / rel)]


def get(record: dict, dotted: str, default=None):
    """`get(r, "metrics.mean_ttft_ms")`: a nested field, or `default` when any part is missing/null."""
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return default
        value = value[part]
    return value
