"""`fathom serve` on the embedded demo model: a real server on a loopback port, driven with the
official `openai` client (and raw HTTP for the error cases)."""

import json
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve_harness import QUESTION, demo_state, running


@pytest.fixture(scope="module")
def served():
    state = demo_state()
    with running(state) as (url, _):
        yield url, state


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def chat(client, **kw):
    return client.chat.completions.create(model="demo", messages=[{"role": "user", "content": QUESTION}], **kw)


def test_models_and_health(served, client):
    assert [m.id for m in client.models.list().data] == ["demo"]
    assert httpx.get(served[0] + "/health").status_code == 200


def test_chat_splits_reasoning_from_the_answer_and_counts_usage(client):
    r = chat(client, temperature=0, max_tokens=200)
    msg = r.choices[0].message
    assert msg.content == "The answer is \\boxed{525}." and r.choices[0].finish_reason == "stop"
    assert "457" in msg.model_extra["reasoning_content"] and "</think>" not in msg.content
    assert r.usage.completion_tokens > 10 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_chat_equals_the_non_streamed_one_and_ends_with_usage(client):
    whole = chat(client, temperature=0, max_tokens=200)
    chunks = list(chat(client, temperature=0, max_tokens=200, stream=True, stream_options={"include_usage": True}))
    reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content
    assert reasoning == whole.choices[0].message.model_extra["reasoning_content"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_stream_and_not_agree_and_max_tokens_ends_with_length(client):
    prompt = "What is 12 + 34? Please reason step by step, and put your final answer within \\boxed{}."
    whole = client.completions.create(model="demo", prompt=prompt, max_tokens=7, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="demo", prompt=prompt, max_tokens=7, temperature=0, stream=True))
    assert whole.choices[0].text == streamed and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 7


def test_stop_strings_cut_the_text_where_they_begin(client):
    r = chat(client, temperature=0, max_tokens=200, stop=["carry"])
    assert r.choices[0].finish_reason == "stop" and "carry" not in r.choices[0].message.model_extra["reasoning_content"]
    full = chat(client, temperature=0, max_tokens=200).choices[0].message.model_extra["reasoning_content"]
    assert full.startswith(r.choices[0].message.model_extra["reasoning_content"]) and "carry" in full


def test_n_choices_with_a_seed_are_reproducible_and_share_the_prompt_blocks(served, client):
    hits = served[1].engine.executor.stats["prefix_hit_tokens"]
    a = chat(client, n=3, temperature=1.0, seed=7, max_tokens=40)
    block = served[1].engine.executor.cache.block_size
    full_blocks = a.usage.prompt_tokens // block * block
    # choices 2 and 3 at least find every full block of the prompt that choice 1 computed
    assert served[1].engine.executor.stats["prefix_hit_tokens"] - hits >= 2 * full_blocks > 0
    b = chat(client, n=3, temperature=1.0, seed=7, max_tokens=40)
    assert [c.index for c in a.choices] == [0, 1, 2]
    texts = [(c.message.model_extra["reasoning_content"], c.message.content) for c in a.choices]
    assert texts == [(c.message.model_extra["reasoning_content"], c.message.content) for c in b.choices]
    assert a.usage.completion_tokens > 3 * 3  # three choices, each several tokens


def test_a_prompt_list_gets_one_choice_per_prompt_and_n(client):
    r = client.completions.create(model="demo", prompt=["What is 1 + 2?", "What is 3 + 4?"], n=2, max_tokens=3,
                                  temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text and r.choices[2].text == r.choices[3].text


def _post(url, path, body, **kw):
    return httpx.post(url + path, content=body if isinstance(body, (bytes, str)) else json.dumps(body), **kw)


@pytest.mark.parametrize("body, status, needle", [
    (b"{not json", 400, "not valid JSON"),
    ({"model": "demo", "messages": "hi"}, 400, "messages"),
    ({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
    ({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, 400,
     "exceeds this model's context length of 256 tokens"),
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "does not exist"),
    ({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, 400, "requires logprobs"),
])
def test_bad_requests_get_an_openai_error_and_the_server_keeps_serving(served, body, status, needle):
    r = _post(served[0], "/v1/chat/completions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and set(err) == {"message", "type", "param", "code"}
    assert "Traceback" not in r.text
    assert httpx.get(served[0] + "/health").status_code == 200


def test_unknown_routes_and_oversized_bodies(served):
    url, state = served
    r = httpx.get(url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    big = {"model": "demo", "prompt": "x" * (state.config.max_body_bytes + 1)}
    r = _post(url, "/v1/completions", big)
    assert r.status_code == 413 and "exceeds the server's limit" in r.json()["error"]["message"]


def test_a_full_queue_answers_429(served, client):
    url, state = served
    config = state.config
    state.config = type(config)(**{**config.__dict__, "max_queue": 0})
    try:
        r = _post(url, "/v1/completions", {"model": "demo", "prompt": "1+1", "max_tokens": 2})
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    finally:
        state.config = config
    assert client.completions.create(model="demo", prompt="1+1", max_tokens=2).choices[0].text is not None


def test_a_client_that_disconnects_frees_its_request(served):
    url, state = served
    body = {"model": "demo", "prompt": "What is 1 + 1?", "max_tokens": 200, "stream": True, "temperature": 1.0}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
        next(r.iter_lines())
    deadline = time.monotonic() + 20
    while (state.engine.stats.running or state.engine.stats.waiting) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.engine.stats.running == 0 and state.engine.stats.waiting == 0
    assert state.engine.executor.kv_usage().used_tokens == 0


def test_metrics_count_requests_tokens_and_latency(served, client):
    chat(client, temperature=0, max_tokens=50)
    text = httpx.get(served[0] + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {(s.labels["endpoint"], s.labels["status"]): s.value for s in families["fathom_requests"].samples
                if s.name == "fathom_requests_total"}
    assert requests[("/v1/chat/completions", "200")] >= 1
    assert next(s.value for s in families["fathom_generation_tokens"].samples if s.name.endswith("_total")) > 0
    ttft_count = next(s.value for s in families["fathom_time_to_first_token_seconds"].samples if s.name.endswith("_count"))
    assert ttft_count >= 1
    assert "fathom_num_requests_running" in families and "fathom_kv_cache_usage_ratio" in families


def test_an_api_key_is_required_when_set_and_health_stays_open():
    state = demo_state(api_key="s3cret")
    with running(state) as (url, _):
        assert httpx.get(url + "/health").status_code == 200
        r = httpx.get(url + "/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in ok.models.list().data] == ["demo"]


def test_sigterm_drains_running_requests_and_exits_zero(tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-c", "from fathom.runtime.cli import main; main()", "serve", "demo",
                             "--port", str(port),
                             "--max-seq-len", "4096", "--grace-period", "1", "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        body = {"model": "demo", "prompt": "1", "max_tokens": 4000, "stream": True, "temperature": 1.0,
                "seed": 1}
        finish = None
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)
            proc.send_signal(signal.SIGTERM)
            for line in lines:
                if line.startswith("data: {"):
                    finish = json.loads(line[6:])["choices"][0]["finish_reason"] or finish
                if line == "data: [DONE]":
                    break
        assert finish in ("abort", "stop", "length")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)


def test_logprobs_name_each_generated_token_with_its_top_alternatives(client):
    r = chat(client, temperature=0, max_tokens=20, logprobs=True, top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens - (r.choices[0].finish_reason == "stop")
    for e in entries:
        assert len(e.top_logprobs) == 3 and e.logprob <= 0
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == pytest.approx(e.logprob)
    c = client.completions.create(model="demo", prompt="What is 1 + 2?", max_tokens=5, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert "".join(lp.tokens) == c.choices[0].text and len(lp.top_logprobs[0]) == 2
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]


def test_token_id_prompts_are_checked_against_the_model_vocabulary(served, client):
    vocab = served[1].engine.executor.config.vocab_size
    ok = client.completions.create(model="demo", prompt=[1, 2, vocab - 1], max_tokens=2, temperature=0)
    assert ok.usage.prompt_tokens == 3
    r = _post(served[0], "/v1/completions", {"model": "demo", "prompt": [1, vocab], "max_tokens": 2})
    assert r.status_code == 400 and f"token id {vocab} outside the vocabulary" in r.json()["error"]["message"]


def test_metrics_carry_gpu_memory_power_and_energy_from_nvml(monkeypatch):
    from fakes import pynvml as fake

    from fathom.runtime.nvml_devices import open_visible_gpus
    from fathom.runtime.serve.metrics import ServerMetrics

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake.configure([fake.FakeDevice(mem_used_bytes=[3 * 2**30], power_mw=[250_000], energy_start_mj=7_000_000)])
    try:
        state = demo_state()
        state.metrics = ServerMetrics(state.engine, open_visible_gpus(fake))
        with running(state) as (url, _):
            families = {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
        value = lambda name: families[name].samples[0]  # noqa: E731
        assert value("fathom_gpu_memory_used_bytes").value == 3 * 2**30
        assert value("fathom_gpu_power_watts").value == 250.0 and value("fathom_gpu_memory_used_bytes").labels == {"gpu": "0"}
        assert value("fathom_gpu_energy_joules").value >= 7_000.0
    finally:
        fake.configure(library=False)
