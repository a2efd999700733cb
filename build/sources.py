"""Resolve a MODEL argument into a config, a lazy tensor source and a tokenizer directory.

Accepted everywhere a MODEL appears:
- a Hugging Face Qwen2 directory (config.json + *.safetensors [+ index] + tokenizer files)
- a fathom/TensorRT-LLM checkpoint directory (config.json with `mapping` + rank*.safetensors)
- `demo`: the tiny model embedded in the package
- `random:<preset>` (optionally `random:<preset>@<seed>`): deterministic random weights, exact shapes
No network access, ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import ModelConfig, preset, read_json
from .errors import ConfigError

DEMO_DIR = Path(__file__).parent / "demo_model"


@dataclass
class ModelSource:
    kind: str  # "hf" | "checkpoint" | "engine" | "random"
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
        if not path.is_dir():
            raise ConfigError(f"{spec}: expected a model directory, got a file")
        src = _resolve_dir(path, spec)
    if tokenizer is not None:
        tok = Path(tokenizer)
        if not _has_tokenizer(tok):
            raise ConfigError(f"{tok}: no tokenizer.json or tokenizer_config.json (--tokenizer)")
        src.tokenizer_dir = tok
    return src


def _resolve_dir(path: Path, spec: str) -> ModelSource:
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
