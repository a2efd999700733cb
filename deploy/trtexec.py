"""The `trtexec` command that builds a TensorRT engine from a `fathom export onnx` graph.

Two optimization profiles, both up to `max_seq_len` tokens per sequence (16,384 by default):

- profile 0, prefill: one prompt of 1..max_seq_len tokens with an empty past;
- profile 1, decode: one new token for 1..max_batch_size sequences over 1..max_seq_len - 1 past tokens.

Prefill runs one prompt at a time because its logits output is (B, T, V) float32: at 16K tokens
Fathom's 152,064-token vocabulary already makes it 10 GB per prompt.

Flags are those of TensorRT 10's trtexec (samples/common/sampleOptions.cpp): `--profile=N` before
each profile's `--minShapes/--optShapes/--maxShapes`, shapes as `name:AxBxC`, and `--stronglyTyped`
so the engine computes in the graph's own dtypes instead of the builder choosing precisions per
layer. trtexec's --fp16/--bf16 flags still exist without a deprecation note in its help from
TensorRT 10.0 to 10.16; only the builder API's BuilderFlag::kFP16 is marked deprecated, from
TensorRT 10.12 (include/NvInfer.h).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from fathom.build.errors import ConfigError

# TensorRT tunes kernels at the opt shape: a long math prompt for prefill, half the context for decode.
PREFILL_OPT_TOKENS = 1024


@dataclass(frozen=True)
class Profile:
    """min / opt / max of each named dynamic axis of the graph."""

    name: str
    axes: dict[str, tuple[int, int, int]]

    def shapes(self, inputs: list[dict], which: int) -> str:
        """`name:AxB,...` of every input at min (0), opt (1) or max (2)."""
        def size(dim) -> int:
            return dim if isinstance(dim, int) else self.axes[dim][which]

        return ",".join(f"{t['name']}:{'x'.join(str(size(d)) for d in t['shape'])}" for t in inputs)


def profiles(max_seq_len: int, max_batch_size: int) -> list[Profile]:
    """The prefill and decode profiles over the axes batch, sequence, past_sequence, total_sequence."""
    if max_seq_len < 2:
        raise ConfigError(f"--max-seq-len {max_seq_len}: expected >= 2 (a prompt token and a generated one)")
    if max_batch_size < 1:
        raise ConfigError(f"--max-batch-size {max_batch_size}: expected >= 1")
    S, B = max_seq_len, max_batch_size
    prompt = min(PREFILL_OPT_TOKENS, S)
    past = S // 2
    prefill = Profile("prefill", {"batch": (1, 1, 1), "sequence": (1, prompt, S), "past_sequence": (0, 0, 0),
                                  "total_sequence": (1, prompt, S)})
    decode = Profile("decode", {"batch": (1, B, B), "sequence": (1, 1, 1), "past_sequence": (1, past, S - 1),
                                "total_sequence": (2, past + 1, S)})
    return [prefill, decode]


def trtexec_command(onnx_path: str, engine_path: str, inputs: list[dict], max_seq_len: int,
                    max_batch_size: int) -> list[str]:
    """argv of trtexec for the graph whose `inputs` are [{name, shape: [int | axis name]}] (fathom-onnx.json)."""
    argv = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--stronglyTyped"]
    for index, profile in enumerate(profiles(max_seq_len, max_batch_size)):
        argv.append(f"--profile={index}")
        for which, flag in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
            argv.append(f"{flag}={profile.shapes(inputs, which)}")
    return argv


def command_line(argv: list[str]) -> str:
    """argv as one shell line, one option per line."""
    return " \\\n  ".join(shlex.quote(a) for a in argv)
