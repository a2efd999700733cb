"""The engine part of `fathom demo`: Fathom-R1-14B planned on H100 and L40S in bf16 and FP8, and
the engine build it would run."""

from __future__ import annotations

import shlex

from fathom.build.config import preset
from fathom.build.precision import KvCacheFormat, WeightFormat

from .builder import trtllm_build_command
from .gpus import get_gpu
from .plan_text import render_plan
from .planner import Deployment, plan
from .presets import PRESET_MODEL, load_preset

DEMO_GPUS = ("h100", "l40s")
DEMO_PRECISIONS = (WeightFormat.BF16, WeightFormat.FP8)
DEMO_PRESET = "h100-sxm-fp8"


def demo_text() -> str:
    """What the demo prints: four plans, then the build command for the H100 FP8 preset."""
    cfg = preset(PRESET_MODEL)
    lines = []
    for gpu_name in DEMO_GPUS:
        for precision in DEMO_PRECISIONS:
            dep = Deployment(precision=precision, kv_cache=KvCacheFormat.default_for(precision))
            p = plan(cfg, get_gpu(gpu_name), dep, model_name="Fathom-R1-14B")
            lines += render_plan(p) + [""]
    settings = load_preset(DEMO_PRESET)
    ckpt, engine = "./fathom-r1-14b-fp8-ckpt", f"./fathom-r1-14b-{DEMO_PRESET}-engine"
    lines += [
        f"Engine build for preset {DEMO_PRESET} (needs tensorrt-llm 1.2.1 and an H100):",
        f"  fathom convert ./Fathom-R1-14B {ckpt} --precision {settings.precision} --kv-cache {settings.kv_cache}",
        f"  fathom build {ckpt} {engine} --preset {DEMO_PRESET}",
        "which runs the equivalent of:",
        "  " + shlex.join(trtllm_build_command(settings, ckpt, engine)),
    ]
    return "\n".join(lines)
