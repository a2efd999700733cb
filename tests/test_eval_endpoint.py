"""fathom eval against an OpenAI-compatible endpoint: retries, malformed replies, token-id prompts,
no usage, failing fast. A scripted HTTP server on a loopback port stands in for the engine."""

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fathom.build.errors import FathomError
from fathom.runtime.eval.backends import EndpointBackend, SampleJob
from fathom.runtime.eval.data import Problem
from fathom.runtime.sampling import SamplingParams

PARAMS = SamplingParams(max_new_tokens=16, temperature=0.6, top_p=0.95)
OK = {"choices": [{"text": "so \\boxed{2}", "finish_reason": "stop"}], "usage": {"completion_tokens": 5}}


def jobs(count=1):
    return [SampleJob(Problem("1", "1+1?", "2"), k, [11, 12, 13], 100 + k) for k in range(count)]


@contextmanager
def scripted(reply):
    """A server answering every POST with reply(body) -> (status, bytes); yields (url, bodies seen)."""
    bodies = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append(body)
            status, data = reply(body)
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", bodies
    finally:
        server.shutdown()
        server.server_close()


def backend(url, **kw):
    return EndpointBackend(url, "m", concurrency=2, backoff_s=0.001, **kw)


def test_retries_429_and_5xx_then_succeeds():
    statuses = iter([503, 429])

    def reply(body):
        status = next(statuses, 200)
        return status, json.dumps(OK if status == 200 else {"error": "busy"}).encode()

    with scripted(reply) as (url, bodies):
        [out] = list(backend(url, attempts=3).generate(jobs(), PARAMS))
    assert len(bodies) == 3 and out.completion == "so \\boxed{2}" and out.output_tokens == 5


def test_gives_up_after_the_attempts_and_says_how_many():
    with scripted(lambda body: (503, b"overloaded")) as (url, bodies):
        with pytest.raises(FathomError) as e:
            list(backend(url, attempts=3).generate(jobs(), PARAMS))
    assert "HTTP 503" in str(e.value) and "after 3 attempts" in str(e.value) and len(bodies) == 3


def test_client_errors_are_not_retried():
    with scripted(lambda body: (404, b"no such model")) as (url, bodies):
        with pytest.raises(FathomError, match="HTTP 404: no such model"):
            list(backend(url).generate(jobs(), PARAMS))
    assert len(bodies) == 1


@pytest.mark.parametrize("data, message", [
    (b"<html>oops</html>", "HTTP 200 but the reply is not JSON"),
    (b'{"object": "text_completion"}', "the reply has no 'choices'"),
    (b'{"choices": []}', "the reply has no 'choices'"),
])
def test_malformed_replies_are_one_line_errors(data, message):
    with scripted(lambda body: (200, data)) as (url, _):
        with pytest.raises(FathomError) as e:
            list(backend(url).generate(jobs(), PARAMS))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_prompt_is_sent_as_token_ids_and_missing_usage_is_none():
    reply = {"choices": [{"text": "\\boxed{2}", "finish_reason": "length"}]}
    with scripted(lambda body: (200, json.dumps(reply).encode())) as (url, bodies):
        outs = list(backend(url).generate(jobs(2), PARAMS))
    assert [b["prompt"] for b in bodies] == [[11, 12, 13]] * 2
    assert sorted(b["seed"] for b in bodies) == [100, 101]
    assert [o.output_tokens for o in outs] == [None, None] and {o.finish_reason for o in outs} == {"length"}


def test_a_failure_does_not_wait_for_requests_in_flight():
    release, blocked_done = threading.Event(), threading.Event()

    def reply(body):
        if body["seed"] == 100:  # the slow request
            release.wait(10)
            blocked_done.set()
            return 200, json.dumps(OK).encode()
        return 400, b"bad request"

    with scripted(reply) as (url, _):
        with pytest.raises(FathomError, match="HTTP 400"):
            list(backend(url).generate(jobs(2), PARAMS))
        assert not blocked_done.is_set()  # the error came while the slow request still ran
        release.set()


@pytest.mark.parametrize("choice", [{"finish_reason": "stop"}, {"text": None, "finish_reason": "stop"},
                                    {"text": 5, "finish_reason": "stop"}])
def test_a_choice_without_text_is_an_error(choice):
    with scripted(lambda body: (200, json.dumps({"choices": [choice]}).encode())) as (url, _):
        with pytest.raises(FathomError) as e:
            list(backend(url).generate(jobs(), PARAMS))
    assert "choices[0].text must be a string" in str(e.value) and "\n" not in str(e.value)


def test_a_missing_finish_reason_leaves_truncation_unknown(tmp_path):
    from click.testing import CliRunner

    from fathom.runtime.cli import main
    from fathom.runtime.eval.run import EvalOptions, run_eval

    class Tokenizer:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "prompt"

        def encode(self, text, add_special_tokens=False):
            return [1, 2]

    reply = {"choices": [{"text": "\\boxed{2}"}], "usage": {"completion_tokens": 3}}
    out = tmp_path / "s.jsonl"
    with scripted(lambda body: (200, json.dumps(reply).encode())) as (url, _):
        [output] = list(backend(url).generate(jobs(), PARAMS))
        assert output.finish_reason is None
        result = run_eval(backend(url), Tokenizer(), [Problem("1", "1+1?", "2")],
                          EvalOptions(samples=2, max_new_tokens=16), out=str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["truncated"] for r in rows] == [None, None] and result["metrics"]["tokens"]["truncated_share"] is None
    text = CliRunner().invoke(main, ["eval", "--regrade", str(out)])
    assert text.exit_code == 0 and "truncated not recorded" in text.output
