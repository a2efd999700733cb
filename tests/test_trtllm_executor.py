"""The TensorRT-LLM executor through the fake C++ executor API in tests/fakes/tensorrt_llm/bindings."""

import json
import logging
import sys
from pathlib import Path

import pytest

from fathom.build.convert import ConvertOptions, convert
from fathom.build.errors import CheckpointError, FathomError
from fathom.build.sources import resolve_model
from fathom.engine import builder
from fathom.engine.builder import build_engine, prepare_build
from fathom.engine.manifest import EngineCompatError
from fathom.runtime.executor import Request, collect
from fathom.runtime.executors import create_executor
from fathom.runtime.sampling import SamplingParams

FAKES = Path(__file__).parent / "fakes"
H100 = "NVIDIA H100 80GB HBM3"


def _drop_trtllm_modules():
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[name]


@pytest.fixture
def fake_trtllm(monkeypatch):
    """The fake `tensorrt_llm.bindings.executor`, fresh for each test."""
    monkeypatch.syspath_prepend(str(FAKES))
    _drop_trtllm_modules()
    import tensorrt_llm.bindings.executor as tle

    monkeypatch.setattr(builder, "local_gpu_names", lambda: [])
    yield tle
    _drop_trtllm_modules()


@pytest.fixture
def engine_dir(tmp_path, fake_trtllm):
    """random:tiny -> fathom checkpoint -> engine built by the fake tensorrt_llm for an H100."""
    ckpt = tmp_path / "ckpt"
    convert(resolve_model("random:tiny"), ckpt, ConvertOptions(max_seq_len=256))
    return build_engine(prepare_build(ckpt, gpu="h100"), tmp_path / "engine")


@pytest.fixture
def tp2_engine_dir(tmp_path, fake_trtllm):
    ckpt = tmp_path / "ckpt2"
    convert(resolve_model("random:tiny"), ckpt, ConvertOptions(max_seq_len=256, tp=2))
    return build_engine(prepare_build(ckpt, gpu="h100"), tmp_path / "engine2")


def open_executor(engine_dir, eos_ids=(7,), **kw):
    from fathom.runtime.trtllm_executor import TrtllmExecutor

    return TrtllmExecutor(engine_dir, resolve_model(str(engine_dir)).config, eos_ids=list(eos_ids), gpu_name=H100, **kw)


def script_tokens(tle, prompt, n, sampling=None):
    """What the fake engine generates for `prompt` (no stop words), computed from its script."""
    sampling = sampling or tle.SamplingConfig(top_k=1)
    out = []
    for _ in range(n):
        out.append(tle.SCRIPT(prompt, out, sampling))
    return out


def enqueued(tle):
    return [c[1] for c in tle.CALLS if c[0] == "enqueue_request"]


def executor_config(tle):
    (call,) = [c[1] for c in tle.CALLS if c[0] == "Executor"]
    return call["executor_config"]


def set_manifest_runtime(engine_dir, runtime):
    path = engine_dir / "fathom-engine.json"
    manifest = json.loads(path.read_text())
    manifest["runtime"] = runtime
    path.write_text(json.dumps(manifest))


def test_outputs_are_the_streamed_engine_tokens(engine_dir, fake_trtllm):
    tle = fake_trtllm
    tle.SCRIPT = lambda prompt, generated, sampling: 100 + len(prompt) + len(generated)
    ex = open_executor(engine_dir, eos_ids=())
    events = collect(ex, [Request("a", [1, 2, 3], SamplingParams(max_new_tokens=4)),
                          Request("b", [9] * 10, SamplingParams(max_new_tokens=4))])
    assert [e.token_id for e in events["a"]] == [103, 104, 105, 106]
    assert [e.token_id for e in events["b"]] == [110, 111, 112, 113]
    assert [e.finish_reason for e in events["a"]] == [None, None, None, "length"]
    assert all(x.time_s <= y.time_s for x, y in zip(events["a"], events["a"][1:]))
    a, b = enqueued(tle)
    assert a.input_token_ids == [1, 2, 3] and a.streaming and a.max_tokens == 4 and a.end_id == -1
    assert b.input_token_ids == [9] * 10
    call = [c[1] for c in tle.CALLS if c[0] == "Executor"][0]
    assert call["model_path"] == str(engine_dir) and call["model_type"] == tle.ModelType.DECODER_ONLY


def test_a_request_submitted_mid_run_starts_at_the_next_step_with_its_own_parameters(engine_dir, fake_trtllm):
    tle = fake_trtllm
    ex = open_executor(engine_dir, eos_ids=())
    ex.submit(Request("long", [1, 2], SamplingParams(max_new_tokens=8)))
    got: dict[str, list] = {}
    for _ in range(2):
        for e in ex.step():
            got.setdefault(e.request_id, []).append(e)
    sampled = SamplingParams(max_new_tokens=2, temperature=0.7, top_k=5, top_p=0.9, seed=11)
    ex.submit(Request("late", [3], sampled))
    first = ex.step()
    assert {e.request_id for e in first} == {"long", "late"}  # no waiting for "long" to finish
    for e in first + [e for evs in collect(ex, []).values() for e in evs]:
        got.setdefault(e.request_id, []).append(e)
    assert got["late"][-1].finish_reason == "length" and len(got["late"]) == 2
    assert len(got["long"]) == 8 and got["long"][-1].finish_reason == "length"
    assert got["long"][2] in first  # "late" got its first token with "long"'s third
    greedy, late = (r.sampling_config for r in enqueued(tle))
    assert greedy.top_k == 1 and greedy.temperature is None
    assert (late.temperature, late.top_k, late.top_p, late.seed) == (0.7, 5, 0.9, 11)
    assert [e.token_id for e in got["late"]] == script_tokens(tle, [3], 2, late)


def test_runtime_settings_map_onto_the_executor_config_like_from_dir(engine_dir, fake_trtllm):
    tle = fake_trtllm
    open_executor(engine_dir)  # the h100 preset: chunked context, KV fraction 0.9
    config = executor_config(tle)
    assert config.enable_chunked_context is True and config.max_batch_size == 2048 and config.max_beam_width == 1
    kv = config.kv_cache_config
    assert kv.free_gpu_memory_fraction == 0.9 and kv.max_tokens is None
    assert kv.enable_block_reuse is False  # ModelRunnerCpp.from_dir's default, not the binding's True
    assert config.extended_runtime_perf_knob_config.multi_block_mode is True
    assert config.parallel_config.communication_mode == tle.CommunicationMode.LEADER
    assert config.parallel_config.communication_type == tle.CommunicationType.MPI

    tle.CALLS.clear()
    set_manifest_runtime(engine_dir, {"enable_chunked_context": False, "kv_cache_free_gpu_memory_fraction": 0.5,
                                      "kv_cache_enable_block_reuse": True, "max_tokens_in_paged_kv_cache": 4096,
                                      "multi_block_mode": False, "cuda_graph_mode": True,
                                      "enable_context_fmha_fp32_acc": True})
    open_executor(engine_dir)
    config = executor_config(tle)
    kv, knobs = config.kv_cache_config, config.extended_runtime_perf_knob_config
    assert config.enable_chunked_context is False
    assert (kv.free_gpu_memory_fraction, kv.enable_block_reuse, kv.max_tokens) == (0.5, True, 4096)
    assert (knobs.multi_block_mode, knobs.cuda_graph_mode, knobs.enable_context_fmha_fp32_acc) == (False, True, True)


@pytest.mark.parametrize("runtime, message", [
    ({"kv_cache_fraction": 0.9}, r"field 'runtime': unknown options \['kv_cache_fraction'\] \(expected some of "),
    ({"kv_cache_free_gpu_memory_fraction": 1.5}, r"runtime.kv_cache_free_gpu_memory_fraction = 1.5, expected a number"),
    ({"enable_chunked_context": "yes"}, r"runtime.enable_chunked_context = 'yes', expected true or false"),
])
def test_bad_runtime_settings_are_refused_in_one_line_before_loading(engine_dir, fake_trtllm, runtime, message):
    set_manifest_runtime(engine_dir, runtime)
    with pytest.raises(CheckpointError, match=message) as err:
        open_executor(engine_dir)
    assert "\n" not in str(err.value) and "fathom-engine.json" in str(err.value)
    assert not [c for c in fake_trtllm.CALLS if c[0] == "Executor"]


def test_eos_and_stop_ids_are_stop_words_and_end_the_request_with_their_token(engine_dir, fake_trtllm):
    tle = fake_trtllm
    tle.SCRIPT = lambda prompt, generated, sampling: [40, 41, 7, 42][len(generated) % 4]
    ex = open_executor(engine_dir, eos_ids=(7,))
    events = collect(ex, [Request("a", [1, 2], SamplingParams(max_new_tokens=10, stop_token_ids=(99,)))])["a"]
    assert [(e.token_id, e.finish_reason) for e in events] == [(40, None), (41, None), (7, "stop")]
    assert enqueued(tle)[-1].stop_words == [[7], [99]] and enqueued(tle)[-1].end_id == -1
    ignored = collect(ex, [Request("b", [1, 2], SamplingParams(max_new_tokens=5, ignore_eos=True))])["b"]
    assert [e.token_id for e in ignored] == [40, 41, 7, 42, 40] and ignored[-1].finish_reason == "length"
    assert enqueued(tle)[-1].stop_words is None


def test_greedy_is_top_k_1_and_requests_without_a_seed_draw_their_own(engine_dir, fake_trtllm):
    tle = fake_trtllm
    ex = open_executor(engine_dir)
    collect(ex, [Request("g", [1, 2], SamplingParams(max_new_tokens=2)),
                 Request("n1", [4], SamplingParams(max_new_tokens=2, temperature=1.0)),
                 Request("n2", [4], SamplingParams(max_new_tokens=2, temperature=1.0))])
    g, n1, n2 = (r.sampling_config for r in enqueued(tle))
    assert g.top_k == 1 and g.beam_width == 1
    assert n1.seed is not None and n2.seed is not None and n1.seed != n2.seed
    assert (n1.temperature, n1.top_k, n1.top_p) == (1.0, 0, 1.0)


def test_cancel_calls_cancel_request_and_ends_only_that_request(engine_dir, fake_trtllm):
    tle = fake_trtllm
    ex = open_executor(engine_dir, eos_ids=())
    for rid, p in (("a", [1, 2]), ("b", [3])):
        ex.submit(Request(rid, p, SamplingParams(max_new_tokens=6)))
    got: dict[str, list] = {}
    steps = 0
    while ex.has_pending():
        if steps == 2:
            ex.cancel("a")
            ex.cancel("a")  # twice: one cancel_request
        for ev in ex.step():
            got.setdefault(ev.request_id, []).append(ev)
        steps += 1
    a_id = enqueued(tle)[0]
    assert [c for c in tle.CALLS if c[0] == "cancel_request"] == [("cancel_request", 1)] and a_id.input_token_ids == [1, 2]
    assert [e.finish_reason for e in got["a"]] == [None, None, "cancelled"] and got["a"][-1].token_id is None
    assert [e.token_id for e in got["b"]] == script_tokens(tle, [3], 6)
    ex.cancel("a")  # finished: nothing to cancel
    ex.cancel("unknown")
    assert len([c for c in tle.CALLS if c[0] == "cancel_request"]) == 1


def test_max_seq_len_caps_requests_like_the_other_executors(engine_dir, fake_trtllm):
    ex = open_executor(engine_dir, eos_ids=(), max_seq_len=64)
    with pytest.raises(FathomError, match="prompt has 64 tokens, max_seq_len is 64"):
        ex.submit(Request("long", [1] * 64, SamplingParams()))
    events = collect(ex, [Request("capped", [1] * 60, SamplingParams(max_new_tokens=100))])["capped"]
    assert len(events) == 4 and events[-1].finish_reason == "length"
    assert enqueued(fake_trtllm)[-1].max_tokens == 4


def test_kv_capacity_comes_from_the_executors_iteration_stats(engine_dir, fake_trtllm):
    tle = fake_trtllm
    set_manifest_runtime(engine_dir, {"max_tokens_in_paged_kv_cache": 1000})
    ex = open_executor(engine_dir, eos_ids=())
    assert ex.kv_usage().capacity_tokens is None  # no iteration yet
    ex.submit(Request("a", [1] * 40, SamplingParams(max_new_tokens=3)))
    ex.step()
    usage = ex.kv_usage()
    assert usage.capacity_tokens == 32 * 32  # 1000 tokens -> 32 blocks of tokens_per_block 32
    assert usage.used_tokens == 2 * 32 and usage.used_fraction == 2 / 32
    assert ex.describe()["kv_capacity_tokens"] == 1024
    assert tle.POOL_BLOCKS * 32 != usage.capacity_tokens


def test_an_error_response_ends_that_request_only(engine_dir, fake_trtllm, caplog):
    ex = open_executor(engine_dir, eos_ids=())
    ex.submit(Request("bad", [1, 2], SamplingParams(max_new_tokens=4)))
    ex.submit(Request("good", [3], SamplingParams(max_new_tokens=4)))
    ex.step()
    ex.executor.fail_request(1, "Encountered an error in forwardAsync function")
    with caplog.at_level(logging.ERROR, logger="fathom.trtllm"):
        events = collect(ex, [])
    assert [(e.token_id, e.finish_reason) for e in events["bad"]] == [(None, "abort")]
    assert "request bad: tensorrt_llm: Encountered an error in forwardAsync function" in caplog.text
    assert len(events["good"]) == 3 and events["good"][-1].finish_reason == "length"
    assert not ex.has_pending()


def test_logprobs_are_refused_at_submit_and_the_request_id_stays_free(engine_dir, fake_trtllm):
    ex = open_executor(engine_dir, eos_ids=())
    with pytest.raises(FathomError, match="^request a: logprobs: not supported by the trtllm executor$"):
        ex.submit(Request("a", [1, 2], SamplingParams(max_new_tokens=3, logprobs=0)))
    assert not ex.has_pending() and not enqueued(fake_trtllm)
    events = collect(ex, [Request("a", [1, 2], SamplingParams(max_new_tokens=3))])["a"]
    assert [e.token_id for e in events] == script_tokens(fake_trtllm, [1, 2], 3)
    assert all(e.logprob is None and e.top_logprobs == () for e in events)


def test_engine_for_another_version_or_gpu_is_refused_before_loading(engine_dir, fake_trtllm, monkeypatch):
    import tensorrt_llm

    from fathom.runtime.trtllm_executor import TrtllmExecutor

    with pytest.raises(EngineCompatError, match="this GPU is NVIDIA L40S"):
        TrtllmExecutor(engine_dir, resolve_model(str(engine_dir)).config, gpu_name="NVIDIA L40S")
    monkeypatch.setattr(tensorrt_llm, "__version__", "1.3.0")
    with pytest.raises(EngineCompatError, match="built with tensorrt_llm 1.2.1, but 1.3.0 is installed"):
        open_executor(engine_dir)
    assert not [c for c in fake_trtllm.CALLS if c[0] == "Executor"]
    (engine_dir / "fathom-engine.json").unlink()
    with pytest.raises(CheckpointError, match="no engine manifest"):
        open_executor(engine_dir)


def test_auto_picks_trtllm_for_an_engine_dir(engine_dir, fake_trtllm, monkeypatch):
    import fathom.runtime.trtllm_executor as te

    monkeypatch.setattr(te, "local_gpu_name", lambda: H100)
    ex = create_executor("auto", resolve_model(str(engine_dir)), max_seq_len=128)
    info = ex.describe()
    assert info["executor"] == "trtllm" and info["tensorrt_llm_version"] == "1.2.1" and info["max_seq_len"] == 128
    assert info["api"] == "tensorrt_llm.bindings.executor.Executor" and info["communication_mode"] == "leader"
    assert info["runtime_args"]["enable_chunked_context"] is True


def test_without_tensorrt_llm_the_error_says_what_to_install(engine_dir, monkeypatch):
    from fathom.build.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    with pytest.raises(MissingDependencyError, match="tensorrt_llm is not importable"):
        open_executor(engine_dir)


def test_engine_loading_logs_written_to_fd_1_go_to_stderr(engine_dir, fake_trtllm, capfd):
    capfd.readouterr()
    open_executor(engine_dir).close()
    out, err = capfd.readouterr()
    assert out == "" and "[TensorRT-LLM][INFO] Loaded engine" in err


def test_chunked_context_on_an_engine_without_paged_context_fmha_is_refused_not_switched_off(engine_dir, fake_trtllm):
    from fathom.build.errors import PlanError

    config = engine_dir / "config.json"
    engine = json.loads(config.read_text())
    engine["build_config"]["plugin_config"]["use_paged_context_fmha"] = False  # as build() leaves an INT8-KV engine
    config.write_text(json.dumps(engine))
    set_manifest_runtime(engine_dir, {"enable_chunked_context": True})
    with pytest.raises(PlanError, match="runtime enable_chunked_context=true needs an engine with use_paged_context_fmha"):
        open_executor(engine_dir)
    assert not [c for c in fake_trtllm.CALLS if c[0] == "Executor"]


def test_a_final_response_without_a_known_finish_reason_aborts_that_request(engine_dir, fake_trtllm, caplog):
    tle = fake_trtllm
    ex = open_executor(engine_dir, eos_ids=())
    ex.submit(Request("a", [1, 2], SamplingParams(max_new_tokens=4)))
    odd = tle.Response(1, tle.Result([[5]], True, [tle.FinishReason.NOT_FINISHED]))
    with caplog.at_level(logging.ERROR, logger="fathom.trtllm"):
        events = ex._events(odd, 0.0)
    assert [(e.token_id, e.finish_reason) for e in events] == [(5, "abort")]
    assert "request a: tensorrt_llm ended it with finish reason NOT_FINISHED" in caplog.text
