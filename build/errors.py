"""Exceptions raised by the library. Only the CLI layer turns them into messages and exit codes.

Every message is one line that names the file/field and what was expected.
"""


class FathomError(Exception):
    """Base class: a user-facing problem with a one-line explanation."""


class ConfigError(FathomError):
    """A config.json (HF or TRT-LLM) is missing, malformed, or describes an unsupported model."""


class WeightsError(FathomError):
    """Tensors are missing, unexpected, mis-shaped, non-finite, or a safetensors file is corrupt."""


class CheckpointError(FathomError):
    """A TRT-LLM checkpoint or engine directory does not follow the format rules."""


class OutputExistsError(FathomError):
    """The output path exists and --force was not given."""


class MissingDependencyError(FathomError):
    """An optional dependency (tensorrt_llm, pynvml, ...) is not importable."""


class PlanError(FathomError):
    """A deployment does not fit the target GPU, or a preset contradicts the checkpoint."""
