"""Small helpers shared by the command modules."""

from __future__ import annotations

import json
import sys

import click


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def is_tty() -> bool:
    return sys.stdout.isatty()


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
