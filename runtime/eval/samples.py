"""The samples file: one JSON line per graded sample, appended as it finishes; resume and grouping.

Each line: problem_id, sample, problem, answer (gold), completion, extracted, correct,
output_tokens, truncated (the output hit --max-new-tokens: finish_reason "length").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fathom.build.errors import FathomError

from .answers import extract_boxed
from .metrics import ProblemSamples


class SamplesFileError(FathomError):
    """A samples file cannot be read or continued."""


def graded_row(problem_id: str, sample: int, problem: str | None, gold: str, completion: str,
               output_tokens: int, truncated: bool, grader) -> dict:
    extracted = extract_boxed(completion)
    return {"problem_id": problem_id, "sample": sample, "problem": problem, "answer": gold,
            "completion": completion, "extracted": extracted, "correct": bool(grader.equivalent(extracted, gold)),
            "output_tokens": output_tokens, "truncated": truncated}


def read_finished(path: str | Path) -> list[dict]:
    """The complete rows of an interrupted samples file. A last line cut short by the interruption
    (no newline, not valid JSON) is removed from the file so appends continue on a clean line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise SamplesFileError(f"--out {path}: cannot read ({e.strerror})") from e
    lines = data.split(b"\n")
    if lines and lines[-1].strip():  # the last line has no newline: check it is whole
        try:
            json.loads(lines[-1])
            data += b"\n"
        except json.JSONDecodeError:
            data = data[:len(data) - len(lines[-1])]
        path.write_bytes(data)
    rows = []
    for n, line in enumerate(data.decode().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SamplesFileError(f"--out {path}:{n}: not valid JSON ({e.msg}); not a samples file?") from e
        if not isinstance(row, dict) or not {"problem_id", "sample", "correct"} <= row.keys():
            raise SamplesFileError(f"--out {path}:{n}: expected a sample with fields problem_id, sample, correct")
        rows.append(row)
    return rows


class SamplesWriter:
    """Appends one line per sample with a single write, so an interruption loses at most one line."""

    def __init__(self, path: str | Path | None, resume: bool):
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not resume:
                self.path.write_bytes(b"")

    def write(self, row: dict) -> None:
        if self.path is None:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (json.dumps(row, ensure_ascii=False) + "\n").encode())
        finally:
            os.close(fd)


def group_rows(rows: list[dict]) -> list[ProblemSamples]:
    """Rows -> one ProblemSamples per problem_id (first-seen order), samples in `sample` order."""
    by_problem: dict[str, list[dict]] = {}
    for row in rows:
        by_problem.setdefault(str(row["problem_id"]), []).append(row)
    out = []
    for pid, group in by_problem.items():
        group = sorted(group, key=lambda r: r.get("sample", 0))
        out.append(ProblemSamples(
            problem_id=pid, gold=str(group[0]["answer"]), answers=[r["extracted"] for r in group],
            correct=[bool(r["correct"]) for r in group],
            output_tokens=[int(r.get("output_tokens") or 0) for r in group],
            truncated=[bool(r.get("truncated")) for r in group]))
    return out
