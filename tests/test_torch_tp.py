"""Tensor-parallel torch executor: 2 CPU ranks (gloo) against one process on the same checkpoint."""

import os
import signal
import threading

import pytest
import torch
import torch.distributed as dist
from click.testing import CliRunner

from fathom.build.checkpoint import read_checkpoint
from fathom.build.config import ModelConfig, preset
from fathom.build.convert import ConvertOptions, convert
from fathom.build.errors import ConfigError, FathomError
from fathom.build.precision import DTYPE_BYTES, WeightFormat
from fathom.build.quant.calibrate import CalibConfig
from fathom.build.quant.pipeline import QuantOptions, convert_quantized
from fathom.build.sources import resolve_model
from fathom.build.synthetic import write_hf_dir
from fathom.engine.planner import Deployment, stages
from fathom.runtime.cli import main
from fathom.runtime.executor import Request, collect
from fathom.runtime.executors import create_executor
from fathom.runtime.model import param_bytes
from fathom.runtime.sampling import SamplingParams
from fathom.runtime import tp_launch
from fathom.runtime.tp_launch import check_devices

OPTIONS = dict(dtype="float32", device="cpu", max_seq_len=64, threads=1, max_num_tokens=24, max_num_seqs=3,
               block_size=8)
# Weights big enough that a worker's RSS shows them: ~107 MB in float32, ~55 MB per rank.
WIDE = ModelConfig(vocab_size=1024, hidden_size=768, intermediate_size=2048, num_hidden_layers=4,
                   num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=4096,
                   torch_dtype="float32", source="test:wide")


def checkpoint(tmp_path_factory, name: str, cfg: ModelConfig, tp: int = 2, pp: int = 1, dtype: str = "float32",
               precision: WeightFormat | None = None):
    root = tmp_path_factory.mktemp(name)
    source = resolve_model(str(write_hf_dir(cfg, root / "hf", seed=3, dtype=torch.float32)))
    options = ConvertOptions(dtype=dtype, tp=tp, pp=pp)
    if precision is None:
        convert(source, root / "ckpt", options)
    else:
        convert_quantized(source, root / "ckpt", options,
                          QuantOptions(precision, calib=CalibConfig(samples=4, seq_len=32)))
    return root / "ckpt"


def greedy(executor, max_new_tokens: int = 5):
    """Tokens per request and the logits of every step, for prompts that mix decode and chunked prefill."""
    steps = []
    forward = executor.runner.forward
    executor.runner.forward = lambda decodes, chunks: steps.append(forward(decodes, chunks)) or steps[-1]
    prompts = {"a": list(range(5, 35)), "b": [7, 3, 9], "c": list(range(60, 71))}
    params = SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True)
    events = collect(executor, [Request(rid, ids, params) for rid, ids in prompts.items()])
    return {rid: [e.token_id for e in evs] for rid, evs in events.items()}, steps


def assert_same_run(ckpt, atol: float, dtype: str = "float32", max_new_tokens: int = 5):
    source = resolve_model(str(ckpt))
    options = {**OPTIONS, "dtype": dtype}
    one = create_executor("torch", source, **options)
    want_tokens, want_logits = greedy(one, max_new_tokens)
    tp = create_executor("torch", source, tp=2, **options)
    try:
        got_tokens, got_logits = greedy(tp, max_new_tokens)
        assert got_tokens == want_tokens
        assert len(got_logits) == len(want_logits)
        for got, want in zip(got_logits, want_logits):
            assert got.shape == want.shape
            assert want.numel() == 0 or float((got - want).abs().max()) <= atol
        return one, tp
    except BaseException:
        tp.close()
        raise


@pytest.fixture(scope="module")
def wide_ckpt(tmp_path_factory):
    return checkpoint(tmp_path_factory, "wide", WIDE)


def test_two_ranks_match_one_process_and_each_loads_its_half(wide_ckpt):
    one, tp = assert_same_run(wide_ckpt, atol=1e-5)
    workers = tp.workers
    try:
        info = tp.describe()["tensor_parallel"]
        plans = read_checkpoint(wide_ckpt).rank_plans()
        single_bytes = param_bytes(one.model)
        assert info["size"] == 2 and info["backend"] == "gloo"
        for rank in info["ranks"]:  # each rank read exactly its own rank file, about half the weights
            assert rank["weights_bytes"] == plans[rank["rank"]].nbytes
            assert 0.45 * single_bytes < rank["weights_bytes"] < 0.55 * single_bytes
        worker = info["ranks"][1]
        grown = worker["peak_rss_bytes"] - worker["rss_before_load_bytes"]
        assert worker["weights_bytes"] * 0.9 < grown < single_bytes  # its shard in memory, never the whole model
        # The per-rank KV cache holds this rank's heads: half of one process's (num_kv_heads 4, tp 2).
        assert tp.cache.bytes_per_token * 2 == one.cache.bytes_per_token
        assert [rank["threads"] for rank in info["ranks"]] == [1, 1]

        # Ctrl-C reaches the worker too (same terminal process group): it keeps serving rank 0,
        # which owns shutdown; meanwhile another thread asks for `describe` while steps run.
        os.kill(workers.procs[0].pid, signal.SIGINT)
        described, stop = [], threading.Event()

        def describe_until_stopped():
            while not stop.is_set():
                described.append(tp.describe()["tensor_parallel"]["size"])

        reader = threading.Thread(target=describe_until_stopped)
        reader.start()
        try:
            assert greedy(tp)[0] == greedy(one)[0]
        finally:
            stop.set()
            reader.join()
        assert described and set(described) == {2}
    finally:
        tp.close()
    assert [p.exitcode for p in workers.procs] == [0]
    assert not dist.is_initialized()


def test_auto_threads_are_shared_by_the_ranks(wide_ckpt, monkeypatch):
    """With --threads unset, a model over 64 MB gets torch's default thread count divided among the ranks."""
    opened = {}

    def open_tensor_parallel(source, tp, dtype, device, max_seq_len, eos_ids, threads, config):
        opened.update(tp=tp, threads=threads)

    before = torch.get_num_threads()
    monkeypatch.setattr(tp_launch, "open_tensor_parallel", open_tensor_parallel)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    try:
        create_executor("torch", resolve_model(str(wide_ckpt)), dtype="float32", device="cpu", tp=2)
        assert opened == {"tp": 2, "threads": 2}
    finally:
        torch.set_num_threads(before)


def test_plan_sizes_each_rank_as_loaded(tmp_path_factory):
    """`fathom plan --tp 2` counts the bytes of a rank file and the KV bytes of a rank's cache."""
    ckpt = checkpoint(tmp_path_factory, "plan", preset("tiny-gqa5"), dtype="bfloat16")
    info = read_checkpoint(ckpt)
    stage = stages(info.cfg, Deployment(tp=2))[0]
    assert [plan.nbytes for plan in info.rank_plans()] == [stage.weights_bytes] * 2
    kv_heads = info.mapping.kv_heads_per_rank(info.cfg.num_key_value_heads)
    assert stage.kv_bytes_per_token == 2 * info.cfg.num_hidden_layers * kv_heads * info.cfg.head_dim * \
        DTYPE_BYTES["bfloat16"]


def test_duplicated_kv_heads_padded_vocab_and_a_dead_worker(tmp_path_factory):
    """tiny-odd: one KV head (each rank holds a copy), vocabulary 131 padded to 132 rows."""
    ckpt = checkpoint(tmp_path_factory, "odd", preset("tiny-odd"))
    _, tp = assert_same_run(ckpt, atol=1e-5)
    try:
        [proc] = tp.workers.procs
        killed = []

        def killed_then_never_done() -> bool:
            """A step whose collective never completes because its peer died (what NCCL does)."""
            if not killed:
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
            return False

        for wait in (lambda: tp.workers.wait_until(killed_then_never_done),
                     lambda: collect(tp, [Request("x", [1, 2, 3], SamplingParams(max_new_tokens=2))])):
            with pytest.raises(FathomError) as e:
                wait()
            assert "\n" not in str(e.value) and "rank 1" in str(e.value) and "exited" in str(e.value)
        assert tp.workers.broken.is_set()
    finally:
        tp.close()
    assert not dist.is_initialized()


def test_rank0_cache_error_comes_before_the_workers_are_asked(tmp_path_factory, monkeypatch):
    """A cache rank 0 cannot hold fails before the workers enter the block agreement: they leave
    when asked (exit code 0) instead of being terminated after JOIN_TIMEOUT_S."""
    ckpt = checkpoint(tmp_path_factory, "cache", preset("tiny"))
    started = []

    class Workers(tp_launch.TPWorkers):
        def __init__(self, spec):
            super().__init__(spec)
            started.append(self)

    monkeypatch.setattr(tp_launch, "TPWorkers", Workers)
    with pytest.raises(ConfigError, match="KV cache: 1 bytes left"):
        create_executor("torch", resolve_model(str(ckpt)), tp=2, **{**OPTIONS, "cpu_budget_bytes": 1})
    [workers] = started
    assert [p.exitcode for p in workers.procs] == [0]
    assert not dist.is_initialized()


def test_bfloat16_all_reduce_over_gloo(tmp_path_factory):
    """bf16 partial sums all-reduced by gloo. Each rank rounds its partial product to bf16 before the
    sum, so logits move by a few bf16 steps (measured 0.03 at |logit| < 4, where a step is 1/64) and
    a near-tie can pick another token: the first two tokens here win by >= 0.09, past that error."""
    ckpt = checkpoint(tmp_path_factory, "bf16", preset("tiny"), dtype="bfloat16")
    _, tp = assert_same_run(ckpt, atol=4 / 64, dtype="bfloat16", max_new_tokens=2)
    tp.close()


# Every linear's input width on a rank a multiple of AWQ's group size (128).
AWQ_SIZED = ModelConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                        torch_dtype="float32", source="test:awq")


@pytest.mark.parametrize("precision, cfg", [(WeightFormat.FP8, preset("tiny")), (WeightFormat.W8A16, preset("tiny")),
                                            (WeightFormat.W4A16_AWQ, AWQ_SIZED)])
def test_quantized_checkpoints(tmp_path_factory, precision, cfg):
    """FP8 (per-tensor scales, replicated), W8A16 (each rank quantizes its own shard, as TensorRT-LLM
    does, so one process uses the same per-rank scales), W4A16-AWQ (each rank's packed int4 shard)."""
    ckpt = checkpoint(tmp_path_factory, f"q-{precision.value}", cfg, precision=precision)
    _, tp = assert_same_run(ckpt, atol=1e-5)
    tp.close()


def one_line_error(result, *needles):
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_input(tmp_path_factory, monkeypatch):
    ckpt = str(checkpoint(tmp_path_factory, "bad", preset("tiny")))
    pp2 = str(checkpoint(tmp_path_factory, "bad-pp", preset("tiny"), tp=1, pp=2))

    tokenizer = str(resolve_model("demo").tokenizer_dir)

    def generate(*args):
        return CliRunner().invoke(main, ["generate", *args, "-p", "hi", "--device", "cpu", "--no-stream",
                                         "--tokenizer", tokenizer])

    one_line_error(generate(ckpt, "--tp", "4"), "--tp 4", "tp_size 2, expected 4")
    one_line_error(generate(pp2, "--tp", "2"), "--tp 2", "pp_size 2, expected 1")
    one_line_error(generate(ckpt, "--tp", "2", "--executor", "reference"), "--tp 2", "--executor reference")
    one_line_error(generate("demo", "--tp", "2"), "--tp 2", "checkpoint converted with --tp 2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="--tp 2: needs 2 CUDA devices, 1 visible"):
        check_devices("cuda", 2)
    assert not dist.is_initialized()
