"""Fake `tensorrt_llm._utils` MPI helpers: `mpi_rank()` and `mpi_world_size()`.

Upstream (tensorrt_llm/_utils.py, re-exported by tensorrt_llm/__init__.py) reads them from the MPI
communicator, so they are right under any launcher (Open MPI, MPICH, PMI). Tests set RANK and
WORLD_SIZE to play one rank of an `mpirun -n WORLD_SIZE` job.
"""

RANK = 0
WORLD_SIZE = 1


def mpi_rank() -> int:
    return RANK


def mpi_world_size() -> int:
    return WORLD_SIZE
