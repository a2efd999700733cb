"""Streaming client for OpenAI-compatible /v1/completions (vLLM, SGLang, trtllm-serve).

Standard library only. One request = one POST with `stream: true`; the server answers with
server-sent events `data: {...}` and ends with `data: [DONE]`. The arrival time of every chunk that
carries text is recorded (vLLM `benchmarks/lib/endpoint_request_func.py` times chunks the same
way); token counts come from the `usage` chunk when the server sends one
(`stream_options.include_usage`), else the number of text chunks stands in for output tokens.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from urllib.parse import urlsplit

from fathom.build.errors import FathomError

from .executor import now
from .metrics import RequestTiming


def completions_url(endpoint: str) -> str:
    """`http://host:8000`, `.../v1` or `.../v1/completions` -> the completions URL."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FathomError(f"--endpoint {endpoint!r}: expected an http(s):// URL, e.g. http://127.0.0.1:8000")
    path = parts.path.rstrip("/")
    if not path.endswith("/completions"):
        path += "/completions" if path.endswith("/v1") else "/v1/completions"
    return f"{parts.scheme}://{parts.netloc}{path}"


def completion_body(model: str, prompt: str | list[int], max_tokens: int, ignore_eos: bool = True,
                    temperature: float = 0.0) -> dict:
    # ignore_eos is a vLLM / trtllm-serve extension that forces exactly max_tokens outputs.
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
            "ignore_eos": ignore_eos, "stream": True, "stream_options": {"include_usage": True}}


def stream_completion(url: str, body: dict, request_id: str, timeout_s: float = 600.0,
                      start_s: float | None = None) -> RequestTiming:
    """POST `body` to `url` and time the streamed answer. Failures land in `.error`, never raise."""
    parts = urlsplit(url)
    timing = RequestTiming(request_id, start_s if start_s is not None else now())
    if isinstance(body.get("prompt"), list):
        timing.prompt_tokens = len(body["prompt"])
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname, parts.port, timeout=timeout_s)
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
    try:
        conn.request("POST", parts.path, json.dumps(body).encode(), headers)
        response = conn.getresponse()
        if response.status != 200:
            detail = response.read(300).decode(errors="replace").strip().replace("\n", " ")
            timing.error = f"HTTP {response.status}: {detail}"
            return timing
        _read_events(response, timing)
    except (OSError, socket.timeout, http.client.HTTPException) as e:
        timing.error = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    timing.end_s = now()
    if timing.error is None and not timing.token_times_s:
        timing.error = "the stream ended without any text"
    return timing


def _read_events(response, timing: RequestTiming) -> None:
    for raw in response:  # one SSE line at a time, as the server flushes them
        line = raw.decode(errors="replace").strip()
        if not line.startswith("data:"):
            continue  # blank separators, comments (":"), event names
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            timing.error = f"invalid JSON in stream: {data[:80]}"
            return
        if "error" in chunk:
            err = chunk["error"]
            timing.error = str(err.get("message", err) if isinstance(err, dict) else err)
            return
        choices = chunk.get("choices") or []
        if choices and choices[0].get("text"):
            timing.token_times_s.append(now())
        usage = chunk.get("usage")
        if usage:
            timing.prompt_tokens = usage.get("prompt_tokens", timing.prompt_tokens)
            timing.output_tokens = usage.get("completion_tokens")
    timing.error = timing.error or "the stream ended without 'data: [DONE]'"
