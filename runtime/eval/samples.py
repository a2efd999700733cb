"""The samples file: one JSON line per graded sample, appended as it finishes; resume and grouping.

Each line: problem_id, sample, problem, answer (gold), completion, extracted, correct,
output_tokens (None when the endpoint did not report usage), truncated (the output hit
--max-new-tokens: finish_reason "length"; None when the endpoint gave no finish_reason) and
settings (the draw's temperature, top_p, max_new_tokens, seed, data and what drew it: the model
with its executor, dtype, precision and KV cache format, or its endpoint; a resumed run must
repeat them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fathom.build.errors import FathomError
from fathom.runtime.records import read_jsonl

from .answers import extract_boxed
from .metrics import ProblemSamples, summarize

# What a resumed run needs of each line (correct and extracted are graded again).
RESUME_FIELDS = ("problem_id", "sample", "problem", "answer", "completion", "output_tokens", "truncated", "settings")


class SamplesFileError(FathomError):
    """A samples file cannot be read or continued."""


def graded_row(problem_id: str, sample: int, problem: str | None, gold: str, completion: str,
               output_tokens: int | None, truncated: bool | None, grader, settings: dict | None = None) -> dict:
    extracted = extract_boxed(completion)
    return {"problem_id": problem_id, "sample": sample, "problem": problem, "answer": gold,
            "completion": completion, "extracted": extracted, "correct": bool(grader.equivalent(extracted, gold)),
            "output_tokens": output_tokens, "truncated": truncated, "settings": settings}


def check_sample_types(row: dict, where: str, error: type[FathomError]) -> None:
    """Refuse a sample row whose fields have the wrong type (`error` naming `where` and the field):
    completion a string, answer a string or a number, sample and output_tokens non-negative integers
    or absent/null, truncated true/false or absent/null."""
    if not isinstance(row.get("completion"), str):
        raise error(f"{where}: field 'completion' must be a string, got {type(row.get('completion')).__name__}")
    answer = row.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise error(f"{where}: field 'answer' must be a string or a number, got {answer!r}")
    for field in ("sample", "output_tokens"):
        value = row.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise error(f"{where}: field '{field}' must be a non-negative integer, got {value!r}")
    if row.get("truncated") is not None and not isinstance(row["truncated"], bool):
        raise error(f"{where}: field 'truncated' must be true or false, got {row['truncated']!r}")


def check_unique_sample(seen: dict, problem_id: str, sample: int, line: int, where: str,
                        error: type[FathomError]) -> None:
    """Refuse a (problem_id, sample) already in `seen` ({key: line}, updated), so no sample counts twice."""
    first = seen.setdefault((problem_id, sample), line)
    if first != line:
        raise error(f"{where}: problem {problem_id!r} sample {sample} repeats line {first}; "
                    "each sample must appear once")


def regraded(row: dict, grader) -> dict:
    """`row` graded again with `grader` (a resumed run's grader may differ from the first run's)."""
    return graded_row(row["problem_id"], row["sample"], row["problem"], str(row["answer"]), row["completion"],
                      row["output_tokens"], row["truncated"], grader, row["settings"])


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
    rows, seen = [], {}
    for n, row in read_jsonl(path, SamplesFileError):
        missing = [f for f in RESUME_FIELDS if f not in row] if isinstance(row, dict) else list(RESUME_FIELDS)
        if missing:
            raise SamplesFileError(f"--out {path}:{n}: expected a `fathom eval --out` sample, field "
                                   f"{missing[0]!r} missing")
        where = f"--out {path}:{n}"
        if row["sample"] is None:
            raise SamplesFileError(f"{where}: field 'sample' must be a non-negative integer, got None")
        check_sample_types(row, where, SamplesFileError)
        check_unique_sample(seen, str(row["problem_id"]), row["sample"], n, where, SamplesFileError)
        rows.append(row)
    return rows


class SamplesWriter:
    """Appends one line per sample with a single write, so an interruption loses at most one line.
    A non-empty file is only continued (`resume`) or replaced (`force`), never silently wiped."""

    def __init__(self, path: str | Path | None, resume: bool, force: bool = False):
        self.path = Path(path) if path is not None else None
        if self.path is None:
            return
        if not resume and not force and self.path.is_file() and self.path.stat().st_size > 0:
            raise SamplesFileError(f"--out {self.path}: holds samples already; --resume continues it, "
                                   "--force replaces it")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SamplesFileError(f"--out {self.path}: cannot create its folder ({e.strerror or e})") from e
        self._append(b"" if resume else None)

    def write(self, row: dict) -> None:
        if self.path is not None:
            self._append(_line(row))

    def _append(self, data: bytes | None) -> None:
        """Append `data` with one write (None: empty the file), creating the file if needed."""
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if data is None else os.O_APPEND)
        try:
            fd = os.open(self.path, flags, 0o644)
            try:
                os.write(fd, data or b"")
            finally:
                os.close(fd)
        except OSError as e:
            raise SamplesFileError(f"--out {self.path}: cannot write ({e.strerror or e})") from e

    def rewrite(self, rows: list[dict]) -> None:
        """Replace the file's rows (regraded on resume) in one rename, so an interruption keeps one version."""
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(b"".join(_line(r) for r in rows))
        os.replace(tmp, self.path)


def _line(row: dict) -> bytes:
    return (json.dumps(row, ensure_ascii=False) + "\n").encode()


def group_rows(rows: list[dict]) -> list[ProblemSamples]:
    """Rows -> one ProblemSamples per problem_id (first-seen order), samples in `sample` order.
    Unrecorded output tokens and truncation (None) count 0 and False here; `summarize_rows` reports
    them as not recorded."""
    by_problem: dict[str, list[dict]] = {}
    for row in rows:
        by_problem.setdefault(str(row["problem_id"]), []).append(row)
    out = []
    for pid, group in by_problem.items():
        group = sorted(group, key=lambda r: r["sample"])
        out.append(ProblemSamples(
            problem_id=pid, gold=str(group[0]["answer"]), answers=[r["extracted"] for r in group],
            correct=[bool(r["correct"]) for r in group],
            output_tokens=[r["output_tokens"] or 0 for r in group],
            truncated=[bool(r["truncated"]) for r in group]))
    return out


def summarize_rows(rows: list[dict], grader) -> dict:
    """`metrics.summarize` of graded rows; token statistics are None (not recorded) when any
    sample lacks its output token count, the truncated share when any sample's is unknown."""
    metrics = summarize(group_rows(rows), grader)
    if any(r["output_tokens"] is None for r in rows):
        metrics["tokens"].update(mean=None, p50=None, p90=None)
    if any(r["truncated"] is None for r in rows):
        metrics["tokens"]["truncated_share"] = None
    return metrics
