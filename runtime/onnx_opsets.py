"""The ONNX opsets `fathom export onnx` writes, without importing torch (the CLI's help reads them).

torch.onnx's exporter writes opsets 18 (onnxscript's torch library) to 23 (ONNX_MAX_OPSET in
torch/onnx/_constants.py, torch 2.13). The default is the newest TensorRT 10.0's ONNX parser reads
(onnx/onnx-tensorrt docs/operators.md: opsets 9 to 20), also torch 2.13's own default.
"""

from __future__ import annotations

from fathom.build.errors import ConfigError

MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 18, 23, 20


def check_opset(opset: int | None) -> int:
    """`opset` (None: DEFAULT_OPSET) if the exporter writes it, else a one-line ConfigError."""
    if opset is None:
        return DEFAULT_OPSET
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"--opset {opset}: expected {MIN_OPSET} to {MAX_OPSET} (torch.onnx's exporter)")
    return opset
