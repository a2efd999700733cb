import json
import sys
from pathlib import Path

import pytest

from fathom.runtime import records
from fathom.runtime.records import RecordError, append_record, load_records, make_record, read_records

H100 = {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1", "driver_version": "550.54.15", "cuda_driver_version": "12.4"}


def bench_record(host: str, gpus: list[dict], tok_s: float = 100.0) -> dict:
    env = records.environment({"executor": "reference", "device": "cpu", "dtype": "float32"}, gpus)
    env["host"] = host
    return make_record("bench", {"spec": "random:tiny", "kind": "random"}, {"num_requests": 4},
                       {"output_throughput_tok_per_s": tok_s}, env)


def test_a_record_round_trips_through_a_jsonl_file(tmp_path):
    rec = bench_record("a", [H100])
    path = append_record(rec, tmp_path / "out.jsonl")
    append_record(bench_record("a", [H100], 200.0), path)
    back = read_records(path)
    assert back[0] == json.loads(json.dumps(rec))
    assert [r["metrics"]["output_throughput_tok_per_s"] for r in back] == [100.0, 200.0]
    assert len(path.read_text().splitlines()) == 2


def test_the_envelope_carries_version_kind_and_environment():
    rec = bench_record("a", [H100])
    assert rec["schema_version"] == records.SCHEMA_VERSION and rec["kind"] == "bench"
    env = rec["environment"]
    assert env["gpu_name"] == H100["name"] and env["driver_version"] == "550.54.15"
    assert env["precision"] == "fp32" and env["executor"] == "reference"
    assert env["torch_version"] and env["fathom_version"]
    assert env["cpu"]["logical_cores"] >= 1


def test_environment_reads_versions_without_importing_tensorrt_llm():
    had = "tensorrt_llm" in sys.modules
    records.environment()
    assert ("tensorrt_llm" in sys.modules) == had


def test_records_from_two_machines_merge_in_time_order_without_duplicates(tmp_path):
    a = bench_record("host-a", [H100])
    b = bench_record("host-b", [])
    b["created_at"] = "2000-01-01T00:00:00+00:00"
    file_a = append_record(a, tmp_path / "a" / "host-a.jsonl")
    file_b = append_record(b, tmp_path / "b" / "host-b.jsonl")
    append_record(a, file_b)  # the same record copied to the other machine's file
    sources = {}
    merged = load_records([file_a, tmp_path / "b"], sources=sources)
    assert [r["environment"]["host"] for r in merged] == ["host-b", "host-a"]
    assert sources[a["record_id"]] == file_a
    assert load_records([file_a, file_b], kind="quality") == []


def test_default_file_is_named_after_host_and_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_RESULTS_DIR", str(tmp_path))
    assert records.default_results_file(bench_record("My Host", [H100])) == tmp_path / "my-host-nvidia-h100-80gb-hbm3.jsonl"
    assert records.default_results_file(bench_record("h", [H100, H100])).name == "h-2x-nvidia-h100-80gb-hbm3.jsonl"
    rec = bench_record("h", [])
    assert append_record(rec) == tmp_path / "h-cpu.jsonl"
    monkeypatch.delenv("FATHOM_RESULTS_DIR")
    monkeypatch.chdir(tmp_path / "..")
    assert records.default_results_file(rec) == tmp_path.parent / "fathom-runs" / "h-cpu.jsonl"


def test_bad_lines_name_the_file_and_line(tmp_path):
    path = append_record(bench_record("a", []), tmp_path / "r.jsonl")
    with open(path, "a") as f:
        f.write('{"schema_version": 1, "kind": "bench"\n')
    with pytest.raises(RecordError, match=r"r\.jsonl:2: not valid JSON"):
        read_records(path)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(schema_version=99), "newer than this fathom"),
    (lambda r: r.pop("metrics"), "field 'metrics'"),
    (lambda r: r.update(kind=3), "field 'kind'"),
])
def test_records_breaking_the_schema_are_refused(tmp_path, change, message):
    rec = bench_record("a", [])
    change(rec)
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(RecordError, match=message):
        read_records(path)


def test_missing_paths_and_timeseries_are_reported(tmp_path):
    with pytest.raises(RecordError, match="no such records file"):
        load_records([tmp_path / "nope.jsonl"])
    rec = bench_record("a", [])
    rec["timeseries_path"] = "timeseries/x.jsonl"
    with pytest.raises(RecordError, match="cannot read"):
        records.load_timeseries(rec, tmp_path / "r.jsonl")


def test_get_reads_nested_fields():
    rec = bench_record("a", [H100])
    assert records.get(rec, "environment.gpus")[0]["uuid"] == "GPU-1"
    assert records.get(rec, "metrics.nope", 7) == 7
    assert records.get(rec, "profiler.status") is None


def test_quality_appends_to_out_else_to_fathom_runs_in_the_cwd(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from fathom.runtime.cli import main

    monkeypatch.delenv("FATHOM_RESULTS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    args = ["quality", "random:tiny", "random:tiny", "--sequences", "1", "--seq-len", "8", "--task-problems", "0",
            "--device", "cpu", "--json"]
    for extra, where in (([], tmp_path / "fathom-runs"), (["--out", "q.jsonl"], tmp_path)):
        res = CliRunner().invoke(main, args + extra)
        assert res.exit_code == 0, res.output
        saved = Path(json.loads(res.stdout)["record_file"]).resolve()
        assert saved.parent == where and [r["kind"] for r in read_records(saved)] == ["quality"]
