"""Token sequences for calibration (`--calib-data`) and for the quality report (`--data`).

FILE.jsonl: one JSON object per line, {"text": "..."} (needs the model's tokenizer) or
{"input_ids": [...]}; each line is one sequence, truncated to the sequence length, in file order.
`builtin`: the demo task's problems with their worked solutions in the chat format, one problem per
sequence (fathom.runtime.arith; calibration draws from the train split, the quality report from the
held-out split, so they never overlap). Without a tokenizer (random:<preset> models) builtin is a
deterministic set of uniformly random token ids of exactly the sequence length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fathom.build.errors import ConfigError


@dataclass(frozen=True)
class TokenSet:
    sequences: list[list[int]]
    source: str  # "builtin:arith-train", "builtin:random-tokens", "file:<path>"
    completion_starts: list[int] | None = None  # builtin arith: index of each sequence's first answer token

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


def load_token_set(spec: str, n: int, seq_len: int, seed: int, vocab_size: int, tokenizer=None,
                   split: str = "train") -> TokenSet:
    """`n` sequences of at most `seq_len` tokens."""
    if n < 1 or seq_len < 2:
        raise ConfigError(f"token set: {n} sequences of {seq_len} tokens, expected >= 1 sequence of >= 2 tokens")
    if spec == "builtin":
        if tokenizer is None:
            gen = torch.Generator().manual_seed(seed)
            ids = torch.randint(0, vocab_size, (n, seq_len), generator=gen)
            return TokenSet(ids.tolist(), "builtin:random-tokens")
        sequences, starts = _arith_sequences(tokenizer, n, seq_len, seed, split)
        return TokenSet(sequences, f"builtin:arith-{split}", starts)
    return TokenSet(_jsonl_sequences(Path(spec), n, seq_len, vocab_size, tokenizer), f"file:{spec}")


def _problem_ids(tokenizer, problem) -> tuple[list[int], list[int]]:
    """(chat prompt ids, worked solution ids + EOS) of one problem."""
    from fathom.runtime.arith import worked_solution
    from fathom.runtime.chat import build_messages, chat_prompt_ids, raw_prompt_ids

    answer = raw_prompt_ids(tokenizer, worked_solution(problem))
    if getattr(tokenizer, "chat_template", None):
        prompt = chat_prompt_ids(tokenizer, build_messages(problem.user_message))
    else:
        prompt = raw_prompt_ids(tokenizer, problem.user_message + "\n")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return prompt, answer + eos


def _arith_sequences(tokenizer, n: int, seq_len: int, seed: int, split: str) -> tuple[list[list[int]], list[int]]:
    from fathom.runtime.arith import make_problems

    # One problem per sequence, as the demo model was trained: packing several into one sequence
    # would show it contexts it never saw and calibrate (or compare) on off-distribution activations.
    pairs = [_problem_ids(tokenizer, p) for p in make_problems(n, seed, split)]
    if any(len(prompt) >= seq_len for prompt, _ in pairs):
        raise ConfigError(f"builtin token set: sequence length {seq_len} does not hold a whole prompt "
                          f"({max(len(p) for p, _ in pairs)} tokens); use a larger length")
    return [(prompt + answer)[:seq_len] for prompt, answer in pairs], [len(prompt) for prompt, _ in pairs]


def _jsonl_sequences(path: Path, n: int, seq_len: int, vocab_size: int, tokenizer) -> list[list[int]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror}); expected a JSONL file or 'builtin'") from e
    out: list[list[int]] = []
    for lineno, line in enumerate(lines, 1):
        if len(out) == n:
            break
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not valid JSON ({e.msg})") from e
        if isinstance(record, dict) and isinstance(record.get("input_ids"), list):
            ids = record["input_ids"]
            if not all(isinstance(i, int) and 0 <= i < vocab_size for i in ids):
                raise ConfigError(f"{where}: 'input_ids' must be integers in [0, {vocab_size})")
        elif isinstance(record, dict) and isinstance(record.get("text"), str):
            if tokenizer is None:
                raise ConfigError(f"{where}: has 'text' but the model has no tokenizer; "
                                  "give 'input_ids' or --tokenizer")
            from fathom.runtime.chat import raw_prompt_ids

            ids = raw_prompt_ids(tokenizer, record["text"])
        else:
            raise ConfigError(f"{where}: expected an object with 'text' (string) or 'input_ids' (list of ints)")
        if len(ids) >= 2:
            out.append(list(ids[:seq_len]))
    if not out:
        raise ConfigError(f"{path}: no sequence of 2 or more tokens")
    return out
