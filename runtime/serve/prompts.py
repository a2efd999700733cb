"""Request bodies -> prompt token ids and the token budget, checked against the context length."""

from __future__ import annotations

from fathom.runtime.chat import THINK_OPEN, chat_prompt_ids, raw_prompt_ids

from .generation import PromptJob
from .protocol import APIError, ChatCompletionRequest, CompletionRequest


def chat_jobs(tokenizer, body: ChatCompletionRequest) -> list[PromptJob]:
    """The chat template with the generation prompt; R1's opens `<think>`, so the output starts
    inside the reasoning (the reasoning split needs to know)."""
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    try:
        ids = chat_prompt_ids(tokenizer, messages)
    except Exception as e:  # a template that rejects the conversation (roles out of order, ...)
        raise APIError(400, f"messages: the chat template rejected them ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                       "messages") from None
    opens_think = tokenizer.decode(ids[-8:]).rstrip().endswith(THINK_OPEN)
    return [PromptJob(ids, opens_think)]


def completion_jobs(tokenizer, body: CompletionRequest, vocab: int) -> list[PromptJob]:
    """`vocab`: the model's vocab_size (token ids may go past the tokenizer's, up to the padded embedding)."""
    jobs = []
    for i, prompt in enumerate(body.prompts()):
        if isinstance(prompt, str):
            ids = raw_prompt_ids(tokenizer, prompt)
            if not ids:
                raise APIError(400, f"prompt[{i}]: encodes to no tokens", "prompt")
        else:
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise APIError(400, f"prompt[{i}]: token id {bad[0]} outside the vocabulary (0..{vocab - 1})", "prompt")
            ids = list(prompt)
        jobs.append(PromptJob(ids, None))
    return jobs


def max_new_tokens(body, prompt_tokens: int, config) -> int:
    """The request's token budget: max_tokens (chat: max_completion_tokens) or, when absent, what the
    context leaves; refused when prompt + budget exceeds the context or the budget the server's cap."""
    limit = config.max_seq_len
    requested = body.requested_max_tokens()
    param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
    if prompt_tokens >= limit:
        raise APIError(400, f"prompt has {prompt_tokens} tokens; this model's context length is {limit} tokens "
                            f"(--max-seq-len), which leaves no room for output", "messages" if
                       isinstance(body, ChatCompletionRequest) else "prompt")
    if requested is None:
        requested = limit - prompt_tokens
        if config.max_tokens_cap is not None:
            requested = min(requested, config.max_tokens_cap)
    if config.max_tokens_cap is not None and requested > config.max_tokens_cap:
        raise APIError(400, f"{param} = {requested} exceeds this server's cap of {config.max_tokens_cap} "
                            "(--max-tokens-cap)", param)
    if prompt_tokens + requested > limit:
        raise APIError(400, f"prompt ({prompt_tokens} tokens) + {param} ({requested}) = {prompt_tokens + requested} "
                            f"exceeds this model's context length of {limit} tokens (--max-seq-len)", param)
    return requested
