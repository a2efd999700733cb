"""`fathom eval`: task accuracy with the model card's protocol (pass@1, pass@k, cons@n)."""

from __future__ import annotations

import sys
from dataclasses import replace

import click
from click.core import ParameterSource

from fathom.build.errors import FathomError

from .common import emit_json, json_option, open_runtime, runtime_options


def _grader_names():
    from fathom.runtime.eval.graders import GRADER_NAMES

    return GRADER_NAMES


@click.command("eval")
@click.argument("model", required=False)
@click.option("--data", default="builtin:aime25", show_default=True,
              help="FILE.jsonl ({\"problem\", \"answer\"[, \"id\"]} per line), builtin:aime25, builtin:hmmt25 "
                   "or builtin:demo (held-out problems of the embedded demo model's task).")
@click.option("-n", "--samples", type=click.IntRange(1), default=64, show_default=True, help="Samples per problem.")
@click.option("--temperature", type=click.FloatRange(0), default=0.6, show_default=True)
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(1), default=16384, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Each sample's seed derives from it.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N problems.")
@click.option("--endpoint", default=None, metavar="URL",
              help="Sample from an OpenAI-compatible server (/v1/completions) instead of in-process; MODEL = "
                   "served name, also resolved locally (or --tokenizer) to render the chat prompt.")
@click.option("--api-key", default=None, envvar="OPENAI_API_KEY", help="--endpoint: bearer key.")
@click.option("--concurrency", type=click.IntRange(1), default=16, show_default=True,
              help="--endpoint: requests in flight.")
@click.option("--grader", default="strict", show_default=True,
              help="strict (math-verify) or fathom-r1 (the card's rules).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Samples JSONL, one line per sample as it finishes.")
@click.option("--resume", is_flag=True, help="Continue --out: samples already there are not drawn again "
                                           "(same --temperature, --top-p, --max-new-tokens, --seed, --data "
                                           "and model: MODEL, --endpoint or the executor, dtype, "
                                           "precision and KV cache format; they are graded again with --grader).")
@click.option("--force", is_flag=True, help="Replace a non-empty --out instead of refusing it.")
@click.option("--regrade", type=click.Path(dir_okay=False), default=None, metavar="SAMPLES.jsonl",
              help="Grade recorded samples ({\"answer\", \"completion\"[, \"problem\"]} per line); no model.")
@click.option("--records", type=click.Path(dir_okay=False), default=None,
              help="Records file to append the result to (default: ./fathom-runs/<host>-<gpu>.jsonl).")
@click.option("--no-record", is_flag=True, help="Do not append the result to a records file.")
@runtime_options
@json_option
@click.pass_context
def eval_command(ctx, model, data, samples, temperature, top_p, max_new_tokens, seed, limit, endpoint, api_key,
                 concurrency, grader, out, resume, force, regrade, records, no_record, executor, dtype, device, tokenizer,
                 threads, max_seq_len, hostfile, tp, torch_compile, as_json):
    """Accuracy of MODEL on math problems, graded as the model card does.

    Samples each problem n times (defaults: the card's protocol, 64 samples at temperature 0.6,
    top-p 0.95, up to 16,384 tokens), grades the last \\boxed{} answer of each sample and reports
    pass@1 with a 95% interval, pass@k, cons@n (majority vote) and output tokens. The result is
    appended to the records file as an `eval` record (see `fathom compare`).

    \b
        fathom eval demo --data builtin:demo -n 8 --max-new-tokens 96
        fathom eval ./Fathom-R1-14B --data builtin:aime25 --out aime.jsonl --resume
        fathom eval Fathom-R1-14B --endpoint http://127.0.0.1:8000 --tokenizer ./Fathom-R1-14B
        fathom eval --regrade other-engine.jsonl --grader fathom-r1
    """
    if grader not in _grader_names():
        raise FathomError(f"--grader {grader!r}: expected one of {', '.join(_grader_names())}")
    if regrade:
        ignored = _given(ctx, lambda name: name not in REGRADE_PARAMETERS)
        if ignored:
            raise FathomError(f"--regrade grades recorded samples without a model; {', '.join(ignored)} do not "
                              "apply (drop them)")
        return _regrade(regrade, grader, as_json)
    if model is None:
        raise FathomError("MODEL: missing (give a model, or --regrade SAMPLES.jsonl to grade recorded samples)")
    ignored = _given(ctx, lambda name: name in EXECUTOR_PARAMETERS)
    if endpoint and ignored:
        raise FathomError(f"--endpoint and {', '.join(ignored)}: pick one (the endpoint's server runs its own "
                          "engine)")
    if resume and out is None:
        raise FathomError("--resume: continues an --out file; give --out FILE")
    from fathom.runtime.eval.data import load_problems
    from fathom.runtime.eval.run import EvalOptions, eval_record, run_eval, sample_source

    options = EvalOptions(samples=samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                          seed=seed, grader=grader, data=data)
    problems = load_problems(data, limit)
    if endpoint:
        backend, tok, info = _endpoint_backend(model, endpoint, api_key, concurrency, tokenizer)
        source = sample_source(model, endpoint=backend.url)
    else:
        from fathom.runtime.eval.backends import ExecutorBackend

        user_len = ctx.get_parameter_source("max_seq_len") is not ParameterSource.DEFAULT
        max_seq_len = _context_tokens(model, tokenizer, problems, max_new_tokens, max_seq_len if user_len else None)
        _, ex, tok = open_runtime(model, executor, dtype, device, tokenizer, max_seq_len, threads, hostfile, tp,
                                  torch_compile, prefix_reuse=True)
        held = ex.describe().get("max_seq_len")
        if held is not None and held < max_seq_len:
            raise FathomError(f"--max-new-tokens {max_new_tokens}: the longest prompt + the output need "
                              f"{max_seq_len} tokens, the model's context holds {held}")
        backend, info = ExecutorBackend(ex, tok), ex.describe()
        source = sample_source(model, info)
    result = run_eval(backend, tok, problems, replace(options, source=source), out=out, resume=resume, force=force,
                      progress=sys.stderr.isatty() and not as_json)
    saved = None
    if not no_record:
        from fathom.runtime.records import append_record

        saved = str(append_record(eval_record(result, {"spec": model, "endpoint": endpoint}, info), records))
    if as_json:
        return emit_json({**result, "record_file": saved})
    click.echo(f"{model} on {data}: {len(problems)} problems x {samples} samples, grader {grader}")
    click.echo("\n".join(metrics_lines(result["metrics"])))
    if out:
        click.echo(f"  samples in {out}")
    if saved:
        click.echo(f"  record appended to {saved}")


# The parameters --regrade uses, and those of the in-process executor (which --endpoint replaces).
REGRADE_PARAMETERS = ("regrade", "grader", "as_json")
EXECUTOR_PARAMETERS = ("executor", "dtype", "device", "threads", "max_seq_len", "hostfile", "tp", "torch_compile")


def _given(ctx: click.Context, wanted) -> list[str]:
    """The names (MODEL, --flag) of the parameters picked by `wanted(name)` that the command line set."""
    return [max(p.opts, key=len) if isinstance(p, click.Option) else p.human_readable_name for p in ctx.command.params
            if wanted(p.name) and ctx.get_parameter_source(p.name) is ParameterSource.COMMANDLINE]


def _context_tokens(model, tokenizer, problems, max_new_tokens: int, user_max_seq_len: int | None) -> int:
    """The executor's --max-seq-len: the longest prompt + --max-new-tokens, so the context never cuts
    a sample short of --max-new-tokens; a user's value smaller than that is refused."""
    from fathom.build.sources import resolve_model
    from fathom.runtime.chat import load_tokenizer
    from fathom.runtime.eval.run import render_prompt

    tok = load_tokenizer(resolve_model(model, tokenizer=tokenizer).tokenizer_dir, model)
    longest = max(len(render_prompt(tok, p)[1]) for p in problems)
    need = longest + max_new_tokens
    if user_max_seq_len is not None and user_max_seq_len < need:
        raise FathomError(f"--max-seq-len {user_max_seq_len}: the longest prompt ({longest} tokens) + "
                          f"--max-new-tokens ({max_new_tokens}) need {need}; raise it or leave it unset")
    return user_max_seq_len or need


def _endpoint_backend(model, endpoint, api_key, concurrency, tokenizer):
    from fathom.build.sources import resolve_model
    from fathom.runtime.chat import load_tokenizer
    from fathom.runtime.eval.backends import EndpointBackend

    tok_dir = tokenizer
    if tok_dir is None:
        try:
            tok_dir = resolve_model(model).tokenizer_dir
        except FathomError as e:
            raise FathomError(f"--endpoint: the chat prompt is rendered here; MODEL {model!r} is not a local "
                              "model, give --tokenizer DIR") from e
    backend = EndpointBackend(endpoint, model, api_key, concurrency)
    return backend, load_tokenizer(tok_dir, model), {"executor": "endpoint", "endpoint": backend.url}


def metrics_lines(m: dict) -> list[str]:
    lo, hi = m["pass@1_ci95"]
    t = m["tokens"]
    counts = ("not recorded" if t["mean"] is None
              else f"mean {t['mean']:.0f}  p50 {t['p50']:.0f}  p90 {t['p90']:.0f}")
    truncated = "not recorded" if t["truncated_share"] is None else f"{t['truncated_share'] * 100:.1f}%"
    lines = [f"  pass@1            {m['pass@1'] * 100:.2f}%  (95% CI {lo * 100:.2f} - {hi * 100:.2f})",
             "  pass@k            " + "  ".join(f"k={k} {v * 100:.2f}%" for k, v in m["pass@k"].items()),
             f"  cons@n            {m['cons@n'] * 100:.2f}%",
             f"  output tokens     {counts}  truncated {truncated}",
             f"  grader timeouts   {m.get('grader_timeouts', 0)}",
             "  problem           correct  majority (ok)"]
    for p in m["per_problem"]:
        mark = "yes" if p["majority_correct"] else "no"
        lines.append(f"    {str(p['id']):<15} {p['correct']:>3}/{p['samples']:<3}  "
                     f"{p['majority']} ({mark}; gold {p['gold']})")
    return lines


def _regrade(path, grader, as_json):
    from fathom.runtime.eval.regrade import regrade

    result = regrade(path, grader)
    if as_json:
        return emit_json(result)
    for row in result["samples"]:
        click.echo(f"{row['problem_id']}#{row['sample']}: {'correct' if row['correct'] else 'wrong'} "
                   f"(extracted {row['extracted']!r}, gold {row['answer']!r})")
    click.echo(f"{path}: {result['metrics']['samples']} samples, grader {result['grader']}")
    click.echo("\n".join(metrics_lines(result["metrics"])))


COMMANDS = [eval_command]
