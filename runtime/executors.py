"""Pick and open an executor by name for a MODEL argument."""

from __future__ import annotations

from fathom.build.errors import FathomError
from fathom.build.sources import ModelSource

EXECUTORS = ("auto", "reference")


def create_executor(name: str, source: ModelSource, dtype: str = "float32", device: str | None = None,
                    max_seq_len: int = 16384, eos_ids: list[int] | None = None):
    """Open `name` on `source`. `auto` picks trtllm for an engine directory and torch otherwise."""
    if name == "auto":
        name = "reference"
    if name == "reference":
        from .loader import load_model
        from .reference import ReferenceExecutor

        model = load_model(source, dtype=dtype, device=device, max_seq_len=max_seq_len)
        return ReferenceExecutor(model, eos_ids=eos_ids)
    raise FathomError(f"--executor {name!r}: expected one of {', '.join(EXECUTORS)}")
