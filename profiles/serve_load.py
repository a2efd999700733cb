"""Load check of `fathom serve` on the embedded demo model, loopback only, bounded in count and time.

64 concurrent streaming chat requests (greedy, distinct held-out problems) against one server; each
answer must equal the same request sent alone; the server must be healthy afterwards. Then
`fathom bench --endpoint` against the server and in-process `fathom bench` on the same executor,
same workload: the throughput ratio is the server's overhead. Writes one JSON record.

    python profiles/serve_load.py --out profiles/results/serve_load_vm.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from fathom.runtime.cli.common import open_runtime
from fathom.runtime.serve.app import ServerConfig, ServerState
from fathom.runtime.serve.engine import EngineLoop
from fathom.runtime.serve.metrics import ServerMetrics
from fathom.runtime.serve.runner import make_server
from fathom.runtime.task_eval import heldout_problems

CONCURRENCY = 64
REQUEST_TIMEOUT_S = 120
MAX_SEQ_LEN = 512


def start_server(max_num_seqs: int):
    _, ex, tok = open_runtime("demo", "torch", "float32", "cpu", None, MAX_SEQ_LEN, 1,
                              max_num_seqs=max_num_seqs, prefix_reuse=True)
    engine = EngineLoop(ex)
    state = ServerState(ServerConfig("demo", MAX_SEQ_LEN), engine, tok, ServerMetrics(engine, None), ex.name)
    server = make_server(state, "127.0.0.1", 0, "warning", 5.0)
    engine.start()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server, thread, state


def stream_chat(url: str, question: str) -> dict:
    body = {"model": "demo", "messages": [{"role": "user", "content": question}], "temperature": 0,
            "max_tokens": 200, "stream": True}
    start = time.perf_counter()
    times, text = [], ""
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=REQUEST_TIMEOUT_S) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"]
            piece = (delta.get("reasoning_content") or "") + "|" + (delta.get("content") or "")
            if piece != "|":
                times.append(time.perf_counter() - start)
                text += piece
    return {"text": text, "ttft_s": times[0] if times else None,
            "tpot_s": (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None,
            "e2e_s": time.perf_counter() - start}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def bench(args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.jsonl"
        cmd = [sys.executable, "-c", "from fathom.runtime.cli import main; main()", "bench", *args, "--out", str(out)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        return json.loads(out.read_text().splitlines()[-1])["metrics"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    questions = [q.user_message for q in heldout_problems(CONCURRENCY)]
    url, server, thread, state = start_server(max_num_seqs=CONCURRENCY)
    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            loaded = list(pool.map(lambda q: stream_chat(url, q), questions))
        wall_s = time.perf_counter() - t0
        alone = [stream_chat(url, q) for q in questions]
        healthy = httpx.get(url + "/health").status_code == 200
        workload = ["--num-requests", "32", "--concurrency", "8", "--input-len", "32", "--output-len", "64"]
        via_server = bench(["demo", "--endpoint", url, *workload])
    finally:
        server.should_exit = True
        thread.join(30)
        state.engine.stop()
    in_process = bench(["demo", "--executor", "torch", "--dtype", "float32", "--device", "cpu",
                        "--max-seq-len", str(MAX_SEQ_LEN), *workload])
    ttft = [r["ttft_s"] for r in loaded if r["ttft_s"] is not None]
    tpot = [r["tpot_s"] for r in loaded if r["tpot_s"] is not None]
    key = "output_throughput_tok_per_s"
    record = {
        "what": "fathom serve under 64 concurrent streaming chat requests, demo model, greedy, loopback",
        "machine": {"host": platform.node(), "cpu_count": os.cpu_count(), "platform": platform.platform()},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "requests": len(loaded), "all_completed": all(r["text"] for r in loaded),
        "answers_equal_to_alone": sum(a["text"] == b["text"] for a, b in zip(loaded, alone)),
        "healthy_after": healthy, "wall_s": round(wall_s, 3),
        "ttft_ms": {q: round(pct(ttft, v) * 1000, 1) for q, v in (("p50", .5), ("p90", .9), ("p99", .99))},
        "tpot_ms": {q: round(pct(tpot, v) * 1000, 2) for q, v in (("p50", .5), ("p90", .9), ("p99", .99))},
        "mean_e2e_s": round(statistics.mean(r["e2e_s"] for r in loaded), 3),
        "bench_workload": " ".join(workload),
        "bench_output_tok_s": {"endpoint": via_server.get(key), "in_process": in_process.get(key)},
        "server_throughput_ratio": (round(via_server[key] / in_process[key], 3)
                                    if via_server.get(key) and in_process.get(key) else None),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
