import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes import pynvml as fake_nvml

from fathom.build.errors import ConfigError
from fathom.runtime import nvml_library
from fathom.runtime.cli import main
from fathom.runtime.endpoint import completions_url
from fathom.runtime.executor import TokenEvent
from fathom.runtime.workload import Prompt, WorkloadSpec, arrival_offsets_s, drive_executor, file_prompts


class ScriptedExecutor:
    """One token per running request per step, at a fake clock; records how many ran together."""

    name = "scripted"

    def __init__(self):
        self.running: dict[str, list] = {}
        self.clock = 100.0
        self.max_running = 0
        self.steps = 0
        self.submitted_at_step: dict[str, int] = {}

    def submit(self, request):
        self.running[request.request_id] = [request.params.max_new_tokens, 0]
        self.submitted_at_step[request.request_id] = self.steps

    def has_pending(self):
        return bool(self.running)

    def step(self):
        self.max_running = max(self.max_running, len(self.running))
        self.steps += 1
        self.clock += 0.01
        events = []
        for rid, state in list(self.running.items()):
            state[1] += 1
            done = state[1] >= state[0]
            events.append(TokenEvent(rid, 7, self.clock, "length" if done else None))
            if done:
                del self.running[rid]
        return events


def prompts(n, out_len=3):
    return [Prompt([1, 2, 3], None, out_len) for _ in range(n)]


def test_static_batches_run_in_waves_and_concurrency_tops_up():
    ex = ScriptedExecutor()
    timings = drive_executor(ex, prompts(5), WorkloadSpec(num_requests=5, batch_size=2), "t")
    assert ex.max_running == 2 and [len(t.token_times_s) for t in timings] == [3] * 5
    assert list(ex.submitted_at_step.values()) == [0, 0, 3, 3, 6]  # a wave starts when the last one ended
    ex = ScriptedExecutor()
    varied = [Prompt([1], None, n) for n in (1, 4, 4, 4)]
    timings = drive_executor(ex, varied, WorkloadSpec(num_requests=4, concurrency=2), "t")
    assert ex.max_running == 2
    assert list(ex.submitted_at_step.values()) == [0, 0, 1, 4]  # a slot is refilled as soon as it frees
    t = timings[1]
    assert t.token_times_s == sorted(t.token_times_s) and t.prompt_tokens == 1 and t.end_s == t.token_times_s[-1]


def test_under_a_request_rate_requests_start_at_their_scheduled_arrivals():
    cfg = WorkloadSpec(num_requests=6, request_rate=2000.0, seed=5)
    timings = drive_executor(ScriptedExecutor(), prompts(6), cfg, "t")
    starts = [t.start_s - timings[0].start_s for t in timings]
    assert starts == pytest.approx(arrival_offsets_s(6, 2000.0, 5))
    assert all(len(t.token_times_s) == 3 for t in timings)


def test_poisson_arrivals_are_seeded_with_the_requested_mean_rate():
    a = arrival_offsets_s(2000, 4.0, seed=1)
    assert a == arrival_offsets_s(2000, 4.0, seed=1) and a != arrival_offsets_s(2000, 4.0, seed=2)
    assert a[0] == 0 and (a[-1] / 1999) == pytest.approx(0.25, rel=0.1)
    assert arrival_offsets_s(3, None, 0) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=2, concurrency=2), "excludes"),
    (dict(request_rate=0.0), "request-rate"),
    (dict(input_len=0), "--input-len"),
    (dict(dataset="missing.jsonl"), "--dataset"),
])
def test_bad_bench_options_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        WorkloadSpec(**kwargs)


def test_jsonl_dataset_prompts_are_validated_and_cycled(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hi"}\n\n{"prompt_ids": [1, 2], "output_len": 5}\n')
    got = file_prompts(path, 3, default_output_len=9)
    assert [(p.ids, p.text, p.output_len) for p in got] == [(None, "hi", 9), ([1, 2], None, 5), (None, "hi", 9)]
    path.write_text('{"text": "x"}\n')
    with pytest.raises(ConfigError, match=r"p\.jsonl:1: expected"):
        file_prompts(path, 1, 4)


def run_cli(args):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_bench_cli_json_record_with_a_fake_gpu(tmp_path, monkeypatch):
    fake_nvml.configure([fake_nvml.FakeDevice()])
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml)
    monkeypatch.setattr(nvml_library, "_said", set())
    out = tmp_path / "runs.jsonl"
    try:
        data = run_cli(["bench", "random:tiny", "--num-requests", "4", "--input-len", "8", "--output-len", "4",
                        "--batch-size", "2", "--profile-interval-ms", "5", "--timeseries", "--out", str(out), "--json"])
    finally:
        fake_nvml.configure(library=False)
    rec = data["record"]
    m = rec["metrics"]
    assert data["records_file"] == str(out) and len(out.read_text().splitlines()) == 1
    assert (m["completed"], m["total_input_tokens"], m["total_output_tokens"]) == (4, 32, 16)
    assert m["mean_ttft_ms"] > 0 and m["mean_tpot_ms"] > 0 and m["energy_per_output_token_j"] > 0
    assert m["peak_gpu_mem_used_bytes"] == fake_nvml.FakeDevice().mem_used_bytes[0]
    assert rec["profiler"]["status"] == "ok" and [w["name"] for w in rec["profiler"]["windows"]] == ["warmup", "benchmark"]
    assert rec["environment"]["gpu_name"] == "NVIDIA H100 80GB HBM3" and rec["environment"]["device"] == "cpu"
    assert rec["roofline"] is None  # a CPU executor is not measured against the GPU's roofline
    assert rec["parameters"]["warmup"] is None and rec["model"]["config"]["hidden_size"] == 64
    assert (tmp_path / rec["timeseries_path"]).exists()


def test_bench_cli_text_summary_without_profiler(tmp_path):
    out = tmp_path / "runs.jsonl"
    res = CliRunner().invoke(main, ["bench", "random:tiny", "--num-requests", "2", "--input-len", "4", "--output-len",
                                    "2", "--no-profile", "--slo-ttft-ms", "60000", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "TTFT" in res.output and "profiler off" in res.output and f"record appended to {out}" in res.output
    rec = json.loads(out.read_text())
    assert rec["profiler"] is None and rec["metrics"]["request_goodput_per_s"] > 0


class FakeOpenAI(BaseHTTPRequestHandler):
    """Streams `max_tokens` one-character chunks, then usage and [DONE]; status 500 when told to."""

    bodies: list = []
    fail = False
    send_usage = True

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append((self.path, body))
        if self.fail:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for _ in range(body["max_tokens"]):
            self.wfile.write(b'data: {"choices": [{"index": 0, "text": "x"}]}\n\n')
            self.wfile.flush()
        if self.send_usage:
            usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": body["max_tokens"]}
            self.wfile.write(f'data: {json.dumps({"choices": [], "usage": usage})}\n\n'.encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    FakeOpenAI.bodies, FakeOpenAI.fail, FakeOpenAI.send_usage = [], False, True
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_bench_endpoint_against_a_loopback_openai_server(server, tmp_path):
    data = run_cli(["bench", "served-model", "--endpoint", server, "--request-timeout-s", "30", "--num-requests", "4", "--warmup", "1",
                    "--input-len", "5", "--output-len", "3", "--concurrency", "2", "--no-profile",
                    "--out", str(tmp_path / "r.jsonl"), "--json"])
    m = data["record"]["metrics"]
    assert (m["completed"], m["total_input_tokens"], m["total_output_tokens"]) == (4, 20, 12)
    assert m["mean_itl_ms"] is not None and m["p99_e2el_ms"] >= m["p99_ttft_ms"]
    assert data["record"]["parameters"]["output_tokens_source"] == "usage"
    assert data["record"]["environment"]["executor"] == "endpoint"
    assert len(FakeOpenAI.bodies) == 5  # warmup + measured
    path, body = FakeOpenAI.bodies[-1]
    assert path == "/v1/completions" and body["model"] == "served-model" and body["stream"] is True
    assert len(body["prompt"]) == 5 and body["max_tokens"] == 3 and body["ignore_eos"] is True


def test_endpoint_without_usage_counts_chunks(server, tmp_path):
    FakeOpenAI.send_usage = False
    data = run_cli(["bench", "m", "--endpoint", server + "/v1", "--request-timeout-s", "30", "--num-requests", "2", "--warmup", "0",
                    "--output-len", "4", "--input-len", "2", "--no-profile", "--out", str(tmp_path / "r.jsonl"), "--json"])
    assert data["record"]["metrics"]["total_output_tokens"] == 8
    assert data["record"]["parameters"]["output_tokens_source"] == "chunks"


def test_a_failing_endpoint_is_a_one_line_error(server, tmp_path):
    FakeOpenAI.fail = True
    res = CliRunner().invoke(main, ["bench", "m", "--endpoint", server, "--request-timeout-s", "30", "--num-requests", "2", "--warmup", "0",
                                    "--no-profile", "--out", str(tmp_path / "r.jsonl")])
    assert res.exit_code == 1 and "all 2 requests failed; first error: HTTP 500: boom" in res.output
    assert not (tmp_path / "r.jsonl").exists()


def test_completions_url_accepts_base_v1_or_full_paths():
    assert completions_url("http://h:8000") == "http://h:8000/v1/completions"
    assert completions_url("http://h:8000/v1/") == "http://h:8000/v1/completions"
    assert completions_url("https://h/x/v1/completions") == "https://h/x/v1/completions"
    with pytest.raises(Exception, match="http"):
        completions_url("h:8000")


def test_bench_without_out_writes_under_fathom_runs_in_the_cwd_and_nothing_in_the_package(tmp_path, monkeypatch):
    import fathom.build
    import fathom.engine
    import fathom.profiles
    import fathom.runtime

    def package_files() -> set:
        roots = [p for pkg in (fathom.build, fathom.engine, fathom.profiles, fathom.runtime) for p in pkg.__path__]
        return {f for root in roots for f in Path(root).rglob("*") if "__pycache__" not in f.parts}

    before = package_files()
    fake_nvml.configure([fake_nvml.FakeDevice()])
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml)
    monkeypatch.setattr(nvml_library, "_said", set())
    monkeypatch.delenv("FATHOM_RESULTS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    try:
        data = run_cli(["bench", "random:tiny", "--num-requests", "2", "--input-len", "4", "--output-len", "2",
                        "--profile-interval-ms", "5", "--timeseries", "--json"])
    finally:
        fake_nvml.configure(library=False)
    written = Path(data["records_file"])
    assert written.parent == tmp_path / "fathom-runs" and written.name.endswith("-nvidia-h100-80gb-hbm3.jsonl")
    assert [json.loads(line)["record_id"] for line in written.read_text().splitlines()] == [data["record"]["record_id"]]
    assert (written.parent / data["record"]["timeseries_path"]).is_file()
    assert package_files() == before
