"""`fathom export onnx`: a MODEL as one ONNX graph with an explicit KV cache (fathom.runtime.onnx_model).

Exporter: torch's recommended one, `torch.onnx.export(..., dynamo=True)` (torch.export, then
onnxscript's torch library). It keeps the parameters as they are: the ONNX initializers reference
the model's tensors until they are written, so the export holds the weights once (measured with
profiles/bench_onnx_export.py; from a Hugging Face directory in the source dtype they even stay
memory-mapped from its safetensors files). Its graph optimizer (onnxscript.optimizer) runs with the transposes
of weights left unfolded, so every initializer keeps its TensorRT-LLM checkpoint name and layout and
nothing weight-sized is computed.

The weights are read once, in the source dtype, and cast one tensor at a time; a tied model's
embedding is written once (fathom.runtime.onnx_model). A graph whose weights reach
EXTERNAL_DATA_BYTES (protobuf's 2 GiB limit less room for the graph) is written with its weights in
model.onnx.data (external data).
Everything is written to a temp sibling of OUT and renamed at the end (fathom.build.atomic):
model.onnx [+ model.onnx.data], the tokenizer files, fathom-onnx.json. `onnx.checker` runs on the
written file before the rename.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fathom.build.atomic import atomic_output_dir
from fathom.build.config import DEFAULT_MAX_SEQ_LEN
from fathom.build.convert import TOKENIZER_FILES
from fathom.build.errors import ConfigError, WeightsError
from fathom.build.manifest import file_records
from fathom.build.precision import DTYPES, KvCacheFormat, WeightFormat, check_dtype, dtype_word, torch_dtype
from fathom.build.sources import ModelSource

from .onnx_manifest import GRAPH_FILE, build_onnx_manifest, graph_io, source_record, write_onnx_manifest
from .onnx_opsets import check_opset

# Protobuf messages, hence ONNX files with the weights inside, stay under 2 GiB; the graph needs room too.
EXTERNAL_DATA_BYTES = (2 << 30) - (64 << 20)
UNQUANTIZED = tuple(f.value for f in WeightFormat if not f.quantized)


@dataclass(frozen=True)
class OnnxExportOptions:
    dtype: str | None = None  # None: the source's dtype
    opset: int | None = None  # None: onnx_opsets.DEFAULT_OPSET
    max_seq_len: int | None = None  # RoPE table rows, trtexec profiles; None: DEFAULT_MAX_SEQ_LEN, or the
    # model's max_position_embeddings when smaller
    force: bool = False


def check_export(source: ModelSource, out: Path, options: OnnxExportOptions) -> tuple[str, int, int]:
    """Refuse what cannot be exported, before anything is read or written; return (dtype, opset,
    max_seq_len)."""
    if source.kind not in ("hf", "random", "checkpoint"):
        raise ConfigError(f"{source.spec}: fathom export onnx needs a Hugging Face model, a fathom checkpoint, "
                          f"`demo` or random:<preset>, not a {source.kind} directory")
    dtype = check_dtype(options.dtype or source.config.torch_dtype, "--dtype")
    opset = check_opset(options.opset)
    max_seq_len = _graph_positions(source, options.max_seq_len)
    if source.kind == "checkpoint":
        from fathom.build.checkpoint import read_checkpoint

        ckpt = read_checkpoint(source.path)
        if ckpt.weights.quantized:
            raise ConfigError(f"{source.spec}: weights are {ckpt.weights.value}; fathom export onnx exports "
                              f"unquantized checkpoints ({', '.join(UNQUANTIZED)})")
        if ckpt.kv_cache is not KvCacheFormat.MODEL:
            raise ConfigError(f"{source.spec}: KV cache format is {ckpt.kv_cache.value}; the ONNX graph keeps K/V in "
                              f"the model dtype (a checkpoint with --kv-cache {KvCacheFormat.MODEL.value})")
    if source.path is not None:
        src_dir, out_dir = source.path.resolve(), out.resolve()
        if out_dir == src_dir or out_dir in src_dir.parents:
            raise ConfigError(f"{out}: would replace the source model {source.path}; choose another OUT")
    return dtype, opset, max_seq_len


def _graph_positions(source: ModelSource, requested: int | None) -> int:
    """The graph's positions: `requested`, which the model must hold, or by default DEFAULT_MAX_SEQ_LEN
    capped at the model's max_position_embeddings."""
    limit = source.config.max_position_embeddings
    if requested is None:
        return min(DEFAULT_MAX_SEQ_LEN, limit)
    if not 2 <= requested <= limit:
        raise ConfigError(f"--max-seq-len {requested}: expected 2 to {limit} "
                          f"({source.spec}'s max_position_embeddings)")
    return requested


def export_tensors(source: ModelSource, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model's TensorRT-LLM named tensors in `dtype`, cast one at a time (the source's copy of
    each is dropped as it is cast). A tied model gets no lm_head.weight: lm_head reads the embedding."""
    if source.kind == "checkpoint":
        from fathom.build.checkpoint import load_native_tensors, read_checkpoint

        tensors = load_native_tensors(read_checkpoint(source.path))
    else:
        from .loader import native_tensors_from_hf

        tensors = native_tensors_from_hf(source)
    if source.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    out = {}
    for name in list(tensors):
        t = tensors.pop(name)
        if dtype_word(t.dtype) not in DTYPES:
            raise WeightsError(f"{source.spec}: tensor '{name}' is {dtype_word(t.dtype)}; "
                               f"expected one of {', '.join(DTYPES)}")
        out[name] = t.to(dtype)
    return out


def _source_files(source: ModelSource) -> list[Path]:
    if source.path is None:
        return []
    names = ("config.json", "model.safetensors.index.json", "fathom.json")
    return [source.path / n for n in names if (source.path / n).is_file()] + sorted(source.path.glob("*.safetensors"))


def _keep_weights(node) -> bool | None:
    """The optimizer's fold rule: never fold a node that reads an initializer. While it folds, the
    exported graph's initializers are its parameters and buffers (its constants are Constant nodes)."""
    return False if any(v is not None and v.is_initializer() for v in node.inputs) else None


@contextmanager
def _quiet_exporter():
    """Hide the exporter's warnings and log lines (optional torchvision ops, deprecations in its
    own internals, axis renames): they are about torch, not about the model."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export_graph(source: ModelSource, dtype: str, max_seq_len: int, opset: int, path: Path) -> bool:
    """Write the graph to `path`; True when its weights went to external data."""
    import onnxscript.optimizer

    from .onnx_model import OnnxQwen2, dynamic_shapes, example_inputs, input_names, output_names

    cfg = source.config
    model = OnnxQwen2.from_state_dict(cfg, export_tensors(source, torch_dtype(dtype)), max_seq_len)
    weight_bytes = sum(t.nbytes for t in model.state_dict().values())
    layers = cfg.num_hidden_layers
    with _quiet_exporter():
        program = torch.onnx.export(model, example_inputs(cfg, torch_dtype(dtype)), dynamo=True, optimize=False,
                                    opset_version=opset, input_names=input_names(layers),
                                    output_names=output_names(layers), dynamic_shapes=dynamic_shapes(cfg),
                                    verbose=False)
    onnxscript.optimizer.optimize_ir(program.model, should_fold=_keep_weights)
    for node in program.model.graph.all_nodes():  # the exporting machine's source paths
        node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
    external = weight_bytes >= EXTERNAL_DATA_BYTES
    program.save(str(path), external_data=external)
    return external


def export_onnx(source: ModelSource, out: str | Path,
                options: OnnxExportOptions = OnnxExportOptions()) -> dict[str, Any]:
    """Write OUT; return a summary (the manifest's facts, paths and timings)."""
    import onnx
    import onnxscript

    out = Path(out)
    dtype, opset, max_seq_len = check_export(source, out, options)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(1) as pool, atomic_output_dir(out, force=options.force) as tmp:
        hashing = pool.submit(file_records, _source_files(source), source.path)
        external = _export_graph(source, dtype, max_seq_len, opset, tmp / GRAPH_FILE)
        export_s = time.perf_counter() - t0
        onnx.checker.check_model(str(tmp / GRAPH_FILE), full_check=True)
        inputs, outputs = graph_io(tmp / GRAPH_FILE)
        for name in TOKENIZER_FILES:
            folder = source.tokenizer_dir or source.path
            if folder is not None and (folder / name).is_file():
                shutil.copyfile(folder / name, tmp / name)
        written = sorted(p for p in tmp.iterdir() if p.is_file())
        source_files = hashing.result()
        model = {**source.config.to_hf_dict(), "torch_dtype": dtype}
        manifest = build_onnx_manifest(
            source=source_record(source, source_files),
            model=model, dtype=dtype, opset=opset, max_seq_len=max_seq_len, external_data=external,
            inputs=inputs, outputs=outputs, files=file_records(written, tmp),
            exporter={"method": "torch.onnx.export(dynamo=True)", "torch": torch.__version__,
                      "onnxscript": onnxscript.__version__, "onnx": onnx.__version__})
        write_onnx_manifest(tmp, manifest)
    return {"out": str(out.absolute()), "graph": str(out.absolute() / GRAPH_FILE), "dtype": dtype, "opset": opset,
            "max_seq_len": max_seq_len, "external_data": external, "inputs": inputs, "outputs": outputs,
            "files": manifest["files"], "source_sha256": manifest["source"]["sha256"],
            "export_s": round(export_s, 3), "seconds": round(time.perf_counter() - t0, 3)}
