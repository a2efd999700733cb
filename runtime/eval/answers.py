"""The final answer of a model output: the content of its last `\\boxed`.

The protocol of the Fathom-R1-14B model card (github.com/FractalAIResearchLabs/Fathom-R1,
eval/readme.md: "put your final answer within \\boxed{}") grades the last box anywhere in the
output, including one inside a `<think>` block that never closed. Two forms are read:

- `\\boxed{...}`: the text up to the brace that closes the opening one (nested braces kept,
  `\\{` and `\\}` taken as literal braces);
- `\\boxed 70` / `\\boxed70`: the token after the command (which ends the control word: the
  next character is not a letter), up to whitespace or a `$`.

As the card's `extract_answer` (eval/utils/parser.py) does for both forms, a leading `:` and a
trailing `.` then a trailing `/` are dropped (`\\boxed{5.}` is 5).

No box, an empty box, or a last box whose braces never close (output cut off mid-answer) is no
answer (None), which every grader counts wrong.
"""

from __future__ import annotations

import re

_BOXED = "\\boxed"
_BARE_TOKEN = re.compile(r"\s*([^\s$]+)")


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` / `\\boxed N` in `text`, stripped; None if none."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    rest = text[start + len(_BOXED):]
    body = rest.lstrip()
    if body.startswith("{"):
        content = _braced(body)
    elif rest and not _is_letter(rest[0]):
        token = _BARE_TOKEN.match(rest)
        content = token.group(1) if token else None
    else:
        content = None
    if content is None:
        return None
    content = content.strip()
    content = content.removeprefix(":").removesuffix(".").removesuffix("/").strip()
    return content or None


def _is_letter(ch: str) -> bool:
    """An ASCII letter: one that would continue the control word (`\\boxedfoo` is not a box)."""
    return "a" <= ch.lower() <= "z"


def _braced(body: str) -> str | None:
    """Text inside the braces that open `body`; None when they never close."""
    depth = 0
    escaped = False
    for i, ch in enumerate(body):
        if escaped:  # \{ and \} are literal braces (a set), not grouping
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return body[1:i]
    return None
