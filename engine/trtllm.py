"""The one import boundary to tensorrt_llm (the build path here, the TRT-LLM executor at runtime).

tensorrt_llm is optional and heavy (it loads CUDA and TensorRT at import), so nothing imports it at
module level: callers ask `import_tensorrt_llm()` when they are about to use it.

tensorrt_llm writes to stdout, which would corrupt fathom's `--json` output:
- its `__init__` prints a version banner (`print(f"[TensorRT-LLM] TensorRT LLM version: ...")`);
- its logger (tensorrt_llm/logger.py) is the logging logger "TRT-LLM" with `propagate = False` and a
  `StreamHandler(stream=sys.stdout)` made at import, so it keeps whatever `sys.stdout` was then;
  build() and `PretrainedConfig` log through it (overridden plugin settings, "Implicitly setting
  ..." per extra config key);
- TensorRT's own logger (the `trt.Logger` made in tensorrt_llm/logger.py) and the C++ runtime print
  from native code, which only a file-descriptor redirect catches.
The C++ logger (cpp/include/tensorrt_llm/common/logger.h, `Logger::log`) writes to std::cout when
its *configured* level is below WARNING and to std::cerr otherwise, so with TLLM_LOG_LEVEL=info or
finer the C++ runtime's logs reach stdout from its own threads at any time; leave it at warning or
above when stdout must stay JSON.
So the import runs with stdout sent to stderr (the logger's handler is born pointing at stderr, and
a handler made earlier is re-pointed), and `stdout_to_stderr()` wraps the build calls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from fathom.build.errors import MissingDependencyError

# The release whose engine-build API fathom follows (docs/REFERENCE.md, TensorRT-LLM releases).
SUPPORTED_TRTLLM_VERSION = "1.2.1"
NVIDIA_PACKAGE_INDEX = "https://pypi.nvidia.com"  # where the tensorrt-llm wheels live; PyPI holds a placeholder
INSTALL_HINT = (f"pip install 'fathom-engine[trtllm]' --extra-index-url {NVIDIA_PACKAGE_INDEX} "
                f"(tensorrt-llm {SUPPORTED_TRTLLM_VERSION} from NVIDIA's package index: Linux, Python 3.10 or "
                f"3.12, and a CUDA GPU)")
TRTLLM_LOGGER = "TRT-LLM"  # logging.getLogger name in tensorrt_llm/logger.py


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to stdout, by Python or by native code (fd 1), to stderr meanwhile."""
    sys.stdout.flush()
    saved_fd = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)


def _log_to_stderr() -> None:
    """Re-point the tensorrt_llm logger's stdout handlers at stderr."""
    for handler in logging.getLogger(TRTLLM_LOGGER).handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.__stdout__):
            handler.setStream(sys.stderr)


def import_tensorrt_llm():
    """The tensorrt_llm module, or MissingDependencyError saying what to install. Its import prints
    go to stderr, and so does its logger afterwards."""
    try:
        with stdout_to_stderr():
            import tensorrt_llm
    except (ImportError, OSError) as e:  # OSError: a CUDA/TensorRT shared library failed to load
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MissingDependencyError(f"tensorrt_llm is not importable ({reason}); install it with: {INSTALL_HINT}") from e
    _log_to_stderr()
    return tensorrt_llm


def require_supported_version(trtllm) -> str:
    """The module's version; raises unless it is the release whose API fathom's build calls follow."""
    version = getattr(trtllm, "__version__", None)
    if version != SUPPORTED_TRTLLM_VERSION:
        raise MissingDependencyError(f"tensorrt_llm {version} is installed; fathom builds engines with "
                                     f"{SUPPORTED_TRTLLM_VERSION}: {INSTALL_HINT}")
    return version


def tensorrt_version() -> str | None:
    """TensorRT's version, or None when the `tensorrt` module is not importable (recorded as unknown)."""
    try:
        import tensorrt
    except (ImportError, OSError):
        return None
    return getattr(tensorrt, "__version__", None)
