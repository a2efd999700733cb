"""profiles/bench_cpu.py end to end in --quick mode: the record's structure and correctness, never its speed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fathom.profiles.bench_cpu import QUICK_PLAN, RESULTS_DIR, main


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    proc = subprocess.run([sys.executable, "-m", "fathom.profiles.bench_cpu", "--quick", "--variants", "eager",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def check_entry(entry: dict, repeats: int, *keys: str) -> None:
    assert entry["warmup_s"] > 0
    assert entry["executor"]["executor"] == "torch" and entry["executor"]["threads"] == 1
    for key in keys:
        assert key in entry, key
    runs = [v for k, v in entry.items() if k.endswith("_runs") or k in ("wall_s", "cpu_s")]
    assert runs and all(len(r) == repeats for r in runs)


def test_quick_record_has_every_case_and_matches_hf(quick_run):
    record, _ = quick_run
    repeats = QUICK_PLAN.repeats
    assert record["kind"] == "cpu_executor_benchmark" and record["quick"] is True
    assert record["plan"]["variants"] == ["eager"] and record["plan"]["repeats"] == repeats
    assert record["environment"]["torch_version"] and len(record["loadavg_before"]) == len(record["loadavg_after"]) == 3

    overhead = record["overhead"]
    assert [(c["model"], c["batch"], c["new_tokens"], c["target_min_speedup"]) for c in overhead] == [
        ("random:tiny", s.batch, s.new_tokens, s.target_min_speedup) for s in QUICK_PLAN.shapes]
    for case in overhead:
        assert set(case["variants"]) == {"eager"} and case["hf_tok_s"] > 0 and len(case["hf_wall_s"]) == repeats
        entry = case["variants"]["eager"]
        check_entry(entry, repeats, "tok_s", "speedup", "speedup_cpu_time")
        assert entry["tokens_match_hf"] is True and isinstance(entry["met"], bool)
        assert entry["met"] == (entry["speedup"] >= case["target_min_speedup"])
        assert case["reference"]["tokens_match_hf"] is True and case["reference"]["tok_s"] > 0

    [bound] = record["memory_bound"]
    assert bound["threads"] == 1 and bound["target_max_ratio"] == 1.25 and bound["decode_weights_pass_s"] > 0
    entry = bound["variants"]["eager"]
    check_entry(entry, repeats, "decode_s_per_token", "ratio_to_weights_pass")
    assert entry["met"] == (entry["ratio_to_weights_pass"] <= 1.25)

    [matmul] = record["matmul_rows"]
    assert matmul["threads"] == 1 and [e["rows"] for e in matmul["rows"]] == list(QUICK_PLAN.matmul_rows)
    assert matmul["rows"][0]["relative_to_first"] == 1.0 and all(e["s_per_matmul"] > 0 for e in matmul["rows"])

    assert [c["context_tokens"] for c in record["context_decode"]] == list(QUICK_PLAN.contexts)
    for case in record["context_decode"]:
        assert case["max_position_embeddings"] == 16384 and case["decode_tokens"] == QUICK_PLAN.context_decode_tokens
        entry = case["variants"]["eager"]
        check_entry(entry, repeats, "decode_tok_s", "prefill_s", "prefill_tok_s")
        assert entry["kv_peak_used_tokens"] > case["context_tokens"]


def test_summary_prints_the_record_as_markdown_tables(quick_run, tmp_path, capsys):
    record, stdout = quick_run
    path = tmp_path / "r.json"
    path.write_text(json.dumps(record))
    main(["--summary", str(path)])
    text = capsys.readouterr().out
    assert f"From `{path}`" in text and text.splitlines()[1:] == stdout.splitlines()[1:]
    assert "`--quick` record: a pipeline check" in text
    verdicts = [e["met"] for c in record["overhead"] + record["memory_bound"] for e in c["variants"].values()]
    assert f"Targets met: {sum(verdicts)} of 4." in text and text.count("met** |") == 4
    assert "| random:tiny | 8 | 16 | eager |" in text and "| random:tiny | 8 | 16 | reference |" in text
    assert text.count("| 1,024 | random:tiny | eager |") == 1


def test_the_readme_quotes_the_committed_record_with_a_verdict_per_case(capsys, monkeypatch):
    monkeypatch.chdir(RESULTS_DIR.parents[1])
    main(["--summary", "profiles/results/cpu_executor_vm.json"])
    text = capsys.readouterr().out
    record = json.loads((RESULTS_DIR / "cpu_executor_vm.json").read_text())
    verdicts = sum(len(c["variants"]) for c in record["overhead"] + record["memory_bound"])
    assert text.count("**met**") + text.count("**not met**") == verdicts
    assert record["quick"] is False and "tokens = HF" in text
    assert text.strip() in Path("README.md").read_text(), "README's tables differ from --summary of the record"


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "--repeats 0: expected >= 1"),
    (["--memory-bound-threads", "0"], "--memory-bound-threads [0]: expected counts >= 1"),
    (["--variants", "jit"], "invalid choice: 'jit'"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
