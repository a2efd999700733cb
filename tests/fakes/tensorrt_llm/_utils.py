"""Fake `tensorrt_llm._utils` MPI helpers: `mpi_rank()` and `mpi_world_size()`.

Upstream (tensorrt_llm/_utils.py, re-exported by tensorrt_llm/__init__.py) returns
`MPI.COMM_WORLD.Get_rank()` / `Get_size()` of mpi4py, so they are right under any launcher (Open
MPI, MPICH, Slurm's PMI), and a process started without one is a world of 1 (an MPI singleton).
The fake reads what an MPICH/Hydra launch gives each process, PMI_RANK and PMI_SIZE (the PMI-1
variables MPICH's simple PMI client reads): tests/fakes/bin/mpirun sets them for the processes it
starts, and in-process tests set them to play one rank. Without them the world is 1 process.
"""

import os


def mpi_rank() -> int:
    return int(os.environ.get("PMI_RANK", "0"))


def mpi_world_size() -> int:
    return int(os.environ.get("PMI_SIZE", "1"))
