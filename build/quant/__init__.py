"""Quantization: FP8, W8A16, W4A16-AWQ formats, calibration, KV cache scales.

Importing this package registers the quantized formats with the converter
(fathom.build.transform.register_transform), keyed as `transform_for` looks them up.
"""

from fathom.build.transform import register_transform

from .config import KV_ALGOS, WEIGHT_ALGOS, QuantAlgo, QuantConfig
from .quantizer import QuantTransform


def _factory(spec, cfg):
    """A transform from config.json alone: enough to plan, verify and merge a checkpoint (no calibration)."""
    return QuantTransform(QuantConfig.from_spec(spec), cfg)


for _algo in WEIGHT_ALGOS:
    register_transform(_algo.value, _factory)
for _algo in KV_ALGOS:
    register_transform(f"kv_cache:{_algo.value}", _factory)

__all__ = ["QuantAlgo", "QuantConfig", "QuantTransform"]
