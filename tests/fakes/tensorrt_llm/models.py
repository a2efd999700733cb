"""Fake tensorrt_llm.models: QWenForCausalLM.from_checkpoint, checking a rank file as upstream loads it.

Rules modelled (NVIDIA/TensorRT-LLM, the 1.x sources of the 1.2 release line):
- tensorrt_llm/models/modeling_utils.py `PretrainedConfig.__init__`: `architecture`, `dtype`,
  `hidden_size`, `num_hidden_layers`, `num_attention_heads` are required keyword-only arguments
  (TypeError when missing); other keys become attributes with defaults (`num_key_value_heads` =
  heads, `head_size` = hidden / heads, `intermediate_size` = 4 * hidden).
- tensorrt_llm/models/qwen/config.py `QWenConfig`: `qwen_type` and `seq_length` are not parameters
  and have no default; they exist only when config.json holds them (`QWenDecoderLayer` in
  models/qwen/model.py reads `config.qwen_type`), so a missing one is an AttributeError.
- `PretrainedModel.from_checkpoint`: `assert os.path.isfile(rank{r}.safetensors)`, then `load()`:
  every parameter the model declares must be provided ("Required but not provided tensors"), extra
  tensors only warn, and `Parameter.value` (tensorrt_llm/parameter.py) asserts equal shapes.
  `check_share_embedding`'s exemption: `lm_head.weight` may be absent when the embedding is present.
- the parameters: QWenModel / QWenForCausalLM (models/qwen/model.py): embedding on the first pipeline
  stage (replicated, `use_parallel_embedding` false), layers numbered from 0 on each stage, `ln_f`
  and `lm_head` (rows padded to a multiple of tp) on the last; `Attention` (layers/attention.py)
  holds ceil(kv / tp) KV heads per rank; `attn_bias` gives the qkv bias.
- quantization (tensorrt_llm/quantization/quantize.py `quantize_layers` skips modules an
  `exclude_modules` pattern fnmatch-es; quantization/layers.py): FP8 linears take
  `weights_scaling_factor` and `activation_scaling_factor` (1,); weight-only linears pad their full
  in/out features to a multiple of `64 * tp` (W8A16) or `max(64, group_size) * tp` (W4A16_AWQ)
  before splitting; W8A16 weights arrive in the model dtype and are quantized at load unless their
  tensor name fnmatch-es an exclude pattern (models/convert_utils.py `weight_only_quantize_dict`),
  which is what provides `per_channel_scale`; AWQ weights are int4 packed (out/2, in) with
  `weights_scaling_factor` (out, in / group) and, with `pre_quant_scale`, `prequant_scaling_factor`;
  a KV cache format adds `attention.kv_cache_scaling_factor` (1,).
Shapes here are the checkpoint's (before load's transposes). Only the safetensors header is read.
"""

import copy
import fnmatch
import json
import math
import os
import struct
from typing import Optional

import tensorrt_llm

REQUIRED = ("architecture", "dtype", "hidden_size", "num_hidden_layers", "num_attention_heads")
LINEARS = ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")
ROW_PARALLEL = ("attention.dense", "mlp.proj")


def _header(path: str) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return {name: tuple(entry["shape"]) for name, entry in header.items()}


def _excluded(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or ())


def expected_tensors(config: dict, rank: int) -> dict[str, tuple]:
    """Checkpoint tensor name -> shape that rank `rank` must provide."""
    for key in REQUIRED:
        if key not in config:
            raise TypeError(f"PretrainedConfig.__init__() missing 1 required keyword-only argument: '{key}'")
    for key in ("qwen_type", "seq_length"):
        if key not in config:
            raise AttributeError(f"'QWenConfig' object has no attribute '{key}'")
    m = config.get("mapping") or {}
    tp, pp = m.get("tp_size", 1), m.get("pp_size", 1)
    tp_rank, pp_rank = rank % tp, rank // tp
    hidden, heads, layers = config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"]
    kv = config.get("num_key_value_heads") or heads
    head = config.get("head_size") or hidden // heads
    inter = config.get("intermediate_size") or 4 * hidden
    q = config.get("quantization") or {}
    algo, kv_algo, group = q.get("quant_algo"), q.get("kv_cache_quant_algo"), q.get("group_size", 128)
    exclude = q.get("exclude_modules")

    qkv_out = tp * (heads // tp + 2 * math.ceil(kv / tp)) * head  # Attention: full features, KV duplicated
    full = {"attention.qkv": (qkv_out, hidden), "attention.dense": (hidden, heads * head),
            "mlp.fc": (inter, hidden), "mlp.gate": (inter, hidden), "mlp.proj": (hidden, inter)}
    base, count = divmod(layers, pp)
    n_local = base + (1 if pp_rank < count else 0)

    out: dict[str, tuple] = {}
    if pp_rank == 0:
        out["transformer.vocab_embedding.weight"] = (config.get("vocab_size"), hidden)
    for i in range(n_local):
        global_i = pp_rank * base + min(pp_rank, count) + i
        p = f"transformer.layers.{i}"
        out[f"{p}.input_layernorm.weight"] = (hidden,)
        out[f"{p}.post_layernorm.weight"] = (hidden,)
        for suffix in LINEARS:
            module = f"{p}.{suffix}"
            quantized = algo is not None and not _excluded(f"transformer.layers.{global_i}.{suffix}", exclude)
            pad = {"W8A16": 64, "W4A16_AWQ": max(64, group)}.get(algo) if quantized else None
            out_f, in_f = (math.ceil(d / (pad * tp)) * pad * tp for d in full[suffix]) if pad else full[suffix]
            out_r, in_r = (out_f, in_f // tp) if suffix in ROW_PARALLEL else (out_f // tp, in_f)
            out[f"{module}.weight"] = (out_r, in_r)
            if quantized and algo == "FP8":
                out[f"{module}.weights_scaling_factor"] = (1,)
                out[f"{module}.activation_scaling_factor"] = (1,)
            elif quantized and algo == "W8A16":
                out[f"{module}.per_channel_scale"] = None  # made at load from the float weight
            elif quantized and algo == "W4A16_AWQ":
                out[f"{module}.weight"] = (out_r // 2, in_r)
                out[f"{module}.weights_scaling_factor"] = (out_r, in_r // group)
                if q.get("pre_quant_scale"):
                    out[f"{module}.prequant_scaling_factor"] = (in_r,)
            if suffix == "attention.qkv" and config.get("attn_bias", True):
                out[f"{module}.bias"] = (out_r,)
        if kv_algo is not None:
            out[f"{p}.attention.kv_cache_scaling_factor"] = (1,)
    if pp_rank == pp - 1:
        out["transformer.ln_f.weight"] = (hidden,)
        out["lm_head.weight"] = (math.ceil(config.get("vocab_size") / tp), hidden)
    return out


def check_rank_file(path: str, config: dict, rank: int) -> None:
    """What `preprocess_weights` + `load()` would refuse, raised as they raise it."""
    got = _header(path)
    expected = expected_tensors(config, rank)
    exclude = (config.get("quantization") or {}).get("exclude_modules")
    for name, shape in list(expected.items()):
        if shape is None:  # W8A16: the scale exists once the weight is quantized at load
            weight = name.replace(".per_channel_scale", ".weight")
            if weight in got and not _excluded(weight, exclude):
                del expected[name]
                got[name] = None
    missing = set(expected) - set(got)
    if missing == {"lm_head.weight"} and "transformer.vocab_embedding.weight" in got:
        missing = set()
    if missing:
        raise RuntimeError(f"Required but not provided tensors:{missing}")
    for name, shape in expected.items():
        if name in got and got[name] is not None and got[name] != shape:
            raise RuntimeError(f"Encounter error 'The value updated is not the same shape as the original. "
                               f"Updated: {got[name]}, original: {shape}' for parameter '{name}'")


class QWenForCausalLM:
    def __init__(self, config: dict, rank: int):
        self.config = config
        self.rank = rank

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str, rank: Optional[int] = None, config: Optional[dict] = None, *,
                        preprocess_weights_hook=None):
        if config is None:
            with open(os.path.join(ckpt_dir, "config.json")) as f:
                config = json.load(f)
        config = copy.deepcopy(config)
        mapping = config.setdefault("mapping", {})
        if rank is not None:
            mapping["rank"] = rank
        rank = mapping.get("rank", 0)
        if config.get("architecture") != "Qwen2ForCausalLM":
            raise AssertionError(f"Unsupported model architecture: {config.get('architecture')}")
        weights_path = os.path.join(ckpt_dir, f"rank{rank}.safetensors")
        assert os.path.isfile(weights_path)
        check_rank_file(weights_path, config, rank)
        tensorrt_llm.CALLS.append(("from_checkpoint", ckpt_dir, rank))
        return cls(config, rank)
