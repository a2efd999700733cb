"""The TensorRT-LLM executor through the fake tensorrt_llm in tests/fakes (records calls, scripted tokens)."""

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


@pytest.fixture
def fake_trtllm(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKES))
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        monkeypatch.delitem(sys.modules, name)
    import tensorrt_llm
    import tensorrt_llm.runtime as rt

    monkeypatch.setattr(builder, "local_gpu_names", lambda: [])
    rt.CALLS.clear()
    yield rt
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[name]


@pytest.fixture
def engine_dir(tmp_path, fake_trtllm):
    """random:tiny -> fathom checkpoint -> engine built by the fake tensorrt_llm for an H100."""
    ckpt = tmp_path / "ckpt"
    convert(resolve_model("random:tiny"), ckpt, ConvertOptions(max_seq_len=256))
    return build_engine(prepare_build(ckpt, gpu="h100"), tmp_path / "engine")


def open_executor(engine_dir, eos_ids=(7,), **kw):
    from fathom.runtime.trtllm_executor import TrtllmExecutor

    return TrtllmExecutor(engine_dir, resolve_model(str(engine_dir)).config, eos_ids=list(eos_ids), gpu_name=H100, **kw)


def script_tokens(rt, prompt, n, sampling=None):
    """What the fake engine generates for `prompt` (no stop words), computed from its script."""
    out = []
    for _ in range(n):
        out.append(rt.SCRIPT(prompt, out, sampling or {"top_k": 1}))
    return out


def generate_calls(rt):
    return [c[1] for c in rt.CALLS if c[0] == "generate"]


def test_outputs_are_the_engine_tokens_without_the_prompt(engine_dir, fake_trtllm):
    rt = fake_trtllm
    rt.SCRIPT = lambda prompt, generated, sampling: 100 + len(prompt) + len(generated)
    ex = open_executor(engine_dir, eos_ids=())
    events = collect(ex, [Request("a", [1, 2, 3], SamplingParams(max_new_tokens=4)),
                          Request("b", [9] * 10, SamplingParams(max_new_tokens=4))])
    assert [e.token_id for e in events["a"]] == [103, 104, 105, 106]
    assert [e.token_id for e in events["b"]] == [110, 111, 112, 113]
    assert [e.finish_reason for e in events["a"]] == [None, None, None, "length"]
    assert all(x.time_s <= y.time_s for x, y in zip(events["a"], events["a"][1:]))
    (call,) = generate_calls(rt)  # same parameters: one batch
    assert call["batch_input_ids"] == [[1, 2, 3], [9] * 10] and call["streaming"] and call["return_dict"]
    assert call["output_sequence_lengths"] and call["max_new_tokens"] == 4


def test_runtime_options_come_from_the_engine_manifest(engine_dir, fake_trtllm):
    open_executor(engine_dir)
    (from_dir,) = [c[1] for c in fake_trtllm.CALLS if c[0] == "from_dir"]
    assert from_dir["engine_dir"] == str(engine_dir) and from_dir["rank"] == 0
    assert from_dir["enable_chunked_context"] is True and from_dir["kv_cache_free_gpu_memory_fraction"] == 0.9


def test_eos_and_stop_ids_are_stop_words_and_end_the_request_with_their_token(engine_dir, fake_trtllm):
    rt = fake_trtllm
    rt.SCRIPT = lambda prompt, generated, sampling: [40, 41, 7, 42][len(generated) % 4]
    ex = open_executor(engine_dir, eos_ids=(7,))
    events = collect(ex, [Request("a", [1, 2], SamplingParams(max_new_tokens=10, stop_token_ids=(99,)))])["a"]
    assert [(e.token_id, e.finish_reason) for e in events] == [(40, None), (41, None), (7, "stop")]
    call = generate_calls(rt)[-1]
    assert call["end_id"] == -1 and call["stop_words_list"] == [[[7], [99]]]
    ignored = collect(ex, [Request("b", [1, 2], SamplingParams(max_new_tokens=5, ignore_eos=True))])["b"]
    assert [e.token_id for e in ignored] == [40, 41, 7, 42, 40] and ignored[-1].finish_reason == "length"
    assert generate_calls(rt)[-1]["stop_words_list"] is None


def test_sampling_parameters_and_seeds_map_onto_generate_keywords(engine_dir, fake_trtllm):
    rt = fake_trtllm
    ex = open_executor(engine_dir)
    sampled = SamplingParams(max_new_tokens=3, temperature=0.6, top_p=0.95, top_k=20, seed=5)
    greedy = SamplingParams(max_new_tokens=3)
    events = collect(ex, [Request("s1", [1, 2], sampled), Request("g", [1, 2], greedy), Request("s2", [3], sampled),
                          Request("n1", [4], SamplingParams(max_new_tokens=3, temperature=1.0)),
                          Request("n2", [4], SamplingParams(max_new_tokens=3, temperature=1.0))])
    calls = generate_calls(rt)
    assert calls[0]["batch_input_ids"] == [[1, 2], [3]]  # one seed, one batch
    assert {k: calls[0][k] for k in ("temperature", "top_k", "top_p", "random_seed")} == \
        {"temperature": 0.6, "top_k": 20, "top_p": 0.95, "random_seed": 5}
    assert calls[1]["top_k"] == 1 and "temperature" not in calls[1]
    # No seed: each request gets its own random one, so each runs alone.
    assert calls[2]["batch_input_ids"] == [[4]] and calls[3]["batch_input_ids"] == [[4]]
    assert calls[2]["random_seed"] != calls[3]["random_seed"]
    want = script_tokens(rt, [1, 2], 3, {"top_k": 20, "random_seed": 5})
    assert [e.token_id for e in events["s1"]] == want


def test_different_max_new_tokens_run_as_separate_batches(engine_dir, fake_trtllm):
    ex = open_executor(engine_dir, eos_ids=())
    events = collect(ex, [Request("a", [1], SamplingParams(max_new_tokens=2)),
                          Request("b", [2], SamplingParams(max_new_tokens=5))])
    assert len(events["a"]) == 2 and len(events["b"]) == 5
    assert [c["max_new_tokens"] for c in generate_calls(fake_trtllm)] == [2, 5]


def test_cancel_ends_a_running_request_and_leaves_the_others(engine_dir, fake_trtllm):
    rt = fake_trtllm
    ex = open_executor(engine_dir, eos_ids=())
    for rid, p in (("a", [1, 2]), ("b", [3])):
        ex.submit(Request(rid, p, SamplingParams(max_new_tokens=6)))
    ex.submit(Request("w", [5], SamplingParams(max_new_tokens=2)))  # waits for the next batch
    got: dict[str, list] = {}
    steps = 0
    while ex.has_pending():
        if steps == 2:
            ex.cancel("a")
            ex.cancel("w")
        for ev in ex.step():
            got.setdefault(ev.request_id, []).append(ev)
        steps += 1
    assert got["a"][-1].finish_reason == "cancelled" and got["a"][-1].token_id is None
    assert len([e for e in got["a"] if e.token_id is not None]) == 2
    assert [e.token_id for e in got["b"]] == script_tokens(rt, [3], 6)
    assert [e.finish_reason for e in got["w"]] == ["cancelled"]
    assert len(generate_calls(rt)) == 1


def test_max_seq_len_caps_requests_like_the_other_executors(engine_dir, fake_trtllm):
    ex = open_executor(engine_dir, eos_ids=(), max_seq_len=64)
    with pytest.raises(FathomError, match="prompt has 64 tokens, max_seq_len is 64"):
        ex.submit(Request("long", [1] * 64, SamplingParams()))
    ex.submit(Request("capped", [1] * 60, SamplingParams(max_new_tokens=100)))
    first = ex.step()
    usage = ex.kv_usage()
    assert usage.used_tokens == 61 and usage.capacity_tokens is None and usage.used_fraction is None
    events = first + [e for e in collect(ex, [])["capped"]]
    assert len(events) == 4 and events[-1].finish_reason == "length"
    assert generate_calls(fake_trtllm)[-1]["max_new_tokens"] == 4


def test_logprobs_are_refused_at_submit_and_the_request_id_stays_free(engine_dir, fake_trtllm):
    ex = open_executor(engine_dir, eos_ids=())
    with pytest.raises(FathomError, match="^request a: logprobs: not supported by the trtllm executor$"):
        ex.submit(Request("a", [1, 2], SamplingParams(max_new_tokens=3, logprobs=0)))
    assert not ex.has_pending()
    events = collect(ex, [Request("a", [1, 2], SamplingParams(max_new_tokens=3))])["a"]
    assert [e.token_id for e in events] == script_tokens(fake_trtllm, [1, 2], 3)
    assert all(e.logprob is None and e.top_logprobs == () for e in events)
    assert len(generate_calls(fake_trtllm)) == 1


def test_engine_for_another_version_or_gpu_is_refused_before_loading(engine_dir, fake_trtllm, monkeypatch):
    import tensorrt_llm

    with pytest.raises(EngineCompatError, match="this GPU is NVIDIA L40S"):
        from fathom.runtime.trtllm_executor import TrtllmExecutor

        TrtllmExecutor(engine_dir, resolve_model(str(engine_dir)).config, gpu_name="NVIDIA L40S")
    monkeypatch.setattr(tensorrt_llm, "__version__", "1.3.0")
    with pytest.raises(EngineCompatError, match="built with tensorrt_llm 1.2.1, but 1.3.0 is installed"):
        open_executor(engine_dir)
    assert not [c for c in fake_trtllm.CALLS if c[0] == "from_dir"]
    (engine_dir / "fathom-engine.json").unlink()
    with pytest.raises(CheckpointError, match="no engine manifest"):
        open_executor(engine_dir)


def test_auto_picks_trtllm_for_an_engine_dir(engine_dir, fake_trtllm, monkeypatch):
    import fathom.runtime.trtllm_executor as te

    monkeypatch.setattr(te, "local_gpu_name", lambda: H100)
    ex = create_executor("auto", resolve_model(str(engine_dir)), max_seq_len=128)
    info = ex.describe()
    assert info["executor"] == "trtllm" and info["tensorrt_llm_version"] == "1.2.1" and info["max_seq_len"] == 128
    assert info["api"] == "ModelRunnerCpp.generate(streaming=True)"


def test_without_tensorrt_llm_the_error_says_what_to_install(engine_dir, monkeypatch):
    from fathom.build.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    with pytest.raises(MissingDependencyError, match="tensorrt_llm is not importable"):
        open_executor(engine_dir)


def test_fathom_serve_runs_an_engine_through_the_trtllm_executor(engine_dir, fake_trtllm):
    import httpx

    from fathom.build.sources import DEMO_DIR
    from fathom.runtime.chat import load_tokenizer
    from serve_harness import running, state_for

    tok = load_tokenizer(DEMO_DIR)
    state = state_for(open_executor(engine_dir, eos_ids=()), tok, 128)
    prompt = [5, 6, 7]
    with running(state) as (url, _):
        r = httpx.post(url + "/v1/completions", json={"model": "demo", "prompt": prompt, "max_tokens": 4,
                                                       "temperature": 0}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == tok.decode(script_tokens(fake_trtllm, prompt, 4))
        refused = httpx.post(url + "/v1/completions", json={"model": "demo", "prompt": prompt, "max_tokens": 4,
                                                             "logprobs": 1}, timeout=30)
        assert refused.status_code == 400 and "not supported by the trtllm executor" in refused.text
