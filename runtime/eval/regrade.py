"""`fathom eval --regrade`: grade recorded samples (any engine's outputs) without a model.

Input: JSONL, one sample a line, with `answer` (gold) and `completion` (the model's output);
optional `problem_id` (else the `problem` text, else the line groups samples into problems),
`sample`, `output_tokens` and `truncated`. A `fathom eval --out` file qualifies as is.
"""

from __future__ import annotations

from fathom.runtime.records import read_jsonl

from .data import DataError, require_fields
from .graders import get_grader
from .metrics import summarize
from .samples import graded_row, group_rows


def regrade(path: str, grader_name: str = "strict") -> dict:
    """{"samples": graded rows, "metrics": summarize(...), "grader"}."""
    grader = get_grader(grader_name)
    rows, counts = [], {}
    for n, row in read_jsonl(path, DataError):
        where = f"{path}:{n}"
        require_fields(row, where, ("answer", "completion"))
        if not isinstance(row["completion"], str):
            raise DataError(f"{where}: field 'completion' must be a string, got {type(row['completion']).__name__}")
        if isinstance(row["answer"], bool) or not isinstance(row["answer"], (str, int, float)):
            raise DataError(f"{where}: field 'answer' must be a string or a number, got {row['answer']!r}")
        pid = str(row.get("problem_id") or row.get("problem") or f"line {n}")
        sample = row.get("sample", counts.get(pid, 0))
        counts[pid] = counts.get(pid, 0) + 1
        rows.append(graded_row(pid, sample, row.get("problem"), str(row["answer"]), row["completion"],
                               int(row.get("output_tokens") or 0), bool(row.get("truncated")), grader))
    if not rows:
        raise DataError(f"{path}: no samples (empty file)")
    return {"grader": grader.name, "samples": rows, "metrics": summarize(group_rows(rows), grader)}
