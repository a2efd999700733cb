"""`fathom convert --precision ...`: the quantization config, checks and calibration run before conversion.

Everything that can be refused is refused before calibration starts (it can take minutes), and
calibration runs before the converter writes anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fathom.build.errors import OutputExistsError
from fathom.build.mapping import Mapping
from fathom.build.precision import DEFAULT_GROUP_SIZE, KvCacheFormat, WeightFormat
from fathom.build.sources import ModelSource

from .calibrate import CalibConfig, needs_calibration, run_calibration
from .config import make_quant_config
from .quantizer import QuantTransform, check_quant_mapping


@dataclass(frozen=True)
class QuantOptions:
    precision: WeightFormat | None = None  # None or unquantized: no weight quantization
    kv_cache: KvCacheFormat | None = None  # None: KvCacheFormat.default_for(precision)
    exclude: tuple[str, ...] | None = None  # None: the default ["lm_head"]
    group_size: int = DEFAULT_GROUP_SIZE
    calib: CalibConfig = CalibConfig()


def checkpoint_precision(precision: str | None, dtype: str) -> tuple[WeightFormat | None, str]:
    """`fathom convert --precision P --dtype D` -> (weight format, `--dtype` for the converter).

    bf16 / fp16 / fp32 name the checkpoint dtype themselves (a contradicting --dtype is refused);
    a quantized format keeps --dtype for the tensors it leaves unquantized.
    """
    if precision is None:
        return None, dtype
    weights = WeightFormat.parse(precision, "--precision")
    if weights.quantized or dtype == "auto":
        return weights, weights.dtype or dtype
    return weights, weights.model_dtype(dtype)


def parse_exclude(text: str | None) -> tuple[str, ...] | None:
    """`--exclude lm_head,*.mlp.proj` -> ("lm_head", "*.mlp.proj"); an empty string excludes nothing."""
    if text is None:
        return None
    return tuple(p.strip() for p in text.split(",") if p.strip())


def prepare_transform(source: ModelSource, out: str | Path, options: QuantOptions, tp: int = 1, pp: int = 1,
                      force: bool = False, progress: bool = False) -> QuantTransform | None:
    """The converter transform for `options` (None: unquantized), calibrated when the format needs it."""
    cfg = source.config
    qcfg = make_quant_config(cfg, options.precision, options.kv_cache,
                             list(options.exclude) if options.exclude is not None else None, options.group_size)
    if not qcfg.quantized:
        return None
    Mapping(tp, pp).check_model(cfg)
    check_quant_mapping(qcfg, cfg, tp)
    if Path(out).exists() and not force:
        raise OutputExistsError(f"{Path(out).absolute()}: already exists (pass --force to overwrite)")
    stats = run_calibration(source, options.calib, progress=progress) if needs_calibration(qcfg) else None
    return QuantTransform(qcfg, cfg, stats)


def transform_report(transform: QuantTransform | None) -> dict | None:
    """Calibration and AWQ search summary for the conversion result."""
    if transform is None:
        return None
    return {"calibration": transform.stats.summary() if transform.stats else None,
            "awq_search": transform.awq_search or None}


def convert_quantized(source: ModelSource, out: str | Path, convert_options, options: QuantOptions) -> dict:
    """Calibrate (when the format needs it), then convert; the result includes the quantization report."""
    from fathom.build.convert import convert

    o = convert_options
    transform = prepare_transform(source, out, options, o.tp, o.pp, o.force, progress=o.progress)
    result = convert(source, out, o, transform=transform)
    result["quantization_report"] = transform_report(transform)
    return result
