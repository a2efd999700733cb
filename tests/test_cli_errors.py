"""Bad input gets a one-line error, a non-zero exit and no traceback."""

import json
import shutil

import pytest
from click.testing import CliRunner

from fathom.runtime.cli import main


def run(*args):
    result = CliRunner().invoke(main, list(args))
    return result


def assert_clean_error(result, *needles):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for n in needles:
        assert n in lines[0]


def test_missing_model_dir():
    assert_clean_error(run("info", "/nonexistent/model"), "/nonexistent/model", "no such directory")


def test_not_qwen2_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    assert_clean_error(run("info", str(tmp_path)), "config.json", "architectures", "Qwen2")


def test_unknown_random_preset():
    assert_clean_error(run("info", "random:nope"), "unknown model preset 'nope'")


def test_missing_tensor_listed(hf_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    src = hf_dirs("tiny")
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(dst / "model.safetensors"))
    r = run("generate", str(dst), "-p", "hi", "--raw", "--tokenizer", str(_byte_tokenizer(tmp_path)))
    assert_clean_error(r, "missing: model.layers.1.mlp.up_proj.weight")


def test_truncated_safetensors(hf_dirs, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(hf_dirs("tiny"), dst)
    data = (dst / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[: len(data) // 2])
    r = run("generate", str(dst), "-p", "hi", "--raw", "--tokenizer", str(_byte_tokenizer(tmp_path)))
    assert_clean_error(r, "model.safetensors", "truncated")


def test_model_without_tokenizer_asks_for_one(hf_dirs):
    assert_clean_error(run("generate", str(hf_dirs("tiny")), "-p", "hi"), "--tokenizer")


def _byte_tokenizer(tmp_path):
    """A minimal offline tokenizer directory (byte-level, 256 ids) for models without one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    out = tmp_path / "tok"
    if out.exists():
        return out
    vocab = {f"<{i}>": i for i in range(256)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<0>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(out))
    return out
