"""The fake QWenForCausalLM.from_checkpoint checks config keys, tensor names and shapes as upstream's
`load()` does, and fathom's converted checkpoints pass it."""

import json
import sys

import pytest

from fathom.build.convert import ConvertOptions, convert
from fathom.build.quant.config import make_quant_config
from fathom.build.quant.quantizer import QuantTransform
from fathom.build.sources import resolve_model
from test_engine_build import FAKES


@pytest.fixture
def models(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKES))
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        monkeypatch.delitem(sys.modules, name)
    import tensorrt_llm.models

    yield tensorrt_llm.models
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[name]


@pytest.mark.parametrize("preset, tp, pp", [("tiny-gqa5", 2, 2), ("tiny", 4, 1), ("tiny-mha", 2, 1)])
def test_converted_checkpoints_load(models, tmp_path, preset, tp, pp):
    convert(resolve_model(f"random:{preset}"), tmp_path / "c", ConvertOptions(dtype="bfloat16", tp=tp, pp=pp))
    for rank in range(tp * pp):
        assert models.QWenForCausalLM.from_checkpoint(str(tmp_path / "c"), rank=rank).rank == rank


def test_config_keys_without_upstream_defaults_are_required(models, tmp_path):
    tmp_path = tmp_path / "c"
    convert(resolve_model("random:tiny"), tmp_path, ConvertOptions(dtype="bfloat16"))
    config = json.loads((tmp_path / "config.json").read_text())
    for key, error in (("qwen_type", AttributeError), ("seq_length", AttributeError), ("hidden_size", TypeError)):
        broken = {k: v for k, v in config.items() if k != key}
        with pytest.raises(error, match=key):
            models.QWenForCausalLM.from_checkpoint(str(tmp_path), config=broken)


def test_missing_and_misshapen_tensors_fail_like_load(models, tmp_path):
    from safetensors.torch import load_file, save_file

    tmp_path = tmp_path / "c"
    convert(resolve_model("random:tiny"), tmp_path, ConvertOptions(dtype="bfloat16"))
    tensors = load_file(tmp_path / "rank0.safetensors")
    del tensors["transformer.layers.1.mlp.gate.weight"]
    save_file(tensors, tmp_path / "rank0.safetensors")
    with pytest.raises(RuntimeError, match="Required but not provided tensors.*layers.1.mlp.gate.weight"):
        models.QWenForCausalLM.from_checkpoint(str(tmp_path))
    tensors["transformer.layers.1.mlp.gate.weight"] = tensors["transformer.layers.1.mlp.fc.weight"][:, :32].contiguous()
    save_file(tensors, tmp_path / "rank0.safetensors")
    with pytest.raises(RuntimeError, match=r"Updated: \(160, 32\), original: \(160, 64\)"):
        models.QWenForCausalLM.from_checkpoint(str(tmp_path))


def test_weight_only_linears_are_padded_before_load(models, tmp_path):
    # What the converter now refuses (quantizer.check_quant_mapping), written directly: tiny's MLP
    # width 160 becomes 192 in TensorRT-LLM's W8A16 linears, so the 160-row weight does not load.
    src = resolve_model("random:tiny")
    qcfg = make_quant_config(src.config, "w8a16")
    convert(src, tmp_path / "bad", ConvertOptions(dtype="bfloat16"), transform=QuantTransform(qcfg, src.config))
    with pytest.raises(RuntimeError, match=r"Updated: \(160, 64\), original: \(192, 64\).*mlp.fc.weight"):
        models.QWenForCausalLM.from_checkpoint(str(tmp_path / "bad"))
    ok = make_quant_config(src.config, "w8a16", exclude=["lm_head", "*.mlp.*"])
    convert(src, tmp_path / "ok", ConvertOptions(dtype="bfloat16"), transform=QuantTransform(ok, src.config))
    models.QWenForCausalLM.from_checkpoint(str(tmp_path / "ok"))
