"""The converter hook: `QuantTransform` turns each unsharded TRT-LLM tensor into what a quantized
checkpoint stores for it (fathom.build.transform.TensorTransform).

`specs(base)` declares the stored tensors (names, unsharded shapes, dtypes, and how each is split
under tensor parallelism) from the config alone, so a checkpoint can be planned, verified and
merged back without calibration data; `apply(base, tensor)` computes them and needs the calibration
statistics for FP8, AWQ and KV cache scales.

Tensor parallelism (TRT-LLM loads each rank's tensors as they are, so the splits must match its
layers' shapes): quantization always runs on the unsharded tensor, then
- quantized weights and per-channel/per-group scales are split with their weight (qkv per
  q/k/v part; an int4-packed qkv by half rows, since each byte holds two output rows of one head);
- per-tensor scales (FP8 weight/activation, KV cache) are replicated: every rank gets the same value;
- `prequant_scaling_factor` (per input channel) is replicated for column-parallel linears and split
  with the input features for row-parallel ones (attention.dense, mlp.proj).

Weight-only padding (`trtllm_padding`). TensorRT-LLM builds a weight-only linear with its full
in/out features rounded up to a multiple of `64 * tp` (W8A16: `WeightOnlyQuantLinear` /
`WeightOnlyQuantRowLinear`) or `max(64, group_size) * tp` (W4A16_AWQ:
`WeightOnlyGroupwiseQuantLinear` / `WeightOnlyGroupwiseQuantRowLinear`), in
tensorrt_llm/quantization/layers.py; `PretrainedModel.load` (models/modeling_utils.py) then sets
each checkpoint tensor on the padded parameter, and `Parameter.value` (parameter.py) asserts equal
shapes. A checkpoint holds unpadded shards, so a width TensorRT-LLM would pad fails there at build
time: `fathom convert` warns (the torch and reference executors run such a checkpoint) and
`fathom build` refuses it before importing TensorRT-LLM. The full widths are the per-rank shard widths times tp (qkv
with its KV heads duplicated below tp, as `Attention` builds it).
"""

from __future__ import annotations

import torch

from fathom.build.config import ModelConfig
from fathom.build.errors import ConfigError, WeightsError
from fathom.build.layout import TensorSpec
from fathom.build.precision import QuantAlgo
from fathom.build.mapping import ShardKind, shard_shape

from .awq import quantize_linear_awq
from .calibrate import CalibStats
from .config import QuantConfig, linear_dims, linear_modules
from .fp8 import amax, quantize_linear_fp8
from .kv_cache import kv_cache_scale

KV_SCALE = "attention.kv_cache_scaling_factor"
WEIGHT_ONLY_PAD = 64  # TRT-LLM pads weight-only linears to multiples of this (AWQ: of max(it, group)) * tp
FP8_SHARED_SCALE = (("mlp.fc", "mlp.gate"),)  # modules that share one FP8 weight scale (see fp8.py)


def _packed_kind(kind: ShardKind) -> ShardKind:
    """Shard kind of an int4-packed weight (out/2 rows): a qkv needs the half-row rule."""
    return ShardKind.QKV_INT4 if kind is ShardKind.QKV else kind


class QuantTransform:
    def __init__(self, qcfg: QuantConfig, cfg: ModelConfig, stats: CalibStats | None = None):
        self.qcfg, self.cfg, self.stats = qcfg, cfg, stats
        self.linears = linear_modules(cfg)
        self.awq_search: dict[str, dict] = {}  # module -> AwqSearch fields, for the conversion report

    # ---- planning ------------------------------------------------------------------------
    def _quantized_module(self, name: str) -> str | None:
        module, _, leaf = name.rpartition(".")
        if leaf == "weight" and module in self.linears and self.qcfg.quantizes(module):
            return module
        return None

    def specs(self, base: TensorSpec) -> list[TensorSpec]:
        module = self._quantized_module(base.name)
        algo = self.qcfg.quant_algo
        out = [base]
        if module is not None and algo is QuantAlgo.FP8:
            out = [TensorSpec(base.name, base.shape, torch.float8_e4m3fn, base.kind),
                   TensorSpec(f"{module}.weights_scaling_factor", (1,), torch.float32, ShardKind.REPLICATED),
                   TensorSpec(f"{module}.activation_scaling_factor", (1,), torch.float32, ShardKind.REPLICATED)]
        elif module is not None and algo is QuantAlgo.W4A16_AWQ:
            out_f, in_f = base.shape
            row_parallel = self.linears[module] is ShardKind.ROW
            out = [TensorSpec(base.name, (out_f // 2, in_f), torch.int8, _packed_kind(base.kind)),
                   TensorSpec(f"{module}.weights_scaling_factor", (out_f, in_f // self.qcfg.group_size),
                              base.dtype, base.kind),
                   TensorSpec(f"{module}.prequant_scaling_factor", (in_f,), base.dtype,
                              ShardKind.COLUMN if row_parallel else ShardKind.REPLICATED)]
        # W8A16 stores the weight in the model dtype: TRT-LLM quantizes it at load (see int8.py).
        if self.qcfg.kv_cache_quant_algo is not None and base.name.endswith(".attention.qkv.weight"):
            name = base.name[: -len("attention.qkv.weight")] + KV_SCALE
            out.append(TensorSpec(name, (1,), torch.float32, ShardKind.REPLICATED))
        return out

    # ---- producing -----------------------------------------------------------------------
    def _require_stats(self, what: str) -> CalibStats:
        if self.stats is None:
            raise WeightsError(f"{what}: needs calibration statistics (fathom convert --calib-data ...)")
        return self.stats

    def _fp8(self, module: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        stats = self._require_stats(f"{module} (FP8)")
        w_amax = amax(weight)
        for group in FP8_SHARED_SCALE:
            if module.endswith(group):
                prefix = module.rsplit(".", 2)[0]
                w_amax = torch.tensor(max(stats.weight_amax[f"{prefix}.{m}"] for m in group))
        return quantize_linear_fp8(weight, w_amax, stats.linear(module).amax)

    def _awq(self, module: str, weight: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        stats = self._require_stats(f"{module} (W4A16_AWQ)")
        inputs = stats.linear(module)
        if not inputs.rows:
            raise WeightsError(f"{module} (W4A16_AWQ): calibration kept no input rows (awq_rows = 0)")
        tensors, found = quantize_linear_awq(weight, inputs.act_mean, inputs.samples(), self.qcfg.group_size, dtype)
        self.awq_search[module] = {"alpha": found.alpha, "mse": found.loss, "mse_rtn": found.loss_rtn}
        return tensors

    def apply(self, base: TensorSpec, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        module = self._quantized_module(base.name)
        algo = self.qcfg.quant_algo
        if module is not None and algo is QuantAlgo.FP8:
            produced = self._fp8(module, tensor)
        elif module is not None and algo is QuantAlgo.W4A16_AWQ:
            produced = self._awq(module, tensor, base.dtype)
        else:
            produced = {"weight": tensor.to(base.dtype)} if module else {base.name: tensor.to(base.dtype)}
        out = {f"{module}.{k}": v for k, v in produced.items()} if module else produced
        if self.qcfg.kv_cache_quant_algo is not None and base.name.endswith(".attention.qkv.weight"):
            layer = int(base.name.split(".")[2])
            name = base.name[: -len("attention.qkv.weight")] + KV_SCALE
            stats = self._require_stats(name)
            out[name] = kv_cache_scale(
                stats.k_amax[layer], stats.v_amax[layer], self.qcfg.kv_cache_quant_algo)
        return out


def _quantized_shards(qcfg: QuantConfig, cfg: ModelConfig, tp: int) -> dict:
    """Each quantized linear -> (its ShardKind, its per-rank (out, in) shape)."""
    return {module: (kind, shard_shape(kind, linear_dims(cfg, module), tp, cfg))
            for module, kind in linear_modules(cfg).items() if qcfg.quantizes(module)}


def check_quant_mapping(qcfg: QuantConfig, cfg: ModelConfig, tp: int) -> None:
    """Refuse tensor-parallel splits the int4 layout cannot follow (one-line ConfigError): groups
    straddling ranks, and odd output widths (int4 packs output features in pairs)."""
    if qcfg.quant_algo is not QuantAlgo.W4A16_AWQ:
        return
    what = f"--precision {qcfg.weights(cfg.torch_dtype)} --tp {tp}"
    for module, (kind, (out_rank, in_rank)) in _quantized_shards(qcfg, cfg, tp).items():
        if kind is ShardKind.ROW and in_rank % qcfg.group_size:
            raise ConfigError(f"{what}: {module} gives each rank {in_rank} input features, not a multiple of "
                              f"the group size {qcfg.group_size}")
        if kind is ShardKind.COLUMN and out_rank % 2:
            raise ConfigError(f"{what}: {module} gives each rank an odd number of output features; int4 packs "
                              "them in pairs")


def trtllm_padding(qcfg: QuantConfig, cfg: ModelConfig, tp: int) -> str | None:
    """Why TensorRT-LLM cannot build this checkpoint because it would pad a weight-only linear (see
    the module docstring), or None. The torch and reference executors run such checkpoints."""
    algo = qcfg.quant_algo
    if algo is None or not algo.weight_only:
        return None
    awq = algo is QuantAlgo.W4A16_AWQ
    base = max(WEIGHT_ONLY_PAD, qcfg.group_size) if awq else WEIGHT_ONLY_PAD
    rule = (f"max({WEIGHT_ONLY_PAD}, group size {qcfg.group_size})" if awq else f"{WEIGHT_ONLY_PAD}") + f" * tp {tp}"
    padded = []  # (module, side, width)
    for module, (kind, (out_rank, in_rank)) in _quantized_shards(qcfg, cfg, tp).items():
        widths = {"output": out_rank if kind is ShardKind.ROW else out_rank * tp,
                  "input": in_rank * tp if kind is ShardKind.ROW else in_rank}
        padded += [(module, side, width) for side, width in widths.items() if width % (base * tp)]
    if padded:
        module, side, width = padded[0]
        suffixes = ",".join(dict.fromkeys(f"'*.{m.split('.', 3)[-1]}'" for m, _, _ in padded))
        return (f"{qcfg.weights(cfg.torch_dtype)} at tp {tp}: {module} has {width} {side} features, not a "
                f"multiple of {rule} = {base * tp}; TensorRT-LLM pads it to {-(-width // (base * tp)) * base * tp} "
                f"and then refuses the checkpoint's unpadded shape (add {suffixes} to convert's --exclude to leave "
                f"every such linear unquantized)")
    return None
