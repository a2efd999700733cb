"""The TensorRT-LLM layout rules, each checked against HF tensors indexed by hand (not via merge)."""

import dataclasses
import json

import pytest
import torch
from safetensors import safe_open

from fathom.build.checkpoint import config_from_trtllm, trtllm_config
from fathom.build.config import preset
from fathom.build.convert import ConvertOptions, convert, resolve_dtype
from fathom.build.errors import ConfigError, WeightsError
from fathom.build.layout import base_specs, local_name, plan_ranks
from fathom.build.mapping import Mapping
from fathom.build.safetensors_io import PlannedEntry, SafetensorsWriter, WriteBehind
from fathom.build.sources import resolve_model
from fathom.build.synthetic import write_hf_dir
from fathom.build.mapping import ShardKind, kind_of, shard_shape
from fathom.build.tp_split import merge_shards, split_shards
from fathom.build.quant.config import QuantConfig
from fathom.build.weights import SafetensorsDir, count_nonfinite


def rows(n: int, cols: int = 3) -> torch.Tensor:
    """(n, cols) tensor whose row i is all i: shards show which source rows they hold."""
    return torch.arange(n, dtype=torch.float32)[:, None].expand(n, cols).clone()


def test_qkv_shard_holds_its_q_k_v_heads_split_separately_then_concatenated():
    cfg = preset("tiny")  # 4 heads, 2 kv heads, head_dim 16
    q, kv = cfg.q_size, cfg.kv_size
    shards = split_shards(ShardKind.QKV, rows(q + 2 * kv), 2, cfg)
    for r, shard in enumerate(shards):
        expected = torch.cat([torch.arange(r * 32, r * 32 + 32),  # q heads 2r, 2r+1
                              q + torch.arange(r * 16, r * 16 + 16),  # k head r
                              q + kv + torch.arange(r * 16, r * 16 + 16)])  # v head r
        assert torch.equal(shard[:, 0], expected.float())


def test_kv_heads_are_duplicated_in_place_when_fewer_than_tp():
    cfg = preset("tiny")  # 2 kv heads, tp 4: ranks 0,1 get kv head 0, ranks 2,3 get head 1
    q, kv = cfg.q_size, cfg.kv_size
    for t in (rows(q + 2 * kv), torch.arange(q + 2 * kv, dtype=torch.float32)):  # weight and bias
        shards = split_shards(ShardKind.QKV, t, 4, cfg)
        assert shard_shape(ShardKind.QKV, tuple(t.shape), 4, cfg)[0] == 16 + 16 + 16
        for r, shard in enumerate(shards):
            col = shard if shard.dim() == 1 else shard[:, 0]
            head = r // 2
            expected = torch.cat([torch.arange(r * 16, r * 16 + 16),
                                  q + torch.arange(head * 16, head * 16 + 16),
                                  q + kv + torch.arange(head * 16, head * 16 + 16)])
            assert torch.equal(col, expected.float())


def test_dense_and_proj_split_on_dim1_fc_and_gate_on_dim0():
    cfg = preset("tiny")
    w = torch.arange(12 * 8, dtype=torch.float32).reshape(12, 8)
    for name in ("transformer.layers.0.attention.dense.weight", "transformer.layers.1.mlp.proj.weight"):
        assert kind_of(name) is ShardKind.ROW
        assert [torch.equal(s, w[:, 4 * i:4 * i + 4]) for i, s in enumerate(split_shards(ShardKind.ROW, w, 2, cfg))] == [True] * 2
    for name in ("transformer.layers.0.mlp.fc.weight", "transformer.layers.0.mlp.gate.weight"):
        assert kind_of(name) is ShardKind.COLUMN
        assert [torch.equal(s, w[6 * i:6 * i + 6]) for i, s in enumerate(split_shards(ShardKind.COLUMN, w, 2, cfg))] == [True] * 2
    for name in ("transformer.vocab_embedding.weight", "transformer.ln_f.weight", "transformer.layers.0.input_layernorm.weight"):
        assert kind_of(name) is ShardKind.REPLICATED  # use_parallel_embedding is false by default


def test_lm_head_is_zero_padded_to_a_multiple_of_tp_then_split_and_merge_drops_the_padding():
    cfg = preset("tiny-odd")  # vocab 131
    w = rows(131)
    shards = split_shards(ShardKind.VOCAB, w, 4, cfg)
    assert [tuple(s.shape) for s in shards] == [(33, 3)] * 4
    assert shard_shape(ShardKind.VOCAB, (131, 3), 4, cfg) == (33, 3)
    assert torch.equal(shards[3][:32, 0], torch.arange(99, 131).float())
    assert torch.equal(shards[3][32], torch.zeros(3))
    assert torch.equal(merge_shards(ShardKind.VOCAB, shards, cfg, full_rows=131), w)


@pytest.mark.parametrize("name,tp", [("tiny", 1), ("tiny", 2), ("tiny", 4), ("tiny-odd", 2), ("tiny-gqa5", 2)])
def test_merge_inverts_split_for_every_tensor_kind(name, tp):
    cfg = preset(name)
    gen = torch.Generator().manual_seed(0)
    for spec in base_specs(cfg, torch.float32):
        t = torch.randn(spec.shape, generator=gen)
        shards = split_shards(spec.kind, t, tp, cfg)
        assert all(tuple(s.shape) == shard_shape(spec.kind, spec.shape, tp, cfg) for s in shards), spec.name
        assert torch.equal(merge_shards(spec.kind, shards, cfg, full_rows=spec.shape[0]), t), spec.name


def test_embedding_on_first_stage_ln_f_and_lm_head_on_last_layers_numbered_from_zero_per_file():
    cfg = preset("tiny-gqa5")  # 3 layers, pp 2 -> [0, 1], [2]
    plans = plan_ranks(base_specs(cfg, torch.bfloat16), cfg, Mapping(2, 2))
    names = [{t.local_name for t in p.tensors} for p in plans]
    assert "transformer.vocab_embedding.weight" in names[0] and "transformer.vocab_embedding.weight" in names[1]
    assert not any(n.startswith(("lm_head", "transformer.ln_f")) for n in names[0] | names[1])
    assert {"lm_head.weight", "transformer.ln_f.weight"} <= names[2] and names[2] == names[3]
    assert "transformer.vocab_embedding.weight" not in names[2]
    assert {n.split(".")[2] for n in names[2] if n.startswith("transformer.layers.")} == {"0"}
    globals_ = {t.spec.name for t in plans[2].tensors}
    assert "transformer.layers.2.attention.qkv.weight" in globals_
    assert local_name("transformer.layers.2.mlp.fc.weight", range(2, 3)) == "transformer.layers.0.mlp.fc.weight"


def test_rank_files_follow_trtllm_names_fc_is_gate_proj_and_gate_is_up_proj(hf_dirs, tmp_path):
    hf = hf_dirs("tiny")
    convert(resolve_model(str(hf)), tmp_path / "ck", ConvertOptions(dtype="float32", tp=2, pp=2))
    src = SafetensorsDir(hf)
    with safe_open(str(tmp_path / "ck" / "rank3.safetensors"), "pt") as f:  # tp 1, pp 1 -> layer 1
        assert torch.equal(f.get_tensor("transformer.layers.0.mlp.fc.weight"),
                           src.get("model.layers.1.mlp.gate_proj.weight")[80:])
        assert torch.equal(f.get_tensor("transformer.layers.0.mlp.gate.weight"),
                           src.get("model.layers.1.mlp.up_proj.weight")[80:])
        assert torch.equal(f.get_tensor("transformer.layers.0.mlp.proj.weight"),
                           src.get("model.layers.1.mlp.down_proj.weight")[:, 80:])
        assert torch.equal(f.get_tensor("transformer.layers.0.post_layernorm.weight"),
                           src.get("model.layers.1.post_attention_layernorm.weight"))
        bias = torch.cat([src.get(f"model.layers.1.self_attn.{p}_proj.bias")[s]
                          for p, s in (("q", slice(32, 64)), ("k", slice(16, 32)), ("v", slice(16, 32)))])
        assert torch.equal(f.get_tensor("transformer.layers.0.attention.qkv.bias"), bias)
        assert torch.equal(f.get_tensor("lm_head.weight"), src.get("lm_head.weight")[128:])
        assert set(f.keys()) == {"lm_head.weight", "transformer.ln_f.weight"} | {
            f"transformer.layers.0.{s}" for s in ("input_layernorm.weight", "post_layernorm.weight",
                                                   "attention.qkv.weight", "attention.qkv.bias",
                                                   "attention.dense.weight", "mlp.fc.weight", "mlp.gate.weight",
                                                   "mlp.proj.weight")}


def test_tied_embeddings_write_lm_head_as_a_padded_copy_of_the_embedding(hf_dirs, tmp_path):
    hf = hf_dirs("tiny-odd")  # tied, vocab 131, 1 kv head
    convert(resolve_model(str(hf)), tmp_path / "ck", ConvertOptions(dtype="float32", tp=2))
    embed = SafetensorsDir(hf).get("model.embed_tokens.weight")
    for rank in (0, 1):
        with safe_open(str(tmp_path / "ck" / f"rank{rank}.safetensors"), "pt") as f:
            lm = f.get_tensor("lm_head.weight")
            assert torch.equal(f.get_tensor("transformer.vocab_embedding.weight"), embed)
        assert lm.shape == (66, 72)
        assert torch.equal(lm[:131 - 66 * rank], embed[66 * rank:66 * rank + 66])
    assert torch.equal(lm[65], torch.zeros(72))
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["tie_word_embeddings"] is True


def test_config_rotary_base_is_rope_theta_and_reads_back(tmp_path):
    cfg = dataclasses.replace(preset("tiny"), rope_theta=500_000.0, rms_norm_eps=1e-5)
    hf = write_hf_dir(cfg, tmp_path / "hf", seed=2)
    convert(resolve_model(str(hf)), tmp_path / "ck", ConvertOptions(dtype="bfloat16", max_seq_len=4096))
    d = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert d["rotary_base"] == 500_000.0 and d["norm_epsilon"] == 1e-5 and d["seq_length"] == 4096
    back = config_from_trtllm(d, str(tmp_path / "ck" / "config.json"))
    assert back == dataclasses.replace(cfg, torch_dtype="bfloat16")


def test_config_has_every_key_qwenconfig_reads():
    d = trtllm_config(preset("fathom-r1-14b"), Mapping(2, 2), "bfloat16", 16384, QuantConfig())
    for key in ("architecture", "qwen_type", "dtype", "vocab_size", "hidden_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_size", "intermediate_size",
                "max_position_embeddings", "hidden_act", "norm_epsilon", "position_embedding_type",
                "rotary_base", "rotary_scaling", "seq_length", "tie_word_embeddings", "use_parallel_embedding",
                "embedding_sharding_dim", "mapping", "quantization"):
        assert key in d, key
    assert (d["architecture"], d["qwen_type"], d["position_embedding_type"]) == ("Qwen2ForCausalLM", "qwen2", "rope_gpt_neox")
    assert d["rotary_base"] == 1_000_000.0 and d["head_size"] == 128 and d["norm_epsilon"] == 1e-5
    assert d["mapping"] == {"world_size": 4, "tp_size": 2, "pp_size": 2}
    assert d["quantization"] == {"quant_algo": None, "kv_cache_quant_algo": None, "group_size": 128,
                                 "has_zero_point": False, "pre_quant_scale": False, "exclude_modules": None}


@pytest.mark.parametrize("key", ["rotary_base", "qwen_type"])
def test_checkpoint_config_without_rotary_base_or_qwen_type_is_refused(key):
    # TRT-LLM's QWenConfig would silently use rotary_base 10000 (ruins Qwen2); qwen_type has no default.
    d = trtllm_config(preset("tiny"), Mapping(), "bfloat16", 4096, QuantConfig())
    del d[key]
    with pytest.raises(ConfigError, match=f"missing field '{key}'"):
        config_from_trtllm(d, "ckpt/config.json")


def test_dtype_auto_follows_trtllm_float32_becomes_float16():
    assert resolve_dtype("auto", preset("tiny")) == "bfloat16"
    assert resolve_dtype("auto", dataclasses.replace(preset("tiny"), torch_dtype="float32")) == "float16"
    assert resolve_dtype("float32", preset("tiny")) == "float32"


def test_writer_refuses_a_tensor_out_of_plan_order(tmp_path):
    entries = [PlannedEntry("a", (2,), torch.float32), PlannedEntry("b", (3,), torch.float32)]
    w = SafetensorsWriter(tmp_path / "x.safetensors", entries)
    with pytest.raises(WeightsError, match="expected tensor 'a'"):
        w.write("b", torch.zeros(3))
    w.abort()


def test_writer_output_reads_back_with_safe_open(tmp_path):
    tensors = {"w": torch.randn(5, 7).to(torch.bfloat16), "b": torch.arange(3.0), "h": torch.randn(4, 6).half()[:, ::2]}
    with SafetensorsWriter(tmp_path / "x.safetensors", [PlannedEntry(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]) as w:
        for n, t in tensors.items():
            w.write(n, t)
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert list(f.keys()) == sorted(tensors)
        for n, t in tensors.items():
            assert torch.equal(f.get_tensor(n), t)


def test_write_behind_reports_a_failed_write_instead_of_losing_it():
    class FullDisk:
        def write(self, data):
            raise OSError(28, "No space left on device")

    with pytest.raises(WeightsError, match="No space left on device"):
        with WriteBehind() as sink:
            sink.put(FullDisk(), b"x")
            sink.drain()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nan_and_inf_are_counted_in_every_source_dtype(dtype):
    t = torch.randn(300, 70).to(dtype)
    assert count_nonfinite(t) == 0
    t[3, 4], t[7, 1], t[299, 69] = float("nan"), float("inf"), -float("inf")
    assert count_nonfinite(t) == 3
    assert count_nonfinite(t[:, ::2]) == 1  # non-contiguous view: only column 4 of the three
    assert count_nonfinite(torch.full((4,), 65504.0, dtype=dtype)) == 0  # largest finite fp16
