"""OpenAI response bodies and stream chunks for chat completions and completions.

Shapes follow the OpenAI API reference; reasoning goes to `reasoning_content` (message and delta)
as vLLM's reasoning parsers return it. Log-probs: chat uses `{"content": [{token, logprob, bytes,
top_logprobs}]}`, completions the legacy `{tokens, token_logprobs, top_logprobs, text_offset}`.
"""

from __future__ import annotations

import json

from fathom.runtime.choices import Choice, Delta, TokenLogprob

from .generation import GenerationRun


class TokenText:
    """Token id -> its text, cached (log-prob entries name tokens by text)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, token_id: int) -> str:
        if token_id not in self.cache:
            self.cache[token_id] = self.tokenizer.decode([token_id])
        return self.cache[token_id]


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


# ---- chat ------------------------------------------------------------------------------------------
def _chat_logprobs(entries: list[TokenLogprob], text: TokenText) -> dict:
    def one(token_id: int, logprob: float) -> dict:
        s = text(token_id)
        return {"token": s, "logprob": logprob, "bytes": list(s.encode())}

    return {"content": [{**one(e.token_id, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
                        for e in entries]}


def chat_response(run: GenerationRun, model: str, outputs: list[tuple[Choice, Delta]], text: TokenText,
                  logprobs: bool) -> dict:
    choices = []
    for choice, delta in outputs:
        message = {"role": "assistant", "content": delta.content, "reasoning_content": delta.reasoning or None}
        choices.append({"index": choice.index, "message": message,
                        "logprobs": _chat_logprobs(delta.logprobs, text) if logprobs else None,
                        "finish_reason": choice.finish_reason})
    return {"id": f"chatcmpl-{run.id}", "object": "chat.completion", "created": run.created, "model": model,
            "choices": choices, "usage": run.usage()}


def chat_chunk(run: GenerationRun, model: str, index: int, delta: dict, logprobs: dict | None = None,
               finish_reason: str | None = None) -> dict:
    return {"id": f"chatcmpl-{run.id}", "object": "chat.completion.chunk", "created": run.created, "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}


def chat_delta_chunk(run: GenerationRun, model: str, choice: Choice, delta: Delta, text: TokenText,
                     logprobs: bool) -> dict:
    body = {}
    if delta.reasoning:
        body["reasoning_content"] = delta.reasoning
    if delta.content:
        body["content"] = delta.content
    return chat_chunk(run, model, choice.index, body, _chat_logprobs(delta.logprobs, text) if logprobs else None,
                      delta.finish_reason)


# ---- completions -----------------------------------------------------------------------------------
def _completion_logprobs(entries: list[TokenLogprob], text: TokenText, offset: int) -> dict:
    tokens, offsets = [], []
    for e in entries:
        offsets.append(offset)
        tokens.append(text(e.token_id))
        offset += len(tokens[-1])
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{text(t): lp for t, lp in e.top} for e in entries], "text_offset": offsets}


def completion_response(run: GenerationRun, model: str, outputs: list[tuple[Choice, Delta]], text: TokenText,
                        logprobs: bool) -> dict:
    choices = [{"index": c.index, "text": d.text,
                "logprobs": _completion_logprobs(d.logprobs, text, 0) if logprobs else None,
                "finish_reason": c.finish_reason} for c, d in outputs]
    return {"id": f"cmpl-{run.id}", "object": "text_completion", "created": run.created, "model": model,
            "choices": choices, "usage": run.usage()}


def completion_chunk(run: GenerationRun, model: str, choice: Choice, delta: Delta, text: TokenText,
                     logprobs: bool, offset: int) -> dict:
    return {"id": f"cmpl-{run.id}", "object": "text_completion", "created": run.created, "model": model,
            "choices": [{"index": choice.index, "text": delta.text,
                         "logprobs": _completion_logprobs(delta.logprobs, text, offset) if logprobs else None,
                         "finish_reason": delta.finish_reason}]}


def usage_chunk(run: GenerationRun, model: str, chat: bool) -> dict:
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{run.id}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": run.created, "model": model, "choices": [], "usage": run.usage()}
