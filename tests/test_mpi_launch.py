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


class ExecCalls(list):
    """(file, argv) of each exec; `envs`: the environment each was given."""

    def __init__(self):
        super().__init__()
        self.envs = []


@pytest.fixture
def execs(monkeypatch):
    """os.execvpe recorded instead of run: the command ends there, as the replaced process would."""
    import fathom.deploy.launch as launch

    calls = ExecCalls()

    def record(file, args, env):
        calls.append((file, list(args)))
        calls.envs.append(dict(env))
        raise SystemExit(0)

    monkeypatch.setattr(launch.os, "execvpe", record)
    for name in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "PMI_ID", "SLURM_PROCID", "SLURM_STEP_ID",
                 "FATHOM_MPI_RELAUNCHED"):  # this test process was started by no launcher
        monkeypatch.delenv(name, raising=False)
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
    assert execs.envs[0]["FATHOM_MPI_RELAUNCHED"] == "1"  # the ranks know they were started by this relaunch
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


@pytest.mark.parametrize("environ, launched", [
    ({"OMPI_COMM_WORLD_RANK": "0"}, True),  # Open MPI's mpirun
    ({"PMIX_RANK": "1"}, True),  # PMIx launchers (prterun, Open MPI 5), which may set no other
    ({"PMI_RANK": "0"}, True),  # MPICH/Hydra
    ({"PMI_ID": "0"}, True),
    ({"SLURM_PROCID": "1", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2"}, True),  # a task srun started
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "7"}, False),  # an sbatch script itself
    ({}, False),
])
def test_launcher_detection(environ, launched):
    from fathom.deploy.launch import started_by_launcher

    assert started_by_launcher(environ) is launched


def test_inside_an_sbatch_script_the_command_re_runs_under_mpirun(tp2_engine_dir, fake_trtllm, execs, monkeypatch):
    args = [a.format(engine=tp2_engine_dir) for a in GENERATE]
    monkeypatch.setattr(sys, "argv", [FATHOM, *args])
    monkeypatch.setenv("PATH", os.pathsep.join([str(FAKES / "bin"), os.environ["PATH"]]))
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    r = run_cli(*args)
    assert r.exit_code == 0, r.output
    assert execs == [(str(FAKES / "bin" / "mpirun"), ["mpirun", "-n", "2", FATHOM, *args])]


def test_a_relaunched_rank_without_launcher_variables_is_refused_instead_of_starting_mpirun_again(
        tp2_engine_dir, fake_trtllm, execs, monkeypatch):
    args = [a.format(engine=tp2_engine_dir) for a in GENERATE]
    monkeypatch.setattr(sys, "argv", [FATHOM, *args])
    monkeypatch.setenv("PATH", os.pathsep.join([str(FAKES / "bin"), os.environ["PATH"]]))
    monkeypatch.setenv("FATHOM_MPI_RELAUNCHED", "1")
    r = run_cli(*args)
    assert r.exit_code == 1 and not execs
    assert r.output == (f"Error: {tp2_engine_dir}: re-run under mpirun (FATHOM_MPI_RELAUNCHED=1) but no launcher "
                        "variable is set; expected one of OMPI_COMM_WORLD_RANK, PMIX_RANK, PMI_RANK, PMI_ID, or "
                        "SLURM_PROCID with SLURM_STEP_ID, to give each of the 2 ranks its rank\n")


@pytest.mark.parametrize("command", [
    GENERATE,
    ["bench", "{engine}", "--num-requests", "2", "--input-len", "4", "--output-len", "2", "--no-profile",
     "--out", "{tmp}/runs.jsonl"],
])
def test_tp_on_a_multi_rank_engine_is_refused_before_any_relaunch(
        tp2_engine_dir, fake_trtllm, execs, monkeypatch, tmp_path, command):
    args = [a.format(engine=tp2_engine_dir, tmp=tmp_path) for a in command] + ["--tp", "2"]
    monkeypatch.setattr(sys, "argv", [FATHOM, *args])
    monkeypatch.setenv("PATH", os.pathsep.join([str(FAKES / "bin"), os.environ["PATH"]]))
    r = run_cli(*args)
    assert r.exit_code == 1 and not execs
    assert r.output == ("Error: --tp 2: tensor parallelism is a torch executor option, not --executor trtllm "
                        "(a TensorRT-LLM engine carries its own mapping)\n")


def test_a_hostfile_with_torch_tensor_parallel_ranks_is_refused_naming_them(execs, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1\n")
    r = run_cli("generate", "demo", "-p", "hi", "--tp", "2", "--hostfile", str(hostfile))
    assert r.exit_code == 1 and not execs
    assert r.output == (f"Error: --hostfile {hostfile}: only used to start a multi-rank engine with the trtllm "
                        "executor; demo runs its --tp 2 ranks on this machine\n")
