"""A multi-rank engine started without MPI re-runs the command under mpirun (fathom.deploy.launch):
two real rank processes through tests/fakes/bin/mpirun, and the exact command checked in-process."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fathom.build.sources import DEMO_DIR
from test_trtllm_executor import FAKES, H100, engine_dir, fake_trtllm, tp2_engine_dir  # noqa: F401 (fixtures)

FATHOM = str(Path(sys.executable).parent / "fathom")
GENERATE = ["generate", "{engine}", "-p", "hi", "--tokenizer", str(DEMO_DIR), "--max-new-tokens", "4", "--json"]

# The rank processes have no GPU: their trtllm executor is told it runs on an H100 (the engine's GPU).
SITECUSTOMIZE = f"""
import os
if os.environ.get("FAKE_MPI_JOB_DIR"):
    import fathom.runtime.trtllm_executor as te
    te.local_gpu_name = lambda: {H100!r}
"""


def rank_env(tmp_path: Path, with_mpirun: bool = True) -> dict:
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = [str(FAKES / "bin")] if with_mpirun else []
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_RANK", "PMI_SIZE", "FAKE_MPI_JOB_DIR")}
    return {**env, "PATH": os.pathsep.join([*path, str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
            "PYTHONPATH": os.pathsep.join([str(FAKES), str(tmp_path)])}


def test_generate_on_a_tp2_engine_starts_two_ranks_the_leader_answers_and_both_exit_0(tp2_engine_dir, tmp_path):
    argv = [FATHOM, *(a.format(engine=tp2_engine_dir) for a in GENERATE)]
    r = subprocess.run(argv, env=rank_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    command = shlex.join(["mpirun", "-n", "2", *argv])
    assert f"fathom: {tp2_engine_dir} has 2 ranks; running: {command}\n" in r.stderr
    assert "fake mpirun: rank 0 exited 0" in r.stderr and "fake mpirun: rank 1 exited 0" in r.stderr
    out = json.loads(r.stdout)  # one JSON object: only the leader printed
    assert out["executor"]["executor"] == "trtllm" and out["finish_reason"] in ("stop", "length")


def run_cli(*args):
    from fathom.runtime.cli import main

    return CliRunner().invoke(main, list(args))


@pytest.fixture
def execs(monkeypatch):
    """os.execvpe recorded instead of run: the command ends there, as the replaced process would."""
    import fathom.deploy.launch as launch

    calls = []

    def record(file, args, env):
        calls.append((file, list(args)))
        raise SystemExit(0)

    monkeypatch.setattr(launch.os, "execvpe", record)
    monkeypatch.delenv("PMI_RANK", raising=False)
    return calls


@pytest.mark.parametrize("command", [
    GENERATE,
    ["serve", "{engine}", "--tokenizer", str(DEMO_DIR), "--port", "1"],
    ["bench", "{engine}", "--num-requests", "2", "--input-len", "4", "--output-len", "2", "--no-profile",
     "--out", "{tmp}/runs.jsonl"],
])
def test_commands_re_run_under_mpirun_with_the_hostfile_before_opening_the_executor(
        tp2_engine_dir, fake_trtllm, execs, monkeypatch, tmp_path, command):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1 slots=1\nnode2 slots=1\n")
    args = [a.format(engine=tp2_engine_dir, tmp=tmp_path) for a in command] + ["--hostfile", str(hostfile)]
    monkeypatch.setattr(sys, "argv", [FATHOM, *args])
    monkeypatch.setenv("PATH", os.pathsep.join([str(FAKES / "bin"), os.environ["PATH"]]))
    r = run_cli(*args)
    assert r.exit_code == 0, r.output
    expected = ["mpirun", "-n", "2", "--hostfile", str(hostfile), FATHOM, *args]
    assert execs == [(str(FAKES / "bin" / "mpirun"), expected)]
    assert f"has 2 ranks; running: {shlex.join(expected)}" in r.stderr
    assert not [c for c in fake_trtllm.CALLS if c[0] == "Executor"]  # nothing opened before the relaunch


def test_without_mpirun_on_path_the_command_is_refused_with_the_exact_mpirun_line(
        tp2_engine_dir, fake_trtllm, execs, monkeypatch, tmp_path):
    args = [a.format(engine=tp2_engine_dir) for a in GENERATE]
    monkeypatch.setattr(sys, "argv", [FATHOM, *args])
    monkeypatch.setenv("PATH", str(tmp_path))  # no mpirun here
    r = run_cli(*args)
    assert r.exit_code == 1 and not execs
    line = shlex.join(["mpirun", "-n", "2", FATHOM, *args])
    assert r.output == f"Error: {tp2_engine_dir}: the engine has 2 ranks and mpirun is not on PATH; run: {line}\n"


def test_under_a_launcher_the_command_opens_the_executor_itself(tp2_engine_dir, fake_trtllm, execs, monkeypatch):
    import fathom.runtime.trtllm_executor as te

    monkeypatch.setattr(te, "local_gpu_name", lambda: H100)
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setenv("PMI_SIZE", "2")
    r = run_cli(*[a.format(engine=tp2_engine_dir) for a in GENERATE])
    assert r.exit_code == 0, r.output
    assert not execs and [c for c in fake_trtllm.CALLS if c[0] == "Executor"]


@pytest.mark.parametrize("model", ["{engine}", "demo"])
def test_a_hostfile_for_a_single_process_model_is_refused(engine_dir, fake_trtllm, execs, tmp_path, model):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1\n")
    spec = model.format(engine=engine_dir)
    r = run_cli("generate", spec, "-p", "hi", "--tokenizer", str(DEMO_DIR), "--hostfile", str(hostfile))
    assert r.exit_code == 1 and not execs
    assert r.output == (f"Error: --hostfile {hostfile}: only used to start a multi-rank engine with the trtllm "
                        f"executor; {spec} runs in one process\n")
