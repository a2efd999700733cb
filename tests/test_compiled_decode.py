"""Compiled decode steps (`TorchExecutorConfig.compile`, fathom.runtime.compiled_decode) against the
eager executor and HF transformers, the pool written in place, the graphs compiled, and the refusals.

Compiling is the slow part (seconds per graph, cold): the module fixture compiles the two graphs of
random:tiny once (batch 1, batch >= 2) and every other test on that model reuses them.
"""

import random

import pytest
import torch
from click.testing import CliRunner

from fathom.build.config import DEFAULT_MAX_SEQ_LEN
from fathom.build.errors import ConfigError, FathomError
from fathom.build.sources import resolve_model
from fathom.runtime import compiled_decode
from fathom.runtime.cli import main
from fathom.runtime.executor import Request, collect
from fathom.runtime.executors import create_executor
from fathom.runtime.loader import load_model
from fathom.runtime.sampling import SamplingParams
from fathom.runtime.torch_executor import TorchExecutor, executor_config
from logits_recorder import record_logits
from test_torch_executor import eager_replay_decoder

CANNOT_COMPILE = compiled_decode.compile_unavailable(torch.device("cpu"))
needs_compiler = pytest.mark.skipif(CANNOT_COMPILE is not None,
                                    reason=f"torch.compile cannot build CPU kernels here: {CANNOT_COMPILE}")

MAX_SEQ_LEN = DEFAULT_MAX_SEQ_LEN  # as gpu_check's smoke model: that test reuses these graphs
BATCH1 = ([9], [100])  # prompt lengths, new tokens: one sequence decoding 100 tokens
RAGGED = ([5, 40, 17], [100, 60, 30])  # three sequences that stop apart: decode steps of 3, 2, then 1
FLOAT32_TOL = 1e-4  # other summation orders (fused reductions vs SDPA): ~1e-6 on these logits


def prompts_for(vocab_size, lengths, seed):
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(n)] for n in lengths]


def executor(model, compile, **options):
    config = dict(max_num_tokens=64, max_num_seqs=4, block_size=8, num_blocks=64)
    return TorchExecutor(model, eos_ids=[], config=executor_config(compile=compile, **{**config, **options}))


def greedy(ex, prompts, new_tokens, tag):
    requests = [Request(f"{tag}{i}", p, SamplingParams(max_new_tokens=n)) for i, (p, n) in enumerate(zip(prompts, new_tokens))]
    return {rid: [e.token_id for e in events] for rid, events in collect(ex, requests).items()}


@pytest.fixture(scope="module")
def model(hf_dirs):
    return load_model(resolve_model(str(hf_dirs("tiny"))), "float32", "cpu", max_seq_len=MAX_SEQ_LEN)


@pytest.fixture(scope="module")
def runs(model):
    """Batch 1 then the ragged batch through an eager and a compiled executor: per executor the
    tokens, the logits behind them, and the graphs compiled so far after each part."""
    if CANNOT_COMPILE is not None:
        pytest.skip(f"torch.compile cannot build CPU kernels here: {CANNOT_COMPILE}")
    torch._dynamo.reset()  # the graph counts below start from an empty cache
    vocab = model.cfg.vocab_size
    out = {}
    for compile in (False, True):
        ex = executor(model, compile)
        logits = record_logits(ex)
        tokens, graphs = {}, []
        for tag, (lengths, new) in (("b", BATCH1), ("r", RAGGED)):
            tokens.update(greedy(ex, prompts_for(vocab, lengths, seed=len(lengths)), new, tag))
            graphs.append(ex.runner.compiled.graphs_compiled if compile else None)
        out[compile] = {"tokens": tokens, "logits": logits, "graphs": graphs, "describe": ex.describe()}
    return out


@needs_compiler
def test_compiled_decode_logits_equal_the_eager_executors_over_a_ragged_batch(runs):
    eager, compiled = runs[False], runs[True]
    assert compiled["tokens"] == eager["tokens"]
    assert compiled["logits"].keys() == eager["logits"].keys()
    for rid, want in eager["logits"].items():
        got = compiled["logits"][rid]
        assert len(got) == len(want)
        assert max((a - b).abs().max().item() for a, b in zip(got, want)) <= FLOAT32_TOL, rid


@needs_compiler
def test_compiled_greedy_tokens_equal_hf_generate(runs, hf_dirs, model):
    from transformers import Qwen2ForCausalLM

    hf = Qwen2ForCausalLM.from_pretrained(str(hf_dirs("tiny")), dtype=torch.float32).eval()
    for tag, (lengths, new) in (("b", BATCH1), ("r", RAGGED)):
        for i, (prompt, n) in enumerate(zip(prompts_for(model.cfg.vocab_size, lengths, seed=len(lengths)), new)):
            with torch.inference_mode():
                out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)
            assert runs[True]["tokens"][f"{tag}{i}"] == out[0, len(prompt):].tolist(), (tag, i)


@needs_compiler
def test_a_100_token_decode_compiles_one_graph_for_batch_1_and_one_for_every_larger_batch(runs):
    # batch 1: the graph dynamo specializes to one sequence, every context length in it; the
    # ragged batch: one more graph for its steps of 3 and 2 sequences, its last 40 steps reuse batch 1's
    assert runs[True]["graphs"] == [1, 2]
    info = runs[True]["describe"]
    assert (info["torch_compile"], info["compiled_graphs"], info["decode_attention"]) == (
        True, 2, compiled_decode.KERNEL)
    assert (runs[False]["describe"]["torch_compile"], runs[False]["describe"]["decode_attention"]) == (False, "gather_sdpa_or_view")


@needs_compiler
def test_a_decode_step_writes_its_slot_of_the_pool_in_place_and_nothing_else(runs, model):
    ex = executor(model, True)
    for i, p in enumerate(prompts_for(model.cfg.vocab_size, [6, 11], seed=5)):
        ex.submit(Request(str(i), p, SamplingParams(max_new_tokens=8)))
    ex.step()  # both prompts
    ex.step()  # one decode step of both
    a, b = ex.scheduler.running
    pool = ex.cache.kv
    before, ptr = pool.clone(), pool.data_ptr()
    p = b.num_computed
    ex.runner.compiled.run([b.tokens[-1]], [p], [b.row])  # b alone: a's blocks must stay as they are
    bs = ex.cache.block_size
    slot = b.blocks[p // bs] * bs + p % bs
    bits = torch.int32  # compared as bits: blocks never handed out hold whatever was in memory, NaN included
    changed = (pool.view(bits) != before.view(bits)).flatten(2).any(-1).any(0).nonzero().flatten().tolist()
    assert pool.data_ptr() == ptr and changed == [slot]
    assert not set(range(a.blocks[0] * bs, (a.blocks[0] + 1) * bs)) & set(changed)
    assert ex.runner.compiled.graphs_compiled == 0  # the runs fixture compiled this shape


@needs_compiler
def test_a_decode_step_on_a_large_pool_allocates_nothing_of_its_size(runs, model):
    """A graph that copied the pool (a write through a per-layer view does) allocates a buffer of its
    size every step: the largest allocation of a step tells, where timing would only suggest. The
    graphs of the small pool serve (pool and slot-table sizes are dynamic)."""
    from torch.profiler import ProfilerActivity, profile

    ex = executor(model, True, num_blocks=1 << 16)  # 512K tokens
    pool_bytes = ex.cache.kv.numel() * ex.cache.kv.element_size()
    assert pool_bytes >= 256 << 20
    ex.submit(Request("big", prompts_for(model.cfg.vocab_size, [9], seed=1)[0], SamplingParams(max_new_tokens=4)))
    ex.step()  # prefill
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        ex.step()  # a compiled decode step
    assert max(e.cpu_memory_usage for e in prof.events()) < 1 << 20
    assert ex.runner.compiled.graphs_compiled == 0


@needs_compiler
def test_cuda_graph_buckets_replay_the_compiled_step(runs, model):
    """CudaGraphDecoder with `decode` = the compiled step, its capture replayed eagerly on the CPU
    (capturing needs CUDA): padded batch, context bucket and static buffers, the eager logits."""
    EagerReplay = eager_replay_decoder()

    prompts = prompts_for(model.cfg.vocab_size, [5, 120, 17], seed=10)
    got = {}
    for compile in (False, True):
        ex = executor(model, compile, max_num_tokens=256)  # one prefill step: then 3 decode together
        if compile:
            ex.runner.graphs = EagerReplay(ex.runner.run_model, ex.runner.attn, 4, ex.max_seq_len, ex.device,
                                           decode=ex.runner.compiled.step)
        logits = record_logits(ex)
        got[compile] = (greedy(ex, prompts, [9, 9, 9], "g"), logits, ex)
    (want, want_logits, _), (tokens, logits, ex) = got[False], got[True]
    assert tokens == want and set(ex.runner.graphs.graphs) == {(4, 256)}  # 3 sequences padded with a null row
    for rid in want_logits:
        assert max((a - b).abs().max().item() for a, b in zip(logits[rid], want_logits[rid])) <= FLOAT32_TOL, rid


@needs_compiler
def test_an_int8_kv_cache_is_dequantized_inside_the_compiled_step(model):
    """int8 here; fp8 (the same code with another storage dtype) in tests/gpu, where it is used."""
    prompts = prompts_for(model.cfg.vocab_size, [7, 19], seed=2)
    got = {}
    for compile in (False, True):
        ex = executor(model, compile, kv_format="int8", kv_scales=(0.05,) * model.cfg.num_hidden_layers)
        logits = record_logits(ex)
        got[compile] = (greedy(ex, prompts, [12, 12], "q"), logits)
    (eager_tokens, eager_logits), (tokens, logits) = got[False], got[True]
    assert tokens == eager_tokens
    for rid, want in eager_logits.items():
        # the same stored values either way; a K/V landing on the other side of a rounding step would show as ~1e-2
        assert max((a - b).abs().max().item() for a, b in zip(logits[rid], want)) <= FLOAT32_TOL, rid


def test_compile_is_refused_for_other_executors_and_for_tensor_parallel_ranks():
    source = resolve_model("random:tiny")
    with pytest.raises(FathomError, match=r"^--compile: compiles the torch executor's decode steps, not --executor "
                                          r"reference$"):
        create_executor("reference", source, compile=True)
    with pytest.raises(FathomError, match=r"^--compile with --tp 2: compiled decode steps run in one process"):
        create_executor("torch", source, tp=2, compile=True)
    result = CliRunner().invoke(main, ["generate", "demo", "-p", "hi", "--executor", "reference", "--compile"])
    assert result.exit_code == 1
    assert result.output == "Error: --compile: compiles the torch executor's decode steps, not --executor reference\n"


def test_quantized_linears_are_refused_with_the_precision_named(tmp_path):
    ckpt = tmp_path / "w8"
    result = CliRunner().invoke(main, ["convert", "random:tiny", str(ckpt), "--precision", "w8a16"])
    assert result.exit_code == 0, result.output
    with pytest.raises(ConfigError, match=r"^compile: w8a16 weights run in quantized linears, which are not compiled; "
                                          r"run this checkpoint without --compile$"):
        create_executor("torch", resolve_model(str(ckpt)), dtype="float32", device="cpu", max_seq_len=64, compile=True)


def test_a_missing_compiler_or_header_or_triton_is_named_before_any_step(model, monkeypatch, tmp_path):
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", (None, "fathom-no-such-cxx"))
    with pytest.raises(ConfigError, match=r"^compile: inductor's CPU kernels are C\+\+ and no C\+\+ compiler was found: "
                                          r"fathom-no-such-cxx is not on the PATH \(install g\+\+"):
        executor(model, True)
    monkeypatch.undo()
    monkeypatch.setattr(compiled_decode.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    with pytest.raises(ConfigError, match=f"^compile: inductor's CPU kernels include Python.h and it is not in {tmp_path} "):
        executor(model, True)
    monkeypatch.setattr(compiled_decode.importlib.util, "find_spec", lambda name: None)
    assert compiled_decode.compile_unavailable(torch.device("cuda")) == (
        "inductor's CUDA kernels are Triton kernels and triton is not installed (pip install triton)")


@needs_compiler
def test_an_inductor_failure_is_one_line_naming_its_cause(monkeypatch):
    import torch._inductor.compile_fx

    def fail(gm, example_inputs):
        raise RuntimeError("no kernels today\nmore detail")

    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx", fail)
    odd = load_model(resolve_model("random:tiny-odd"), "float32", "cpu", max_seq_len=MAX_SEQ_LEN)  # a shape not compiled yet
    ex = executor(odd, True)
    with pytest.raises(FathomError, match=r"^compile: inductor could not compile the decode step \(no kernels today\); "
                                          r"run without --compile$"):
        greedy(ex, [[1, 2, 3]], [3], "f")


@needs_compiler
def test_gpu_check_compares_the_attention_kernels_and_eager_with_compiled_decode_in_smoke_mode(tmp_path):
    import json

    from fathom.profiles import gpu_check

    record = json.loads(gpu_check.main(["--smoke", "--out", str(tmp_path / "check.json")]).read_text())
    kernels = record["attention_kernels"]
    assert (kernels["layer"]["query_heads"], kernels["layer"]["kv_heads"]) == (4, 2)
    assert [(c["batch"], c["context"]) for c in kernels["cases"]] == [(2, 16), (2, 48)]
    for case in kernels["cases"]:
        ran = case["kernels"]
        assert ran["gather_sdpa"]["us"] > 0 and ran["compiled_inplace"]["bandwidth_gb_s"] > 0
        assert ran["compiled_inplace"]["max_abs_diff_vs_gather_sdpa"] <= FLOAT32_TOL  # one pool, two kernels
        assert "skipped" in ran["flash_attn_with_kvcache"]  # CUDA only
    decode = record["compiled_decode"]
    assert [(c["compiled"], c["batch"], c["context"]) for c in decode["cases"]] == [
        (False, 2, 16), (False, 2, 48), (True, 2, 16), (True, 2, 48)]
    assert all(c["tok_s"] > 0 for c in decode["cases"]) and len(decode["speedup"]) == 2
    assert decode["compiled_executor"]["torch_compile"] and not decode["eager_executor"]["torch_compile"]

    late = json.loads(gpu_check.main(["--smoke", "--budget-s", "0", "--out", str(tmp_path / "late.json")]).read_text())
    for part in (late["attention_kernels"], late["compiled_decode"], late["fp8"]):
        assert part["skipped"].startswith("time budget: ")
    assert late["bf16"]["decode"]  # the first part always runs


@needs_compiler
def test_past_the_recompile_limit_a_step_is_one_line_naming_the_limit(model, monkeypatch):
    import torch._dynamo

    ex = executor(model, True)
    greedy(ex, prompts_for(model.cfg.vocab_size, [4], seed=5), [3], "l")  # the shape's graphs exist
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    other = load_model(resolve_model("random:tiny-mha"), "float32", "cpu", max_seq_len=MAX_SEQ_LEN)  # a new shape
    with pytest.raises(FathomError, match=r"^compile: this process reached dynamo's recompile limit of 1 decode graphs .*another process$"):
        greedy(executor(other, True), [[1, 2, 3]], [3], "m")
