"""`fathom export ...`: deployment artifacts for other serving stacks, made from an engine's manifest."""

from __future__ import annotations

import click

from .common import emit_json, json_option


@click.group("export")
def export_group():
    """Deployment files for other serving stacks (Triton, trtllm-serve), from a fathom engine."""


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
