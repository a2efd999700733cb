"""`fathom convert / inspect / verify` through the CLI: outputs, refusals, and nothing half-written."""

import json
import shutil
import sys
import types

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from fathom.build.safetensors_io import SafetensorsWriter
from fathom.runtime.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".fathom-tmp-"))


def one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def hf_copy(hf_dirs, tmp_path):
    """A private copy of the tiny HF dir, free to damage."""
    return shutil.copytree(hf_dirs("tiny"), tmp_path / "hf")


def edit_weights(hf, edit):
    path = hf / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_convert_writes_config_ranks_manifest_and_reports_json(hf_dirs, tmp_path):
    r = run("convert", hf_dirs("tiny"), tmp_path / "ck", "--tp", 2, "--pp", 2, "--max-seq-len", 4096, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["mapping"] == {"world_size": 4, "tp_size": 2, "pp_size": 2}
    assert report["dtype"] == "float16"  # auto: float32 source -> float16, as TRT-LLM
    assert [x["file"] for x in report["ranks"]] == [f"rank{i}.safetensors" for i in range(4)]
    files = {p.name for p in (tmp_path / "ck").iterdir()}
    assert files == {"config.json", "fathom.json"} | {f"rank{i}.safetensors" for i in range(4)}
    manifest = json.loads((tmp_path / "ck" / "fathom.json").read_text())
    assert manifest["max_seq_len"] == 4096 and manifest["created_at"].endswith("Z")
    assert {f["name"] for f in manifest["source"]["files"]} == {"config.json", "model.safetensors"}
    assert all(len(x["sha256"]) == 64 for x in manifest["ranks"])
    assert leftovers(tmp_path) == []


def test_progress_bar_is_not_drawn_when_stderr_is_not_a_terminal(hf_dirs, tmp_path):
    r = run("convert", hf_dirs("tiny"), tmp_path / "ck")
    assert r.exit_code == 0 and "%|" not in r.output and r.output.startswith("Wrote ")


def test_inspect_summarizes_mapping_bytes_and_quantization(hf_dirs, tmp_path):
    run("convert", hf_dirs("tiny-gqa5"), tmp_path / "ck", "--tp", 2, "--pp", 2, "--dtype", "bfloat16")
    r = run("inspect", tmp_path / "ck", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["kind"] == "checkpoint" and info["dtype"] == "bfloat16"
    assert info["quantization"]["quant_algo"] is None
    assert [x["layers"] for x in info["ranks"]] == [[0, 2], [0, 2], [2, 3], [2, 3]]
    assert info["total_bytes"] == sum((tmp_path / "ck" / x["file"]).stat().st_size for x in info["ranks"])
    text = run("inspect", tmp_path / "ck")
    assert text.exit_code == 0 and "tp 2 x pp 2 = 4 ranks" in text.output


def test_inspect_delegates_engine_dirs_to_engine_inspect(tmp_path, monkeypatch):
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "config.json").write_text(json.dumps({"pretrained_config": {}, "build_config": {}}))
    fake = types.SimpleNamespace(describe_engine=lambda p: {"engine_dir": str(p), "max_seq_len": 16384})
    monkeypatch.setitem(sys.modules, "fathom.engine.inspect", fake)
    r = run("inspect", tmp_path / "engine", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"kind": "engine", "engine_dir": str(tmp_path / "engine"), "max_seq_len": 16384}


def test_verify_accepts_a_fresh_checkpoint_and_names_a_modified_rank_file(hf_dirs, tmp_path):
    run("convert", hf_dirs("tiny"), tmp_path / "ck", "--tp", 2)
    ok = run("verify", tmp_path / "ck")
    assert ok.exit_code == 0 and ok.output.startswith("OK ") and "hashes match" in ok.output
    rank1 = tmp_path / "ck" / "rank1.safetensors"
    data = bytearray(rank1.read_bytes())
    data[-3] ^= 0xFF  # one bit pattern inside the last tensor
    rank1.write_bytes(bytes(data))
    one_line_error(run("verify", tmp_path / "ck"), "rank1.safetensors: sha256 differs")


def test_verify_names_a_missing_rank_file_and_a_config_that_contradicts_the_files(hf_dirs, tmp_path):
    run("convert", hf_dirs("tiny"), tmp_path / "ck", "--tp", 2)
    (tmp_path / "ck" / "rank1.safetensors").unlink()
    one_line_error(run("verify", tmp_path / "ck"), "rank1.safetensors: missing")
    run("convert", hf_dirs("tiny"), tmp_path / "ck2", "--tp", 2)
    cfg_path = tmp_path / "ck2" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["intermediate_size"] = 96  # rank files hold 160 / 2 rows
    cfg_path.write_text(json.dumps(cfg))
    one_line_error(run("verify", tmp_path / "ck2"), "rank0.safetensors: tensors do not match config.json",
                   "transformer.layers.0.mlp.fc.weight (80, 64) F16 (expected (48, 64) F16)",
                   "bytes, fathom.json says")


def test_verify_without_manifest_checks_format_and_says_hashes_were_not_checked(hf_dirs, tmp_path):
    run("convert", hf_dirs("tiny"), tmp_path / "ck")
    (tmp_path / "ck" / "fathom.json").unlink()
    r = run("verify", tmp_path / "ck")
    assert r.exit_code == 0 and "hashes NOT checked" in r.output


def test_existing_out_is_refused_without_force_and_replaced_with_it(hf_dirs, tmp_path):
    out = tmp_path / "ck"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    one_line_error(run("convert", hf_dirs("tiny"), out), "already exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"
    r = run("convert", hf_dirs("tiny"), out, "--force")
    assert r.exit_code == 0 and not (out / "keep.txt").exists() and (out / "rank0.safetensors").exists()
    assert leftovers(tmp_path) == []


def test_impossible_mapping_is_refused_before_anything_is_written(hf_dirs, tmp_path):
    one_line_error(run("convert", hf_dirs("tiny"), tmp_path / "ck", "--tp", 3), "num_attention_heads (4)")
    one_line_error(run("convert", hf_dirs("tiny"), tmp_path / "ck", "--pp", 3), "more pipeline stages")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_not_enough_free_disk_is_refused_before_writing(hf_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr("fathom.build.convert.shutil.disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1000))
    one_line_error(run("convert", hf_dirs("tiny"), tmp_path / "ck"), "not enough free disk")
    assert not (tmp_path / "ck").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("damage,needles", [
    (lambda hf: edit_weights(hf, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
     ["missing: model.layers.1.mlp.up_proj.weight"]),
    (lambda hf: edit_weights(hf, lambda t: t.update({"model.norm.weight": torch.ones(65)})),
     ["mis-shaped: model.norm.weight (65,) (expected (64,))"]),
    (lambda hf: edit_weights(hf, lambda t: t.update({"model.layers.0.extra.weight": torch.ones(2)})),
     ["unexpected: model.layers.0.extra.weight"]),
    (lambda hf: edit_weights(hf, lambda t: t["model.layers.1.mlp.down_proj.weight"].__setitem__((3, 4), float("nan"))),
     ["model.layers.1.mlp.down_proj.weight", "1 NaN/Inf"]),
    (lambda hf: (hf / "model.safetensors").write_bytes((hf / "model.safetensors").read_bytes()[:-100]),
     ["model.safetensors: truncated"]),
    (lambda hf: (hf / "config.json").write_text(json.dumps(
        {**json.loads((hf / "config.json").read_text()), "architectures": ["LlamaForCausalLM"], "model_type": "llama"})),
     ["architectures", "Qwen2"]),
])
def test_bad_source_gives_one_line_error_and_leaves_no_out_and_no_temp_dir(hf_copy, tmp_path, damage, needles):
    damage(hf_copy)
    one_line_error(run("convert", hf_copy, tmp_path / "ck"), *needles)
    assert not (tmp_path / "ck").exists() and leftovers(tmp_path) == []


def test_inconsistent_shard_index_is_refused(hf_dirs, tmp_path):
    hf = shutil.copytree(hf_dirs("tiny", shard_bytes=100_000), tmp_path / "hf")
    index_path = hf / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1
    index["weight_map"]["model.norm.weight"] = next(f for f in files if f != index["weight_map"]["model.norm.weight"])
    index_path.write_text(json.dumps(index))
    one_line_error(run("convert", hf, tmp_path / "ck"), "model.safetensors.index.json", "model.norm.weight")
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("exc,code", [(KeyboardInterrupt, 130), (RuntimeError, 1)])
def test_interrupt_or_crash_mid_write_leaves_nothing(hf_dirs, tmp_path, monkeypatch, exc, code):
    real_write, calls = SafetensorsWriter.write, []

    def flaky_write(self, name, tensor):
        calls.append(name)
        if len(calls) == 7:
            raise exc()
        return real_write(self, name, tensor)

    monkeypatch.setattr(SafetensorsWriter, "write", flaky_write)
    r = run("convert", hf_dirs("tiny"), tmp_path / "ck", "--tp", 2)
    assert r.exit_code == code and len(calls) == 7
    assert not (tmp_path / "ck").exists() and leftovers(tmp_path) == []


def test_temp_dir_left_by_a_killed_run_is_cleaned_by_the_next(hf_dirs, tmp_path):
    stale = tmp_path / ".fathom-tmp-ck-99999"
    stale.mkdir()
    (stale / "rank0.safetensors").write_bytes(b"partial")
    assert run("convert", hf_dirs("tiny"), tmp_path / "ck").exit_code == 0
    assert leftovers(tmp_path) == []


def test_tokenizer_files_are_copied_so_the_checkpoint_is_a_model(hf_copy, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (hf_copy / name).write_text("{}")
    assert run("convert", hf_copy, tmp_path / "ck").exit_code == 0
    from fathom.build.sources import resolve_model

    src = resolve_model(str(tmp_path / "ck"))
    assert src.kind == "checkpoint" and src.tokenizer_dir == tmp_path / "ck"
    manifest = json.loads((tmp_path / "ck" / "fathom.json").read_text())
    assert {f["name"] for f in manifest["files"]} == {"config.json", "tokenizer.json", "tokenizer_config.json",
                                                     "generation_config.json"}


def test_a_checkpoint_is_not_accepted_as_convert_source(hf_dirs, tmp_path):
    run("convert", hf_dirs("tiny"), tmp_path / "ck")
    one_line_error(run("convert", tmp_path / "ck", tmp_path / "ck2"), "checkpoint directory")


def test_out_that_would_replace_the_source_is_refused_even_with_force(hf_copy, tmp_path):
    one_line_error(run("convert", hf_copy, hf_copy, "--force"), "would replace the source model")
    one_line_error(run("convert", hf_copy, tmp_path, "--force"), "would replace the source model")
    assert (hf_copy / "model.safetensors").exists()
