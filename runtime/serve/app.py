"""The FastAPI application: OpenAI routes, API key, body and queue limits, errors, metrics.

Every error is an OpenAI-style body with its status (400 bad request, 401 key, 404 model or route,
413 body too large, 429 queue full, 503 draining, 500 with no detail); none carries a stack trace,
and the server keeps serving after each.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from contextlib import suppress
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fathom.build.errors import FathomError
from fathom.runtime.sampling import SamplingParams

from .engine import EngineLoop
from .generation import EngineFailed, GenerationRun
from .metrics import ServerMetrics
from .prompts import chat_jobs, completion_jobs, max_new_tokens
from .protocol import APIError, ChatCompletionRequest, CompletionRequest, validation_error
from .responses import (TokenText, chat_chunk, chat_delta_chunk, chat_response, completion_chunk,
                        completion_response, sse, usage_chunk)

log = logging.getLogger("fathom.serve")
DISCONNECT_POLL_S = 0.25


@dataclass(frozen=True)
class ServerConfig:
    served_model_name: str
    max_seq_len: int
    api_key: str | None = None
    max_queue: int = 256  # choices waiting for their first token before new requests get 429
    max_tokens_cap: int | None = None
    max_body_bytes: int = 8 << 20


@dataclass
class ServerState:
    config: ServerConfig
    engine: EngineLoop
    tokenizer: object
    metrics: ServerMetrics
    executor_name: str
    draining: bool = False
    token_text: TokenText = field(init=False)

    def __post_init__(self) -> None:
        self.token_text = TokenText(self.tokenizer)


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="fathom", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.fathom = state

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse(APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}").body(),
                            status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(APIError(500, "internal server error").body(), status_code=500)

    @app.middleware("http")
    async def _count(request: Request, call_next):
        response = await call_next(request)
        if request.url.path.startswith("/v1/"):
            state.metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    @app.get("/health")
    async def health():
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request):
        _authorize(state, request)
        c = state.config
        return {"object": "list", "data": [{"id": c.served_model_name, "object": "model", "created": 0,
                                            "owned_by": "fathom", "max_model_len": c.max_seq_len}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _parse(state, request, ChatCompletionRequest)
        jobs = await asyncio.to_thread(chat_jobs, state.tokenizer, body)
        return await _generate(state, request, body, jobs, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _parse(state, request, CompletionRequest)
        if body.echo:
            raise APIError(400, "echo: not supported by this server", "echo")
        jobs = await asyncio.to_thread(completion_jobs, state.tokenizer, body, state.engine.executor.config.vocab_size)
        return await _generate(state, request, body, jobs, chat=False)

    return app


def _authorize(state: ServerState, request: Request) -> None:
    key = state.config.api_key
    if key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), key.encode()):
        raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer KEY')", code="invalid_api_key")


async def _parse(state: ServerState, request: Request, model):
    _authorize(state, request)
    if state.draining:
        raise APIError(503, "server is shutting down")
    cap = state.config.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise APIError(413, f"request body of {declared} bytes exceeds the server's limit of {cap} bytes")
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > cap:
            raise APIError(413, f"request body exceeds the server's limit of {cap} bytes")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON ({e})") from None
    try:
        body = model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors(include_url=False, include_context=False)) from None
    if body.model != state.config.served_model_name:
        raise APIError(404, f"model {body.model!r} does not exist; this server serves "
                            f"{state.config.served_model_name!r}", "model", "model_not_found")
    return body


async def _generate(state: ServerState, request: Request, body, jobs, chat: bool):
    config, engine = state.config, state.engine
    k = body.logprobs_k()
    if k is not None and state.executor_name == "trtllm":
        raise APIError(400, "logprobs: not supported by the trtllm executor", "logprobs")
    longest = max(len(j.prompt_ids) for j in jobs)
    params = SamplingParams(max_new_tokens=max_new_tokens(body, longest, config), temperature=body.temperature,
                            top_p=body.top_p, top_k=body.top_k, seed=body.seed, logprobs=k,
                            ignore_eos=body.ignore_eos)
    waiting = engine.waiting()
    if waiting + len(jobs) * body.n > config.max_queue:
        raise APIError(429, f"server queue is full ({waiting} waiting, --max-queue {config.max_queue}); retry later")
    run = GenerationRun(engine, state.tokenizer, jobs, body.n, params, body.stop)
    model = config.served_model_name
    if body.stream:
        return StreamingResponse(_stream(state, run, model, body, chat, k is not None), media_type="text/event-stream")
    task = asyncio.create_task(run.collect())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
                return Response(status_code=499)
        outputs = task.result()
    except EngineFailed as e:
        raise APIError(400 if isinstance(e.__cause__, FathomError) else 500,
                       str(e) if isinstance(e.__cause__, FathomError) else "generation failed") from None
    _observe(state, run)
    build = chat_response if chat else completion_response
    return build(run, model, outputs, state.token_text, k is not None)


async def _stream(state: ServerState, run: GenerationRun, model: str, body, chat: bool, logprobs: bool):
    text = state.token_text
    try:
        if chat:
            for choice in run.choices:
                yield sse(chat_chunk(run, model, choice.index, {"role": "assistant", "content": ""}))
        async for choice, delta in run.events():
            if chat:
                yield sse(chat_delta_chunk(run, model, choice, delta, text, logprobs))
            else:
                offset = len(choice.text) - len(delta.text)
                yield sse(completion_chunk(run, model, choice, delta, text, logprobs, offset))
    except EngineFailed as e:
        message = str(e) if isinstance(e.__cause__, FathomError) else "generation failed"
        yield sse(APIError(400 if isinstance(e.__cause__, FathomError) else 500, message).body())
    else:
        _observe(state, run)
        if body.include_usage:
            yield sse(usage_chunk(run, model, chat))
    yield sse("[DONE]")


def _observe(state: ServerState, run: GenerationRun) -> None:
    state.metrics.prompt_tokens.inc(run.prompt_tokens)
    for c in run.choices:
        state.metrics.observe_choice(run.arrival_s, c.first_token_s, c.last_token_s, c.completion_tokens)
