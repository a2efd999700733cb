"""`fathom eval --regrade`: grade recorded samples (any engine's outputs) without a model.

Input: JSONL, one sample a line, with `answer` (gold) and `completion` (the model's output).
Optional: `problem_id` (a string or a number), `sample` (an integer), `output_tokens` (an
integer, else token statistics are reported as not recorded) and `truncated` (true/false).
Samples group into problems by `problem_id`; lines without one group by their `problem` text;
a line with neither is a problem of its own (one sample, so pass@k and cons@n see n = 1). All
lines of one problem must give the same gold answer. A `fathom eval --out` file qualifies as is.
"""

from __future__ import annotations

from fathom.runtime.records import read_jsonl

from .data import DataError, require_fields
from .graders import get_grader
from .samples import graded_row, summarize_rows


def _int_field(row: dict, field: str, where: str) -> int | None:
    value = row.get(field)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise DataError(f"{where}: field '{field}' must be a non-negative integer, got {value!r}")
    return value


def regrade(path: str, grader_name: str = "strict") -> dict:
    """{"samples": graded rows, "metrics": summarize_rows(...), "grader"}."""
    grader = get_grader(grader_name)
    rows, counts, golds = [], {}, {}
    for n, row in read_jsonl(path, DataError):
        where = f"{path}:{n}"
        require_fields(row, where, ("answer", "completion"))
        if not isinstance(row["completion"], str):
            raise DataError(f"{where}: field 'completion' must be a string, got {type(row['completion']).__name__}")
        if isinstance(row["answer"], bool) or not isinstance(row["answer"], (str, int, float)):
            raise DataError(f"{where}: field 'answer' must be a string or a number, got {row['answer']!r}")
        if row.get("truncated") is not None and not isinstance(row["truncated"], bool):
            raise DataError(f"{where}: field 'truncated' must be true or false, got {row['truncated']!r}")
        key = next((row[f] for f in ("problem_id", "problem") if row.get(f) is not None), None)
        pid = str(key) if key is not None else f"line {n}"
        gold = str(row["answer"])
        if golds.setdefault(pid, (gold, n))[0] != gold:
            first, line = golds[pid]
            raise DataError(f"{where}: field 'answer' {gold!r} differs from {first!r} on line {line} for the "
                            f"same problem {pid!r}")
        sample = _int_field(row, "sample", where)
        sample = counts.get(pid, 0) if sample is None else sample
        counts[pid] = counts.get(pid, 0) + 1
        rows.append(graded_row(pid, sample, row.get("problem"), gold, row["completion"],
                               _int_field(row, "output_tokens", where), bool(row.get("truncated")), grader,
                               row.get("settings")))
    if not rows:
        raise DataError(f"{path}: no samples (empty file)")
    return {"grader": grader.name, "samples": rows, "metrics": summarize_rows(rows, grader)}
