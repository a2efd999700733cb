"""Side-by-side tables of run records, across machines, and the quantization trade-off table.

A row is a flat dict of one bench record; unmeasured values stay None (printed as "-").
Roofline efficiency = measured decode tok/s (batch * 1000 / mean TPOT) / the planner's datasheet
ceiling at the same batch size: the one stored in the record (`roofline.decode_tok_per_s_by_batch`),
else the planner's (`fathom.engine.planner`) for a CUDA run whose GPU and precision it knows.
Otherwise there is no efficiency: never a guessed ceiling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from fathom.build.errors import FathomError

from .records import get

GROUP_BY = ("gpu", "precision", "executor")  # bench_row fields a report can group by
GIB = 2**30
# Accuracy axis of `compare`, preferred first -> the record kind and the metrics fields that give
# it. An eval record (fathom.runtime.eval) holds sampled accuracy on math problems; a quality
# record (fathom.runtime.quality) compares a candidate with a base: `task_accuracy_candidate` is the
# candidate's own accuracy, `task_accuracy_base` the base's.
ACCURACY_FIELDS = {"pass@1": ("eval", ("pass@1",)),
                   "task_accuracy": ("quality", ("task_accuracy", "task_accuracy_candidate")),
                   "top1_agreement": ("quality", ("top1_agreement",))}


def gpu_label(record: dict) -> str:
    gpus = get(record, "environment.gpus", [])
    if not gpus:
        return "cpu"
    name = gpus[0].get("name") or "gpu"
    return f"{len(gpus)}x {name}" if len(gpus) > 1 else name


def in_flight(record: dict) -> int | None:
    """Requests running together: the batch size or concurrency (None under a request rate)."""
    p = record.get("parameters", {})
    if p.get("mode") == "rate" and p.get("concurrency") is None:
        return None
    limit = p.get("batch_size") or p.get("concurrency") or p.get("num_requests")
    return min(limit, p["num_requests"]) if limit and p.get("num_requests") else limit


def planner_roofline(config: dict | None, gpu_name: str | None, precision: str | None, batch: int | None,
                     seq_len: int, kv_cache: str | None = None, tp: int = 1) -> dict | None:
    """The planner's decode ceiling (datasheet roofline) for a run; None when the planner, the GPU
    model or the precision is unknown to it. Batch 1: context ~0; batch B: mean context seq_len / 2."""
    if not (config and gpu_name and precision and batch):
        return None
    try:
        from fathom.build.config import ModelConfig
        from fathom.build.precision import KvCacheFormat, WeightFormat
        from fathom.engine import planner
        from fathom.engine.gpus import gpu_from_nvml_name
    except ImportError:
        return None
    gpu = gpu_from_nvml_name(gpu_name)
    if gpu is None or precision not in planner.ENGINE_PRECISIONS:
        return None
    weights = WeightFormat(precision)
    kv = KvCacheFormat(kv_cache) if kv_cache in tuple(KvCacheFormat) else KvCacheFormat.default_for(weights)
    out = {"source": "fathom.engine.planner", "gpu": gpu.key, "precision": weights.value, "kv_cache": kv.value,
           "seq_len": seq_len, "tp": tp, "decode_tok_per_s_by_batch": {}, "note": None}
    try:
        dep = planner.Deployment(weights, kv, seq_len=seq_len, tp=tp, max_batch_size=batch)
        p = planner.plan(ModelConfig(**config), gpu, dep)
    except FathomError as e:
        return out | {"note": f"no ceiling: {e}"}
    est = p.decode_batch1 if batch == 1 else p.decode_max_batch
    if est is None:
        return out | {"note": f"no ceiling: the planner finds no fit on {gpu.name}"}
    out["decode_tok_per_s_by_batch"][str(batch)] = est.ceiling
    return out


def record_roofline(record: dict) -> dict | None:
    """The ceiling stored in the record, else the planner's for the record's GPU run (if any)."""
    if record.get("roofline"):
        return record["roofline"]
    env = record.get("environment", {})
    if not str(env.get("device") or "").startswith("cuda"):
        return None  # a CPU run on a GPU machine is not measured against the GPU's roofline
    p = record.get("parameters", {})
    seq_len = (p.get("input_len") or 0) + (p.get("output_len") or 0)
    return planner_roofline(get(record, "model.config"), env.get("gpu_name"), env.get("precision"),
                            in_flight(record), max(seq_len, 1), get(record, "environment.kv_cache"),
                            get(record, "environment.executor_info.tp", 1))


def roofline_efficiency(record: dict) -> float | None:
    """(batch * 1000 / mean TPOT ms) / the decode ceiling at that batch; None without one."""
    ceilings = get(record_roofline(record) or {}, "decode_tok_per_s_by_batch", {})
    batch = in_flight(record)
    tpot = get(record, "metrics.mean_tpot_ms")
    ceiling = ceilings.get(str(batch)) if batch else None
    if not ceiling or not tpot:
        return None
    return batch * 1000 / tpot / ceiling


def _gib(value) -> float | None:
    return value / GIB if value is not None else None


def bench_row(record: dict) -> dict:
    m = record.get("metrics", {})
    p = record.get("parameters", {})
    return {
        "host": get(record, "environment.host"),
        "gpu": gpu_label(record),
        "executor": get(record, "environment.executor"),
        "precision": get(record, "environment.precision"),
        "model": get(record, "model.spec"),
        "in_flight": in_flight(record),
        "request_rate_per_s": p.get("request_rate"),
        "input_len": p.get("input_len"),
        "output_len": p.get("output_len"),
        "requests": m.get("completed"),
        "request_throughput_per_s": m.get("request_throughput_per_s"),
        "output_throughput_tok_per_s": m.get("output_throughput_tok_per_s"),
        "median_ttft_ms": m.get("median_ttft_ms"),
        "p99_ttft_ms": m.get("p99_ttft_ms"),
        "mean_tpot_ms": m.get("mean_tpot_ms"),
        "p99_tpot_ms": m.get("p99_tpot_ms"),
        "p99_itl_ms": m.get("p99_itl_ms"),
        "request_goodput_per_s": m.get("request_goodput_per_s"),
        "peak_gpu_mem_gib": _gib(m.get("peak_gpu_mem_used_bytes")),
        "peak_rss_gib": _gib(m.get("peak_host_rss_bytes")),
        "energy_per_output_token_j": m.get("energy_per_output_token_j"),
        "roofline_efficiency_pct": _pct(roofline_efficiency(record)),
        "created_at": record.get("created_at"),
    }


def _pct(value: float | None) -> float | None:
    return value * 100 if value is not None else None


# Columns of the text/markdown table: (row key, header).
TABLE_COLUMNS = [
    ("host", "host"), ("gpu", "gpu"), ("executor", "executor"), ("precision", "prec"), ("model", "model"),
    ("in_flight", "batch"), ("input_len", "in"), ("output_len", "out"), ("output_throughput_tok_per_s", "out tok/s"),
    ("request_throughput_per_s", "req/s"), ("median_ttft_ms", "TTFT p50 ms"), ("p99_ttft_ms", "TTFT p99 ms"),
    ("mean_tpot_ms", "TPOT ms"), ("p99_itl_ms", "ITL p99 ms"), ("request_goodput_per_s", "goodput req/s"),
    ("peak_gpu_mem_gib", "GPU mem GiB"), ("peak_rss_gib", "RSS GiB"), ("energy_per_output_token_j", "J/tok"),
    ("roofline_efficiency_pct", "roofline %"),
]


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if size >= 0.1 else f"{value:.3g}"


def render(rows: list[dict], columns: list[tuple[str, str]], style: str) -> str:
    """An aligned text table (`table`) or a GitHub markdown table (`markdown`)."""
    cells = [[fmt(r.get(key)) for key, _ in columns] for r in rows]
    headers = [h for _, h in columns]
    if style == "markdown":
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r.get(key), (int, float, type(None))) for r in rows) for key, _ in columns]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(c) for c in cells])


def report(records: list[dict], group_by: str | None = None) -> dict[str, list[dict]]:
    """Bench rows grouped by `group_by` (gpu | precision | executor); one group "all" without it."""
    if group_by is not None and group_by not in GROUP_BY:
        raise FathomError(f"--group-by {group_by!r}: expected one of {', '.join(GROUP_BY)}")
    rows = [bench_row(r) for r in records if r.get("kind") == "bench"]
    if not rows:
        raise FathomError("no bench records in the given files")
    groups: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (str(r.get(group_by)) if group_by else "", r["gpu"], str(r["executor"]),
                                          str(r["precision"]), r["in_flight"] or 0, r["created_at"] or "")):
        groups.setdefault(str(row.get(group_by)) if group_by else "all", []).append(row)
    return groups


def format_report(groups: dict[str, list[dict]], style: str, group_by: str | None) -> str:
    if style == "json":
        return json.dumps({"group_by": group_by, "groups": groups}, indent=2)
    parts = []
    for name, rows in groups.items():
        if group_by:
            parts.append(f"{'### ' if style == 'markdown' else ''}{group_by}: {name}")
        parts.append(render(rows, TABLE_COLUMNS, style))
    return "\n\n".join(parts)


# ---- compare ---------------------------------------------------------------------------------
@dataclass
class Subject:
    """One side of a comparison: its latest bench, quality and eval records."""

    label: str
    bench: dict | None
    quality: dict | None
    eval: dict | None = None


def subject_from_records(label: str, records: list[dict]) -> Subject:
    latest = {kind: next((r for r in reversed(records) if r.get("kind") == kind), None)
              for kind in ("bench", "quality", "eval")}
    if not any(latest.values()):
        raise FathomError(f"{label}: no bench, quality or eval records")
    return Subject(label, latest["bench"], latest["quality"], latest["eval"])


def subject_accuracy(s: Subject, key: str) -> float | None:
    kind, fields = ACCURACY_FIELDS[key]
    record = (s.eval if kind == "eval" else s.quality) or {}
    return next((v for v in (get(record, f"metrics.{f}") for f in fields) if v is not None), None)


def accuracy_key(subjects: list[Subject]) -> str | None:
    return next((k for k in ACCURACY_FIELDS if any(subject_accuracy(s, k) is not None for s in subjects)), None)


# Eval parameters that decide what an accuracy measures: records that differ in them do not compare.
# The seed may differ: another seed draws another sample of the same measurement.
EVAL_COMPARABLE = ("data", "problems", "grader", "samples", "temperature", "top_p", "max_new_tokens")


def check_evals_comparable(subjects: list[Subject]) -> None:
    """Refuse eval records that differ in any of `EVAL_COMPARABLE` (data, problem count, grader,
    samples per problem, sampling settings)."""
    evals = [(s.label, s.eval.get("parameters") or {}) for s in subjects if s.eval]
    for field in EVAL_COMPARABLE:
        values = {label: params.get(field) for label, params in evals}
        if len(set(map(repr, values.values()))) > 1:
            shown = ", ".join(f"{v!r} for {label}" for label, v in values.items())
            raise FathomError(f"compare: the eval records differ in {field} ({shown}); their accuracies "
                              f"compare only with the same {', '.join(EVAL_COMPARABLE)}")


def compare(base: Subject, candidates: list[Subject]) -> list[dict]:
    """One row per subject (base first) with ratios to the base: the quantization trade-off.
    Eval records must share `EVAL_COMPARABLE` (`check_evals_comparable`)."""
    subjects = [base, *candidates]
    check_evals_comparable(subjects)
    acc = accuracy_key(subjects)
    rows = []
    for s in subjects:
        b, q = s.bench or {}, s.quality or {}
        rows.append({
            "label": s.label,
            "precision": (get(b, "environment.precision") or get(q, "environment.precision")
                          or get(s.eval or {}, "environment.precision")),
            "gpu": gpu_label(b) if b else None,
            "output_throughput_tok_per_s": get(b, "metrics.output_throughput_tok_per_s"),
            "median_ttft_ms": get(b, "metrics.median_ttft_ms"),
            "mean_tpot_ms": get(b, "metrics.mean_tpot_ms"),
            "peak_gpu_mem_gib": _gib(get(b, "metrics.peak_gpu_mem_used_bytes")),
            "peak_rss_gib": _gib(get(b, "metrics.peak_host_rss_bytes")),
            "energy_per_output_token_j": get(b, "metrics.energy_per_output_token_j"),
            "accuracy_metric": acc,
            "accuracy": subject_accuracy(s, acc) if acc else None,
            "top1_agreement": get(q, "metrics.top1_agreement"),
            "kl_mean": get(q, "metrics.kl_mean"),
            "cons@n": get(s.eval or {}, "metrics.cons@n"),
        })
    ref = rows[0]
    if acc == "task_accuracy" and ref["accuracy"] is None:  # the base measured inside a candidate's record
        ref["accuracy"] = next((get(c.quality, "metrics.task_accuracy_base") for c in candidates
                                if get(c.quality or {}, "metrics.task_accuracy_base") is not None), None)
    for row in rows:
        row["speedup_x"] = _ratio(row["output_throughput_tok_per_s"], ref["output_throughput_tok_per_s"])
        row["gpu_mem_x"] = _ratio(row["peak_gpu_mem_gib"], ref["peak_gpu_mem_gib"])
        row["accuracy_delta"] = (row["accuracy"] - ref["accuracy"]
                                 if row["accuracy"] is not None and ref["accuracy"] is not None else None)
    return rows


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


COMPARE_COLUMNS = [
    ("label", "run"), ("precision", "prec"), ("gpu", "gpu"), ("output_throughput_tok_per_s", "out tok/s"),
    ("speedup_x", "x base"), ("median_ttft_ms", "TTFT p50 ms"), ("mean_tpot_ms", "TPOT ms"),
    ("peak_gpu_mem_gib", "GPU mem GiB"), ("gpu_mem_x", "mem x base"), ("peak_rss_gib", "RSS GiB"),
    ("energy_per_output_token_j", "J/tok"), ("accuracy", "accuracy"), ("accuracy_delta", "acc delta"),
    ("cons@n", "cons@n"),
    ("top1_agreement", "top-1 agree"), ("kl_mean", "KL mean"),
]
