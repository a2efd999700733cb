import json

from click.testing import CliRunner

from fathom.runtime.cli import main


def test_demo_runs_the_tour_and_writes_records_and_plot(tmp_path):
    out = tmp_path / "demo-out"
    r = CliRunner().invoke(main, ["demo", "--problems", "8", "--show", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    for needle in ("held-out accuracy", "fathom convert demo demo-fp8", "quant_algo FP8",
                   "identical outputs bf16 vs fp8", "trtllm-build --checkpoint_dir", "NVIDIA L40S"):
        assert needle in r.output
    png = out / "demo_compare.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds.count("bench") == 2 and kinds.count("eval") == 2
    for record in records:
        if record["kind"] == "eval":  # the card's protocol scaled down: sampled, pass@1 and cons@8
            assert record["parameters"]["samples"] == 8 and record["parameters"]["temperature"] == 0.6
            assert record["parameters"]["data"] == "builtin:demo" and "data" not in record["model"]
            assert 0 <= record["metrics"]["pass@1"] <= 1 and "cons@n" in record["metrics"]
    assert "cons@n" in r.output
