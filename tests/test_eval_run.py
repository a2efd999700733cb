"""fathom eval: data and prompts, in-process and endpoint sampling, the samples file, resume, regrade, CLI."""

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner
from serve_harness import demo_state, running

from fathom.build.errors import FathomError
from fathom.runtime.arith import PROMPT_SUFFIX, make_problems
from fathom.runtime.cli import main
from fathom.runtime.cli.common import open_runtime
from fathom.runtime.eval.backends import EndpointBackend, ExecutorBackend, SampleOutput
from fathom.runtime.eval.data import DEMO_PROBLEMS, Problem, load_problems
from fathom.runtime.eval.regrade import regrade
from fathom.runtime.eval.run import EvalOptions, render_prompt, run_eval, sample_seed

# Small and fast: the demo model answers in ~60 tokens.
OPTIONS = EvalOptions(samples=3, temperature=0.6, top_p=0.95, max_new_tokens=96, seed=7)
DEMO_ARGS = ["--data", "builtin:demo", "-n", "3", "--limit", "2", "--max-new-tokens", "96", "--seed", "7",
             "--executor", "torch", "--dtype", "float32", "--device", "cpu", "--no-record"]


@pytest.fixture(scope="module")
def demo_runtime():
    _, ex, tok = open_runtime("demo", "torch", "float32", "cpu", None, 256, 1, max_num_seqs=8, prefix_reuse=True)
    return ex, tok


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def read_rows(path):
    return [json.loads(line) for line in open(path)]


# ---- data ----------------------------------------------------------------------------------
def test_builtins_load():
    aime, hmmt = load_problems("builtin:aime25"), load_problems("builtin:hmmt25")
    assert len(aime) == 30 and len(hmmt) == 30
    assert aime[0].id == "1" and aime[0].answer == "70"  # integer answers become text
    assert load_problems("builtin:hmmt25", limit=4) == hmmt[:4]
    demo = load_problems("builtin:demo")
    assert len(demo) == DEMO_PROBLEMS and demo[0].problem.startswith("What is ")
    assert load_problems("builtin:demo", limit=5) == demo[:5]


def test_file_ids_optional(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"problem": "1+1?", "answer": 2},
                                              {"problem": "x?", "answer": "\\frac{1}{2}"}])
    assert load_problems(path) == [Problem("1", "1+1?", "2"), Problem("2", "x?", "\\frac{1}{2}")]


@pytest.mark.parametrize("rows, message", [
    ([], "no problems (empty file)"),
    ([{"answer": "1"}], ":1: field 'problem' missing"),
    ([{"problem": "a"}], ":1: field 'answer' missing"),
    ([{"problem": "a", "answer": "1"}, {"problem": "", "answer": "1"}], ":2: field 'problem' must be a non-empty"),
    ([{"problem": "a", "answer": None}], ":1: field 'answer' must be"),
    (["[1, 2]"], ":1: expected a JSON object"),
    (["{not json"], ":1: not valid JSON"),
    ([{"id": 1, "problem": "a", "answer": 1}, {"id": "1", "problem": "b", "answer": 2}], ":2: id '1' repeats"),
])
def test_file_errors_one_line(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(FathomError) as e:
        load_problems(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_spec_errors():
    with pytest.raises(FathomError, match="unknown builtin, expected one of builtin:aime25"):
        load_problems("builtin:aime24")
    with pytest.raises(FathomError, match="no such file"):
        load_problems("missing.jsonl")
    with pytest.raises(FathomError, match="--limit 0"):
        load_problems("builtin:aime25", limit=0)


# ---- prompts -------------------------------------------------------------------------------
def test_prompt_is_the_cards(demo_runtime):
    _, tok = demo_runtime
    p = load_problems("builtin:aime25")[0]
    sentence = "Please reason step by step, and put your final answer within \\boxed{}."
    card = [{"role": "system", "content": sentence}, {"role": "user", "content": sentence + " \n" + p.problem}]
    assert p.messages() == card
    text, ids = render_prompt(tok, p)
    assert text == tok.apply_chat_template(card, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<think>\n") and ids == tok.encode(text, add_special_tokens=False)


def test_demo_prompt_is_the_trained_format():
    p = load_problems("builtin:demo", limit=1)[0]
    assert p.messages() == [{"role": "user", "content": f"{p.problem} {PROMPT_SUFFIX}"}]


# ---- in-process run, resume --------------------------------------------------------------------
def test_in_process_eval_writes_samples_and_metrics(demo_runtime, tmp_path):
    ex, tok = demo_runtime
    out = tmp_path / "samples.jsonl"
    problems = load_problems("builtin:demo", limit=3)
    result = run_eval(ExecutorBackend(ex, tok), tok, problems, OPTIONS, out=str(out))
    rows = read_rows(out)
    assert len(rows) == 9
    assert {(r["problem_id"], r["sample"]) for r in rows} == {(p.id, k) for p in problems for k in range(3)}
    first = next(r for r in rows if r["problem_id"] == "1" and r["sample"] == 0)
    assert set(first) == {"problem_id", "sample", "problem", "answer", "completion", "extracted", "correct",
                          "output_tokens", "truncated", "settings"}
    assert first["settings"] == OPTIONS.settings()
    assert first["problem"] == problems[0].problem and first["answer"] == problems[0].answer
    assert first["output_tokens"] > 0 and first["truncated"] is False
    m = result["metrics"]
    assert m["problems"] == 3 and m["samples"] == 9
    assert m["pass@1"] == sum(r["correct"] for r in rows) / 9
    assert m["pass@1"] >= 0.5  # the demo model solves its task
    assert result["parameters"]["samples"] == 3 and result["parameters"]["resumed_samples"] == 0


class CountingBackend:
    def __init__(self, inner):
        self.inner, self.jobs = inner, []

    def generate(self, jobs, params):
        self.jobs += [(j.problem.id, j.sample) for j in jobs]
        yield from self.inner.generate(jobs, params)


def test_resume_after_truncated_file(demo_runtime, tmp_path):
    ex, tok = demo_runtime
    problems = load_problems("builtin:demo", limit=2)
    out = tmp_path / "samples.jsonl"
    full = run_eval(ExecutorBackend(ex, tok), tok, problems, OPTIONS, out=str(out))
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:25])  # interrupted in the middle of the third line
    kept = {(r["problem_id"], r["sample"]) for r in map(json.loads, lines[:2])}
    counting = CountingBackend(ExecutorBackend(ex, tok))
    resumed = run_eval(counting, tok, problems, OPTIONS, out=str(out), resume=True)
    assert len(counting.jobs) == 4 and not kept & set(counting.jobs)
    assert resumed["parameters"]["resumed_samples"] == 2
    key = lambda r: (r["problem_id"], r["sample"])  # noqa: E731
    assert sorted(read_rows(out), key=key) == sorted(map(json.loads, lines), key=key)  # same draws
    assert resumed["metrics"] == full["metrics"]
    again = CountingBackend(ExecutorBackend(ex, tok))
    run_eval(again, tok, problems, OPTIONS, out=str(out), resume=True)
    assert again.jobs == []


def test_resume_needs_out_and_same_data(demo_runtime, tmp_path):
    ex, tok = demo_runtime
    problems = load_problems("builtin:demo", limit=1)
    with pytest.raises(FathomError, match="--resume: continues an --out file"):
        run_eval(ExecutorBackend(ex, tok), tok, problems, OPTIONS, resume=True)
    out = write_jsonl(tmp_path / "s.jsonl", [{"problem_id": "1", "sample": 0, "problem": "?", "answer": "-1",
                                              "completion": "", "output_tokens": 1, "truncated": False,
                                              "settings": OPTIONS.settings()}])
    before = open(out).read()
    with pytest.raises(FathomError, match="not the same data set"):
        run_eval(ExecutorBackend(ex, tok), tok, problems, OPTIONS, out=out, resume=True)
    assert open(out).read() == before  # refused before anything is rewritten


def test_sample_seeds_differ_and_are_stable():
    seeds = {sample_seed(0, pid, k) for pid in ("1", "2") for k in range(64)}
    assert len(seeds) == 128 and sample_seed(0, "1", 3) == sample_seed(0, "1", 3) != sample_seed(1, "1", 3)


# ---- regrade -------------------------------------------------------------------------------
def test_regrade(tmp_path):
    path = write_jsonl(tmp_path / "other.jsonl", [
        {"problem": "p1", "answer": 70, "completion": "<think>so \\boxed{70}"},
        {"problem": "p1", "answer": 70, "completion": "The answer is \\boxed{71}."},
        {"problem": "p2", "answer": "5", "completion": "no box here"},
    ])
    result = regrade(path, "strict")
    assert [r["correct"] for r in result["samples"]] == [True, False, False]
    assert [r["extracted"] for r in result["samples"]] == ["70", "71", None]
    assert result["metrics"]["problems"] == 2
    assert result["metrics"]["pass@1"] == pytest.approx((1 / 2 + 0) / 2)  # the mean over problems


@pytest.mark.parametrize("rows, message", [
    ([], "no samples (empty file)"),
    ([{"answer": "1"}], ":1: field 'completion' missing"),
    ([{"completion": "x"}], ":1: field 'answer' missing"),
    ([{"answer": "1", "completion": 3}], ":1: field 'completion' must be a string"),
])
def test_regrade_errors(tmp_path, rows, message):
    with pytest.raises(FathomError) as e:
        regrade(write_jsonl(tmp_path / "bad.jsonl", rows))
    assert message in str(e.value)


# ---- endpoint ------------------------------------------------------------------------------
def test_endpoint_against_fathom_serve(demo_runtime, tmp_path):
    _, tok = demo_runtime
    problems = load_problems("builtin:demo", limit=2)
    out = tmp_path / "endpoint.jsonl"
    with running(demo_state()) as (url, _):
        result = run_eval(EndpointBackend(url, "demo", concurrency=2), tok, problems, OPTIONS, out=str(out))
        with pytest.raises(FathomError, match="HTTP 404"):
            run_eval(EndpointBackend(url, "other"), tok, problems[:1], OPTIONS)
        cli = CliRunner().invoke(main, ["eval", "demo", "--endpoint", url, "--data", "builtin:demo", "-n", "2",
                                        "--limit", "1", "--max-new-tokens", "96", "--no-record", "--json"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.output)["metrics"]["samples"] == 2
    rows = read_rows(out)
    assert len(rows) == 6 and all(r["output_tokens"] > 0 and r["truncated"] is False for r in rows)
    assert result["metrics"]["samples"] == 6 and result["metrics"]["pass@1"] >= 0.5


# ---- CLI -----------------------------------------------------------------------------------
def test_cli_eval_json_and_record(tmp_path):
    out, records = tmp_path / "s.jsonl", tmp_path / "runs.jsonl"
    args = ["eval", "demo", *DEMO_ARGS[:-1], "--out", str(out), "--records", str(records), "--json"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["metrics"]["samples"] == 6 and len(read_rows(out)) == 6
    record = json.loads(records.read_text())
    assert record["kind"] == "eval" and record["model"]["spec"] == "demo"
    assert record["metrics"]["pass@1"] == result["metrics"]["pass@1"] and "per_problem" not in record["metrics"]
    assert record["parameters"]["data"] == "builtin:demo" and record["environment"]["executor"] == "torch"
    text = CliRunner().invoke(main, ["eval", "--regrade", str(out)])
    assert text.exit_code == 0 and "pass@1" in text.output and "cons@n" in text.output


@pytest.mark.parametrize("args, message", [
    (["eval"], "MODEL: missing"),
    (["eval", "demo", "--resume"], "--resume: continues an --out file"),
    (["eval", "demo", "--endpoint", "http://127.0.0.1:9", "--executor", "torch"], "--endpoint and --executor"),
    (["eval", "demo", "--endpoint", "http://127.0.0.1:9", "--dtype", "bfloat16", "--tp", "2"],
     "--endpoint and --dtype, --tp: pick one"),
    (["eval", "demo", "--regrade", "s.jsonl"], "--regrade grades recorded samples without a model; MODEL do not apply"),
    (["eval", "--regrade", "s.jsonl", "--out", "o.jsonl", "-n", "4", "--executor", "torch"],
     "; --samples, --out, --executor do not apply (drop them)"),
    (["eval", "demo", "--data", "builtin:nope"], "unknown builtin"),
    (["eval", "demo", "--grader", "loose"], "--grader 'loose'"),
])
def test_cli_errors(args, message):
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output


# ---- resume settings, --out safety, context, scheduling ---------------------------------------
class ScriptedBackend:
    """Every sample answers \\boxed{answer}."""

    def __init__(self, answer, output_tokens=5):
        self.answer, self.output_tokens, self.jobs = answer, output_tokens, []

    def generate(self, jobs, params):
        for job in jobs:
            self.jobs.append((job.problem.id, job.sample))
            yield SampleOutput(job, f"so \\boxed{{{self.answer}}}", self.output_tokens, "stop")


@pytest.mark.parametrize("change, flag", [
    ({"temperature": 1.5}, "--temperature 0.6"), ({"seed": 9}, "--seed 7"), ({"top_p": 0.5}, "--top-p 0.95"),
    ({"max_new_tokens": 32}, "--max-new-tokens 96"), ({"data": "builtin:other"}, "--data None"),
])
def test_resume_refuses_other_settings(demo_runtime, tmp_path, change, flag):
    _, tok = demo_runtime
    problems, out = [Problem("1", "q", "0.5")], str(tmp_path / "s.jsonl")
    run_eval(ScriptedBackend("50"), tok, problems, OPTIONS, out=out)
    with pytest.raises(FathomError) as e:
        run_eval(ScriptedBackend("50"), tok, problems, replace(OPTIONS, **change), out=out, resume=True)
    assert f"drawn with {flag}" in str(e.value) and "\n" not in str(e.value)


def test_resume_grades_again_with_the_current_grader(demo_runtime, tmp_path):
    _, tok = demo_runtime
    problems, out = [Problem("1", "q", "0.5")], str(tmp_path / "s.jsonl")
    first = run_eval(ScriptedBackend("50"), tok, problems, OPTIONS, out=out)
    assert first["metrics"]["pass@1"] == 0.0  # strict: 50 is not 0.5
    again = ScriptedBackend("50")
    resumed = run_eval(again, tok, problems, replace(OPTIONS, grader="fathom-r1"), out=out, resume=True)
    assert again.jobs == [] and resumed["metrics"]["pass@1"] == 1.0  # the card accepts x100
    assert all(r["correct"] for r in read_rows(out))


def test_resume_refuses_rows_missing_fields(demo_runtime, tmp_path):
    _, tok = demo_runtime
    out = write_jsonl(tmp_path / "s.jsonl", [{"problem_id": "1", "sample": 0, "correct": True}])
    with pytest.raises(FathomError, match=r"s.jsonl:1: expected a `fathom eval --out` sample, field 'problem' "):
        run_eval(ScriptedBackend("1"), tok, [Problem("1", "q", "1")], OPTIONS, out=out, resume=True)


def test_out_is_not_wiped_without_resume_or_force(demo_runtime, tmp_path):
    _, tok = demo_runtime
    problems, out = [Problem("1", "q", "1")], tmp_path / "s.jsonl"
    run_eval(ScriptedBackend("1"), tok, problems, OPTIONS, out=str(out))
    before = out.read_text()
    with pytest.raises(FathomError, match="holds samples already; --resume continues it, --force replaces it"):
        run_eval(ScriptedBackend("2"), tok, problems, OPTIONS, out=str(out))
    assert out.read_text() == before
    run_eval(ScriptedBackend("2"), tok, problems, OPTIONS, out=str(out), force=True)
    assert {r["extracted"] for r in read_rows(out)} == {"2"}


def test_unrecorded_output_tokens_are_reported_as_such(demo_runtime, tmp_path):
    _, tok = demo_runtime
    out = tmp_path / "s.jsonl"
    result = run_eval(ScriptedBackend("1", output_tokens=None), tok, [Problem("1", "q", "1")], OPTIONS, out=str(out))
    t = result["metrics"]["tokens"]
    assert t["mean"] is None and t["p50"] is None and t["truncated_share"] == 0
    text = CliRunner().invoke(main, ["eval", "--regrade", str(out)])
    assert text.exit_code == 0 and "output tokens     not recorded" in text.output
    assert "grader timeouts   0" in text.output


class RecordingExecutor:
    """Passes through to an executor, logging submits and finishes in order."""

    def __init__(self, inner):
        self.inner, self.log = inner, []

    def submit(self, request):
        self.log.append(("submit", request.request_id))
        self.inner.submit(request)

    def step(self):
        events = self.inner.step()
        self.log += [("finish", e.request_id) for e in events if e.finished]
        return events

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_in_process_keeps_free_slots_busy_with_the_next_problems(demo_runtime):
    ex, tok = demo_runtime  # max_num_seqs 8: both problems' 3 samples fit at once
    recording = RecordingExecutor(ex)
    problems = load_problems("builtin:demo", limit=2)
    run_eval(ExecutorBackend(recording, tok), tok, problems, OPTIONS)
    first_finish = next(i for i, (what, _) in enumerate(recording.log) if what == "finish")
    assert {rid for what, rid in recording.log[:first_finish]} == {f"{p.id}/{k}" for p in problems for k in range(3)}


def test_cli_sizes_the_context_to_prompt_plus_output(monkeypatch):
    import fathom.runtime.cli.eval_cmd as eval_cmd

    seen = []
    real = eval_cmd.open_runtime

    def recording_open_runtime(*args, **kwargs):
        seen.append(args[5])  # max_seq_len
        return real(*args, **kwargs)

    monkeypatch.setattr(eval_cmd, "open_runtime", recording_open_runtime)
    r = CliRunner().invoke(main, ["eval", "demo", *DEMO_ARGS, "--json"])
    assert r.exit_code == 0, r.output
    tok = open_runtime("demo", "torch", "float32", "cpu", None, 256, 1)[2]
    longest = max(len(render_prompt(tok, p)[1]) for p in load_problems("builtin:demo", limit=2))
    assert seen[0] == longest + 96 and json.loads(r.output)["metrics"]["tokens"]["truncated_share"] == 0
    small = CliRunner().invoke(main, ["eval", "demo", *DEMO_ARGS, "--max-seq-len", "48"])
    assert small.exit_code != 0 and "--max-seq-len 48: the longest prompt (" in small.output
    assert "--max-new-tokens (96)" in small.output and "Traceback" not in small.output


# ---- regrade input checks, data ---------------------------------------------------------------
@pytest.mark.parametrize("rows, message", [
    ([{"answer": "1", "completion": "x", "sample": "a"}], ":1: field 'sample' must be a non-negative integer"),
    ([{"answer": "1", "completion": "x", "sample": 0}, {"answer": "1", "completion": "x", "sample": "1"}],
     ":2: field 'sample' must be a non-negative integer"),
    ([{"answer": "1", "completion": "x", "output_tokens": "many"}], ":1: field 'output_tokens' must be"),
    ([{"answer": "1", "completion": "x", "truncated": "no"}], ":1: field 'truncated' must be true or false"),
    ([{"problem_id": "a", "answer": "1", "completion": "x"}, {"problem_id": "a", "answer": "2", "completion": "x"}],
     ":2: field 'answer' '2' differs from '1' on line 1 for the same problem 'a'"),
    ([{"problem_id": 1, "sample": 0, "answer": "1", "completion": "x"},
      {"problem_id": "1", "sample": 0, "answer": "1", "completion": "x"}],
     ":2: problem '1' sample 0 repeats line 1; each sample must appear once"),
    ([{"problem_id": "a", "answer": "1", "completion": "x"}, {"problem_id": "a", "sample": 0, "answer": "1",
                                                             "completion": "x"}],
     ":2: problem 'a' sample 0 repeats line 1"),
])
def test_regrade_input_checks(tmp_path, rows, message):
    with pytest.raises(FathomError) as e:
        regrade(write_jsonl(tmp_path / "bad.jsonl", rows))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_regrade_groups_by_problem_id_zero_and_reports_missing_tokens(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"problem_id": 0, "problem": "first wording", "answer": 1, "completion": "\\boxed{1}"},
        {"problem_id": 0, "problem": "second wording", "answer": 1, "completion": "\\boxed{2}"},
    ])
    result = regrade(path)
    assert result["metrics"]["problems"] == 1 and [r["problem_id"] for r in result["samples"]] == ["0", "0"]
    assert result["metrics"]["tokens"]["mean"] is None


def test_problem_text_is_stripped(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"problem": "  What is x?\n", "answer": 1}])
    assert load_problems(path)[0].problem == "What is x?"


def test_demo_prompt_is_the_arith_user_message():
    p = load_problems("builtin:demo", limit=1)[0]
    assert p.messages() == [{"role": "user", "content": make_problems(1, 0, "heldout")[0].user_message}]


class OneAtATimeExecutor:
    """Finishes the oldest submitted request on each step (one token, "stop"); reports `slots`."""

    def __init__(self, slots):
        self.slots, self.queue, self.log = slots, [], []

    def describe(self):
        return {"max_num_seqs": self.slots}

    def submit(self, request):
        self.log.append(("submit", request.request_id))
        self.queue.append(request.request_id)

    def has_pending(self):
        return bool(self.queue)

    def step(self):
        from fathom.runtime.executor import TokenEvent

        rid = self.queue.pop(0)
        self.log.append(("finish", rid))
        return [TokenEvent(rid, None, 0.0, "stop")]

    def cancel(self, request_id):
        pass


def test_next_group_is_submitted_when_one_slot_frees_with_n_equal_to_slots(demo_runtime):
    _, tok = demo_runtime
    executor = OneAtATimeExecutor(slots=3)  # -n 3 == max_num_seqs 3
    problems = [Problem("1", "q", "1"), Problem("2", "q", "1")]
    run_eval(ExecutorBackend(executor, tok), tok, problems, OPTIONS)
    assert executor.log[:5] == [("submit", "1/0"), ("submit", "1/1"), ("submit", "1/2"), ("finish", "1/0"),
                                ("submit", "2/0")]


IN_PROCESS = {"model": "demo", "executor": "torch", "dtype": "float32", "precision": None, "kv_cache_format": "model"}


@pytest.mark.parametrize("first, second, message", [
    (IN_PROCESS, {**IN_PROCESS, "dtype": "bfloat16"}, "drawn with --dtype 'float32', this run asks 'bfloat16'"),
    (IN_PROCESS, {**IN_PROCESS, "model": "other"}, "drawn with MODEL 'demo', this run asks 'other'"),
    (IN_PROCESS, {**IN_PROCESS, "precision": "fp8"}, "drawn with the weight precision None, this run asks 'fp8'"),
    (IN_PROCESS, {**IN_PROCESS, "kv_cache_format": "fp8"}, "drawn with KV cache format 'model'"),
    (IN_PROCESS, {"model": "demo", "endpoint": "http://h/v1/completions"},
     "drawn with --endpoint None, this run asks 'http://h/v1/completions'"),
    ({"model": "demo", "endpoint": "http://a/v1/completions"}, {"model": "demo", "endpoint": "http://b/v1/completions"},
     "drawn with --endpoint 'http://a/v1/completions'"),
])
def test_resume_refuses_samples_drawn_by_another_model(demo_runtime, tmp_path, first, second, message):
    _, tok = demo_runtime
    problems, out = [Problem("1", "q", "1")], str(tmp_path / "s.jsonl")
    run_eval(ScriptedBackend("1"), tok, problems, replace(OPTIONS, source=first), out=out)
    assert read_rows(out)[0]["settings"] == {**OPTIONS.settings(), **first}
    with pytest.raises(FathomError) as e:
        run_eval(ScriptedBackend("1"), tok, problems, replace(OPTIONS, source=second), out=out, resume=True)
    assert message in str(e.value) and "\n" not in str(e.value)
    again = ScriptedBackend("1")
    run_eval(again, tok, problems, replace(OPTIONS, source=first), out=out, resume=True)
    assert again.jobs == []


def test_cli_resume_refuses_another_dtype(tmp_path):
    out = str(tmp_path / "s.jsonl")
    args = ["eval", "demo", *DEMO_ARGS, "--limit", "1", "-n", "1", "--out", out]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert read_rows(out)[0]["settings"]["dtype"] == "float32"
    other = CliRunner().invoke(main, [*args, "--resume", "--dtype", "bfloat16"])
    assert other.exit_code != 0 and "drawn with --dtype 'float32', this run asks 'bfloat16'" in other.output
    assert "Traceback" not in other.output


@pytest.mark.parametrize("change, message", [
    ({"completion": 5}, ":1: field 'completion' must be a string, got int"),
    ({"answer": None}, ":1: field 'answer' must be a string or a number, got None"),
    ({"output_tokens": "many"}, ":1: field 'output_tokens' must be a non-negative integer, got 'many'"),
    ({"truncated": "no"}, ":1: field 'truncated' must be true or false"),
    ({"sample": None}, ":1: field 'sample' must be a non-negative integer, got None"),
    ({"sample": -1}, ":1: field 'sample' must be a non-negative integer, got -1"),
])
def test_resume_refuses_rows_of_the_wrong_type(demo_runtime, tmp_path, change, message):
    _, tok = demo_runtime
    row = {"problem_id": "1", "sample": 0, "problem": "q", "answer": "1", "completion": "\\boxed{1}",
           "output_tokens": 1, "truncated": False, "settings": OPTIONS.settings()}
    out = write_jsonl(tmp_path / "s.jsonl", [{**row, **change}])
    backend = ScriptedBackend("1")
    with pytest.raises(FathomError) as e:
        run_eval(backend, tok, [Problem("1", "q", "1")], OPTIONS, out=out, resume=True)
    assert message in str(e.value) and "s.jsonl:1" in str(e.value) and "\n" not in str(e.value)
    assert backend.jobs == []


def test_resume_refuses_a_sample_twice(demo_runtime, tmp_path):
    _, tok = demo_runtime
    row = {"problem_id": "1", "sample": 0, "problem": "q", "answer": "1", "completion": "\\boxed{1}",
           "output_tokens": 1, "truncated": False, "settings": OPTIONS.settings()}
    out = write_jsonl(tmp_path / "s.jsonl", [row, {**row, "sample": 1}, row])
    with pytest.raises(FathomError) as e:
        run_eval(ScriptedBackend("1"), tok, [Problem("1", "q", "1")], OPTIONS, out=out, resume=True)
    assert "s.jsonl:3: problem '1' sample 0 repeats line 1" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("resume", [False, True])
def test_out_that_cannot_be_created_is_a_one_line_error(demo_runtime, tmp_path, resume):
    _, tok = demo_runtime
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file" / "s.jsonl", tmp_path):
        with pytest.raises(FathomError) as e:
            run_eval(ScriptedBackend("1"), tok, [Problem("1", "q", "1")], OPTIONS, out=str(out), resume=resume)
        assert f"--out {out}: " in str(e.value) and "\n" not in str(e.value)
    r = CliRunner().invoke(main, ["eval", "demo", *DEMO_ARGS, "--out", str(tmp_path / "file" / "s.jsonl")])
    assert r.exit_code != 0 and "--out " in r.output and "Traceback" not in r.output
