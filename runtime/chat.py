"""Tokenizer loading, chat prompts, `<think>` splitting and incremental detokenization.

The R1 family's generation prompt ends with `<｜Assistant｜><think>\n`, so the model's output starts
inside the reasoning; `</think>` separates reasoning from the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fathom.build.errors import ConfigError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def load_tokenizer(directory: str | Path | None, model_spec: str = "MODEL"):
    """A transformers tokenizer from local files only (never the hub)."""
    if directory is None:
        raise ConfigError(f"{model_spec}: has no tokenizer files (tokenizer.json / tokenizer_config.json); pass --tokenizer DIR")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:  # transformers raises many types for broken files
        raise ConfigError(f"{directory}: cannot load tokenizer ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def chat_prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the chat template with the generation prompt appended."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("tokenizer has no chat_template; use --raw to send the prompt text as is")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return raw_prompt_ids(tokenizer, text)


def raw_prompt_ids(tokenizer, text: str) -> list[int]:
    # The chat template already contains BOS; never let the tokenizer add a second one.
    return tokenizer.encode(text, add_special_tokens=False)


def build_messages(prompt: str, system: str | None = None, history: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + list(history or []) + [{"role": "user", "content": prompt}]


@dataclass(frozen=True)
class SplitText:
    reasoning: str
    answer: str
    reasoning_done: bool


def split_reasoning(text: str, starts_in_think: bool = True) -> SplitText:
    """Split generated text into reasoning and answer.

    `starts_in_think`: the prompt ended with `<think>\\n` (R1 chat prompts), so everything up to
    `</think>` is reasoning. Otherwise reasoning exists only if the text opens `<think>` itself.
    """
    if not starts_in_think:
        stripped = text.lstrip()
        if not stripped.startswith(THINK_OPEN):
            return SplitText("", text, True)
        text = stripped[len(THINK_OPEN):]
    head, sep, tail = text.partition(THINK_CLOSE)
    if not sep:
        return SplitText(head.strip("\n"), "", False)
    return SplitText(head.strip("\n"), tail.lstrip("\n"), True)


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas without splitting multi-byte characters.

    Decodes only a short window (the TGI/vLLM prefix-offset scheme), so a 16K-token output costs
    O(n), not O(n^2), and byte-level merges across token boundaries still come out right.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # start of the window decoded for context
        self._read = 0  # ids before this are already in self.text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):  # incomplete UTF-8: wait
            return ""
        delta = after[len(before):]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += delta
        return delta
