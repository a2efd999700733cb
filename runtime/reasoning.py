"""The `<think>` split while streaming: text deltas in, (reasoning, content) deltas out.

Fed the same text in any pieces, the concatenated outputs equal `chat.split_reasoning` of the whole
text, so a streamed response and a non-streamed one carry the same `reasoning_content` and
`content` (vLLM's deepseek_r1 reasoning parser: the R1 chat prompt opens `<think>`, so the output
starts inside the reasoning and only `</think>` appears in it). Text that might still become part of
`</think>` or of the newlines around it is held back until the next delta or `finish()` decides.
"""

from __future__ import annotations

from fathom.runtime.chat import THINK_CLOSE, THINK_OPEN


def _held_suffix(text: str) -> int:
    """Length of the longest suffix of `text` that is newlines followed by a proper prefix of `</think>`."""
    best = 0
    for k in range(len(THINK_CLOSE) - 1, -1, -1):
        if text.endswith(THINK_CLOSE[:k]):
            head = text[:len(text) - k]
            best = k + len(head) - len(head.rstrip("\n"))
            break
    return best


class ReasoningSplitter:
    """`push(delta) -> (reasoning_delta, content_delta)`, then `finish()` for what was held back."""

    def __init__(self, starts_in_think: bool = True):
        self.state = "think" if starts_in_think else "undecided"
        self.pending = ""  # text not emitted yet
        self.reasoning_started = False  # leading newlines of the reasoning are dropped
        self.content_started = False  # leading newlines of the answer are dropped

    def push(self, delta: str) -> tuple[str, str]:
        self.pending += delta
        if self.state == "undecided":
            stripped = self.pending.lstrip()
            if THINK_OPEN.startswith(stripped):
                return "", ""  # still could open a think block
            if stripped.startswith(THINK_OPEN):
                self.state, self.pending = "think", stripped[len(THINK_OPEN):]
            else:
                self.state = "plain"
        if self.state == "plain":
            out, self.pending = self.pending, ""
            return "", out
        if self.state == "think":
            idx = self.pending.find(THINK_CLOSE)
            if idx == -1:
                keep = _held_suffix(self.pending)
                out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
                return self._reasoning(out), ""
            reasoning = self.pending[:idx].rstrip("\n")
            self.pending, self.state = self.pending[idx + len(THINK_CLOSE):], "answer"
            return self._reasoning(reasoning), self._content()
        return "", self._content()

    def finish(self) -> tuple[str, str]:
        """Flush at the end of the output: an unclosed think block keeps its text as reasoning."""
        if self.state == "undecided":
            self.state = "plain"
            out, self.pending = self.pending, ""
            return "", out
        if self.state == "think":
            out, self.pending = self.pending.rstrip("\n"), ""
            return self._reasoning(out), ""
        return "", self._content()

    def _reasoning(self, text: str) -> str:
        if not self.reasoning_started:
            text = text.lstrip("\n")
            self.reasoning_started = bool(text)
        return text

    def _content(self) -> str:
        text, self.pending = self.pending, ""
        if not self.content_started:
            text = text.lstrip("\n")
            self.content_started = bool(text)
        return text
