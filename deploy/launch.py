"""Multi-rank TensorRT-LLM engines from `fathom generate/chat/bench/serve`: start the ranks with mpirun.

An engine built with tp x pp = N > 1 runs as N MPI processes, each a plain `fathom` process in
leader mode (runtime/trtllm_executor.py). A command started without an MPI launcher re-runs itself
as `mpirun -n N <the same argv>` before it opens the executor, printing that command on stderr
first; rank 0 then drives the requests and the other ranks serve the engine until it shuts down.
Without mpirun on PATH the command is refused with the exact line to run.

    single node:  mpirun -n 2 fathom generate ./engine-tp2 -p "..."   (or let fathom start it)
    multi-node:   fathom serve ./engine-tp4 --hostfile hosts          (mpirun -n 4 --hostfile hosts ...)

Whether a launcher started this process is read from the variables launchers set, before any MPI library
is initialised. NVIDIA/TensorRT-LLM tensorrt_llm/llmapi/trtllm-llmapi-launch (1.2 line) takes the rank
from SLURM_PROCID, OMPI_COMM_WORLD_RANK, PMI_RANK or PMI_ID; fathom reads those and PMIX_RANK, which
PMIx launchers (prterun, Open MPI 5's mpirun, srun --mpi=pmix) set. SLURM_PROCID alone does not count:
an sbatch script is the job's batch step and has it (0) too, while every task srun starts also has
SLURM_STEP_ID, so Slurm counts when both are set; in a batch script the command re-runs under mpirun
like anywhere else. Deciding before `import tensorrt_llm` matters: tensorrt_llm/_utils.py imports
mpi4py, which initialises MPI (a one-process "singleton" world) at import, and a process that has
initialised MPI must not start mpirun with its MPI environment (trtllm-llmapi-launch strips
OMPI_/PMIX_/PMI_/SLURM_... before it starts a child for that reason). Under a launcher, the executor
then checks the MPI world against the engine's ranks (trtllm_settings.checked_mpi_rank).

The re-run command carries FATHOM_MPI_RELAUNCHED=1. A process that has it and sees none of the
launcher variables was started by that mpirun under an MPI that fathom cannot read the rank of: it
is refused in one line instead of starting mpirun again (which would repeat in every rank).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys

from fathom.build.errors import FathomError

# What Open MPI's mpirun, PMIx launchers and MPICH/Hydra (PMI) set in every process they start; a task
# Slurm's srun starts has both SLURM_TASK_VARIABLES (see the module docstring).
LAUNCHER_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "PMI_ID")
SLURM_TASK_VARIABLES = ("SLURM_PROCID", "SLURM_STEP_ID")
RELAUNCHED_VARIABLE = "FATHOM_MPI_RELAUNCHED"


def started_by_launcher(environ=os.environ) -> bool:
    return (any(name in environ for name in LAUNCHER_RANK_VARIABLES)
            or all(name in environ for name in SLURM_TASK_VARIABLES))


def mpirun_argv(ranks: int, argv: list[str], hostfile: str | None = None) -> list[str]:
    """`mpirun -n N [--hostfile FILE] <argv>`. A script path ending in .py (`python -m`-style
    starts) is run with this interpreter, so the ranks start the same program."""
    program = [sys.executable, *argv] if argv[0].endswith(".py") else list(argv)
    return ["mpirun", "-n", str(ranks), *(["--hostfile", str(hostfile)] if hostfile else []), *program]


def launch_ranks(executor: str, source, hostfile: str | None, tp: int = 1, argv: list[str] | None = None,
                 environ=os.environ) -> None:
    """Before `executor` (an --executor name) opens `source` (a ModelSource) with `tp` (--tp) ranks:
    return when this process can open it (not the trtllm executor, a 1-rank engine, or started by a
    launcher); otherwise replace this process with `mpirun -n N <argv>` (default argv: sys.argv), or
    raise FathomError naming that command when mpirun is not on PATH. Options that cannot apply
    (--tp above 1 with the trtllm executor, --hostfile with no engine ranks to start) are refused
    here, before any relaunch, so the error is printed once."""
    from fathom.engine.manifest import engine_ranks, read_engine_manifest
    from fathom.runtime.executors import check_tensor_parallel, resolve_executor_name

    name = resolve_executor_name(executor, source)
    check_tensor_parallel(name, tp)
    ranks = engine_ranks(read_engine_manifest(source.path)) if name == "trtllm" else 1
    if ranks == 1:
        if hostfile is not None:
            where = f"runs its --tp {tp} ranks on this machine" if tp > 1 else "runs in one process"
            raise FathomError(f"--hostfile {hostfile}: only used to start a multi-rank engine with the trtllm "
                              f"executor; {source.spec} {where}")
        return
    if started_by_launcher(environ):
        return
    if RELAUNCHED_VARIABLE in environ:
        raise FathomError(f"{source.spec}: re-run under mpirun ({RELAUNCHED_VARIABLE}=1) but no launcher variable "
                          f"is set; expected one of {', '.join(LAUNCHER_RANK_VARIABLES)}, or "
                          f"{' with '.join(SLURM_TASK_VARIABLES)}, to give each of the {ranks} ranks its rank")
    command = mpirun_argv(ranks, list(sys.argv if argv is None else argv), hostfile)
    line = shlex.join(command)
    mpirun = shutil.which("mpirun", path=environ.get("PATH"))
    if mpirun is None:
        raise FathomError(f"{source.spec}: the engine has {ranks} ranks and mpirun is not on PATH; run: {line}")
    print(f"fathom: {source.spec} has {ranks} ranks; running: {line}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execvpe(mpirun, command, {**environ, RELAUNCHED_VARIABLE: "1"})
