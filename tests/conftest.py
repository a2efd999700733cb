import pytest
import torch

from fathom.build.config import preset
from fathom.build.synthetic import write_hf_dir


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
    """preset name -> HF directory with deterministic random float32 weights (made once per session)."""
    made = {}

    def get(name: str, shard_bytes: int | None = None):
        key = (name, shard_bytes)
        if key not in made:
            out = tmp_path_factory.mktemp(f"hf-{name}")
            made[key] = write_hf_dir(preset(name), out, seed=1, dtype=torch.float32, shard_bytes=shard_bytes)
        return made[key]

    return get
