"""Small helpers shared by the command modules."""

from __future__ import annotations

import json
import sys

import click

from fathom.build.config import DEFAULT_MAX_SEQ_LEN
from fathom.build.precision import DTYPES


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def is_tty() -> bool:
    return sys.stdout.isatty()


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")


def runtime_options(f):
    """Options shared by commands that run a model: executor, dtype, device, tokenizer, context size."""
    from fathom.runtime.executors import EXECUTORS

    options = [
        click.option("--executor", type=click.Choice(EXECUTORS), default="auto", show_default=True,
                     envvar="FATHOM_EXECUTOR",
                     help="auto: trtllm for an engine dir, onnx for a fathom export onnx dir, torch otherwise."),
        click.option("--dtype", type=click.Choice(["auto", *DTYPES]), default="auto",
                     show_default=True, help="auto: bfloat16 on CUDA, float32 on CPU; an ONNX graph's own dtype."),
        click.option("--device", default=None, envvar="FATHOM_DEVICE",
                     help="cpu, cuda, cuda:1 (default: cuda if available; cpu for an ONNX graph)."),
        click.option("--tokenizer", type=click.Path(file_okay=False), default=None,
                     help="Tokenizer directory when MODEL has none."),
        click.option("--threads", type=click.IntRange(1), default=None, envvar="FATHOM_THREADS",
                     help="CPU threads (default: 1 for small models, where more threads only add overhead)."),
        click.option("--max-seq-len", type=click.IntRange(16), default=DEFAULT_MAX_SEQ_LEN, show_default=True,
                     help="KV cache capacity per sequence (prompt + output); an ONNX graph's positions by default."),
        click.option("--hostfile", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="MPI hostfile for a multi-node engine (trtllm executor): ranks start with "
                          "mpirun -n N --hostfile FILE."),
        click.option("--tp", type=click.IntRange(1), default=1, show_default=True,
                     help="Tensor-parallel ranks (torch executor; a checkpoint converted with the same --tp)."),
        click.option("--compile", "torch_compile", is_flag=True,
                     help="Torch executor: decode steps through torch.compile (inductor; the first steps compile, "
                          "seconds per batch shape)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def open_runtime(model: str, executor: str, dtype: str, device: str | None, tokenizer: str | None,
                 max_seq_len: int, threads: int | None = None, hostfile: str | None = None, tp: int = 1,
                 torch_compile: bool = False, **torch_options):
    """Resolve MODEL, open the executor and the tokenizer. Returns (source, executor, tokenizer).
    `torch_options` go to the torch executor (see executors.create_executor). A multi-rank engine
    started without MPI re-runs the command under mpirun first (fathom.deploy.launch). On a
    TensorRT-LLM rank other than the leader it does not return: the rank serves the engine, then
    exits 0."""
    from fathom.build.sources import resolve_model
    from fathom.deploy.launch import launch_ranks
    from fathom.runtime.chat import load_tokenizer
    from fathom.runtime.executors import create_executor, resolve_run_dtype
    from fathom.runtime.trtllm_executor import exit_if_follower

    source = resolve_model(model, tokenizer=tokenizer)
    tok = load_tokenizer(source.tokenizer_dir, model)
    launch_ranks(executor, source, hostfile, tp=tp)
    dtype, device = resolve_run_dtype(dtype, device, source)
    ctx = click.get_current_context(silent=True)
    if source.kind == "onnx" and ctx and ctx.get_parameter_source("max_seq_len") is click.core.ParameterSource.DEFAULT:
        max_seq_len = None  # the graph's own positions; an explicit --max-seq-len above them is refused
    eos = source.config.eos_token_ids or ([tok.eos_token_id] if tok.eos_token_id is not None else [])
    ex = create_executor(executor, source, dtype=dtype, device=device, max_seq_len=max_seq_len, eos_ids=eos,
                         threads=threads, tp=tp, compile=torch_compile, **torch_options)
    exit_if_follower(ex)
    return source, ex, tok
