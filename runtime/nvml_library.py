"""The pynvml boundary: the library is imported and initialised in one place (`open_library`), and
every call goes through one door (`NVMLLibrary.call`) that turns NVML return codes into typed
exceptions, the pattern of ml-energy/zeus `zeus/device/gpu/nvidia.py`.
"""

from __future__ import annotations

import logging

from fathom.build.errors import FathomError, MissingDependencyError

log = logging.getLogger("fathom.profiler")
_said: set[str] = set()


def say_once(message: str) -> None:
    """Log `message` as a warning the first time this process meets it."""
    if message not in _said:
        _said.add(message)
        log.warning("profiler: %s", message)


class NVMLError(FathomError):
    """An NVML call failed; `code` is NVML's return code when it gave one."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class NVMLUnavailable(NVMLError):
    """The NVML library or the driver is missing."""


class NVMLNotSupported(NVMLError):
    """This GPU, driver or nvidia-ml-py version does not offer the reading."""


class NVMLNoPermission(NVMLError):
    """The reading needs privileges this process lacks."""


class NVMLGPULost(NVMLError):
    """The GPU fell off the bus or needs a reset."""


class NVMLTimeout(NVMLError):
    pass


class NVMLUninitialized(NVMLError):
    pass


class NVMLUnknownError(NVMLError):
    pass


# NVML return code names (nvml.h) -> exception class: the one place codes are interpreted.
_ERROR_CLASSES = {
    "NVML_ERROR_UNINITIALIZED": NVMLUninitialized,
    "NVML_ERROR_NOT_SUPPORTED": NVMLNotSupported,
    "NVML_ERROR_FUNCTION_NOT_FOUND": NVMLNotSupported,  # older driver without this entry point
    "NVML_ERROR_ARGUMENT_VERSION_MISMATCH": NVMLNotSupported,  # struct version (e.g. memory v2) too new
    "NVML_ERROR_NO_PERMISSION": NVMLNoPermission,
    "NVML_ERROR_LIBRARY_NOT_FOUND": NVMLUnavailable,
    "NVML_ERROR_DRIVER_NOT_LOADED": NVMLUnavailable,
    "NVML_ERROR_GPU_IS_LOST": NVMLGPULost,
    "NVML_ERROR_RESET_REQUIRED": NVMLGPULost,
    "NVML_ERROR_TIMEOUT": NVMLTimeout,
}
FIELD_ERRORS = (NVMLNotSupported, NVMLNoPermission)  # the reading stays null, sampling goes on


class NVMLLibrary:
    """pynvml behind one door: every call goes through `call`, which types the errors."""

    def __init__(self, module):
        self.nv = module
        self.classes = {getattr(module, name): cls for name, cls in _ERROR_CLASSES.items() if hasattr(module, name)}

    def call(self, fn: str, *args):
        f = getattr(self.nv, fn, None)
        if f is None:
            raise NVMLNotSupported(f"{fn}: not in this nvidia-ml-py version")
        try:
            return f(*args)
        except self.nv.NVMLError as e:
            code = getattr(e, "value", None)
            raise self.classes.get(code, NVMLUnknownError)(f"{fn}: {e}", code) from e

    def optional(self, fn: str, *args):
        """`call`, or None when the driver does not offer (or forbids) the reading."""
        try:
            return self.call(fn, *args)
        except FIELD_ERRORS:
            return None

    def shutdown(self) -> None:
        try:
            self.call("nvmlShutdown")
        except NVMLError:
            pass


def open_library(module=None) -> NVMLLibrary:
    """pynvml, initialised; `module` stands in for pynvml. Raises MissingDependencyError without
    nvidia-ml-py, an NVMLError when NVML cannot start (no driver, no library)."""
    if module is None:
        try:
            import pynvml as module
        except ImportError:
            raise MissingDependencyError("pynvml (nvidia-ml-py) is not installed") from None
    library = NVMLLibrary(module)
    library.call("nvmlInit")
    return library
