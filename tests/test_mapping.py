import pytest
import torch

from fathom.build.config import ModelConfig, preset
from fathom.build.errors import ConfigError
from fathom.build.mapping import Mapping


def test_rank_number_is_pp_rank_times_tp_plus_tp_rank():
    m = Mapping(tp_size=4, pp_size=2)
    ranks = m.ranks(num_layers=8)
    assert [(r.rank, r.tp_rank, r.pp_rank) for r in ranks] == [
        (0, 0, 0), (1, 1, 0), (2, 2, 0), (3, 3, 0), (4, 0, 1), (5, 1, 1), (6, 2, 1), (7, 3, 1)]
    assert [r.file_name for r in ranks][5] == "rank5.safetensors"
    assert m.world_size == 8


@pytest.mark.parametrize("layers,pp", [(8, 2), (5, 2), (7, 3), (3, 3), (48, 5), (10, 4)])
def test_pp_layers_match_trtllm_tensor_split(layers, pp):
    # tensorrt_llm/mapping.py: torch.tensor_split(torch.arange(num_layers), pp_size)[pp_rank]
    m = Mapping(1, pp)
    expected = [t.tolist() for t in torch.tensor_split(torch.arange(layers), pp)]
    assert [list(m.pp_layers(layers, p)) for p in range(pp)] == expected


def test_uneven_pp_gives_the_extra_layers_to_the_first_stages():
    m = Mapping(1, 3)
    assert [list(m.pp_layers(7, p)) for p in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [m.pp_rank_of_layer(i, 7) for i in range(7)] == [0, 0, 0, 1, 1, 2, 2]


def test_padded_vocab_rounds_up_to_a_multiple_of_tp():
    assert Mapping(4, 1).padded_vocab_size(131) == 132
    assert Mapping(4, 1).padded_vocab_size(152064) == 152064
    assert Mapping(1, 1).padded_vocab_size(131) == 131


def test_kv_heads_are_duplicated_below_tp():
    assert Mapping(4, 1).kv_heads_per_rank(2) == 1
    assert Mapping(2, 1).kv_heads_per_rank(8) == 4


def test_per_rank_linear_shapes_split_heads_and_intermediate():
    cfg = preset("fathom-r1-14b")  # 40 heads, 8 KV heads of 128, intermediate 13824
    assert Mapping(1, 1).linear_shapes(cfg) == [(7168, 5120), (5120, 5120), (13824, 5120), (13824, 5120),
                                                (5120, 13824)]
    assert Mapping(2, 1).qkv_rows(cfg) == (2560, 512)
    assert Mapping(2, 1).linear_shapes(cfg) == [(3584, 5120), (5120, 2560), (6912, 5120), (6912, 5120),
                                                (5120, 6912)]
    assert Mapping(4, 1).qkv_rows(preset("tiny")) == (16, 16)  # 2 KV heads of 16 below tp 4: one per rank


def test_mapping_block_has_world_tp_pp_and_round_trips():
    m = Mapping(2, 3)
    assert m.to_dict() == {"world_size": 6, "tp_size": 2, "pp_size": 3}
    assert Mapping.from_dict(m.to_dict(), "x") == m


def test_mapping_block_with_wrong_world_size_is_refused():
    with pytest.raises(ConfigError, match="world_size"):
        Mapping.from_dict({"world_size": 3, "tp_size": 2, "pp_size": 1}, "ckpt/config.json")


@pytest.mark.parametrize("tp,pp", [(0, 1), (1, 0), (-2, 1)])
def test_non_positive_sizes_are_refused(tp, pp):
    with pytest.raises(ConfigError, match="positive integer"):
        Mapping(tp, pp)


@pytest.mark.parametrize("name,tp,pp,match", [
    ("tiny", 3, 1, "num_attention_heads \\(4\\) is not divisible by tp \\(3\\)"),
    ("tiny", 1, 3, "more pipeline stages \\(3\\) than layers \\(2\\)"),
    ("tiny-gqa5", 4, 1, "num_attention_heads \\(10\\) is not divisible"),
    ("tiny-odd", 6, 1, "intermediate_size \\(100\\) is not divisible by tp \\(6\\)"),
])
def test_impossible_mappings_are_refused(name, tp, pp, match):
    with pytest.raises(ConfigError, match=match):
        Mapping(tp, pp).check_model(preset(name))


def test_kv_heads_neither_dividing_nor_divisible_by_tp_are_refused():
    cfg = ModelConfig(vocab_size=64, hidden_size=96, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=12, num_key_value_heads=3)
    with pytest.raises(ConfigError, match="num_key_value_heads \\(3\\) is not divisible by tp \\(2\\)"):
        Mapping(2, 1).check_model(cfg)
    with pytest.raises(ConfigError, match="tp \\(4\\) is not a multiple of num_key_value_heads \\(3\\)"):
        Mapping(4, 1).check_model(cfg)
    Mapping(3, 1).check_model(cfg)
    Mapping(6, 1).check_model(cfg)  # 3 kv heads duplicated twice


def test_fathom_mappings_that_trtllm_supports_are_accepted():
    cfg = preset("fathom-r1-14b")
    for tp, pp in [(1, 1), (2, 1), (4, 1), (8, 1), (2, 2), (1, 48)]:
        Mapping(tp, pp).check_model(cfg)
    with pytest.raises(ConfigError):
        Mapping(16, 1).check_model(cfg)  # 40 heads
