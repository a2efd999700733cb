"""The onnx executor (an exported graph in onnxruntime behind the executor interface): the interface
tests the torch executor passes (cancel, KV usage, EOS and max_seq_len, over-long prompts) against the
unbatched reference, the graph's positions as its limit, the CLI on an exported directory, and what
it refuses: a bfloat16 graph, a device onnxruntime lacks, onnxruntime missing."""

import json
import sys

import onnxruntime
import pytest
from click.testing import CliRunner

from fathom.build.errors import ConfigError, FathomError
from fathom.build.sources import resolve_model
from fathom.runtime.cli import main
from fathom.runtime.executor import Request, collect
from fathom.runtime.loader import load_model
from fathom.runtime.onnx_executor import OnnxExecutor, OnnxSessionModel, session_providers
from fathom.runtime.reference import ReferenceExecutor
from fathom.runtime.sampling import SamplingParams
from test_torch_executor import check_cancel_of_one_request, prompts_for, reference_alone

GRAPH_POSITIONS = 256  # conftest's onnx_exports


@pytest.fixture(scope="module")
def tiny(onnx_exports):
    """random:tiny exported in float32, and the PyTorch model the reference executor runs."""
    return onnx_exports("random:tiny"), load_model(resolve_model("random:tiny"), "float32", "cpu", max_seq_len=256)


@pytest.fixture(scope="module")
def demo(onnx_exports):
    return onnx_exports("demo")


@pytest.fixture
def cpu_only_onnxruntime(monkeypatch):
    """onnxruntime with the CPU provider only, whatever this machine's build has."""
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])


def onnx_executor(directory, eos_ids=(), max_seq_len=None):
    model = OnnxSessionModel(resolve_model(str(directory)), max_seq_len=max_seq_len)
    return OnnxExecutor(model, eos_ids=list(eos_ids))


# ---- the executor interface, against the unbatched reference ---------------------------------------------
def test_cancel_ends_one_request_and_frees_the_batch(tiny):
    directory, model = tiny
    ex = onnx_executor(directory)
    check_cancel_of_one_request(ex, model)
    assert ex.kv_usage().used_tokens == 0 and ex.cache is None and not ex.cancelled


def test_kv_usage_counts_the_cached_columns_of_the_batch(tiny):
    directory, model = tiny
    ex = onnx_executor(directory)
    usage = ex.kv_usage()
    assert (usage.used_tokens, usage.capacity_tokens, usage.bytes_per_token) == (0, 0, model.cfg.kv_bytes_per_token(4))
    ex.submit(Request("a", [3] * 10, SamplingParams(max_new_tokens=50)))
    ex.submit(Request("b", [5] * 7, SamplingParams(max_new_tokens=50)))
    for _ in range(4):
        ex.step()
    usage = ex.kv_usage()
    # Both rows left-padded to 10 columns, then 3 fed tokens each (the 4th sampled one is not fed yet);
    # capacity: the longest prompt + max_new_tokens per row.
    assert (usage.used_tokens, usage.capacity_tokens) == (2 * (10 + 3), 2 * (10 + 50))


def test_eos_and_max_seq_len_end_requests_like_the_reference(tiny):
    directory, model = tiny
    prompt = prompts_for(model, (11,), seed=6)[0]
    free = reference_alone(model, [prompt], SamplingParams(max_new_tokens=10))["0"]
    eos = free[4]
    ev = collect(onnx_executor(directory, eos_ids=[eos]), [Request("e", prompt, SamplingParams(max_new_tokens=10))])["e"]
    assert [e.token_id for e in ev] == free[:free.index(eos) + 1] and ev[-1].finish_reason == "stop"
    short = onnx_executor(directory, max_seq_len=14)
    ref = ReferenceExecutor(model, eos_ids=[], max_seq_len=14)
    got = collect(short, [Request("x", prompt, SamplingParams(max_new_tokens=10))])["x"]
    want = collect(ref, [Request("x", prompt, SamplingParams(max_new_tokens=10))])["x"]
    assert [(e.token_id, e.finish_reason) for e in got] == [(e.token_id, e.finish_reason) for e in want]
    assert got[-1].finish_reason == "length"


def test_an_over_long_or_empty_prompt_is_refused_with_the_numbers(tiny):
    directory, _ = tiny
    short = onnx_executor(directory, max_seq_len=14)
    with pytest.raises(FathomError, match="request big: prompt has 14 tokens, max_seq_len is 14"):
        short.submit(Request("big", [1] * 14, SamplingParams(max_new_tokens=2)))
    with pytest.raises(FathomError, match="request none: empty prompt"):
        short.submit(Request("none", [], SamplingParams(max_new_tokens=2)))
    whole = onnx_executor(directory)  # the graph's positions
    with pytest.raises(FathomError, match=f"prompt has {GRAPH_POSITIONS} tokens, max_seq_len is {GRAPH_POSITIONS}"):
        whole.submit(Request("big", [1] * GRAPH_POSITIONS, SamplingParams(max_new_tokens=2)))
    assert not short.has_pending() and not whole.has_pending()


# ---- the graph's positions: the limit, reported -------------------------------------------------------------
def test_max_seq_len_is_at_most_the_graphs_positions_and_describe_reports_both(tiny):
    directory, _ = tiny
    with pytest.raises(ConfigError, match=rf"^--max-seq-len {GRAPH_POSITIONS + 1}: .*model.onnx holds "
                                          rf"{GRAPH_POSITIONS} positions .*; expected at most {GRAPH_POSITIONS}$"):
        OnnxSessionModel(resolve_model(str(directory)), max_seq_len=GRAPH_POSITIONS + 1)
    for asked, held in ((None, GRAPH_POSITIONS), (14, 14), (GRAPH_POSITIONS, GRAPH_POSITIONS)):
        info = onnx_executor(directory, max_seq_len=asked).describe()
        assert (info["max_seq_len"], info["graph_max_seq_len"]) == (held, GRAPH_POSITIONS)


def cli(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and result.output.strip() == errors[0], result.output
    return errors[0]


def test_the_cli_runs_with_the_graphs_positions_and_refuses_more(demo, tmp_path):
    got = json.loads(cli("generate", demo, "-p", "hi", "--max-new-tokens", "2", "--json").output)["executor"]
    assert (got["max_seq_len"], got["graph_max_seq_len"]) == (GRAPH_POSITIONS, GRAPH_POSITIONS)
    got = json.loads(cli("generate", demo, "-p", "hi", "--max-new-tokens", "2", "--max-seq-len", "100",
                         "--json").output)["executor"]
    assert got["max_seq_len"] == 100
    for command in (["generate", demo, "-p", "hi"], ["bench", demo, "--num-requests", "1", "--no-profile",
                                                     "--out", tmp_path / "runs.jsonl"]):
        error = one_error_line(cli(*command, "--max-seq-len", "1000"))
        assert f"--max-seq-len 1000: {demo}/model.onnx holds {GRAPH_POSITIONS} positions" in error
    assert not list(tmp_path.iterdir())


# ---- the CLI on an exported directory ---------------------------------------------------------------------
PROMPT = "What is 457 + 68? Please reason step by step, and put your final answer within \\boxed{}."


def generate_json(*args):
    result = CliRunner().invoke(main, ["generate", *args, "-p", PROMPT, "--max-new-tokens", "40", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_generate_runs_the_exported_graph_with_the_same_tokens_and_text(demo):
    want = generate_json("demo", "--executor", "reference", "--dtype", "float32", "--device", "cpu")
    for spec in (demo / "model.onnx", demo):
        got = generate_json(str(spec), "--executor", "onnx")
        assert (got["text"], got["token_ids"]) == (want["text"], want["token_ids"])
        assert got["executor"]["executor"] == "onnx" and got["executor"]["dtype"] == "float32"
    assert generate_json(str(demo))["executor"]["executor"] == "onnx"  # auto picks it


def test_a_float16_graph_runs_through_the_executor(onnx_exports):
    directory = onnx_exports("demo", "float16")
    got = generate_json(str(directory))
    assert got["executor"]["dtype"] == "float16" and got["output_tokens"] == 40
    ex = onnx_executor(directory)
    ex.submit(Request("a", [3] * 10, SamplingParams(max_new_tokens=5)))
    ex.step()
    assert ex.kv_usage().bytes_per_token == resolve_model("demo").config.kv_bytes_per_token(2)


def test_bench_records_an_onnx_run(demo, tmp_path):
    out = tmp_path / "runs.jsonl"
    result = CliRunner().invoke(main, ["bench", str(demo), "--num-requests", "3", "--input-len", "8",
                                       "--output-len", "5", "--warmup", "0", "--no-profile", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["metrics"]["completed"] == 3
    env = record["environment"]
    assert (env["executor"], env["dtype"], env["precision"], env["kv_cache"]) == ("onnx", "float32", "fp32", "model")


# ---- refusals -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--executor", "torch"], "an exported ONNX directory runs with --executor onnx, not torch"),
    (["--dtype", "float16"], "--dtype float16: {spec} is an ONNX graph in float32"),
    (["--tp", "2"], "--tp 2: tensor parallelism is a torch executor option"),
    (["--device", "cuda"], "--device cuda: this onnxruntime has no CUDAExecutionProvider "
                           "(available: CPUExecutionProvider); install onnxruntime-gpu"),
    (["--device", "tpu"], "--device 'tpu': expected cpu, cuda or cuda:N"),
])
def test_the_onnx_executor_refuses_what_it_cannot_run(demo, cpu_only_onnxruntime, args, message):
    spec = str(demo)
    result = CliRunner().invoke(main, ["generate", spec, "-p", "hi", *args])
    assert result.exit_code == 1 and message.format(spec=spec) in result.output, result.output


def test_cuda_devices_get_the_cuda_provider_where_onnxruntime_has_it(monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert session_providers("cuda:1") == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert session_providers("cuda")[0] == ("CUDAExecutionProvider", {"device_id": 0})
    assert session_providers("cpu") == ["CPUExecutionProvider"]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_bfloat16_graph_is_refused_on_every_device_with_the_remedy(onnx_exports, monkeypatch, device):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    directory = onnx_exports("demo", "bfloat16")
    error = one_error_line(cli("generate", directory, "-p", "hi", "--device", device))
    assert f"{directory}/model.onnx: onnxruntime cannot run a bfloat16 graph" in error
    assert "fathom export onnx MODEL OUT --dtype float16|float32" in error


def test_without_onnxruntime_the_executor_says_how_to_install_it(demo, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets when it is not installed
    error = one_error_line(cli("generate", demo, "-p", "hi"))
    assert "--executor onnx needs onnxruntime, which is not importable" in error
    assert "pip install 'fathom-engine[onnx]'" in error


def test_the_onnx_executor_needs_an_exported_directory():
    result = CliRunner().invoke(main, ["generate", "demo", "--executor", "onnx", "-p", "hi"])
    assert result.exit_code == 1
    assert "--executor onnx runs an exported ONNX directory (make one with fathom export onnx)" in result.output
