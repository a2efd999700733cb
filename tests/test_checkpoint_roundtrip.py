"""HF -> TRT-LLM checkpoint -> fathom's torch executor, against HF transformers' own Qwen2 forward.

float32 checkpoints (a dtype TRT-LLM accepts) make the comparison exact up to kernel rounding
(<= 1e-4); bf16 conversion is checked separately as a bit-exact cast of every tensor.
"""

import dataclasses
import filecmp

import pytest
import torch

from fathom.build.checkpoint import load_native_tensors, read_checkpoint
from fathom.build.config import preset
from fathom.build.convert import ConvertOptions, convert
from fathom.build.sources import resolve_model
from fathom.build.synthetic import write_hf_dir
from fathom.runtime.loader import load_model, native_tensors_from_hf
from fathom.runtime.reference import StaticKVCache

T = 9


@pytest.fixture(scope="module")
def hf_logits(hf_dirs):
    """preset -> (input ids (2, T), HF transformers float32 logits (2, T, V))."""
    from transformers import Qwen2ForCausalLM

    made = {}

    def get(name):
        if name not in made:
            model = Qwen2ForCausalLM.from_pretrained(str(hf_dirs(name)), dtype=torch.float32).eval()
            ids = torch.randint(0, model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(3))
            with torch.no_grad():
                made[name] = ids, model(ids).logits
        return made[name]

    return get


def fathom_logits(model_dir, ids):
    model = load_model(resolve_model(str(model_dir)), "float32", "cpu", max_seq_len=64)
    cache = StaticKVCache(model, [0] * ids.shape[0], ids.shape[1])
    cache.begin(ids.shape[1])
    with torch.no_grad():
        return model(ids, cache.positions(ids.shape[1]), cache)


@pytest.mark.parametrize("name,tp,pp", [
    ("tiny", 1, 1), ("tiny", 2, 1), ("tiny", 4, 1), ("tiny", 1, 2), ("tiny", 2, 2), ("tiny", 4, 2),  # tp 4: kv 2 < tp
    ("tiny-odd", 2, 2),  # 1 kv head duplicated, tied embeddings, vocab 131 padded to 132
    ("tiny-gqa5", 2, 2),  # 3 layers over 2 stages, vocab 257 padded
    ("tiny-mha", 4, 1),  # kv heads == heads, tied
])
def test_checkpoint_logits_equal_hf_transformers(hf_dirs, hf_logits, tmp_path, name, tp, pp):
    ids, expected = hf_logits(name)
    out = tmp_path / "ck"
    convert(resolve_model(str(hf_dirs(name))), out, ConvertOptions(dtype="float32", tp=tp, pp=pp))
    got = fathom_logits(out, ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4


def test_merged_ranks_equal_the_unsharded_model_exactly(hf_dirs, tmp_path):
    source = resolve_model(str(hf_dirs("tiny")))
    convert(source, tmp_path / "ck", ConvertOptions(dtype="float32", tp=4, pp=2))
    merged, ref = load_native_tensors(read_checkpoint(tmp_path / "ck")), native_tensors_from_hf(source)
    assert set(merged) == set(ref)
    assert all(torch.equal(merged[k], ref[k]) for k in ref)


def test_bf16_checkpoint_holds_each_tensor_cast_to_bf16(hf_dirs, tmp_path):
    source = resolve_model(str(hf_dirs("tiny-gqa5")))
    convert(source, tmp_path / "ck", ConvertOptions(dtype="bfloat16", tp=2, pp=2))
    merged, ref = load_native_tensors(read_checkpoint(tmp_path / "ck")), native_tensors_from_hf(source)
    for k, v in ref.items():
        assert merged[k].dtype == torch.bfloat16
        assert torch.equal(merged[k], v.to(torch.bfloat16)), k


def test_two_conversions_are_byte_identical(hf_dirs, tmp_path):
    source = resolve_model(str(hf_dirs("tiny-odd")))
    for run in ("a", "b"):
        convert(source, tmp_path / run, ConvertOptions(dtype="bfloat16", tp=2, pp=2))
    names = ["config.json"] + [f"rank{r}.safetensors" for r in range(4)]
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)
    assert match == names and not mismatch and not errors


def test_random_source_converts_and_loads(tmp_path):
    convert(resolve_model("random:tiny-gqa5@7"), tmp_path / "ck", ConvertOptions(dtype="float32", tp=2))
    ref = native_tensors_from_hf(resolve_model("random:tiny-gqa5@7"))
    merged = load_native_tensors(read_checkpoint(tmp_path / "ck"))
    assert all(torch.equal(merged[k], ref[k].float()) for k in ref)


def test_checkpoint_keeps_bos_and_eos_ids_for_the_runtime(tmp_path):
    cfg = dataclasses.replace(preset("tiny"), bos_token_id=5, eos_token_id=[6, 7])
    hf = write_hf_dir(cfg, tmp_path / "hf")
    convert(resolve_model(str(hf)), tmp_path / "ck", ConvertOptions(tp=2))
    ckpt = resolve_model(str(tmp_path / "ck"))
    assert ckpt.kind == "checkpoint"
    assert ckpt.config.bos_token_id == 5 and ckpt.config.eos_token_ids == [6, 7]
