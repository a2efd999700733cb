"""`fathom demo`: the tour of the product on the embedded model, offline, in about a minute on a CPU."""

from __future__ import annotations

import click


@click.command()
@click.option("--problems", type=click.IntRange(1, 500), default=64, show_default=True,
              help="Held-out problems to grade.")
@click.option("--show", type=click.IntRange(0, 20), default=2, show_default=True, help="Problems printed in full.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="fathom-demo", show_default=True,
              help="Where the run records and the comparison PNG go.")
def demo(problems, show, device, out_dir):
    """Tour fathom on the embedded model: answers, accuracy, speed, memory.

    \b
    fathom demo
    """
    from pathlib import Path

    from fathom.runtime.demo import run_demo

    run_demo(n_problems=problems, show=show, device=device, out_dir=Path(out_dir), echo=click.echo, secho=click.secho)


COMMANDS = [demo]
