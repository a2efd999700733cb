"""`fathom generate`, `fathom chat`, `fathom info`: run and describe a model."""

from __future__ import annotations

import click

from .common import emit_json, json_option, open_runtime, runtime_options

THINK_CLOSE = "</think>"


def sampling_options(f):
    options = [
        click.option("--max-new-tokens", type=click.IntRange(1), default=512, show_default=True),
        click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True, help="0 = greedy."),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True),
        click.option("--top-k", type=click.IntRange(0), default=0, show_default=True, help="0 = off."),
        click.option("--seed", type=int, default=None, help="Same seed, same output."),
        click.option("--stop", "stop_strings", multiple=True, help="Stop string (repeatable)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def make_params(max_new_tokens, temperature, top_p, top_k, seed, stop_strings):
    from fathom.runtime.sampling import SamplingParams

    return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                          seed=seed, stop_strings=tuple(stop_strings))


class StreamPrinter:
    """Prints a growing R1 output: reasoning dimmed until `</think>`, then the answer plainly."""

    def __init__(self, in_think: bool):
        self.in_think = in_think
        self.answer_started = False
        self.pending = ""

    def feed(self, delta: str) -> None:
        self.pending += delta
        while self.pending:
            if not self.in_think:
                if not self.answer_started:  # the blank lines after </think> are layout, not answer
                    self.pending = self.pending.lstrip("\n")
                    self.answer_started = bool(self.pending)
                click.echo(self.pending, nl=False)
                self.pending = ""
                return
            head, sep, tail = self.pending.partition(THINK_CLOSE)
            if sep:
                click.secho(head, nl=False, dim=True)
                click.echo("\n" + "-" * 20)
                self.in_think, self.pending = False, tail
                continue
            # Hold back a tail that could be the start of "</think>".
            keep = next((k for k in range(len(THINK_CLOSE) - 1, 0, -1) if head.endswith(THINK_CLOSE[:k])), 0)
            click.secho(head[: len(head) - keep], nl=False, dim=True)
            self.pending = head[len(head) - keep:]
            return

    def close(self) -> None:
        if self.pending:
            click.secho(self.pending, nl=False, dim=self.in_think)
        click.echo()


def _print_completion(c) -> None:
    if c.reasoning:
        click.secho(c.reasoning, dim=True)
        click.echo("-" * 20)
    click.echo(c.answer if (c.reasoning or c.answer) else c.text)


def _timing_line(c) -> str:
    rate = f"{c.decode_tok_s:.1f} tok/s" if c.decode_tok_s else "n/a tok/s"
    return (f"[{c.prompt_tokens} prompt + {c.output_tokens} output tokens, TTFT {c.ttft_ms:.0f} ms, "
            f"{rate}, finish: {c.finish_reason}]")


@click.command()
@click.argument("model")
@click.option("-p", "--prompt", required=True, help="Prompt text.")
@click.option("--chat/--raw", default=True, show_default=True, help="Apply the chat template, or send the text as is.")
@click.option("--system", default=None, help="System message (chat mode).")
@sampling_options
@runtime_options
@click.option("--stream/--no-stream", default=True, show_default=True, help="Print tokens as they arrive.")
@click.option("--profile", is_flag=True, help="Record GPU/host memory, power and energy with the NVML profiler.")
@json_option
def generate(model, prompt, chat, system, max_new_tokens, temperature, top_p, top_k, seed, stop_strings,
             executor, dtype, device, tokenizer, threads, max_seq_len, hostfile, tp, torch_compile, stream, profile,
             as_json):
    """Generate a completion for one prompt; reasoning is shown dimmed.

    \b
    fathom generate demo -p "What is 12+34?"
    fathom generate ./Fathom-R1-14B -p "Solve x^2=4" --temperature 0.6 --top-p 0.95 --seed 0
    """
    from fathom.runtime.chat import build_messages, chat_prompt_ids, raw_prompt_ids
    from fathom.runtime.generate import generate_texts

    params = make_params(max_new_tokens, temperature, top_p, top_k, seed, stop_strings)
    source, ex, tok = open_runtime(model, executor, dtype, device, tokenizer, max_seq_len, threads,
                                   hostfile=hostfile, tp=tp, torch_compile=torch_compile)
    ids = chat_prompt_ids(tok, build_messages(prompt, system)) if chat else raw_prompt_ids(tok, prompt)
    printer = StreamPrinter(in_think=chat) if stream and not as_json else None
    with _maybe_profiler(profile) as prof:
        [c] = generate_texts(ex, tok, [ids], params, starts_in_think=chat,
                             on_delta=(lambda i, d: printer.feed(d)) if printer else None)
    if as_json:
        emit_json({"model": model, "executor": ex.describe(), **c.to_dict(),
                   "profile": prof.summary() if prof else None})
        return
    if printer:
        printer.close()
    else:
        _print_completion(c)
    click.secho(_timing_line(c), err=True, dim=True)


def _maybe_profiler(enabled: bool):
    import contextlib

    if not enabled:
        return contextlib.nullcontext(None)
    from fathom.runtime.nvml import Profiler

    return Profiler()


@click.command()
@click.argument("model")
@click.option("--system", default=None, help="System message.")
@sampling_options
@runtime_options
def chat(model, system, max_new_tokens, temperature, top_p, top_k, seed, stop_strings,
         executor, dtype, device, tokenizer, threads, max_seq_len, hostfile, tp, torch_compile):
    """Interactive multi-turn chat (/reset clears the history, /exit quits).

    \b
    fathom chat demo
    """
    from fathom.runtime.chat import build_messages, chat_prompt_ids
    from fathom.runtime.generate import generate_texts

    params = make_params(max_new_tokens, temperature, top_p, top_k, seed, stop_strings)
    source, ex, tok = open_runtime(model, executor, dtype, device, tokenizer, max_seq_len, threads,
                                   hostfile=hostfile, tp=tp, torch_compile=torch_compile)
    history: list[dict[str, str]] = []
    click.echo(f"fathom chat: {model} on {ex.describe().get('device')}. /reset clears history, /exit quits.")
    while True:
        try:
            line = click.prompt(">>>", prompt_suffix=" ", default="", show_default=False)
        except (EOFError, click.Abort):
            click.echo()
            return
        line = line.strip()
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            history.clear()
            click.echo("(history cleared)")
            continue
        if not line:
            continue
        printer = StreamPrinter(in_think=True)
        ids = chat_prompt_ids(tok, build_messages(line, system, history))
        [c] = generate_texts(ex, tok, [ids], params, on_delta=lambda i, d: printer.feed(d))
        printer.close()
        click.secho(_timing_line(c), err=True, dim=True)
        history += [{"role": "user", "content": line}, {"role": "assistant", "content": c.text}]


@click.command()
@click.argument("model")
@json_option
def info(model, as_json):
    """Config, parameter count, weight bytes per dtype and KV bytes per token of MODEL (no weights loaded).

    \b
    fathom info random:fathom-r1-14b
    """
    from fathom.runtime.model_info import model_info

    data = model_info(model)
    if as_json:
        emit_json(data)
        return
    for key, value in data.items():
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for k, v in value.items():
                click.echo(f"  {k}: {v}")
        else:
            click.echo(f"{key}: {value}")


COMMANDS = [generate, chat, info]
