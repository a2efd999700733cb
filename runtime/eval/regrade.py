"""`fathom eval --regrade`: grade recorded samples (any engine's outputs) without a model.

Input: JSONL, one sample a line, with `answer` (gold) and `completion` (the model's output).
Optional: `problem_id` (a string or a number), `sample` (an integer), `output_tokens` (an
integer, else token statistics are reported as not recorded) and `truncated` (true/false, else
the truncated share is reported as not recorded).
Samples group into problems by `problem_id`; lines without one group by their `problem` text;
a line with neither is a problem of its own (one sample, so pass@k and cons@n see n = 1). All
lines of one problem must give the same gold answer. A `fathom eval --out` file qualifies as is.
"""

from __future__ import annotations

from fathom.runtime.records import read_jsonl

from .data import DataError, require_fields
from .graders import get_grader
from .samples import check_sample_types, check_unique_sample, graded_row, summarize_rows


def regrade(path: str, grader_name: str = "strict") -> dict:
    """{"samples": graded rows, "metrics": summarize_rows(...), "grader"}."""
    grader = get_grader(grader_name)
    rows, counts, golds, seen = [], {}, {}, {}
    for n, row in read_jsonl(path, DataError):
        where = f"{path}:{n}"
        require_fields(row, where, ("answer", "completion"))
        check_sample_types(row, where, DataError)
        key = next((row[f] for f in ("problem_id", "problem") if row.get(f) is not None), None)
        pid = str(key) if key is not None else f"line {n}"
        gold = str(row["answer"])
        if golds.setdefault(pid, (gold, n))[0] != gold:
            first, line = golds[pid]
            raise DataError(f"{where}: field 'answer' {gold!r} differs from {first!r} on line {line} for the "
                            f"same problem {pid!r}")
        sample = counts.get(pid, 0) if row.get("sample") is None else row["sample"]
        counts[pid] = counts.get(pid, 0) + 1
        check_unique_sample(seen, pid, sample, n, where, DataError)
        rows.append(graded_row(pid, sample, row.get("problem"), gold, row["completion"],
                               row.get("output_tokens"), row.get("truncated"), grader,
                               row.get("settings")))
    if not rows:
        raise DataError(f"{path}: no samples (empty file)")
    return {"grader": grader.name, "samples": rows, "metrics": summarize_rows(rows, grader)}
