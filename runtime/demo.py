"""The steps of `fathom demo`, each a small function that prints its part of the tour.

1. the embedded model answers held-out problems (accuracy, tok/s, memory);
2. it is converted into TensorRT-LLM checkpoints, bf16 and FP8 (calibrated), and each checkpoint
   answers the same problems through the torch executor: the quantization trade-off side by side;
3. a short benchmark of both, a comparison table and a PNG (throughput vs accuracy, latency, memory);
4. the capacity plan for Fathom-R1-14B on H100 and L40S and the engine build it would run.
Every number printed is measured in this run, except the plan, which says it is a datasheet model.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fathom.build.precision import WeightFormat
from fathom.build.sources import ModelSource, resolve_model

from .eval.answers import extract_boxed
from .chat import load_tokenizer
from .executors import create_executor
from .nvml import host_peak_rss_bytes
from .task_eval import TaskResult, answer_problems, heldout_problems


EVAL_PROBLEMS, EVAL_SAMPLES = 16, 8  # the comparison's pass@1 / cons@8 (a card-style sampled eval)


@dataclass
class Variant:
    label: str
    source: ModelSource
    weight_bytes: int
    result: TaskResult
    describe: dict


def run_demo(n_problems: int, show: int, device: str, out_dir: Path, echo: Callable, secho: Callable) -> None:
    demo = resolve_model("demo")
    tok = load_tokenizer(demo.tokenizer_dir, "demo")
    problems = heldout_problems(n_problems)
    cfg = demo.config
    secho("== 1. the embedded model ==", bold=True)
    echo(f"Qwen2ForCausalLM, {cfg.num_params() / 1e6:.2f}M parameters: {cfg.num_hidden_layers} layers, hidden "
         f"{cfg.hidden_size}, {cfg.num_attention_heads} heads / {cfg.num_key_value_heads} KV heads; trained on "
         f"3-digit arithmetic in the R1 format (scripts/train_demo_model.py)")
    base, _ = answer(demo, tok, problems, device)
    for p, c, ok in list(zip(problems, base.completions, base.correct))[:show]:
        secho(f"\nQ: {p.user_message}", bold=True)
        secho(f"<think>\n{c.reasoning}\n</think>", dim=True)
        echo(f"A: {c.answer.strip()}   [{'correct' if ok else 'WRONG, expected ' + p.answer}]")
    echo(f"\nheld-out accuracy {sum(base.correct)}/{len(problems)} = {base.accuracy:.1%} (greedy); "
         f"{base.output_tok_s:.0f} output tok/s; peak RSS {host_peak_rss_bytes() / 2**20:.0f} MiB")

    secho("\n== 2. one artifact, two precisions: TensorRT-LLM checkpoints, bf16 vs FP8 ==", bold=True)
    with tempfile.TemporaryDirectory(prefix="fathom-demo-") as tmp:
        variants = [convert_and_answer(demo, Path(tmp), WeightFormat(word), tok, problems, device, echo)
                    for word in ("bf16", "fp8")]
        print_side_by_side(variants, echo)
        secho("\n== 3. benchmark and report ==", bold=True)
        bench_and_report(variants, out_dir, tok, device, echo)

    secho("\n== 4. planning Fathom-R1-14B for a GPU (datasheet roofline, no GPU needed) ==", bold=True)
    from fathom.engine.demo import demo_text

    echo(demo_text())


def answer(source: ModelSource, tok, problems, device: str) -> tuple[TaskResult, dict]:
    """Greedy answers through the default executor; also returns what the executor ran."""
    executor = create_executor("auto", source, dtype="float32", device=device, eos_ids=source.config.eos_token_ids,
                               max_seq_len=512)
    return answer_problems(executor, tok, problems), executor.describe()


def convert_and_answer(demo: ModelSource, tmp: Path, precision: WeightFormat, tok, problems, device: str,
                       echo) -> Variant:
    from fathom.build.convert import ConvertOptions
    from fathom.build.quant.calibrate import CalibConfig
    from fathom.build.quant.pipeline import QuantOptions, convert_quantized

    label = precision.value
    out = tmp / f"demo-{label}"
    # Calibration on 32 built-in sequences of 128 tokens: enough for a 4-layer model, a second on a CPU.
    result = convert_quantized(demo, out, ConvertOptions(dtype="bfloat16"),
                               QuantOptions(precision, calib=CalibConfig("builtin", 32, 128, 0)))
    q = result["quantization"]
    echo(f"fathom convert demo {out.name} --precision {precision}" + ("" if precision.dtype else " --dtype bfloat16")
         + f": {result['total_bytes'] / 2**20:.2f} MiB in {result['seconds']:.1f} s"
         + (f" (quant_algo {q['quant_algo']}, kv cache {q['kv_cache_quant_algo']})" if q["quant_algo"] else ""))
    source = resolve_model(str(out))
    res, describe = answer(source, tok, problems, device)
    return Variant(label, source, result["total_bytes"], res, describe)


def print_side_by_side(variants: list[Variant], echo) -> None:
    echo(f"\n{'':<30}" + "".join(f"{v.label:>22}" for v in variants))
    first = variants[0].result.problems[0]
    rows = [
        (f"answer: {first.question}", lambda v: f"\\boxed{{{extract_boxed(v.result.completions[0].text)}}}"),
        ("checkpoint bytes", lambda v: f"{v.weight_bytes / 2**20:.2f} MiB"),
        ("held-out accuracy", lambda v: f"{v.result.accuracy:.1%}"),
        ("output tok/s (CPU, fp32 math)", lambda v: f"{v.result.output_tok_s:.0f}"),
        ("linear kernels", lambda v: ",".join(k for k in sorted((v.describe.get("quantization") or {}).get(
            "linear_paths", {"dense": 0})) if k != "unquantized")),
        ("KV cache storage", lambda v: str(v.describe.get("kv_cache_dtype"))),
    ]
    for name, fn in rows:
        echo(f"{name:<30}" + "".join(f"{fn(v):>22}" for v in variants))
    a, b = variants[0].result.completions, variants[1].result.completions
    echo(f"identical outputs {variants[0].label} vs {variants[1].label}: "
         f"{sum(x.text == y.text for x, y in zip(a, b))}/{len(a)}")


def sampled_eval(v: Variant, tok, device: str) -> dict:
    """The model card's protocol, scaled down: EVAL_SAMPLES samples at temperature 0.6 of the first
    EVAL_PROBLEMS held-out problems (`fathom eval --data builtin:demo`); an eval run record."""
    from .eval.backends import ExecutorBackend
    from .eval.data import load_problems
    from .eval.run import EvalOptions, eval_record, run_eval

    # bfloat16 activations: the bf16 checkpoint runs as bf16, the FP8 one with its bf16 compute dtype.
    executor = create_executor("auto", v.source, dtype="bfloat16", device=device, eos_ids=v.source.config.eos_token_ids,
                               max_seq_len=512, prefix_reuse=True)
    problems = load_problems("builtin:demo", limit=EVAL_PROBLEMS)
    result = run_eval(ExecutorBackend(executor, tok), tok, problems,
                      EvalOptions(samples=EVAL_SAMPLES, max_new_tokens=128, data="builtin:demo"))
    return eval_record(result, {"spec": v.label, "path": str(v.source.path)}, executor.describe())


def bench_and_report(variants: list[Variant], out_dir: Path, tok, device: str, echo) -> None:
    from . import plots, records, report
    from .bench import BenchTarget, bench_model
    from .workload import WorkloadSpec

    out_dir.mkdir(parents=True, exist_ok=True)
    records_file = out_dir / "records.jsonl"
    subjects = []
    for v in variants:
        target = BenchTarget(str(v.source.path), dtype="float32", device="cpu", max_seq_len=128)
        rec = bench_model(target, WorkloadSpec(num_requests=8, input_len=32, output_len=32), out=records_file)
        accuracy = sampled_eval(v, tok, device)
        records.append_record(accuracy, records_file)
        subjects.append(report.Subject(v.label, rec, None, accuracy))
    rows = report.compare(subjects[0], subjects[1:])
    echo(report.render(rows, report.COMPARE_COLUMNS, "table"))
    echo(f"(accuracy = pass@1 and cons@n of {EVAL_SAMPLES} samples at temperature 0.6 on {EVAL_PROBLEMS} held-out "
         f"problems, the model card's protocol scaled down: fathom eval --data builtin:demo)")
    echo("(On a CPU, FP8 saves memory, not time: its matmuls are emulated. The speed-up needs an sm89+ GPU.)")
    png = plots.pareto_plot(rows, out_dir / "demo_compare.png")
    echo(f"records: {records_file}\nplot: {png}")

