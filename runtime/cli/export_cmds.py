"""`fathom export ...`: deployment artifacts for other serving stacks, made from an engine's manifest."""

from __future__ import annotations

import click

from .common import emit_json, json_option


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


@export_group.command("trtllm-serve")
@click.argument("engine", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default="trtllm-serve.yaml", show_default=True,
              help="Where to write the --extra_llm_api_options YAML the command reads.")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False), default=None,
              help="Tokenizer directory [default: the engine's, else its checkpoint's].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address trtllm-serve binds.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@json_option
def trtllm_serve(engine, out, tokenizer, host, port, force, as_json):
    """Print the trtllm-serve command (tensorrt-llm 1.2.1) for ENGINE and write its extra-options YAML.

    \b
    fathom export trtllm-serve ./engine --out serve.yaml --host 0.0.0.0
    """
    from fathom.deploy.trtllm_serve import trtllm_serve_launch, write_extra_options

    launch = trtllm_serve_launch(engine, out, tokenizer=tokenizer, host=host, port=port)
    path = write_extra_options(launch, force=force)
    if as_json:
        return emit_json(launch.to_dict())
    click.echo(f"extra options written to {path}", err=True)
    click.echo(launch.command_line())


COMMANDS = [export_group]
