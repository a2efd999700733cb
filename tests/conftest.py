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


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny-model tests are a chain of microsecond kernels: intra-op threads only add waits
    (and stall badly when other processes share the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def onnx_exports(tmp_path_factory):
    """(MODEL spec, dtype) -> a `fathom export onnx` directory of it (256 positions), made once per session."""
    from fathom.build.sources import resolve_model
    from fathom.runtime.onnx_export import OnnxExportOptions, export_onnx

    made = {}

    def get(spec: str, dtype: str = "float32"):
        key = (spec, dtype)
        if key not in made:
            out = tmp_path_factory.mktemp("onnx") / "model"
            export_onnx(resolve_model(spec), out, OnnxExportOptions(dtype=dtype, max_seq_len=256))
            made[key] = out
        return made[key]

    return get
