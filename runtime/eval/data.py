"""Evaluation problems and their prompts: JSONL files, the shipped AIME/HMMT sets, the demo task.

Prompts follow the model card's evaluation (github.com/FractalAIResearchLabs/Fathom-R1,
eval/eval.py and eval/readme.md): a system message with the instruction, a user message with the
same instruction, " \\n" and the problem, rendered with the model's chat template and its
generation prompt. `builtin:demo` asks the embedded demo model's held-out problems in the format
it was trained on (fathom.runtime.arith: the question, then the instruction, no system message).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fathom.build.errors import FathomError
from fathom.runtime.arith import PROMPT_SUFFIX, make_problems
from fathom.runtime.chat import build_messages
from fathom.runtime.records import read_jsonl

DATA_DIR = Path(__file__).parent / "data"
BUILTIN_FILES = {"aime25": "aime25.jsonl", "hmmt25": "hmmt25.jsonl"}
BUILTINS = (*BUILTIN_FILES, "demo")
DEMO_PROBLEMS = 64  # held-out demo-task problems in builtin:demo (the quality report's default)
DEMO_SEED = 0


class DataError(FathomError):
    """An evaluation data file or spec is missing, empty or malformed."""


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str  # the gold answer as text
    demo_user_message: str | None = None  # builtin:demo: the user turn the demo model was trained on

    def messages(self) -> list[dict[str, str]]:
        """The chat messages of the prompt (see the module docstring)."""
        if self.demo_user_message is not None:
            return build_messages(self.demo_user_message)
        return build_messages(f"{PROMPT_SUFFIX} \n{self.problem}", system=PROMPT_SUFFIX)


def _text(value, where: str, field: str) -> str:
    if (isinstance(value, bool) or not isinstance(value, (str, int, float))
            or (isinstance(value, str) and not value.strip())):
        raise DataError(f"{where}: field '{field}' must be a non-empty string or a number, got {value!r}")
    return str(value)


def require_fields(row: object, where: str, fields: tuple[str, ...]) -> None:
    """Refuse a JSONL row that is not an object with `fields` (DataError naming file:line and field)."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with fields {' and '.join(repr(f) for f in fields)}")
    for field in fields:
        if field not in row:
            raise DataError(f"{where}: field '{field}' missing")


def problems_from_rows(rows: list[tuple[int, object]], name: str) -> list[Problem]:
    """Problems from (line number, JSON value) rows, problem text stripped as the card's
    eval/utils/parser.py does; `name` names the source in errors."""
    problems, seen = [], set()
    for n, row in rows:
        where = f"{name}:{n}"
        require_fields(row, where, ("problem", "answer"))
        pid = _text(row["id"], where, "id") if "id" in row else str(len(problems) + 1)
        if pid in seen:
            raise DataError(f"{where}: id {pid!r} repeats an earlier line's; ids must be unique")
        seen.add(pid)
        problems.append(Problem(pid, _text(row["problem"], where, "problem").strip(),
                                _text(row["answer"], where, "answer")))
    if not problems:
        raise DataError(f"{name}: no problems (empty file)")
    return problems


def load_problems(spec: str, limit: int | None = None) -> list[Problem]:
    """FILE.jsonl (fields problem, answer, optional id) or builtin:aime25|hmmt25|demo; the first
    `limit` problems."""
    if limit is not None and limit < 1:
        raise DataError(f"--limit {limit}: expected >= 1")
    if spec.startswith("builtin:"):
        name = spec[len("builtin:"):]
        if name not in BUILTINS:
            raise DataError(f"--data {spec!r}: unknown builtin, expected one of "
                            + ", ".join(f"builtin:{b}" for b in BUILTINS))
        if name == "demo":
            count = DEMO_PROBLEMS if limit is None else min(limit, DEMO_PROBLEMS)
            return [Problem(str(i + 1), p.question, p.answer, demo_user_message=p.user_message)
                    for i, p in enumerate(make_problems(count, DEMO_SEED, "heldout"))]
        path = DATA_DIR / BUILTIN_FILES[name]
    else:
        path = Path(spec)
        if not path.is_file():
            raise DataError(f"--data {spec!r}: no such file (expected FILE.jsonl or builtin:{'|'.join(BUILTINS)})")
    problems = problems_from_rows(read_jsonl(path, DataError), str(path))
    return problems[:limit] if limit is not None else problems
