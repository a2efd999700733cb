"""Quantization formats as data: the config.json `quantization` block (`QuantConfig`) and the linear modules.

The block is read by tensorrt-llm 1.2.1 as `QuantConfig(**config["quantization"])`
(tensorrt_llm/models/modeling_utils.py, `QuantConfig.from_dict`), so an unknown key is a
TypeError there: we write only fields that class declares. `exclude_modules` are fnmatch patterns
matched against module names (tensorrt_llm/quantization/quantize.py, `quantize_layers`); a list
replaces TRT-LLM's defaults (`*lm_head`, `*vocab_embedding`, ...), so ours always names the
embedding as well.

FP8 and the gated MLP. `trtllm-build` fuses each layer's `mlp.fc` and `mlp.gate` into one GEMM
(`use_fused_mlp`, on by default; `fuse_gate_mlp` in tensorrt_llm/models/modeling_utils.py, called by
`optimize_model` from builder.py `build`). It decides the fused layer's format from `mlp.fc` alone,
through `QuantConfig._get_quant_cfg`, which matches an exclude entry only by exact name or as a
trailing-`*` prefix (not fnmatch): an FP8 fc beside an excluded gate fails its
`assert gate_weight.dtype == fc_weight.dtype`, an excluded fc beside an FP8 gate concatenates e4m3
bytes with 16-bit weights, and a pair excluded by a glob such as `*.mlp.fc` takes the FP8 branch and
reads a `weights_scaling_factor` the unquantized gate does not have. So FP8 refuses excluding only
one of the pair, and for a pair excluded together lists the fc module by its exact name as well.
Weight-only formats (W8A16, AWQ): `fuse_gate_mlp` leaves a pair alone when fc is quantized, and
concatenates the two raw weights when fc is unquantized, so an excluded fc beside a quantized gate
would put int8/int4 bytes beside 16-bit weights: refused (excluding the gate alone is fine).
q, k and v are one tensor (`attention.qkv`) in the checkpoint, so an exclude pattern always covers
all three.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from fathom.build.config import ModelConfig
from fathom.build.errors import ConfigError
from fathom.build.mapping import LAYER_LINEARS, ShardKind, kind_of
from fathom.build.precision import DEFAULT_GROUP_SIZE, KvCacheFormat, QuantAlgo, WeightFormat

WEIGHT_ALGOS = tuple(f.quant_algo for f in WeightFormat if f.quantized)
KV_ALGOS = tuple(f.quant_algo for f in KvCacheFormat if f.quantized)
# fields of tensorrt_llm.models.modeling_utils.QuantConfig (v1.2.1) that fathom writes
TRTLLM_KEYS = ("quant_algo", "kv_cache_quant_algo", "group_size", "has_zero_point", "pre_quant_scale",
               "exclude_modules")
EMBEDDING_MODULE = "transformer.vocab_embedding"
DEFAULT_EXCLUDE = ("lm_head",)



def linear_modules(cfg: ModelConfig) -> dict[str, ShardKind]:
    """Every linear module of the model (TRT-LLM names) -> how tensor parallelism splits its weight
    (QKV, COLUMN: output features; ROW: input features; VOCAB: lm_head)."""
    out = {f"transformer.layers.{i}.{suffix}": kind_of(f"{suffix}.weight")
           for i in range(cfg.num_hidden_layers) for suffix in LAYER_LINEARS}
    out["lm_head"] = ShardKind.VOCAB
    return out


def linear_dims(cfg: ModelConfig, module: str) -> tuple[int, int]:
    """(out_features, in_features) of a linear module, unsharded."""
    return cfg.linear_dims()[module.split(".", 3)[-1] if module.startswith("transformer.layers.") else module]


@dataclass(frozen=True)
class QuantConfig:
    """The config.json `quantization` block, checked: weight and KV cache algorithms, AWQ group size,
    modules left unquantized."""

    quant_algo: QuantAlgo | None = None
    kv_cache_quant_algo: QuantAlgo | None = None
    group_size: int = DEFAULT_GROUP_SIZE
    has_zero_point: bool = False
    pre_quant_scale: bool = False
    exclude_modules: tuple[str, ...] | None = None
    source: str = "quantization"  # where it came from, for errors

    def __post_init__(self) -> None:
        for name, allowed in (("quant_algo", WEIGHT_ALGOS), ("kv_cache_quant_algo", KV_ALGOS)):
            value = getattr(self, name)
            if value is None:
                continue
            if value not in [a.value for a in allowed]:
                raise ConfigError(f"{self.source}: field '{name}' = {value!r}, expected null or one of "
                                  f"{', '.join(a.value for a in allowed)}")
            object.__setattr__(self, name, QuantAlgo(value))
        if not isinstance(self.group_size, int) or self.group_size <= 0:
            raise ConfigError(f"{self.source}: field 'group_size' = {self.group_size!r}, expected a positive integer")
        if self.has_zero_point:
            raise ConfigError(f"{self.source}: field 'has_zero_point' = true is not supported (symmetric formats only)")
        if self.exclude_modules is not None:
            object.__setattr__(self, "exclude_modules", tuple(self.exclude_modules))

    @property
    def quantized(self) -> bool:
        return self.quant_algo is not None or self.kv_cache_quant_algo is not None

    def is_excluded(self, module: str) -> bool:
        """TRT-LLM's rule: any exclude pattern fnmatch-es the module name."""
        return any(fnmatch.fnmatchcase(module, p) for p in self.exclude_modules or ())

    def quantizes(self, module: str) -> bool:
        return self.quant_algo is not None and not self.is_excluded(module)

    @property
    def kv_cache(self) -> KvCacheFormat:
        return KvCacheFormat.of_checkpoint(self.kv_cache_quant_algo, self.source)

    def weights(self, dtype: str) -> WeightFormat:
        """The weight format of a checkpoint of model dtype `dtype` with this block."""
        return WeightFormat.of_checkpoint(self.quant_algo, dtype, self.source)

    def to_trtllm_dict(self) -> dict:
        """The config.json `quantization` block (TRT-LLM reads it as `QuantConfig(**d)`)."""
        return {"quant_algo": self.quant_algo.value if self.quant_algo else None,
                "kv_cache_quant_algo": self.kv_cache_quant_algo.value if self.kv_cache_quant_algo else None,
                "group_size": self.group_size, "has_zero_point": self.has_zero_point,
                "pre_quant_scale": self.pre_quant_scale,
                "exclude_modules": list(self.exclude_modules) if self.exclude_modules is not None else None}

    @classmethod
    def from_trtllm_dict(cls, d: dict | None, source: str = "config.json") -> "QuantConfig":
        if d is None:
            return cls(source=source)
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: field 'quantization' = {d!r}, expected an object")
        excl = d.get("exclude_modules")
        if excl is not None and (not isinstance(excl, list) or not all(isinstance(p, str) for p in excl)):
            raise ConfigError(f"{source}: field 'quantization.exclude_modules' = {excl!r}, expected a list of strings")
        return cls(**{k: d[k] for k in TRTLLM_KEYS if k in d}, source=f"{source}: quantization")


def make_quant_config(cfg: ModelConfig, precision: WeightFormat | str | None = None,
                      kv_cache: KvCacheFormat | str | None = None, exclude: list[str] | None = None,
                      group_size: int = DEFAULT_GROUP_SIZE) -> QuantConfig:
    """The config for `fathom convert --precision P --kv-cache K --exclude ...`, checked against the model.

    `precision` None: unquantized weights. `kv_cache` None: `KvCacheFormat.default_for(precision)`
    (FP8 beside FP8 weights, the model dtype otherwise).
    `exclude` (module names or fnmatch patterns) replaces the default ["lm_head"]; the embedding is
    always listed (it is never quantized here, and an unlisted one would be quantized by TRT-LLM's
    W8A16 loader).
    """
    precision = WeightFormat.parse(precision or "bf16", "--precision")
    kv_cache = (KvCacheFormat.default_for(precision) if kv_cache is None
                else KvCacheFormat.parse(kv_cache, "--kv-cache"))
    algo, kv = precision.quant_algo, kv_cache.quant_algo
    if algo is None and kv is None:
        return QuantConfig()
    patterns = list(DEFAULT_EXCLUDE if exclude is None else exclude)
    modules = linear_modules(cfg)
    for p in patterns:
        if not any(fnmatch.fnmatchcase(m, p) for m in [*modules, EMBEDDING_MODULE]):
            raise ConfigError(f"--exclude {p!r}: matches no module (e.g. lm_head, "
                              f"transformer.layers.0.mlp.proj, '*.attention.dense')")
    lm_head_rule = {
        # convert_utils.weight_only_quantize_dict quantizes only these weights at load.
        QuantAlgo.W8A16: "TRT-LLM 1.2.1 quantizes only qkv/dense/fc/gate/proj weights at load",
        QuantAlgo.W4A16_AWQ: "its vocab padding under tensor parallelism does not follow int4 row pairs",
    }
    if algo in lm_head_rule and not any(fnmatch.fnmatchcase("lm_head", p) for p in patterns):
        raise ConfigError(f"--exclude: {precision} keeps lm_head unquantized ({lm_head_rule[algo]}); "
                          "add lm_head to the list")
    if EMBEDDING_MODULE not in patterns:
        patterns.append(EMBEDDING_MODULE)
    if algo is QuantAlgo.W8A16:
        # The load-time quantizer matches the patterns against tensor names
        # (`...mlp.proj.weight`), quantize_layers against module names: list both forms.
        patterns += [f"{p}.*" for p in patterns if f"{p}.*" not in patterns]
    if algo is not None:
        patterns += _fused_mlp_exclusions(cfg, patterns, algo)
    awq = algo is QuantAlgo.W4A16_AWQ
    qcfg = QuantConfig(quant_algo=algo, kv_cache_quant_algo=kv, group_size=group_size,
                       pre_quant_scale=awq, exclude_modules=tuple(patterns), source="--precision")
    if awq:
        for module in modules:
            if qcfg.quantizes(module) and linear_dims(cfg, module)[1] % group_size:
                suffix = module.split(".", 3)[-1]
                raise ConfigError(f"--precision w4a16_awq: {module} has {linear_dims(cfg, module)[1]} input features, "
                                  f"not a multiple of the group size {group_size}; leave it unquantized with "
                                  f"--exclude lm_head,'*.{suffix}'")
    return qcfg


def _fused_mlp_exclusions(cfg: ModelConfig, patterns: list[str], algo: QuantAlgo) -> list[str]:
    """Refuse an exclude list that splits a layer's fc/gate pair in a way `fuse_gate_mlp` cannot
    fuse (see the module docstring); for FP8, the exact names of excluded fc modules that `patterns`
    lists only by glob."""
    excluded = lambda module: any(fnmatch.fnmatchcase(module, p) for p in patterns)  # noqa: E731
    exact = []
    for i in range(cfg.num_hidden_layers):
        fc, gate = f"transformer.layers.{i}.mlp.fc", f"transformer.layers.{i}.mlp.gate"
        if algo is QuantAlgo.FP8 and excluded(fc) != excluded(gate):
            left, kept = (fc, gate) if excluded(fc) else (gate, fc)
            raise ConfigError(f"--exclude: {left} is excluded but {kept} is not; TensorRT-LLM fuses mlp.fc and "
                              "mlp.gate into one FP8 GEMM (use_fused_mlp), so exclude both or neither")
        if algo is not QuantAlgo.FP8 and excluded(fc) and not excluded(gate):
            raise ConfigError(f"--exclude: {fc} is excluded but {gate} is not; TensorRT-LLM fuses an unquantized "
                              f"mlp.fc with its mlp.gate (use_fused_mlp), which then must be unquantized too: "
                              f"exclude both, or only the gate")
        if algo is QuantAlgo.FP8 and excluded(fc) and fc not in patterns:
            exact.append(fc)
    return exact
