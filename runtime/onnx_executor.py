"""The onnx executor: a `fathom export onnx` graph run by onnxruntime, behind the executor interface.

It is the reference executor (static batch, left-padded prompts, one preallocated KV cache,
fathom.runtime.reference) with the forward pass in an onnxruntime session: `OnnxSessionModel` is
called as `Qwen2Model` is and feeds the graph the cache's past columns, its attention_mask (0 on left
padding) and position_ids, then stores the new columns of the graph's present outputs. Sampling,
log-probs, stop conditions and cancellation are the reference executor's own, so
`fathom generate/chat/bench/serve --executor onnx` run the exported artifact with the same sampling
and chat layer.

It is an executor that verifies the artifact, not a fast one: every step copies the whole KV cache.
The batch's past K/V (2 x layers x batch x KV heads x past tokens x head dim elements) is copied out
of the cache into contiguous past inputs, the graph copies it again into its present outputs beside
the new columns, and only those new columns are copied back; with --device cuda the past crosses to
the GPU and the present back every step. `fathom bench --executor onnx` therefore measures
onnxruntime's forward plus copies that grow with the context, not what the graph reaches under
TensorRT or with onnxruntime's IO binding.

onnxruntime runs float16 and float32 graphs. A bfloat16 graph is refused on every device: the numpy
interface that feeds the session has no bfloat16 type and onnxruntime's CPU provider has no bfloat16
kernels; bfloat16 graphs are for TensorRT (the trtexec command fathom export onnx prints).
onnxruntime itself is the optional extra `onnx`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fathom.build.errors import ConfigError, FathomError, MissingDependencyError
from fathom.build.precision import torch_dtype
from fathom.build.sources import ModelSource

from .onnx_manifest import read_onnx_manifest
from .reference import ReferenceExecutor, StaticKVCache

INSTALL_HINT = "pip install 'fathom-engine[onnx]' (onnxruntime-gpu instead for --device cuda)"


def import_onnxruntime():
    """The onnxruntime module, else a one-line MissingDependencyError with the install command."""
    try:
        import onnxruntime
    except ImportError as e:
        raise MissingDependencyError(f"--executor onnx needs onnxruntime, which is not importable ({e}); "
                                     f"install it with: {INSTALL_HINT}") from None
    return onnxruntime


def session_providers(device: str) -> list:
    """onnxruntime execution providers for a --device word (cpu, cuda, cuda:N)."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise FathomError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    available = import_onnxruntime().get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise FathomError(f"--device {device}: this onnxruntime has no CUDAExecutionProvider "
                          f"(available: {', '.join(available)}); install onnxruntime-gpu")
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]


class OnnxSessionModel:
    """An exported graph called as `Qwen2Model.forward(input_ids, positions, cache, logits_index)` with
    the reference executor's `StaticKVCache` (kept on the host in the graph's dtype).

    `max_seq_len`: tokens per sequence, at most the positions the graph was exported with
    (`graph_max_seq_len`, fathom-onnx.json); None: all of them."""

    kv_quant = None  # the graph keeps K/V in the model dtype
    quant_info = None

    def __init__(self, source: ModelSource, device: str = "cpu", threads: int = 1, max_seq_len: int | None = None):
        self.manifest = read_onnx_manifest(source.path)
        self.path = Path(source.path) / self.manifest["graph"]
        self.cfg = source.config
        self.dtype = torch_dtype(self.manifest["dtype"], f"{self.path.parent}: fathom-onnx.json field 'dtype' =")
        if self.dtype == torch.bfloat16:
            raise ConfigError(f"{self.path}: onnxruntime cannot run a bfloat16 graph (its numpy interface has no "
                              "bfloat16, its CPU provider no bfloat16 kernels); export the model again with "
                              "fathom export onnx MODEL OUT --dtype float16|float32 (bfloat16 graphs are for TensorRT: "
                              "trtexec)")
        self.graph_max_seq_len = self.manifest["max_seq_len"]
        if max_seq_len is not None and max_seq_len > self.graph_max_seq_len:
            raise ConfigError(f"--max-seq-len {max_seq_len}: {self.path} holds {self.graph_max_seq_len} positions "
                              f"(fathom export onnx --max-seq-len); expected at most {self.graph_max_seq_len}")
        self.max_seq_len = max_seq_len or self.graph_max_seq_len
        self.device = torch.device("cpu")  # where the cache lives; onnxruntime runs on `run_device`
        self.run_device = device
        providers = session_providers(device)
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FathomError(f"{self.path}: onnxruntime cannot run this graph on {device} ({first})") from e
        self.providers = self.session.get_providers()
        self._past = [i.name for i in self.session.get_inputs()][3:]

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: StaticKVCache,
                 logits_index: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids/positions (B, T) -> logits (B, T, V), or (B, 1, V) at `logits_index` (B,); stores
        the T new K/V columns in `cache` (its length is advanced by the caller)."""
        start, end = cache.length, cache.length + input_ids.shape[1]
        feed = {"input_ids": input_ids.numpy(), "attention_mask": cache.valid[:, :end].to(torch.int64).numpy(),
                "position_ids": positions.numpy()}
        for i, name in enumerate(self._past):
            kv = cache.k if i % 2 == 0 else cache.v
            feed[name] = np.ascontiguousarray(kv[i // 2, :, :, :start].numpy())
        logits, *present = self.session.run(None, feed)
        for i, new in enumerate(present):
            kv = cache.k if i % 2 == 0 else cache.v
            kv[i // 2, :, :, start:end] = torch.from_numpy(new[:, :, start:])
        logits = torch.from_numpy(logits)  # (B, T, V) float32
        if logits_index is not None:
            logits = logits[torch.arange(logits.shape[0]), logits_index][:, None]
        return logits


class OnnxExecutor(ReferenceExecutor):
    """The reference executor on an `OnnxSessionModel`."""

    name = "onnx"

    def __init__(self, model: OnnxSessionModel, eos_ids: list[int] | None = None):
        super().__init__(model, eos_ids=eos_ids)

    def describe(self) -> dict:
        m = self.model
        return {"executor": self.name, "device": m.run_device, "dtype": m.manifest["dtype"],
                "attention": "onnx graph (matmul, softmax)", "kv_cache": "static (past/present)",
                "precision": None, "kv_cache_format": "model", "quantization": None, "graph": str(m.path),
                "opset": m.manifest["opset"], "onnxruntime_providers": m.providers, "max_seq_len": self.max_seq_len,
                "graph_max_seq_len": m.graph_max_seq_len}
