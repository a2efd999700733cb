"""`fathom export ...`: deployment artifacts for other serving stacks, made from an engine's manifest."""

from __future__ import annotations

import click


@click.group("export")
def export_group():
    """Deployment files for other serving stacks (Triton, trtllm-serve), from a fathom engine."""


@export_group.command("triton")
@click.argument("engine", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path())
@click.option("--tokenizer", type=click.Path(file_okay=False), default=None,
              help="Tokenizer directory when ENGINE has none (the model's Hugging Face directory).")
@click.option("--model-name", default="fathom", show_default=True,
              help="Name of the ensemble model clients call: /v2/models/NAME/generate.")
@click.option("--max-queue-delay-us", type=click.IntRange(0), default=0, show_default=True,
              help="Dynamic batching: how long a request may wait for others, in microseconds.")
@click.option("--kv-cache-free-gpu-mem-fraction", type=float, default=None,
              help="Share of free GPU memory for the KV cache, in (0, 1] (default: the engine manifest's).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def export_triton_cmd(engine, out, tokenizer, model_name, max_queue_delay_us, kv_cache_free_gpu_mem_fraction, force):
    """Write a Triton Inference Server model repository OUT for ENGINE (tensorrtllm_backend layout).

    preprocessing, tensorrt_llm, postprocessing and an ensemble named --model-name, each with its
    config.pbtxt filled from the engine manifest, and OUT/launch.sh (tritonserver, or mpirun for a
    multi-rank engine; `launch.sh check` curls /v2/health/ready and the generate endpoint).
    """
    from fathom.deploy.triton import TritonExportOptions, export_triton

    options = TritonExportOptions(tokenizer_dir=tokenizer, model_name=model_name, max_queue_delay_us=max_queue_delay_us,
                                  kv_cache_free_gpu_mem_fraction=kv_cache_free_gpu_mem_fraction, force=force)
    path = export_triton(engine, out, options)
    click.echo(f"Wrote {path} (start: {path}/launch.sh; check: {path}/launch.sh check)")


COMMANDS = [export_group]
