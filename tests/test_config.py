import json

import pytest

from fathom.build.config import MODEL_PRESETS, ModelConfig, preset
from fathom.build.errors import ConfigError


def hf_dict(**over):
    d = {"architectures": ["Qwen2ForCausalLM"], "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 1e6}
    d.update(over)
    return d


def test_fathom_preset_has_reference_shapes():
    cfg = preset("fathom-r1-14b")
    assert cfg.head_dim == 128 and cfg.num_hidden_layers == 48
    assert round(cfg.num_params() / 1e9, 2) == 14.77
    assert cfg.kv_bytes_per_token(2) == 192 * 1024  # docs/REFERENCE.md, Derived sizes
    assert cfg.kv_bytes_per_token(2) * 16384 == 3 * 2**30


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid presets: .*fathom-r1-14b"):
        preset("fathom-r1-15b")


def test_transformers_5_layout_is_accepted():
    d = hf_dict(rope_parameters={"rope_theta": 5e5, "rope_type": "default"}, dtype="float16")
    del d["rope_theta"]
    cfg = ModelConfig.from_hf_dict(d)
    assert cfg.rope_theta == 5e5 and cfg.torch_dtype == "float16"


def test_hf_dict_round_trip():
    cfg = preset("tiny-odd")
    assert ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg


@pytest.mark.parametrize("over, field", [
    (dict(architectures=["LlamaForCausalLM"]), "architectures"),
    (dict(num_key_value_heads=3), "num_key_value_heads"),
    (dict(hidden_size=-4), "hidden_size"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(rms_norm_eps=0), "rms_norm_eps"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling"),
])
def test_invalid_fields_named_in_error(over, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        ModelConfig.from_hf_dict(hf_dict(**over), source="x/config.json")


def test_missing_field_and_missing_rope_theta_are_errors():
    d = hf_dict()
    del d["num_attention_heads"]
    with pytest.raises(ConfigError, match="x/config.json: missing field 'num_attention_heads'"):
        ModelConfig.from_hf_dict(d, source="x/config.json")
    d = hf_dict()
    del d["rope_theta"]
    with pytest.raises(ConfigError, match="rope_theta"):
        ModelConfig.from_hf_dict(d)


def test_from_hf_dir_reports_bad_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        ModelConfig.from_hf_dir(tmp_path)


def test_all_presets_are_valid():
    for name in MODEL_PRESETS:
        assert preset(name).head_dim > 0
