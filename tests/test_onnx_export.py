"""`fathom export onnx`: the graph against the PyTorch executor in onnxruntime (float32, float16), its
dtypes and manifest, tied embeddings, the trtexec profiles, and bad input refused with nothing left
behind. The onnx executor that runs the exported graph: tests/test_onnx_executor.py."""

import hashlib
import json
import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from fathom.build.manifest import sha256_file
from fathom.build.sources import resolve_model
from fathom.deploy.trtexec import profiles, trtexec_command
from fathom.runtime.cli import main
from fathom.runtime.executor import Request, collect
from fathom.runtime.loader import load_model
from fathom.runtime.model import CausalAttention
from fathom.runtime.onnx_export import OnnxExportOptions, check_export
from fathom.runtime.onnx_manifest import read_onnx_manifest, source_record
from fathom.runtime.onnx_model import input_names, output_names
from fathom.runtime.onnx_opsets import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from fathom.runtime.sampling import SamplingParams
from fathom.runtime.torch_executor import TorchExecutor
from logits_recorder import record_logits

TOL = 1e-4
GQA5 = "random:tiny-gqa5"  # 10 query heads on 2 KV heads


def session(directory):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(directory / "model.onnx"), options, providers=["CPUExecutionProvider"])


def run_graph(sess, ids, mask, positions, past):
    """One call of the graph: numpy in, (logits, present list) out; `past` None = empty."""
    cfg_inputs = sess.get_inputs()
    feed = {"input_ids": np.asarray(ids, np.int64), "attention_mask": np.asarray(mask, np.int64),
            "position_ids": np.asarray(positions, np.int64)}
    for i, spec in enumerate(cfg_inputs[3:]):
        if past is None:
            _, heads, _, dim = spec.shape
            dtype = np.float16 if spec.type == "tensor(float16)" else np.float32
            feed[spec.name] = np.zeros((feed["input_ids"].shape[0], heads, 0, dim), dtype)
        else:
            feed[spec.name] = past[i]
    logits, *present = sess.run(None, feed)
    return logits, present


def torch_logits(model, ids):
    """(T, V) float32 logits of every position of one unpadded sequence, from the PyTorch model."""
    with torch.inference_mode():
        return model(torch.tensor([ids]), torch.arange(len(ids))[None], CausalAttention())[0].numpy()


def padded_batch(prompts, side):
    """ids, attention_mask, position_ids (B, T) of prompts padded on `side`, and each row's last real column."""
    T = max(map(len, prompts))
    ids, mask, positions, last = [], [], [], []
    for p in prompts:
        pad = T - len(p)
        if side == "left":
            ids.append([0] * pad + p)
            mask.append([0] * pad + [1] * len(p))
            positions.append([0] * pad + list(range(len(p))))
            last.append(T - 1)
        else:
            ids.append(p + [0] * pad)
            mask.append([1] * len(p) + [0] * pad)
            positions.append(list(range(T)))
            last.append(len(p) - 1)
    return ids, mask, positions, last


def random_prompts(vocab, lengths, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(n)] for n in lengths]


@pytest.fixture(scope="module")
def gqa5(onnx_exports):
    directory = onnx_exports(GQA5)
    return directory, session(directory), load_model(resolve_model(GQA5), "float32", "cpu", max_seq_len=256)


@pytest.fixture(scope="module")
def demo(onnx_exports):
    directory = onnx_exports("demo")
    return directory, session(directory), load_model(resolve_model("demo"), "float32", "cpu", max_seq_len=256)


# ---- the graph against the PyTorch model --------------------------------------------------------------
@pytest.mark.parametrize("lengths, side", [((9,), "left"), ((5, 17, 11), "left"), ((5, 17, 11), "right")])
def test_prefill_logits_equal_the_pytorch_models_for_padded_batches(gqa5, lengths, side):
    _, sess, model = gqa5
    prompts = random_prompts(model.cfg.vocab_size, lengths)
    ids, mask, positions, _ = padded_batch(prompts, side)
    logits, present = run_graph(sess, ids, mask, positions, None)
    T = len(ids[0])
    assert logits.shape == (len(prompts), T, model.cfg.vocab_size) and logits.dtype == np.float32
    assert present[0].shape == (len(prompts), model.cfg.num_key_value_heads, T, model.cfg.head_dim)
    for row, p in enumerate(prompts):
        real = [c for c in range(T) if mask[row][c]]
        assert np.abs(logits[row, real] - torch_logits(model, p)).max() <= TOL
        assert np.isfinite(logits[row]).all()  # padding rows too


def greedy_through_graph(sess, prompts, steps, side):
    """Greedy tokens (B, steps) and the logits behind each, feeding present back as past."""
    ids, mask, positions, last = padded_batch(prompts, side)
    logits, past = run_graph(sess, ids, mask, positions, None)
    rows = np.arange(len(prompts))
    step_logits = [logits[rows, last]]
    tokens = [step_logits[-1].argmax(-1)]
    position = np.array([len(p) for p in prompts])
    mask = np.asarray(mask)
    for _ in range(steps - 1):
        mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
        logits, past = run_graph(sess, tokens[-1][:, None], mask, position[:, None], past)
        step_logits.append(logits[:, 0])
        tokens.append(step_logits[-1].argmax(-1))
        position = position + 1
    return np.stack(tokens, 1), np.stack(step_logits, 1)


@pytest.mark.parametrize("side", ["left", "right"])
def test_greedy_decoding_through_the_graph_reproduces_the_pytorch_executor_for_32_steps(demo, side):
    _, sess, model = demo
    prompts = random_prompts(model.cfg.vocab_size, (7, 20, 13), seed=3)
    tokens, logits = greedy_through_graph(sess, prompts, 32, side)
    ex = TorchExecutor(model, eos_ids=[])
    seen = record_logits(ex)
    want = collect(ex, [Request(str(i), p, SamplingParams(max_new_tokens=32)) for i, p in enumerate(prompts)])
    for i in range(len(prompts)):
        assert tokens[i].tolist() == [e.token_id for e in want[str(i)]]
        assert np.abs(logits[i] - torch.stack(seen[str(i)]).numpy()).max() <= TOL


# Operators TensorRT's ONNX parser supports (onnx/onnx-tensorrt docs/operators.md, TensorRT 10.0, opsets
# 9 to 20), of those a decoder could plausibly be exported with.
TENSORRT_OPS = {"Add", "And", "Cast", "CastLike", "Concat", "Constant", "Div", "Equal", "Expand", "Gather", "Greater",
                "Less", "LessOrEqual", "MatMul", "Mul", "Neg", "Not", "Pow", "Range", "Reciprocal", "ReduceMean",
                "Reshape", "Shape", "Sigmoid", "Slice", "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Transpose",
                "Unsqueeze", "Where"}


def test_the_graph_uses_only_operators_tensorrt_parses_at_the_default_opset(demo):
    graph = onnx.load(str(demo[0] / "model.onnx"), load_external_data=False)
    assert {n.op_type for n in graph.graph.node} <= TENSORRT_OPS
    assert [(o.domain, o.version) for o in graph.opset_import] == [("", 20)]


def test_initializers_are_the_checkpoint_tensors_by_name_and_layout(demo):
    directory, _, model = demo
    graph = onnx.load(str(directory / "model.onnx"))
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}
    for name, tensor in model.state_dict().items():
        assert np.array_equal(stored[name], tensor.numpy()), name


def test_an_attention_mask_of_another_shape_fails_instead_of_broadcasting(gqa5):
    _, sess, model = gqa5
    ids, mask, positions, _ = padded_batch(random_prompts(model.cfg.vocab_size, (6, 4)), "left")
    for bad_mask in ([row[:1] for row in mask], [row + [1] for row in mask], [row[1:] for row in mask], mask[:1]):
        with pytest.raises(Exception, match="Reshape"):  # onnxruntime raises its own exception types
            run_graph(sess, ids, bad_mask, positions, None)


def test_a_tied_model_writes_its_embedding_once_and_projects_with_it(onnx_exports):
    spec = "random:tiny-odd"  # tie_word_embeddings, 6 query heads on 1 KV head
    directory = onnx_exports(spec)
    model = load_model(resolve_model(spec), "float32", "cpu", max_seq_len=256)
    assert model.cfg.tie_word_embeddings
    graph = onnx.load(str(directory / "model.onnx"))
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}
    embedding = stored["transformer.vocab_embedding.weight"]
    assert "lm_head.weight" not in stored and len(graph.graph.initializer) == len(stored)
    assert [name for name, t in stored.items() if t.size >= embedding.size] == ["transformer.vocab_embedding.weight"]
    assert np.array_equal(embedding, model.state_dict()["transformer.vocab_embedding.weight"].numpy())
    prompts = random_prompts(model.cfg.vocab_size, (5, 13), seed=1)
    ids, mask, positions, _ = padded_batch(prompts, "right")
    logits, _ = run_graph(session(directory), ids, mask, positions, None)
    for row, p in enumerate(prompts):
        assert np.abs(logits[row, :len(p)] - torch_logits(model, p)).max() <= TOL


@pytest.mark.parametrize("dtype, onnx_type", [("float16", onnx.TensorProto.FLOAT16),
                                              ("bfloat16", onnx.TensorProto.BFLOAT16)])
def test_a_16_bit_export_keeps_weights_and_kv_in_that_dtype_and_logits_in_float32(gqa5, onnx_exports, dtype,
                                                                                  onnx_type):
    directory, model = onnx_exports(GQA5, dtype), gqa5[2]
    onnx.checker.check_model(str(directory / "model.onnx"), full_check=True)
    manifest = read_onnx_manifest(directory)
    assert manifest["dtype"] == dtype == manifest["model"]["torch_dtype"]
    dtypes = {t["name"]: t["dtype"] for t in manifest["inputs"] + manifest["outputs"]}
    assert dtypes.pop("logits") == "float32"
    assert {dtypes.pop(name) for name in ("input_ids", "attention_mask", "position_ids")} == {"int64"}
    assert set(dtypes.values()) == {dtype} and len(dtypes) == 4 * model.cfg.num_hidden_layers
    initializers = {t.name: t for t in onnx.load(str(directory / "model.onnx")).graph.initializer}
    state = model.state_dict()
    assert {initializers[name].data_type for name in [*state, "rope_cos", "rope_sin"]} == {onnx_type}
    for name, tensor in state.items():  # the float32 weights cast once, bit for bit
        stored = onnx.numpy_helper.to_array(initializers[name]).view(np.int16)
        assert np.array_equal(stored, tensor.to(getattr(torch, dtype)).view(torch.int16).numpy()), name


def test_a_float16_graph_runs_in_onnxruntime_close_to_the_pytorch_model(gqa5, onnx_exports):
    _, _, model = gqa5
    sess = session(onnx_exports(GQA5, "float16"))
    prompts = random_prompts(model.cfg.vocab_size, (5, 17, 11))
    ids, mask, positions, _ = padded_batch(prompts, "left")
    logits, present = run_graph(sess, ids, mask, positions, None)
    assert logits.dtype == np.float32 and present[0].dtype == np.float16
    for row, p in enumerate(prompts):
        real = [c for c in range(len(ids[0])) if mask[row][c]]
        # float16 weights and activations against the float32 model (max |logit| about 4): 2.5e-3 measured
        assert np.abs(logits[row, real] - torch_logits(model, p)).max() <= 1e-2


# ---- manifest, files, names ---------------------------------------------------------------------------
def test_the_manifest_names_every_input_and_output_with_dynamic_axes(demo):
    directory, sess, model = demo
    cfg = model.cfg
    manifest = read_onnx_manifest(directory)
    L, Hkv, D = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
    assert [t["name"] for t in manifest["inputs"]] == input_names(L) == [i.name for i in sess.get_inputs()]
    assert [t["name"] for t in manifest["outputs"]] == output_names(L) == [o.name for o in sess.get_outputs()]
    shapes = {t["name"]: (t["shape"], t["dtype"]) for t in manifest["inputs"] + manifest["outputs"]}
    assert shapes["input_ids"] == (["batch", "sequence"], "int64")
    assert shapes["attention_mask"] == (["batch", "total_sequence"], "int64")
    assert shapes["position_ids"] == (["batch", "sequence"], "int64")
    assert shapes["past_key_values.3.value"] == (["batch", Hkv, "past_sequence", D], "float32")
    assert shapes["logits"] == (["batch", "sequence", cfg.vocab_size], "float32")
    present_shape, present_dtype = shapes["present.0.key"]
    assert present_shape[:2] == ["batch", Hkv] and present_shape[3] == D and present_dtype == "float32"
    assert {"past_sequence", "sequence"} <= set(present_shape[2].replace("+", " ").split())
    assert (manifest["dtype"], manifest["max_seq_len"], manifest["external_data"]) == ("float32", 256, False)
    assert 18 <= manifest["opset"] <= 23
    for f in manifest["files"]:
        assert sha256_file(directory / f["name"]) == f["sha256"]
    assert {"model.onnx", "tokenizer.json"} <= {f["name"] for f in manifest["files"]}
    assert manifest["source"]["kind"] == "hf" and len(manifest["source"]["sha256"]) == 64
    assert manifest["source"]["sha256_of"] == "files"
    assert {f["name"] for f in manifest["source"]["files"]} == {"config.json", "model.safetensors"}
    onnx.checker.check_model(str(directory / "model.onnx"), full_check=True)


def test_the_directory_and_its_model_onnx_resolve_as_an_onnx_source(demo, tmp_path):
    from fathom.build.errors import ConfigError

    directory, _, model = demo
    for spec in (directory, directory / "model.onnx"):
        source = resolve_model(str(spec))
        assert (source.kind, source.path, source.tokenizer_dir) == ("onnx", directory, directory)
        assert source.config == model.cfg
    stray = tmp_path / "model.onnx"
    stray.write_bytes((directory / "model.onnx").read_bytes())
    with pytest.raises(ConfigError, match="expected a model directory"):
        resolve_model(str(stray))
    (tmp_path / "fathom-onnx.json").write_text((directory / "fathom-onnx.json").read_text())
    (tmp_path / "model.onnx").rename(tmp_path / "other.onnx")
    with pytest.raises(ConfigError, match="describes 'model.onnx', not 'other.onnx'"):
        resolve_model(str(tmp_path / "other.onnx"))


def test_a_random_source_is_identified_by_a_hash_of_its_config_and_seed():
    specs = ("random:tiny", "random:tiny@7", "random:tiny-odd")
    records = {spec: source_record(resolve_model(spec), []) for spec in specs}
    drawn_from = {"config": resolve_model("random:tiny").config.to_hf_dict(), "seed": 0}
    digest = hashlib.sha256(json.dumps(drawn_from, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert records["random:tiny"] == {"spec": "random:tiny", "kind": "random", "files": [], "sha256": digest,
                                      "sha256_of": "config+seed"}
    assert len({r["sha256"] for r in records.values()}) == len(specs)


# ---- trtexec -----------------------------------------------------------------------------------------------
def test_trtexec_profiles_cover_prefill_and_decode_to_max_seq_len(demo):
    inputs = read_onnx_manifest(demo[0])["inputs"]
    argv = trtexec_command("m.onnx", "m.plan", inputs, 16384, 8)
    assert argv[:4] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.plan", "--stronglyTyped"]
    assert [a for a in argv if a.startswith("--profile=")] == ["--profile=0", "--profile=1"]
    prefill, decode = profiles(16384, 8)
    assert len(argv) == 4 + 2 * 4
    for index, profile in enumerate((prefill, decode)):  # each profile's min, opt, max shapes, in that order
        at = argv.index(f"--profile={index}")
        assert argv[at + 1:at + 4] == [f"--minShapes={profile.shapes(inputs, 0)}",
                                       f"--optShapes={profile.shapes(inputs, 1)}",
                                       f"--maxShapes={profile.shapes(inputs, 2)}"]
    for profile in (prefill, decode):
        for which in range(3):
            shapes = dict(spec.split(":") for spec in profile.shapes(inputs, which).split(","))
            assert set(shapes) == {t["name"] for t in inputs}
            dims = {name: [int(d) for d in shape.split("x")] for name, shape in shapes.items()}
            batch, seq = dims["input_ids"]
            past = dims["past_key_values.0.key"][2]
            assert dims["attention_mask"] == [batch, past + seq] and dims["position_ids"] == [batch, seq]
            assert past + seq <= 16384
    assert prefill.axes["past_sequence"] == (0, 0, 0) and prefill.axes["sequence"][2] == 16384
    assert decode.axes["sequence"] == (1, 1, 1) and decode.axes["batch"] == (1, 8, 8)
    assert decode.axes["total_sequence"][2] == 16384


# ---- options, bad input, atomic output -----------------------------------------------------------------------
def export(*args):
    return CliRunner().invoke(main, ["export", "onnx", *map(str, args)])


def test_opset_force_and_external_data_over_the_protobuf_limit(tmp_path, monkeypatch):
    import fathom.runtime.onnx_export as onnx_export

    out = tmp_path / "tiny"
    out.mkdir()
    (out / "old").write_text("x")
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 1)  # every graph counts as near 2 GiB
    result = export("random:tiny", out, "--dtype", "float32", "--opset", "18", "--max-seq-len", "64", "--force",
                    "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["opset"], summary["external_data"], summary["max_seq_len"]) == (18, True, 64)
    assert sorted(p.name for p in out.iterdir()) == ["fathom-onnx.json", "model.onnx", "model.onnx.data"]
    assert summary["trtexec"][1] == f"--onnx={out.absolute()}/model.onnx"
    manifest = read_onnx_manifest(out)
    assert manifest["source"] == source_record(resolve_model("random:tiny"), [])
    assert summary["source_sha256"] == manifest["source"]["sha256"]
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert [o.version for o in graph.opset_import] == [18]
    external = {t.name for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    assert {"lm_head.weight", "transformer.layers.1.mlp.proj.weight", "transformer.vocab_embedding.weight"} <= external
    model = load_model(resolve_model("random:tiny"), "float32", "cpu", max_seq_len=64)
    prompt = random_prompts(model.cfg.vocab_size, (12,))[0]
    logits, _ = run_graph(session(out), [prompt], [[1] * 12], [list(range(12))], None)
    assert np.abs(logits[0] - torch_logits(model, prompt)).max() <= TOL
    assert not list(tmp_path.glob(".fathom-tmp-*"))


def convert(tmp_path, name, *args):
    result = CliRunner().invoke(main, ["convert", "random:tiny", str(tmp_path / name), *args])
    assert result.exit_code == 0, result.output
    return tmp_path / name


@pytest.mark.parametrize("make, args, code, message", [
    (None, ["--dtype", "float64"], 2, "Invalid value for '--dtype'"),
    (None, ["--opset", "17"], 1, "--opset 17: expected 18 to 23 (torch.onnx's exporter)"),
    (None, ["--opset", "24"], 1, "--opset 24: expected 18 to 23 (torch.onnx's exporter)"),
    (None, ["--max-seq-len", "1"], 2, "Invalid value for '--max-seq-len'"),
    (None, ["--max-seq-len", "8192"], 1, "--max-seq-len 8192: expected 2 to 4096 (random:tiny's max_position_embeddings)"),
    (("w8", "--precision", "w8a16"), [], 1,
     "weights are w8a16; fathom export onnx exports unquantized checkpoints (bf16, fp16, fp32)"),
    (("kv8", "--precision", "bf16", "--kv-cache", "int8"), [], 1,
     "KV cache format is int8; the ONNX graph keeps K/V in the model dtype"),
])
def test_bad_input_is_one_line_and_leaves_nothing_behind(tmp_path, make, args, code, message):
    model = convert(tmp_path, *make) if make else "random:tiny"
    before = sorted(tmp_path.iterdir())
    result = export(model, tmp_path / "out", *args)
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert result.exit_code == code and len(errors) == 1 and message in errors[0], result.output
    assert code == 2 or result.output.strip() == errors[0]  # click's usage lines come only with option errors
    assert sorted(tmp_path.iterdir()) == before


def test_max_seq_len_defaults_to_16384_or_the_models_positions_when_fewer(tmp_path):
    def positions(spec, **options):
        return check_export(resolve_model(spec), tmp_path / "out", OnnxExportOptions(**options))[2]

    assert (positions("demo"), positions("random:tiny"), positions("random:fathom-r1-14b")) == (16384, 4096, 16384)
    assert (positions("random:tiny", max_seq_len=4096), positions("random:fathom-r1-14b", max_seq_len=131072)) == (
        4096, 131072)
    assert not list(tmp_path.iterdir())


def test_the_opset_help_is_the_exporters_range():
    result = CliRunner().invoke(main, ["export", "onnx", "--help"])
    assert f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} [default: {DEFAULT_OPSET}," in " ".join(result.output.split())


def test_an_existing_out_needs_force_and_is_left_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    result = export("random:tiny", out)
    assert result.exit_code == 1 and f"{out}: already exists (pass --force to overwrite)" in result.output
    assert [p.name for p in out.iterdir()] == ["keep"] and sorted(tmp_path.iterdir()) == [out]


def test_an_exported_directory_is_not_a_source_to_export(demo, tmp_path):
    result = export(demo[0], tmp_path / "again")
    assert result.exit_code == 1 and "fathom export onnx needs a Hugging Face model" in result.output
    assert not list(tmp_path.iterdir())


def test_a_failure_mid_export_leaves_nothing_behind(tmp_path, monkeypatch):
    import fathom.runtime.onnx_export as onnx_export

    def fail(source, dtype, max_seq_len, opset, path):
        path.write_bytes(b"half a graph")
        raise onnx_export.WeightsError("disk full")

    monkeypatch.setattr(onnx_export, "_export_graph", fail)
    result = export("demo", tmp_path / "out")
    assert result.exit_code == 1 and "disk full" in result.output
    assert not list(tmp_path.iterdir())
