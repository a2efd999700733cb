"""Calibration: run fathom's own torch model over token sequences and collect what the formats need.

Per linear module (TRT-LLM names; `mlp.gate` reads the same input as `mlp.fc` and shares its
statistics): the input amax (FP8 `activation_scaling_factor`), the per-channel mean |x| and a fixed
sample of input rows (the AWQ scale search), and the weight amax (the FP8 scale shared by fc/gate).
Per layer: the amax of K (after RoPE) and V as they would be written to the KV cache. Both are
explicit observers handed to the forward: the linear inputs by `Qwen2Model.weights(observer)`, K/V
by the attention backend (`CausalAttention(observer=KVAmax)`).

Deterministic: sequences come from `load_token_set` (seeded), the AWQ rows are drawn by a seeded
generator, and each sequence runs alone (batch 1, no padding), in order.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import torch

from fathom.build.errors import ConfigError
from fathom.build.mapping import LAYER_LINEARS
from fathom.build.precision import KvCacheFormat, QuantAlgo

from .config import QuantConfig
from .fp8 import amax as tensor_amax
from .kv_cache import KVAmax

SHARED_INPUT = {"mlp.gate": "mlp.fc"}  # module suffix -> the module whose input it reads


@dataclass(frozen=True)
class CalibConfig:
    data: str = "builtin"  # FILE.jsonl or builtin
    samples: int = 64
    seq_len: int = 256
    seed: int = 0
    awq_rows: int = 256  # input rows kept per linear for the AWQ search (0: none)


@dataclass
class LinearStats:
    """Statistics of one linear module's input."""
    in_features: int
    amax: float = 0.0
    abs_sum: torch.Tensor | None = None  # (in,) float64
    tokens: int = 0
    rows: list[torch.Tensor] = field(default_factory=list)  # (k, in) float32 pieces

    @property
    def act_mean(self) -> torch.Tensor:
        """Mean |x| per input channel, (in,) float32."""
        return (self.abs_sum / max(self.tokens, 1)).float()

    def samples(self) -> torch.Tensor:
        """(n, in) float32 input rows for the AWQ search."""
        return torch.cat(self.rows) if self.rows else torch.zeros(0, self.in_features)


@dataclass
class CalibStats:
    linears: dict[str, LinearStats]  # input statistics by module (modules sharing an input: the owner)
    weight_amax: dict[str, float]  # every linear module
    k_amax: list[float]
    v_amax: list[float]
    source: str
    sequences: int
    tokens: int
    config: CalibConfig

    def linear(self, module: str) -> LinearStats:
        for suffix, owner in SHARED_INPUT.items():
            if module.endswith("." + suffix):
                module = module[: -len(suffix)] + owner
        return self.linears[module]

    def summary(self) -> dict:
        return {"source": self.source, "sequences": self.sequences, "tokens": self.tokens,
                "seq_len": self.config.seq_len, "seed": self.config.seed, "awq_rows": self.config.awq_rows,
                "max_k_amax": max(self.k_amax, default=None), "max_v_amax": max(self.v_amax, default=None)}


def needs_calibration(qcfg: QuantConfig) -> bool:
    """W8A16 needs no data (weights only); FP8 activations, AWQ and KV cache scales do."""
    return qcfg.kv_cache_quant_algo is not None or qcfg.quant_algo in (QuantAlgo.FP8, QuantAlgo.W4A16_AWQ)


class _LinearInputs:
    """Linear observer (`Qwen2Model.weights(observer)`): input statistics of the modules in `linears`
    (the others share an owner's input), plus the input rows at `picked` of the current sequence."""

    def __init__(self, linears: dict[str, LinearStats]):
        self.linears = linears
        self.picked: torch.Tensor | None = None

    def __call__(self, name: str, x: torch.Tensor) -> None:
        s = self.linears.get(name)
        if s is None:
            return
        x = x.reshape(-1, x.shape[-1])  # (T, in)
        s.amax = max(s.amax, float(tensor_amax(x)))
        part = x.abs().sum(dim=0, dtype=torch.float64).cpu()
        s.abs_sum = part if s.abs_sum is None else s.abs_sum + part
        s.tokens += x.shape[0]
        if self.picked is not None and self.picked.numel():
            s.rows.append(x[self.picked].float().cpu())


def _observed_modules(model) -> dict[str, torch.nn.Module]:
    owners = [s for s in LAYER_LINEARS if s not in SHARED_INPUT]
    names = [f"transformer.layers.{i}.{s}" for i in range(model.cfg.num_hidden_layers) for s in owners]
    return {name: model.get_submodule(name) for name in names + ["lm_head"]}


@torch.inference_mode()
def calibrate_model(model, sequences: list[list[int]], config: CalibConfig, source: str = "",
                    progress: bool = False) -> CalibStats:
    """Run `model` (fathom.runtime.model.Qwen2Model) over `sequences` and return the statistics."""
    from tqdm import tqdm

    from fathom.runtime.model import CausalAttention

    linears = {name: LinearStats(m.in_features) for name, m in _observed_modules(model).items()}
    weight_amax = {name: float(tensor_amax(m.weight)) for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear)}
    inputs = _LinearInputs(linears)
    weights = model.weights(observer=inputs)
    kv = KVAmax(model.cfg.num_hidden_layers)
    attn = CausalAttention(model.kv_quant, observer=kv)
    gen = torch.Generator().manual_seed(config.seed)
    rows_per_seq = math.ceil(config.awq_rows / len(sequences)) if config.awq_rows else 0
    for ids in tqdm(sequences, desc="calibrate", unit="seq", disable=not progress, file=sys.stderr):
        T = len(ids)
        picked = torch.randperm(T, generator=gen)[:rows_per_seq].sort().values.to(model.device)
        inputs.picked = picked if rows_per_seq else None
        input_ids = torch.tensor([ids], device=model.device)
        model(input_ids, torch.arange(T, device=model.device)[None], attn, weights=weights)
    for s in linears.values():
        if s.rows:
            s.rows = [torch.cat(s.rows)[: config.awq_rows]]
    return CalibStats(linears, weight_amax, kv.k_amax, kv.v_amax, source, len(sequences),
                      sum(len(s) for s in sequences), config)


@torch.inference_mode()
def calibrate_kv_scales(model, sequences: list[list[int]], kv_format: KvCacheFormat | str) -> tuple[float, ...]:
    """Per-layer kv_cache_scaling_factor for `kv_format` (fp8 or int8) from the K/V amax of
    `sequences`, each run alone without a cache, by the quantizer's rule (`kv_cache_scale`)."""
    from fathom.runtime.model import CausalAttention

    kv_format = KvCacheFormat.parse(kv_format, "kv_format")
    if not kv_format.quantized:
        raise ConfigError(f"kv_format {kv_format.value!r}: only fp8 and int8 take scales")
    kv = KVAmax(model.cfg.num_hidden_layers)
    attn = CausalAttention(model.kv_quant, observer=kv)
    weights = model.weights()
    for ids in sequences:
        model(torch.tensor([ids], device=model.device), torch.arange(len(ids), device=model.device)[None], attn,
              weights=weights)
    return kv.scales(kv_format)


def run_calibration(source, config: CalibConfig, device: str | None = None, dtype: str | None = None,
                    progress: bool = False) -> CalibStats:
    """Load `source` (a fathom ModelSource) into the torch executor's model and calibrate it."""
    from fathom.runtime.loader import load_model, resolve_dtype

    from .calib_data import load_token_set

    dtype, device = resolve_dtype(dtype, device)
    tokenizer = None
    if source.tokenizer_dir is not None:
        from fathom.runtime.chat import load_tokenizer

        tokenizer = load_tokenizer(source.tokenizer_dir, source.spec)
    tokens = load_token_set(config.data, config.samples, config.seq_len, config.seed,
                            source.config.vocab_size, tokenizer, split="train")
    model = load_model(source, dtype=dtype, device=device, max_seq_len=config.seq_len)
    return calibrate_model(model, tokens.sequences, config, tokens.source, progress)
