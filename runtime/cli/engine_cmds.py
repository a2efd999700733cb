"""Engine-stage commands: plan (capacity + roofline) and build (TensorRT-LLM engine)."""

from __future__ import annotations

import shlex

import click

from fathom.build.config import DEFAULT_MAX_SEQ_LEN
from fathom.build.precision import KvCacheFormat, WeightFormat
from fathom.engine.planner import ENGINE_PRECISIONS  # light: no tensorrt_llm, no torch

from .common import emit_json, json_option


def _echo_lines(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


@click.command("plan")
@click.argument("model")
@click.option("--gpu", required=True, envvar="FATHOM_GPU",
              help="Target GPU: h100, h100-pcie, h200, a100, a100-40gb, l40s, l4, rtx4090, ... or auto (NVML).")
@click.option("--precision", default=None, metavar="[" + "|".join(ENGINE_PRECISIONS) + "]",
              help="Weights precision [default: the checkpoint's, else bf16].")
@click.option("--kv-cache", type=click.Choice([k.value for k in KvCacheFormat]), default=None,
              help="KV cache format; model = the model dtype [default: the checkpoint's, else fp8 with "
                   "--precision fp8, else model].")
@click.option("--seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN, show_default=True, help="Tokens per sequence (prompt + output).")
@click.option("--tp", type=int, default=None, help="Tensor-parallel size [default: the checkpoint's, else 1].")
@click.option("--pp", type=int, default=None, help="Pipeline-parallel size [default: the checkpoint's, else 1].")
@click.option("--max-num-tokens", type=int, default=None, help="Tokens per engine step [default: planned].")
@click.option("--max-batch-size", type=int, default=None, help="Requests per step [default: sequences that fit].")
@json_option
def plan_cmd(model, gpu, precision, kv_cache, seq_len, tp, pp, max_num_tokens, max_batch_size, as_json):
    """Plan MODEL on a GPU before building: memory per GPU, concurrent sequences, roofline.

    Reads only the config (random:<preset>, HF dir, checkpoint or engine dir). Exits 1 with the
    nearest options that fit when it does not fit.

    \b
        fathom plan random:fathom-r1-14b --gpu h100 --precision fp8
        fathom plan ./ckpt --gpu l4 --json
    """
    from fathom.engine.fit_options import options_that_fit, require_fit
    from fathom.engine.gpus import get_gpu
    from fathom.engine.plan_text import render_plan
    from fathom.engine.planner import Deployment, engine_precision, plan
    from fathom.engine.presets import describe_model

    target = describe_model(model)
    precision = engine_precision(precision or target["precision"] or WeightFormat.BF16)
    kv_cache = (kv_cache or (target["kv_cache"] if target["precision"] is precision else None)
                or KvCacheFormat.default_for(precision))
    dep = Deployment(precision=precision, kv_cache=kv_cache, seq_len=seq_len, tp=tp or target["tp"] or 1,
                     pp=pp or target["pp"] or 1, max_num_tokens=max_num_tokens, max_batch_size=max_batch_size)
    cfg = target["config"]
    p = plan(cfg, get_gpu(gpu), dep, model_name=target["name"])
    if as_json:
        out = p.to_dict()
        if not p.fits:
            out["options_that_fit"] = [{"flags": f, "concurrent_sequences": n}
                                       for f, n in options_that_fit(cfg, p.gpu, p.deployment)]
        emit_json(out)
    else:
        _echo_lines(render_plan(p))
    require_fit(p, cfg)


@click.command("build")
@click.argument("ckpt", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--preset", default=None, help="A preset from profiles/presets (e.g. h100-sxm-fp8).")
@click.option("--gpu", default=None, envvar="FATHOM_GPU",
              help="Target GPU to size for when no preset is given (auto = this machine's).")
@click.option("--max-seq-len", type=int, default=None, help=f"Override max_seq_len [preset: {DEFAULT_MAX_SEQ_LEN}].")
@click.option("--max-batch-size", type=int, default=None, help="Override max_batch_size.")
@click.option("--max-input-len", type=int, default=None, help="Override max_input_len [preset: max_seq_len].")
@click.option("--max-num-tokens", type=int, default=None, help="Override max_num_tokens.")
@click.option("--dry-run", is_flag=True, help="Print the plan, the BuildConfig and the trtllm-build command; build nothing.")
@click.option("--workers", type=int, default=1, show_default=True, help="Ranks built in parallel, at most one per visible GPU; rank r builds on GPU r % workers.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@json_option
def build_cmd(ckpt, out, preset, gpu, max_seq_len, max_batch_size, max_input_len, max_num_tokens, dry_run,
              workers, force, as_json):
    """Build a TensorRT-LLM 1.2.1 engine OUT from checkpoint CKPT (one engine per rank).

    OUT gets TRT-LLM's config.json, rank{N}.engine and fathom-engine.json (versions, GPU,
    build config as the engine records it, checkpoint hash). Nothing is left behind if any rank
    fails. tensorrt_llm's own output goes to stderr, so --json prints one JSON object.

    \b
        fathom build ./ckpt-fp8 ./engine --preset h100-sxm-fp8
        fathom build ./ckpt ./engine --gpu l40s --dry-run
    """
    import time

    from fathom.engine.builder import build_engine, prepare_build
    from fathom.engine.plan_text import render_plan

    spec = prepare_build(ckpt, preset=preset, gpu=gpu, max_seq_len=max_seq_len, max_batch_size=max_batch_size,
                         max_input_len=max_input_len, max_num_tokens=max_num_tokens)
    if dry_run:
        if as_json:
            emit_json(spec.to_dict(out, workers) | {"dry_run": True})
            return
        _echo_lines(render_plan(spec.plan))
        kwargs = ", ".join(f"{k}={v!r}" for k, v in spec.build_config_kwargs().items())
        click.echo(f"BuildConfig({kwargs}, plugin_config=PluginConfig)")
        click.echo("PluginConfig: " + ", ".join(f"{k}={v!r}" for k, v in spec.plugin_config_kwargs().items()))
        click.echo(shlex.join(spec.command(out, workers)))
        return

    start = time.monotonic()
    n = spec.checkpoint.mapping.world_size

    def on_rank(rank: int, seconds: float) -> None:
        click.echo(f"rank {rank} of {n} built in {seconds:.1f} s", err=True)

    def on_warning(line: str) -> None:
        click.echo(f"warning: {line}", err=True)

    path = build_engine(spec, out, force=force, workers=workers, on_rank=on_rank, on_warning=on_warning)
    seconds = time.monotonic() - start
    if as_json:
        from fathom.engine.manifest import read_engine_manifest

        emit_json({"out": str(path), "seconds": round(seconds, 2), "manifest": read_engine_manifest(path)})
        return
    s = spec.settings
    click.echo(f"Wrote {path}: {n} engine(s), {s.precision} (KV {s.kv_cache}) for {spec.gpu.name}, "
               f"max_seq_len {s.build_config['max_seq_len']}, max_batch_size {s.build_config['max_batch_size']}, "
               f"in {seconds:.1f} s")


COMMANDS = [plan_cmd, build_cmd]
