"""Resolve a MODEL argument into a config, a lazy tensor source and a tokenizer directory.

Accepted everywhere a MODEL appears:
- a Hugging Face Qwen2 directory (config.json + *.safetensors [+ index] + tokenizer files)
- a fathom/TensorRT-LLM checkpoint directory (config.json with `mapping` + rank*.safetensors)
- `demo`: the tiny model embedded in the package
- `random:<preset>` (optionally `random:<preset>@<seed>`): deterministic random weights, exact shapes
- a `fathom export onnx` directory (fathom-onnx.json + model.onnx), or its model.onnx (the onnx executor)
No network access, ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import ModelConfig, preset, read_json
from .errors import ConfigError

DEMO_DIR = Path(__file__).parent / "demo_model"
ONNX_MANIFEST_NAME = "fathom-onnx.json"


@dataclass
class ModelSource:
    kind: str  # "hf" | "checkpoint" | "engine" | "random" | "onnx"
    spec: str
    config: ModelConfig
    path: Path | None = None
    tokenizer_dir: Path | None = None
    seed: int = 0

    def hf_tensors(self, dtype=None, device: str = "cpu"):
        """HF-named lazy tensors (hf and random sources)."""
        from .weights import RandomWeights, SafetensorsDir

        if self.kind == "random":
            import torch

            return RandomWeights(self.config, seed=self.seed, dtype=dtype or torch.bfloat16, device=device)
        if self.kind == "hf":
            return SafetensorsDir(self.path)
        raise ConfigError(f"{self.spec}: a {self.kind} directory has no Hugging Face tensors")


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists()


def resolve_model(spec: str, tokenizer: str | Path | None = None) -> ModelSource:
    """Turn a MODEL argument into a ModelSource (config read and validated; no weights loaded)."""
    spec = str(spec)
    if spec == "demo":
        src = _resolve_dir(DEMO_DIR, spec)
    elif spec.startswith("random:"):
        name, _, seed = spec[len("random:"):].partition("@")
        if name == "demo":
            cfg = ModelConfig.from_hf_dir(DEMO_DIR)
        else:
            cfg = preset(name)
        try:
            seed_value = int(seed) if seed else 0
        except ValueError:
            raise ConfigError(f"{spec}: seed after '@' must be an integer") from None
        src = ModelSource("random", spec, cfg, seed=seed_value,
                          tokenizer_dir=DEMO_DIR if name == "demo" else None)
    else:
        path = Path(spec)
        if not path.exists():
            raise ConfigError(f"{spec}: no such directory, and not 'demo' or 'random:<preset>'")
        if path.is_file() and path.suffix == ".onnx" and (path.parent / ONNX_MANIFEST_NAME).is_file():
            src = _resolve_onnx(path.parent, spec, graph_file=path.name)
        elif not path.is_dir():
            raise ConfigError(f"{spec}: expected a model directory (or the model.onnx of fathom export onnx), "
                              "got a file")
        else:
            src = _resolve_dir(path, spec)
    if tokenizer is not None:
        tok = Path(tokenizer)
        if not _has_tokenizer(tok):
            raise ConfigError(f"{tok}: no tokenizer.json or tokenizer_config.json (--tokenizer)")
        src.tokenizer_dir = tok
    return src


def _resolve_onnx(path: Path, spec: str, graph_file: str | None = None) -> ModelSource:
    """An exported ONNX directory: the model config is its manifest's `model` block."""
    manifest_path = path / ONNX_MANIFEST_NAME
    manifest = read_json(manifest_path)
    for field in ("model", "graph"):
        if field not in manifest:
            raise ConfigError(f"{manifest_path}: missing field '{field}'")
    if graph_file is not None and graph_file != manifest["graph"]:
        raise ConfigError(f"{spec}: {manifest_path} describes {manifest['graph']!r}, not {graph_file!r}")
    cfg = ModelConfig.from_hf_dict(manifest["model"], source=f"{manifest_path} (model)")
    return ModelSource("onnx", spec, cfg, path=path, tokenizer_dir=path if _has_tokenizer(path) else None)


def _resolve_dir(path: Path, spec: str) -> ModelSource:
    if (path / ONNX_MANIFEST_NAME).is_file():
        return _resolve_onnx(path, spec)
    raw = read_json(path / "config.json")
    tok = path if _has_tokenizer(path) else None
    if "pretrained_config" in raw and "build_config" in raw:
        from .checkpoint import config_from_trtllm

        cfg = config_from_trtllm(raw["pretrained_config"], source=str(path / "config.json"))
        return ModelSource("engine", spec, cfg, path=path, tokenizer_dir=tok)
    if "mapping" in raw and "architecture" in raw:
        from .checkpoint import config_from_trtllm

        cfg = config_from_trtllm(raw, source=str(path / "config.json"))
        return ModelSource("checkpoint", spec, cfg, path=path, tokenizer_dir=tok)
    cfg = ModelConfig.from_hf_dict(raw, source=str(path / "config.json"))
    return ModelSource("hf", spec, cfg, path=path, tokenizer_dir=tok)
