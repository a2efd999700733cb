"""A fake tensorrt_llm 1.2.1 for tests: records calls, writes placeholder engine files.

Only the names fathom uses exist, with the argument names of the 1.2.1 source, so a misspelled
argument fails here as it would there. `tensorrt_llm.bindings.executor` (the executor side) is a
separate submodule and is not imported from here.
"""

CALLS: list = []  # (call name, details...) in call order, reset by tests
FAIL_AT_RANK: int | None = None  # build() raises for this rank, to test partial failures

__version__ = "1.2.1"

from ._utils import mpi_rank, mpi_world_size  # noqa: E402
from .builder import BuildConfig, Engine, build  # noqa: E402

__all__ = ["BuildConfig", "Engine", "build", "mpi_rank", "mpi_world_size", "CALLS", "__version__"]
