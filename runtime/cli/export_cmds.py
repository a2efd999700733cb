"""`fathom export ...`: deployment artifacts for other serving stacks, made from an engine's manifest."""

from __future__ import annotations

import click


@click.group("export")
def export_group():
    """Deployment files for other serving stacks (Triton, trtllm-serve), from a fathom engine."""


COMMANDS = [export_group]
