"""Text layer: stop strings, reasoning split, incremental detokenization, stop tokens, timings."""

import torch

from fathom.build.sources import resolve_model
from fathom.runtime.chat import IncrementalDecoder, split_reasoning
from fathom.runtime.executor import KVUsage, TokenEvent, now
from fathom.runtime.generate import generate_texts
from fathom.runtime.loader import load_model
from fathom.runtime.reference import ReferenceExecutor
from fathom.runtime.sampling import SamplingParams


class ByteTokenizer:
    """Token id = one UTF-8 byte; decode() behaves like a byte-level BPE tokenizer."""

    eos_token = None

    def decode(self, ids, skip_special_tokens=False):
        return bytes(ids).decode("utf-8", errors="replace")


class ScriptedExecutor:
    """Emits a fixed token script for every request; honours cancel like a real executor."""

    name = "scripted"

    def __init__(self, script):
        self.script, self.requests, self.pos, self.cancelled = script, [], {}, set()

    def submit(self, r):
        self.requests.append(r)
        self.pos[r.request_id] = 0

    def cancel(self, rid):
        self.cancelled.add(rid)

    def has_pending(self):
        return bool(self.pos)

    def kv_usage(self):
        return KVUsage(0, 0, 0)

    def describe(self):
        return {"executor": self.name}

    def step(self):
        events = []
        for rid in list(self.pos):
            if rid in self.cancelled:
                events.append(TokenEvent(rid, None, now(), "cancelled"))
                del self.pos[rid]
                continue
            i = self.pos[rid]
            done = i + 1 == len(self.script)
            events.append(TokenEvent(rid, self.script[i], now(), "length" if done else None))
            self.pos[rid] = i + 1
            if done:
                del self.pos[rid]
        return events


def test_stop_string_truncates_text_and_cancels():
    script = list(b"thinking</think>\n\nThe answer is 42. STOP more text")
    ex = ScriptedExecutor(script)
    [c] = generate_texts(ex, ByteTokenizer(), [[1]], SamplingParams(max_new_tokens=100, stop_strings=("STOP",)))
    assert c.text == "thinking</think>\n\nThe answer is 42. "
    assert c.finish_reason == "stop"
    assert c.reasoning == "thinking" and c.answer == "The answer is 42. "
    assert len(c.token_ids) < len(script)


def test_streamed_deltas_concatenate_to_text():
    script = list("a</think>b é ü 漢字".encode())
    deltas = []
    [c] = generate_texts(ScriptedExecutor(script), ByteTokenizer(), [[1]], SamplingParams(max_new_tokens=100),
                         on_delta=lambda i, d: deltas.append(d))
    assert "".join(deltas) == c.text == "a</think>b é ü 漢字"
    assert "\ufffd" not in "".join(deltas)


def test_incremental_decoder_never_splits_multibyte_chars():
    dec = IncrementalDecoder(ByteTokenizer())
    out = [dec.push(b) for b in "漢".encode()]
    assert out[:2] == ["", ""] and out[2] == "漢"


def test_split_reasoning_variants():
    assert split_reasoning("step 1\n</think>\n\nanswer") == split_reasoning("step 1</think>answer")
    s = split_reasoning("still thinking")
    assert (s.reasoning, s.answer, s.reasoning_done) == ("still thinking", "", False)
    raw = split_reasoning("<think>r</think>a", starts_in_think=False)
    assert (raw.reasoning, raw.answer) == ("r", "a")
    assert split_reasoning("plain", starts_in_think=False).answer == "plain"


def test_stop_token_and_max_new_tokens_respected():
    model = load_model(resolve_model("random:tiny"), "float32", "cpu", max_seq_len=128)
    ex = ReferenceExecutor(model, eos_ids=[])
    [free] = generate_texts(ex, ByteTokenizer(), [[1, 2, 3]], SamplingParams(max_new_tokens=12))
    assert free.output_tokens == 12 and free.finish_reason == "length"
    stop_at = free.token_ids[4]
    [c] = generate_texts(ex, ByteTokenizer(), [[1, 2, 3]], SamplingParams(max_new_tokens=12, stop_token_ids=(stop_at,)))
    first = free.token_ids.index(stop_at)
    assert c.token_ids == free.token_ids[:first + 1] and c.finish_reason == "stop"
    assert 0 <= c.ttft_ms <= c.total_ms


def test_same_seed_same_output_different_seed_differs():
    model = load_model(resolve_model("random:tiny"), "float32", "cpu", max_seq_len=128)
    ex = ReferenceExecutor(model, eos_ids=[])

    def run(seed):
        params = SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.95, seed=seed)
        return generate_texts(ex, ByteTokenizer(), [[1, 2, 3], [4, 5]], params)

    a, b, c = run(3), run(3), run(4)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_streamed_deltas_never_show_the_start_of_a_stop_string():
    script = list(b"The answer is 42. STOP more text")
    deltas = []
    [c] = generate_texts(ScriptedExecutor(script), ByteTokenizer(), [[1]],
                         SamplingParams(max_new_tokens=100, stop_strings=("STOP",)), starts_in_think=False,
                         on_delta=lambda i, d: deltas.append(d))
    assert "".join(deltas) == c.text == "The answer is 42. "
