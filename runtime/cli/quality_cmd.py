"""`fathom quality`: what a quantized model costs in accuracy, measured against its base."""

from __future__ import annotations

import sys

import click

from fathom.build.precision import DTYPES

from .common import emit_json, json_option


@click.command("quality")
@click.argument("base")
@click.argument("candidate")
@click.option("--data", default="builtin", show_default=True,
              help="Token set: FILE.jsonl ({\"text\"} or {\"input_ids\"} per line) or builtin "
                   "(held-out demo-task text; random tokens for a model without tokenizer).")
@click.option("--sequences", type=click.IntRange(1), default=32, show_default=True, help="Sequences compared.")
@click.option("--seq-len", type=click.IntRange(2), default=256, show_default=True, help="Tokens per sequence.")
@click.option("--seed", type=int, default=0, show_default=True, help="Token set and problem draw.")
@click.option("--task-problems", type=click.IntRange(0), default=64, show_default=True,
              help="Held-out demo problems answered greedily by both models (0: skip).")
@click.option("--max-new-tokens", type=click.IntRange(1), default=96, show_default=True)
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
@click.option("--device", default=None, help="cpu, cuda (default: cuda if available).")
@click.option("--tokenizer", type=click.Path(file_okay=False), default=None, help="Tokenizer dir if BASE has none.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Records file to append to (default: ./fathom-runs/<host>-<gpu>.jsonl).")
@click.option("--no-record", is_flag=True, help="Do not append the result to a records file.")
@json_option
def quality(base, candidate, data, sequences, seq_len, seed, task_problems, max_new_tokens, dtype, device,
            tokenizer, out, no_record, as_json):
    """Compare CANDIDATE (e.g. a quantized checkpoint) with BASE on the same tokens.

    Reports per-token KL divergence (mean, p99, max), top-1 agreement, perplexity of each and, for
    the embedded demo model, task accuracy on held-out problems. The result is appended to --out
    (default: ./fathom-runs/) as a `quality` record.

    \b
        fathom convert demo ./demo-bf16
        fathom convert demo ./demo-fp8 --precision fp8
        fathom quality ./demo-bf16 ./demo-fp8
    """
    from fathom.runtime.loader import default_device
    from fathom.runtime.quality import QualityOptions, quality_record, run_quality

    options = QualityOptions(data=data, sequences=sequences, seq_len=seq_len, seed=seed, task_problems=task_problems,
                             max_new_tokens=max_new_tokens, dtype=dtype, device=device or default_device())
    result = run_quality(base, candidate, options, tokenizer_dir=tokenizer, progress=sys.stderr.isatty())
    saved = None
    if not no_record:
        from fathom.runtime.records import append_record

        saved = str(append_record(quality_record(result), out))
    if as_json:
        emit_json({**result, "record_file": saved})
        return
    m = result["metrics"]
    q = result["candidate"]["quantization"] or {}
    click.echo(f"{candidate} vs {base}  ({q.get('quant_algo') or 'unquantized'}, kv cache "
               f"{q.get('kv_cache_quant_algo') or 'unquantized'}; {m['tokens']} tokens, "
               f"{result['parameters']['token_source']})")
    click.echo(f"  top-1 agreement   {m['top1_agreement'] * 100:.2f}%")
    click.echo(f"  KL (nats)         mean {m['kl_mean']:.5f}  p99 {m['kl_p99']:.5f}  max {m['kl_max']:.5f}")
    click.echo(f"  perplexity        base {m['ppl_base']:.4f}  candidate {m['ppl_candidate']:.4f}")
    if m.get("completion"):
        c = m["completion"]
        click.echo(f"  answer tokens     top-1 {c['top1_agreement'] * 100:.2f}%  KL mean {c['kl_mean']:.5f}  "
                   f"p99 {c['kl_p99']:.5f}  ppl {c['ppl_base']:.4f} / {c['ppl_candidate']:.4f}  ({c['tokens']} tokens)")
    if m["task_skipped"]:
        click.echo(f"  task accuracy     skipped: {m['task_skipped']}")
    else:
        click.echo(f"  task accuracy     base {m['task_accuracy_base'] * 100:.1f}%  candidate "
                   f"{m['task_accuracy_candidate'] * 100:.1f}%  delta {m['task_accuracy_delta'] * 100:+.1f} pts "
                   f"({m['task_problems']} problems, {m['task_answers_differ']} answers differ)")
    if q.get("linear_paths"):
        click.echo(f"  kernels           {', '.join(f'{k} x{v}' for k, v in q['linear_paths'].items())}")
    if saved:
        click.echo(f"  record appended to {saved}")


COMMANDS = [quality]
