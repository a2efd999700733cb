"""fathom-onnx.json: what a `fathom export onnx` directory holds and what it was made from.

The graph's inputs and outputs (names, shapes with the dynamic axes named, dtypes) are read back
from the written model.onnx, so the manifest describes the file as it is; `model` is the Hugging
Face style config the directory resolves to as a MODEL (fathom.build.sources, kind "onnx"), with
`torch_dtype` the graph's dtype; `source` names the model it came from, with a sha256 of each of its
files and one sha256 that identifies its weights (`sha256_of` says what that one hashes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fathom.build.errors import CheckpointError
from fathom.build.manifest import read_json_manifest, utc_now_iso, write_json_manifest
from fathom.build.sources import ONNX_MANIFEST_NAME, ModelSource

FORMAT = "fathom-onnx"
FORMAT_VERSION = 1
GRAPH_FILE = "model.onnx"
REQUIRED = ("graph", "model", "dtype", "opset", "max_seq_len", "inputs", "outputs", "files")


def graph_io(model_path: Path) -> tuple[list[dict], list[dict]]:
    """[{name, shape, dtype}] of the graph's inputs and outputs; a dynamic axis is its name."""
    import numpy as np
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph

    def describe(value) -> dict:
        tensor = value.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        return {"name": value.name, "shape": shape, "dtype": dtype}

    return [describe(v) for v in graph.input], [describe(v) for v in graph.output]


def source_digest(files: list[dict]) -> str | None:
    """One sha256 over a source's file records (name and sha256 of each); None without files."""
    if not files:
        return None
    lines = "".join(f"{f['name']}\t{f['sha256']}\n" for f in sorted(files, key=lambda f: f["name"]))
    return hashlib.sha256(lines.encode()).hexdigest()


def source_record(source: ModelSource, files: list[dict]) -> dict[str, Any]:
    """The manifest's `source`: spec, kind, its file records and a sha256 identifying the weights.
    `sha256_of` names what is hashed: "files" (`source_digest` of the file records) for a directory;
    "config+seed" for random:<preset>, whose weights are drawn from its config and seed: the sha256 of
    the canonical JSON {"config": the Hugging Face config, "seed": the seed}."""
    record = {"spec": source.spec, "kind": source.kind, "files": files}
    if source.kind == "random":
        drawn_from = {"config": source.config.to_hf_dict(), "seed": source.seed}
        text = json.dumps(drawn_from, sort_keys=True, separators=(",", ":"))
        return {**record, "sha256": hashlib.sha256(text.encode()).hexdigest(), "sha256_of": "config+seed"}
    return {**record, "sha256": source_digest(files), "sha256_of": "files"}


def build_onnx_manifest(*, source: dict[str, Any], model: dict[str, Any], dtype: str, opset: int, max_seq_len: int,
                        external_data: bool, inputs: list[dict], outputs: list[dict], files: list[dict],
                        exporter: dict[str, Any]) -> dict[str, Any]:
    from fathom.runtime import version

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fathom_version": version(),
        "created_at": utc_now_iso(),
        "exporter": exporter,
        "source": source,
        "graph": GRAPH_FILE,
        "model": model,
        "dtype": dtype,
        "opset": opset,
        "max_seq_len": max_seq_len,
        "external_data": external_data,
        "inputs": inputs,
        "outputs": outputs,
        "files": files,
    }


def write_onnx_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    return write_json_manifest(out_dir / ONNX_MANIFEST_NAME, manifest)


def read_onnx_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The manifest of an exported directory; CheckpointError when absent or malformed."""
    path = Path(out_dir) / ONNX_MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: no ONNX manifest (was this directory written by fathom export onnx?)")
    return read_json_manifest(path, FORMAT, REQUIRED)
