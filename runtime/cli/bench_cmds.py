"""`fathom bench`, `fathom report`, `fathom compare`: measure runs, then read them side by side.

Examples:

    fathom bench demo --num-requests 8 --input-len 32 --output-len 16
    fathom bench ./ckpt --concurrency 16 --slo-ttft-ms 500 --slo-tpot-ms 50
    fathom bench Fathom-R1-14B --endpoint http://127.0.0.1:8000 --request-rate 4
    fathom report fathom-runs/ --group-by gpu --plot report.png
    fathom compare bf16.jsonl fp8.jsonl --plot tradeoff.png
"""

from __future__ import annotations

import click
from click.core import ParameterSource

from .common import emit_json, is_tty, json_option, runtime_options

FORMATS = click.Choice(["table", "markdown", "json"])


@click.command()
@click.argument("model")
@runtime_options
@click.option("--input-len", type=click.IntRange(1), default=128, show_default=True, help="Prompt tokens (random dataset).")
@click.option("--output-len", type=click.IntRange(1), default=128, show_default=True, help="New tokens per request (EOS ignored).")
@click.option("--num-requests", type=click.IntRange(1), default=32, show_default=True, help="Measured requests.")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Static waves of this many requests.")
@click.option("--concurrency", type=click.IntRange(1), default=None, help="At most this many requests in flight.")
@click.option("--request-rate", type=click.FloatRange(0, min_open=True), default=None,
              help="Poisson arrivals, requests/s (default or inf: all at once).")
@click.option("--warmup", type=click.IntRange(0), default=None,
              help="Requests run first, not measured (default: one wave of the same shape).")
@click.option("--dataset", default="random", show_default=True, help="random, or a .jsonl file of {\"prompt\": ...}.")
@click.option("--slo-ttft-ms", type=click.FloatRange(0, min_open=True), default=None, help="Goodput: TTFT limit.")
@click.option("--slo-tpot-ms", type=click.FloatRange(0, min_open=True), default=None, help="Goodput: TPOT limit.")
@click.option("--endpoint", default=None, metavar="URL", help="Benchmark an OpenAI-compatible server; MODEL = served name.")
@click.option("--request-timeout-s", type=click.FloatRange(0, min_open=True), default=600.0, show_default=True,
              help="--endpoint: give up on a request after this long (socket timeout).")
@click.option("--profile/--no-profile", default=True, show_default=True, help="Sample GPUs/host with NVML.")
@click.option("--profile-interval-ms", type=click.FloatRange(1), default=100.0, show_default=True)
@click.option("--timeseries", is_flag=True, help="Also write the profiler's readings next to the records file.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Records file to append to (default: ./fathom-runs/<host>-<gpu>.jsonl).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random prompts and arrivals.")
@json_option
def bench(model, executor, dtype, device, tokenizer, threads, max_seq_len, hostfile, tp, torch_compile, input_len,
          output_len, num_requests, batch_size, concurrency, request_rate, warmup, dataset, slo_ttft_ms, slo_tpot_ms,
          endpoint, request_timeout_s, profile, profile_interval_ms, timeseries, out, seed, as_json):
    """Measure TTFT, TPOT, ITL, throughput, memory and energy of MODEL; append a run record."""
    from fathom.build.sources import resolve_model
    from fathom.runtime.bench import BenchTarget, ProfileOptions, bench_model
    from fathom.runtime.records import default_results_file
    from fathom.runtime.workload import WorkloadSpec

    if request_rate == float("inf"):  # vLLM's spelling of "all at once"
        request_rate = None
    if (endpoint is None and click.get_current_context().get_parameter_source("max_seq_len") is ParameterSource.DEFAULT
            and resolve_model(model).kind == "onnx"):
        max_seq_len = None  # the workload's longest prompt + output, at most the graph's positions
    workload = WorkloadSpec(input_len=input_len, output_len=output_len, num_requests=num_requests,
                            batch_size=batch_size, concurrency=concurrency, request_rate=request_rate, warmup=warmup,
                            dataset=dataset, slo_ttft_ms=slo_ttft_ms, slo_tpot_ms=slo_tpot_ms, seed=seed)
    target = BenchTarget(model, executor=executor, dtype=dtype, device=device, tokenizer=tokenizer,
                         max_seq_len=max_seq_len, threads=threads, hostfile=hostfile, tp=tp, compile=torch_compile,
                         endpoint=endpoint, request_timeout_s=request_timeout_s)
    profiling = ProfileOptions(enabled=profile, interval_ms=profile_interval_ms, timeseries=timeseries)
    record = bench_model(target, workload, profiling, out=out, progress=is_tty() and not as_json)
    path = out or default_results_file(record)
    if as_json:
        return emit_json({"records_file": str(path), "record": record})
    click.echo("\n".join(bench_summary(record)))
    click.echo(f"record appended to {path}")


def bench_summary(record: dict) -> list[str]:
    from fathom.runtime.report import fmt, in_flight, record_roofline, roofline_efficiency

    m, p, env = record["metrics"], record["parameters"], record["environment"]
    where = env.get("gpu_name") or f"cpu ({env['cpu'].get('model') or 'unknown'})"
    load = (f"batch {p['batch_size']}" if p["batch_size"] else f"{p['request_rate']} req/s" if p["request_rate"]
            else f"concurrency {p['max_in_flight']}")
    lines = [f"{record['model']['spec']} on {where}: {env.get('executor')} {env.get('precision') or ''}, "
             f"{m['completed']}/{p['num_requests']} requests ok, {p['input_len']} in / {p['output_len']} out, {load}",
             f"  duration {fmt(m['duration_s'])} s   requests/s {fmt(m['request_throughput_per_s'])}   "
             f"goodput {fmt(m['request_goodput_per_s'])}",
             f"  output tok/s {fmt(m['output_throughput_tok_per_s'])}   total tok/s {fmt(m['total_throughput_tok_per_s'])}"]
    for key, name in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E")):
        stats = "  ".join(f"{s} {fmt(m[f'{s}_{key}_ms'])}" for s in ("mean", "median", "p90", "p99"))
        lines.append(f"  {name:<5} ms  {stats}")
    gib = lambda v: f"{v / 2**30:.2f} GiB" if v is not None else "-"  # noqa: E731
    lines.append(f"  peak GPU memory {gib(m['peak_gpu_mem_used_bytes'])}   peak RSS {gib(m['peak_host_rss_bytes'])}   "
                 f"energy {fmt(m['energy_j'])} J   {fmt(m['energy_per_output_token_j'])} J/token")
    eff, roof = roofline_efficiency(record), record_roofline(record)
    if eff is not None:
        lines.append(f"  decode at {eff:.0%} of the {roof['gpu']} {roof['precision']} roofline "
                     f"(batch {in_flight(record)}, datasheet ceiling)")
    prof = record.get("profiler")
    if prof is None:
        lines.append("  profiler off (--no-profile)")
    elif prof.get("status") != "ok":
        lines.append(f"  profiler: {prof['status']}: {prof['reason']}")
    return lines


def _load(paths, sources: dict | None = None):
    from fathom.runtime.records import load_records

    return load_records(paths, sources=sources)


@click.command()
@click.argument("records", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--group-by", type=click.Choice(["gpu", "precision", "executor"]), default=None)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG of the report.")
@click.option("--format", "style", type=FORMATS, default="table", show_default=True)
def report(records, group_by, plot, style):
    """Side-by-side table of bench RECORDS (JSONL files or directories, any machines)."""
    from fathom.runtime.records import load_timeseries
    from fathom.runtime.report import format_report, report as make_report

    sources: dict = {}
    loaded = _load(records, sources)
    groups = make_report(loaded, group_by)
    click.echo(format_report(groups, style, group_by))
    if plot:
        from fathom.runtime.plots import report_plot

        series = {r["record_id"]: load_timeseries(r, sources[r["record_id"]]) for r in loaded if r.get("timeseries_path")}
        click.echo(f"plot written to {report_plot(loaded, plot, series)}", err=style == "json")


@click.command()
@click.argument("base", type=click.Path(exists=True))
@click.argument("candidates", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the Pareto plot (PNG).")
@click.option("--format", "style", type=FORMATS, default="table", show_default=True)
def compare(base, candidates, plot, style):
    """Quantization trade-off: BASE against each CANDIDATE (records files), one table, one plot.

    Each file contributes its latest bench record (tok/s, TTFT, memory, J/token) and its latest
    quality/eval record (accuracy), e.g. one file per precision.
    """
    import json
    from pathlib import Path

    from fathom.runtime.report import COMPARE_COLUMNS, compare as make_compare, render, subject_from_records

    subjects = [subject_from_records(Path(p).stem, _load([p])) for p in (base, *candidates)]
    rows = make_compare(subjects[0], subjects[1:])
    if style == "json":
        click.echo(json.dumps({"base": subjects[0].label, "rows": rows}, indent=2))
    else:
        acc = rows[0]["accuracy_metric"]
        columns = [(k, f"accuracy ({acc})" if k == "accuracy" and acc else h) for k, h in COMPARE_COLUMNS]
        click.echo(render(rows, columns, style))
    if plot:
        from fathom.runtime.plots import pareto_plot

        click.echo(f"plot written to {pareto_plot(rows, plot)}", err=style == "json")


COMMANDS = [bench, report, compare]
