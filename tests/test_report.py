import json
from dataclasses import asdict

import pytest
from click.testing import CliRunner

from fathom.build.config import preset
from fathom.build.errors import FathomError
from fathom.runtime import plots, records, report
from fathom.runtime.cli import main

H100 = {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1"}
L40S = {"name": "NVIDIA L40S", "uuid": "GPU-2"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bench(host="a", gpus=(H100,), precision="bf16", executor="torch", batch=1, tok_s=100.0, tpot_ms=10.0,
          energy_per_tok=0.5, mem=40 * 2**30, device="cuda:0", roofline=None, timeseries_path=None) -> dict:
    env = records.environment({"executor": executor, "device": device, "dtype": "bfloat16", "precision": precision},
                              list(gpus))
    env["host"] = host
    metrics = {"completed": 8, "output_throughput_tok_per_s": tok_s, "request_throughput_per_s": 1.0,
               "median_ttft_ms": 50.0, "p99_ttft_ms": 80.0, "mean_tpot_ms": tpot_ms, "median_tpot_ms": tpot_ms,
               "p99_tpot_ms": tpot_ms * 1.5, "energy_per_output_token_j": energy_per_tok,
               "peak_gpu_mem_used_bytes": mem, "peak_host_rss_bytes": 2**30}
    params = {"mode": "batch", "batch_size": batch, "concurrency": None, "num_requests": 8, "request_rate": None,
              "input_len": 128, "output_len": 128}
    rec = records.make_record("bench", {"spec": "demo", "config": None}, params, metrics, env,
                              {"windows": [{"name": "benchmark", "mean_power_w": 350.0}]}, timeseries_path, roofline)
    return rec


def quality(precision: str, **metrics) -> dict:
    env = records.environment({"precision": precision})
    return records.make_record("quality", {"spec": "demo"}, {}, metrics, env)


def test_rows_group_by_gpu_and_show_measured_values():
    recs = [bench(gpus=(L40S,), tok_s=50.0), bench(tok_s=1234.5), bench(gpus=(), device="cpu", mem=None, energy_per_tok=None)]
    groups = report.report(recs, "gpu")
    assert list(groups) == ["NVIDIA H100 80GB HBM3", "NVIDIA L40S", "cpu"]
    text = report.format_report(groups, "table", "gpu")
    assert "gpu: NVIDIA L40S" in text and "1,234" in text and "40.0" in text  # tok/s and GiB
    cpu_line = [line for line in text.splitlines() if line.startswith("a ") and " cpu " in line][0]
    assert " - " in cpu_line  # unmeasured GPU memory and energy print as "-"
    md = report.format_report(groups, "markdown", "gpu")
    assert "### gpu: cpu" in md and "| out tok/s |" in md
    data = json.loads(report.format_report(groups, "json", "gpu"))
    assert data["groups"]["NVIDIA L40S"][0]["output_throughput_tok_per_s"] == 50.0


def test_group_by_rejects_unknown_keys_and_needs_bench_records():
    with pytest.raises(FathomError, match="--group-by"):
        report.report([bench()], "host")
    with pytest.raises(FathomError, match="no bench records"):
        report.report([quality("fp8", top1_agreement=0.9)])


def test_roofline_efficiency_uses_the_ceiling_stored_in_the_record():
    ceiling = {"decode_tok_per_s_by_batch": {"1": 125.0}}
    assert report.roofline_efficiency(bench(tpot_ms=10.0, roofline=ceiling)) == pytest.approx(0.8)
    assert report.roofline_efficiency(bench(batch=8, tpot_ms=10.0, roofline=ceiling)) is None  # other batch
    assert report.roofline_efficiency(bench(tpot_ms=10.0)) is None  # no ceiling, no config: none invented


def test_planner_ceiling_for_a_gpu_run_matches_the_reference_anchor():
    pytest.importorskip("fathom.engine.planner")
    config = {k: v for k, v in asdict(preset("fathom-r1-14b")).items() if k != "source"}
    roof = report.planner_roofline(config, H100["name"], "bf16", 1, 2048)
    # ~113 tok/s bf16 on H100 (docs/REFERENCE.md, GPU datasheets)
    assert 100 < roof["decode_tok_per_s_by_batch"]["1"] < 130
    assert (roof["precision"], roof["kv_cache"]) == ("bf16", "model")  # the KV cache word of an unquantized cache
    fp8_kv = report.planner_roofline(config, H100["name"], "bf16", 1, 2048, kv_cache="fp8")
    assert fp8_kv["kv_cache"] == "fp8"
    assert report.planner_roofline(config, "Some Unknown GPU", "bf16", 1, 2048) is None
    assert report.planner_roofline(config, H100["name"], "fp32", 1, 2048) is None  # not an engine precision
    cpu_run = bench(device="cpu")
    cpu_run["model"]["config"] = config
    assert report.record_roofline(cpu_run) is None  # a CPU run is not held against the GPU's roofline


def test_compare_puts_throughput_memory_energy_and_accuracy_side_by_side():
    base = report.Subject("bf16", bench(tok_s=100.0, mem=40 * 2**30), quality("bf16", task_accuracy=0.80))
    fp8 = report.Subject("fp8", bench(precision="fp8", tok_s=180.0, mem=24 * 2**30),
                         quality("fp8", task_accuracy=0.78, top1_agreement=0.97, kl_mean=0.01))
    rows = report.compare(base, [fp8])
    assert rows[1]["speedup_x"] == pytest.approx(1.8) and rows[1]["gpu_mem_x"] == pytest.approx(0.6)
    assert rows[1]["accuracy_metric"] == "task_accuracy" and rows[1]["accuracy_delta"] == pytest.approx(-0.02)
    assert rows[0]["accuracy_delta"] == 0 and rows[1]["top1_agreement"] == 0.97
    text = report.render(rows, report.COMPARE_COLUMNS, "table")
    assert "1.80" in text and "fp8" in text


def test_compare_reads_the_base_accuracy_from_a_candidates_quality_record():
    base = report.Subject("bf16", bench(tok_s=100.0), None)
    fp8 = report.Subject("fp8", bench(precision="fp8", tok_s=150.0),
                         quality("fp8", task_accuracy_base=0.75, task_accuracy_candidate=0.70, top1_agreement=0.9))
    rows = report.compare(base, [fp8])
    assert [r["accuracy"] for r in rows] == [0.75, 0.70]
    assert rows[1]["accuracy_delta"] == pytest.approx(-0.05) and rows[0]["top1_agreement"] is None


def test_compare_prefers_eval_pass_at_1_and_shows_cons_at_n(tmp_path):
    evals = [records.make_record("eval", {"spec": "demo"}, {}, {"pass@1": p1, "cons@n": cons},
                                 records.environment({"precision": prec}))
             for prec, p1, cons in (("bf16", 0.90, 1.0), ("fp8", 0.85, 0.75))]
    files = []
    for prec, ev in zip(("bf16", "fp8"), evals):
        files.append(tmp_path / f"{prec}.jsonl")
        records.append_record(bench(precision=prec, tok_s=100.0), files[-1])
        records.append_record(ev, files[-1])
        records.append_record(quality(prec, top1_agreement=0.9), files[-1])  # a later quality record
    subjects = [report.subject_from_records(f.stem, records.read_records(f)) for f in files]
    rows = report.compare(subjects[0], subjects[1:])
    assert rows[1]["accuracy_metric"] == "pass@1" and rows[1]["accuracy_delta"] == pytest.approx(-0.05)
    assert [r["cons@n"] for r in rows] == [1.0, 0.75] and rows[1]["top1_agreement"] == 0.9
    res = CliRunner().invoke(main, ["compare", str(files[0]), str(files[1])])
    assert res.exit_code == 0 and "accuracy (pass@1)" in res.output and "cons@n" in res.output


def test_pareto_front_keeps_points_no_other_point_beats_on_both_axes():
    pts = [(100, 0.80), (180, 0.78), (150, 0.70), (90, 0.85)]
    assert plots.pareto_front(pts, y_higher_is_better=True) == [True, True, False, True]
    mem = [(100, 40.0), (180, 24.0), (150, 30.0)]
    assert plots.pareto_front(mem, y_higher_is_better=False) == [False, True, False]


def test_report_and_pareto_plots_are_written_as_png(tmp_path):
    ts = [{"t_s": 0.0, "rss_bytes": 2**30, "gpus": [{"mem_used_bytes": 2**33}]},
          {"t_s": 0.1, "rss_bytes": 2**30, "gpus": [{"mem_used_bytes": 2**34}]}]
    recs = [bench(batch=1, roofline={"decode_tok_per_s_by_batch": {"1": 125.0}}), bench(batch=8, tok_s=700.0)]
    out = plots.report_plot(recs, tmp_path / "report.png", {recs[0]["record_id"]: ts})
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 10_000
    rows = report.compare(report.Subject("bf16", recs[0], None), [report.Subject("fp8", bench(tok_s=190.0, mem=2**34), None)])
    pareto = plots.pareto_plot(rows, tmp_path / "pareto.png")
    assert pareto.read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.glob(".*tmp*"))  # no temp files left behind


def test_report_and_compare_commands(tmp_path):
    bf16, fp8 = tmp_path / "bf16.jsonl", tmp_path / "fp8.jsonl"
    records.append_record(bench(tok_s=100.0), bf16)
    records.append_record(quality("bf16", top1_agreement=1.0), bf16)
    records.append_record(bench(host="b", gpus=(L40S,), precision="fp8", tok_s=150.0), fp8)
    records.append_record(quality("fp8", top1_agreement=0.95), fp8)
    runner = CliRunner()
    res = runner.invoke(main, ["report", str(bf16), str(fp8), "--group-by", "precision", "--format", "json",
                               "--plot", str(tmp_path / "r.png")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data["groups"]) == {"bf16", "fp8"} and (tmp_path / "r.png").stat().st_size > 0
    res = runner.invoke(main, ["compare", str(bf16), str(fp8), "--plot", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    assert "accuracy (top1_agreement)" in res.output and "0.95" in res.output
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_MAGIC
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    res = runner.invoke(main, ["report", str(bad)])
    assert res.exit_code == 1 and "bad.jsonl:1: not valid JSON" in res.output and "Traceback" not in res.output


EVAL_PARAMS = {"data": "builtin:aime25", "problems": 30, "grader": "strict", "samples": 64, "temperature": 0.6,
               "top_p": 0.95, "max_new_tokens": 16384, "seed": 0}


@pytest.mark.parametrize("field, other", [
    ("data", "builtin:hmmt25"), ("grader", "fathom-r1"), ("samples", 8), ("problems", 5), ("temperature", 1.0),
    ("top_p", 1.0), ("max_new_tokens", 4096),
])
def test_compare_refuses_eval_records_of_other_data_grader_or_samples(tmp_path, field, other):
    params = EVAL_PARAMS
    files = []
    for prec, p in (("bf16", params), ("fp8", {**params, field: other})):
        files.append(tmp_path / f"{prec}.jsonl")
        records.append_record(records.make_record("eval", {"spec": "demo"}, p, {"pass@1": 0.5, "cons@n": 0.5},
                                                  records.environment({"precision": prec})), files[-1])
    res = CliRunner().invoke(main, ["compare", str(files[0]), str(files[1])])
    assert res.exit_code != 0 and f"the eval records differ in {field}" in res.output
    assert "Traceback" not in res.output


def test_compare_accepts_eval_records_of_another_seed(tmp_path):
    files = []
    for prec, seed in (("bf16", 0), ("fp8", 1)):
        files.append(tmp_path / f"{prec}.jsonl")
        records.append_record(records.make_record("eval", {"spec": "demo"}, {**EVAL_PARAMS, "seed": seed},
                                                  {"pass@1": 0.5, "cons@n": 0.5},
                                                  records.environment({"precision": prec})), files[-1])
    res = CliRunner().invoke(main, ["compare", str(files[0]), str(files[1])])
    assert res.exit_code == 0, res.output
