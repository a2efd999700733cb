"""PNG figures for `fathom report` and `fathom compare` (matplotlib, imported only when plotting).

Figures are drawn on an Agg canvas without pyplot, so no display and no global backend switch are
needed, and written to a temp sibling renamed at the end. A panel with nothing measured says so
instead of drawing zeros.
"""

from __future__ import annotations

import os
from pathlib import Path

from .records import get
from .report import GIB, bench_row, gpu_label, in_flight, roofline_efficiency

MAX_BARS = 12  # latest records shown in per-record bar panels


def _figure(nrows: int, ncols: int, width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _nothing(ax, title: str, message: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def series_label(record: dict) -> str:
    return f"{gpu_label(record)} / {get(record, 'environment.executor', '?')} / {get(record, 'environment.precision', '?')}"


def record_label(record: dict) -> str:
    b = in_flight(record)
    load = f"b{b}" if b else f"{get(record, 'parameters.request_rate')}/s"
    return f"{get(record, 'environment.executor', '?')} {get(record, 'environment.precision', '?')} {load}"


def _label(ax, title: str, xlabel: str | None, ylabel: str) -> None:
    ax.set_title(title)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def _bars(ax, labels: list[str], values: list[float], title: str, ylabel: str) -> None:
    ax.bar(range(len(values)), values, color="tab:blue")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_title(title)
    ax.set_ylabel(ylabel)


# ---- report -------------------------------------------------------------------------------------
def throughput_panel(ax, records: list[dict]) -> None:
    series: dict[str, dict[int, float]] = {}
    for r in records:  # oldest first: the latest run at each concurrency is drawn
        b, tps = in_flight(r), get(r, "metrics.output_throughput_tok_per_s")
        if b and tps is not None:
            series.setdefault(series_label(r), {})[b] = tps
    if not series:
        return _nothing(ax, "throughput vs concurrency", "no fixed-concurrency runs")
    for label, points in series.items():
        xs, ys = zip(*sorted(points.items()))
        ax.plot(xs, ys, marker="o", label=label)
    _label(ax, "throughput vs concurrency", "requests in flight", "output tok/s")


def latency_panel(ax, records: list[dict]) -> None:
    keys = [("median_ttft_ms", "TTFT p50"), ("p99_ttft_ms", "TTFT p99"), ("median_tpot_ms", "TPOT p50"),
            ("p99_tpot_ms", "TPOT p99")]
    shown = records[-MAX_BARS:]
    width = 0.8 / len(keys)
    for k, (key, name) in enumerate(keys):
        values = [get(r, f"metrics.{key}", float("nan")) for r in shown]
        ax.bar([i + k * width for i in range(len(shown))], values, width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shown))], [record_label(r) for r in shown],
                  rotation=30, ha="right", fontsize=7)
    ax.set_yscale("log")
    _label(ax, "latency percentiles", None, "ms")


def memory_timeline_panel(ax, records: list[dict], timeseries: dict[str, list[dict]]) -> None:
    drawn = False
    for r in records:
        rows = timeseries.get(r["record_id"])
        if not rows:
            continue
        ts = [row["t_s"] for row in rows]
        gpu = [sum(g["mem_used_bytes"] for g in row["gpus"] if g and g.get("mem_used_bytes") is not None) / GIB
               if any(g and g.get("mem_used_bytes") is not None for g in row["gpus"]) else None for row in rows]
        if any(v is not None for v in gpu):
            ax.plot(ts, [float("nan") if v is None else v for v in gpu], label=f"GPU {record_label(r)}")
        else:
            ax.plot(ts, [(row["rss_bytes"] or float("nan")) / GIB for row in rows], label=f"RSS {record_label(r)}")
        drawn = True
    if not drawn:
        return _nothing(ax, "memory timeline", "no time series in these records\n(fathom bench --timeseries)")
    _label(ax, "memory timeline", "s", "GiB used")


def energy_panel(ax, records: list[dict]) -> None:
    shown = [r for r in records if get(r, "metrics.energy_per_output_token_j") is not None][-MAX_BARS:]
    if not shown:
        return _nothing(ax, "energy per output token", "no GPU energy readings\n(NVML unavailable or no GPU)")
    _bars(ax, [record_label(r) for r in shown], [get(r, "metrics.energy_per_output_token_j") for r in shown],
          "energy per output token", "J / token")
    for i, r in enumerate(shown):
        windows = [w for w in get(r, "profiler.windows", []) if w.get("name") == "benchmark"]
        power = windows[-1].get("mean_power_w") if windows else None
        if power is not None:
            ax.annotate(f"{power:.0f} W", (i, get(r, "metrics.energy_per_output_token_j")), ha="center",
                        va="bottom", fontsize=7)


def roofline_panel(ax, records: list[dict]) -> None:
    best: dict[str, float] = {}
    for r in records:
        eff = roofline_efficiency(r)
        if eff is not None:
            key = f"{gpu_label(r)} {get(r, 'environment.precision', '')} b{in_flight(r)}"
            best[key] = max(best.get(key, 0.0), eff * 100)
    if not best:
        return _nothing(ax, "roofline efficiency", "no planner ceiling in these records")
    _bars(ax, list(best), list(best.values()), "roofline efficiency per GPU", "% of decode ceiling")
    ax.axhline(100, color="gray", linestyle="--", linewidth=1)


def memory_panel(ax, records: list[dict]) -> None:
    shown = records[-MAX_BARS:]
    rows = [bench_row(r) for r in shown]
    key, name = ("peak_gpu_mem_gib", "peak GPU memory (NVML)")
    if all(row[key] is None for row in rows):
        key, name = ("peak_rss_gib", "peak host RSS")
    if all(row[key] is None for row in rows):
        return _nothing(ax, "peak memory", "no memory readings")
    _bars(ax, [record_label(r) for r in shown], [row[key] if row[key] is not None else float("nan") for row in rows],
          name, "GiB")


def report_plot(records: list[dict], path: str | Path, timeseries: dict[str, list[dict]] | None = None) -> Path:
    """Six panels over bench records: throughput, latency, memory timeline, energy, roofline, memory."""
    bench = [r for r in records if r.get("kind") == "bench"]
    fig, axes = _figure(2, 3, 16, 9)
    throughput_panel(axes[0][0], bench)
    latency_panel(axes[0][1], bench)
    memory_timeline_panel(axes[0][2], bench, timeseries or {})
    energy_panel(axes[1][0], bench)
    roofline_panel(axes[1][1], bench)
    memory_panel(axes[1][2], bench)
    return _save(fig, path)


# ---- compare ------------------------------------------------------------------------------------
def pareto_front(points: list[tuple[float, float]], y_higher_is_better: bool) -> list[bool]:
    """For each (x, y): True when no other point is at least as good on both (x higher is better)."""
    sign = 1 if y_higher_is_better else -1

    def dominated(p, q) -> bool:
        return q[0] >= p[0] and sign * q[1] >= sign * p[1] and (q[0] > p[0] or sign * q[1] > sign * p[1])

    return [not any(dominated(p, q) for q in points if q is not p) for p in points]


def pareto_plot(rows: list[dict], path: str | Path) -> Path:
    """tok/s against accuracy when quality records exist, else against peak memory."""
    if any(r.get("accuracy") is not None for r in rows):
        key, ylabel, higher = "accuracy", f"accuracy ({rows[0]['accuracy_metric']})", True
    elif any(r.get("peak_gpu_mem_gib") is not None for r in rows):
        key, ylabel, higher = "peak_gpu_mem_gib", "peak GPU memory, GiB (lower is better)", False
    else:
        key, ylabel, higher = "peak_rss_gib", "peak host RSS, GiB (lower is better)", False
    fig, axes = _figure(1, 1, 7, 5)
    ax = axes[0][0]
    pts = [(r["output_throughput_tok_per_s"], r[key], r["label"]) for r in rows
           if r.get("output_throughput_tok_per_s") is not None and r.get(key) is not None]
    if not pts:
        _nothing(ax, "trade-off", "no run has both throughput and this measure")
        return _save(fig, path)
    front = pareto_front([(x, y) for x, y, _ in pts], higher)
    for (x, y, label), on_front in zip(pts, front):
        ax.scatter([x], [y], s=60, color="tab:red" if on_front else "tab:gray", zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    fx = sorted((x, y) for (x, y, _), f in zip(pts, front) if f)
    ax.plot([p[0] for p in fx], [p[1] for p in fx], color="tab:red", linewidth=1, label="Pareto front")
    _label(ax, "quantization trade-off", "output tok/s", ylabel)
    return _save(fig, path)
