"""A fake tensorrt_llm 1.2.1 for tests: records calls, writes placeholder engine files.

Only the names fathom uses exist, with the argument names of the 1.2.1 source, so a misspelled
argument fails here as it would there. `tensorrt_llm.bindings.executor` (the executor side) is a
separate submodule and is not imported from here. Like upstream's tensorrt_llm/__init__.py,
importing it prints a version banner to stdout.
"""

CALLS: list = []  # (call name, details...) in call order, reset by tests
FAIL_AT_RANK: int | None = None  # build() raises for this rank, to test partial failures
SM_VERSION = 90  # what tensorrt_llm._utils.get_sm_version() reports on the build machine

__version__ = "1.2.1"

from ._utils import mpi_rank, mpi_world_size  # noqa: E402
from .builder import BuildConfig, Engine, build  # noqa: E402
from .logger import logger  # noqa: E402

__all__ = ["BuildConfig", "Engine", "build", "logger", "mpi_rank", "mpi_world_size", "CALLS", "__version__"]

print(f"[TensorRT-LLM] TensorRT LLM version: {__version__}")
