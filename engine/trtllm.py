"""The one import boundary to tensorrt_llm (the build path here, the TRT-LLM executor at runtime).

tensorrt_llm is optional and heavy (it loads CUDA and TensorRT at import), so nothing imports it at
module level: callers ask `import_tensorrt_llm()` when they are about to use it.
"""

from __future__ import annotations

from fathom.build.errors import MissingDependencyError

# The release whose engine-build API fathom follows. The TensorRT engine backend is frozen upstream
# and removed on its main branch (docs/REFERENCE.md, TensorRT-LLM releases).
SUPPORTED_TRTLLM_VERSION = "1.2.1"
INSTALL_HINT = ("pip install 'fathom-engine[trtllm]' (tensorrt-llm 1.2.1: Linux, Python 3.10 or 3.12, "
                "and a CUDA GPU)")


def import_tensorrt_llm():
    """The tensorrt_llm module, or MissingDependencyError saying what to install."""
    try:
        import tensorrt_llm
    except (ImportError, OSError) as e:  # OSError: a CUDA/TensorRT shared library failed to load
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MissingDependencyError(f"tensorrt_llm is not importable ({reason}); install it with: {INSTALL_HINT}") from e
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
