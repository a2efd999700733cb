"""The `fathom` command line. One module per command group; heavy imports stay inside commands.

Examples:

    fathom demo
    fathom generate demo -p "What is 12+34?"
    fathom convert demo ./ckpt --tp 2
    fathom plan random:fathom-r1-14b --gpu h100 --precision fp8
"""

from __future__ import annotations

import sys

import click

from fathom.build.errors import FathomError
from fathom.runtime import version

# Each module exposes COMMANDS: a list of click commands, registered in this order.
COMMAND_MODULES = ("demo_cmd", "model_cmds", "serve_cmd", "build_cmds", "quality_cmd", "eval_cmd", "engine_cmds", "bench_cmds", "export_cmds")


class FathomGroup(click.Group):
    """Turns library errors into one-line messages with a non-zero exit, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FathomError as e:
            raise click.ClickException(str(e)) from e
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)

    def list_commands(self, ctx):
        return list(self.commands)  # registration order, grouped by pipeline stage

    def format_commands(self, ctx, formatter):
        # Click cuts short help at the terminal width with "..."; show each first sentence whole (wrapped).
        rows = [(name, self.commands[name].get_short_help_str(limit=200)) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=FathomGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version(), "--version", prog_name="fathom")
def main():
    """fathom: run and build Fathom-R1-14B (Qwen2) with TensorRT-LLM or PyTorch.

    MODEL arguments accept a Hugging Face directory, a fathom checkpoint directory, `demo`
    (the embedded tiny model) or `random:<preset>` (e.g. random:fathom-r1-14b).
    """


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        for command in module.COMMANDS:
            main.add_command(command)


_register()
