"""The steps of `fathom demo`, each a small function that prints its part of the tour."""

from __future__ import annotations

import resource
from typing import Callable

from fathom.build.sources import resolve_model

from .chat import load_tokenizer
from .executors import create_executor
from .task_eval import answer_problems, heldout_problems


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_demo(n_problems: int, show: int, device: str, echo: Callable, secho: Callable) -> None:
    source = resolve_model("demo")
    tok = load_tokenizer(source.tokenizer_dir, "demo")
    cfg = source.config
    secho("== fathom demo: the embedded Qwen2 model ==", bold=True)
    echo(f"{cfg.num_params() / 1e6:.2f}M parameters, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
         f"{cfg.num_attention_heads} heads / {cfg.num_key_value_heads} KV heads, trained on held-in arithmetic in the R1 format")
    executor = create_executor("auto", source, dtype="float32", device=device, eos_ids=cfg.eos_token_ids)
    problems = heldout_problems(n_problems)
    result = answer_problems(executor, tok, problems)
    for p, c, ok in list(zip(result.problems, result.completions, result.correct))[:show]:
        secho(f"\nQ: {p.question}", bold=True)
        secho(c.reasoning, dim=True)
        echo(f"A: {c.answer.strip()}  [{'correct' if ok else 'WRONG, expected ' + p.answer}]")
    echo(f"\nheld-out accuracy: {sum(result.correct)}/{len(result.correct)} = {result.accuracy:.1%} (greedy)")
    echo(f"throughput: {result.output_tok_s:.0f} output tok/s over {len(problems)} problems "
         f"({executor.describe().get('executor')} executor, {device}, float32)")
    echo(f"memory: peak RSS {peak_rss_bytes() / 2**20:.0f} MiB")
