"""Atomic output directories: write into a temp sibling, rename at the end.

Ctrl-C or a crash leaves no OUT and no temp dir; a temp dir left by a killed process (SIGKILL,
power loss) is removed by the next run writing to the same OUT.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import OutputExistsError

TMP_PREFIX = ".fathom-tmp-"


def _stale_temps(out: Path) -> list[Path]:
    return list(out.parent.glob(f"{TMP_PREFIX}{out.name}-*"))


@contextmanager
def atomic_output_dir(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temp dir next to `out`; on success it replaces `out`, on any error it is removed."""
    out = Path(out).absolute()
    if out.exists() and not force:
        raise OutputExistsError(f"{out}: already exists (pass --force to overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in _stale_temps(out):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f"{TMP_PREFIX}{out.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            old = out.parent / f"{TMP_PREFIX}{out.name}-old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
