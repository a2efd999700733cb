"""One output of a request: token events in, text deltas out (generate, chat, serve).

Stop strings end the text where they begin (the rest of the request is cancelled), an eos or stop
token ends it without appearing in it (as vLLM does), and chat choices split `<think>` reasoning
from the answer as they stream (`reasoning.ReasoningSplitter`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fathom.runtime.chat import IncrementalDecoder
from fathom.runtime.executor import TokenEvent

from .reasoning import ReasoningSplitter


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Delta:
    text: str = ""  # completions: the text delta
    reasoning: str = ""  # chat: reasoning_content delta
    content: str = ""  # chat: content delta
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None

    def empty(self) -> bool:
        return not (self.text or self.reasoning or self.content or self.logprobs or self.finish_reason)


class Choice:
    """The state of one output: its decoder, stop strings, reasoning split and counters."""

    def __init__(self, index: int, request_id: str, tokenizer, stop_strings: list[str],
                 reasoning: ReasoningSplitter | None):
        self.index, self.request_id = index, request_id
        self.decoder = IncrementalDecoder(tokenizer)
        self.stop_strings = tuple(stop_strings)
        self.reasoning = reasoning
        self.token_ids: list[int] = []  # every generated token, an ending eos/stop token included
        self.first_token_s: float | None = None
        self.last_token_s: float | None = None
        self.finish_reason: str | None = None
        self.text = ""  # the choice's text so far (stop strings cut)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, event: TokenEvent) -> tuple[Delta, bool]:
        """The delta for one event, and whether the request must be cancelled (a stop string ended it)."""
        if self.done:
            return Delta(), False  # a cancelled request's last event
        delta, cancel, cut = Delta(), False, None
        if event.token_id is not None:
            self.token_ids.append(event.token_id)
            self.first_token_s = self.first_token_s or event.time_s
            self.last_token_s = event.time_s
            if event.finish_reason != "stop":
                new = self.decoder.push(event.token_id)
                cut = find_stop(self.decoder.text, len(new), self.stop_strings)
                if cut is not None:
                    self.finish_reason, cancel = "stop", True
                if event.logprob is not None:
                    delta.logprobs.append(TokenLogprob(event.token_id, event.logprob, tuple(event.top_logprobs)))
        if event.finish_reason is not None and not self.done:
            self.finish_reason = event.finish_reason
        text = self.decoder.text
        # Text that may still turn out to begin a stop string is held back until the next token decides.
        end = cut if cut is not None else len(text) if self.done else len(text) - _held_back(text, self.stop_strings)
        self._add_text(delta, text[len(self.text):end])
        if self.done:
            self._flush(delta)
            delta.finish_reason = self.finish_reason
        return delta, cancel

    def _add_text(self, delta: Delta, text: str) -> None:
        if not text:
            return
        self.text += text
        if self.reasoning is None:
            delta.text += text
        else:
            reasoning, content = self.reasoning.push(text)
            delta.reasoning += reasoning
            delta.content += content

    def _flush(self, delta: Delta) -> None:
        if self.reasoning is not None:
            reasoning, content = self.reasoning.finish()
            delta.reasoning += reasoning
            delta.content += content


def find_stop(text: str, delta_len: int, stops: tuple[str, ...]) -> int | None:
    """Index where the earliest stop string starts, looking only where the new delta could complete one."""
    best = None
    for s in stops:
        idx = text.find(s, max(0, len(text) - delta_len - len(s) + 1))
        if idx != -1 and (best is None or idx < best):
            best = idx
    return best


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is the start of a stop string (not a whole one)."""
    return max((k for s in stops for k in range(len(s) - 1, 0, -1) if text.endswith(s[:k])), default=0)
