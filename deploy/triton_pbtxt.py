"""Protobuf text format for Triton model configs (model_config.proto `ModelConfig`), from plain data.

A message is a dict (field -> value, in order). Values: str (quoted), bool, int, float, `Token`
(an enum value, unquoted), a list of scalars (`[ a, b ]`), a dict (a nested message), a list of
dicts (a repeated message in list form) or `Repeated` (a repeated message written once per entry,
the form maps such as `parameters` and `input_map` take in Triton's own configs).
"""

from __future__ import annotations


class Token(str):
    """An enum value (TYPE_INT32, KIND_CPU): written without quotes."""


class Repeated(list):
    """A repeated message field written as one `field { ... }` block per entry."""


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _scalar(value) -> str:
    if isinstance(value, Token):
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    raise TypeError(f"not a protobuf text scalar: {value!r}")


def _lines(message: dict, indent: str) -> list[str]:
    out = []
    inner = indent + "  "
    for field, value in message.items():
        if isinstance(value, Repeated):
            for entry in value:
                out += [f"{indent}{field} {{", *_lines(entry, inner), f"{indent}}}"]
        elif isinstance(value, dict):
            out += [f"{indent}{field} {{", *_lines(value, inner), f"{indent}}}"]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out.append(f"{indent}{field} [")
            for i, entry in enumerate(value):
                comma = "," if i < len(value) - 1 else ""
                out += [f"{inner}{{", *_lines(entry, inner + "  "), f"{inner}}}{comma}"]
            out.append(f"{indent}]")
        elif isinstance(value, list):
            items = ", ".join(_scalar(v) for v in value)
            out.append(f"{indent}{field}: [ {items} ]" if items else f"{indent}{field}: [ ]")
        else:
            out.append(f"{indent}{field}: {_scalar(value)}")
    return out


def to_pbtxt(message: dict, header: str = "") -> str:
    """`message` in text format; `header` lines become leading `#` comments."""
    comments = [f"# {line}".rstrip() for line in header.splitlines()]
    return "\n".join([*comments, *_lines(message, "")]) + "\n"
