"""Config problems in a technician's words: pydantic's errors turned into one line per
problem, at a key path that ``gateway.tomlpos.Locator`` maps back to a line of the file."""

from __future__ import annotations

import difflib
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from gateway.tomlpos import Loc

Problems = list[tuple[Loc, str]]


class SectionProblems(ValueError):
    """Raised inside validators to report problems at key paths relative to the model being
    validated (pydantic would otherwise point them all at the model itself)."""

    def __init__(self, items: Problems) -> None:
        self.items = items
        super().__init__("; ".join(msg for _, msg in items))


def scalar(value: object, kind: Any) -> bool:
    """``value`` is of ``kind`` (TOML booleans are not numbers)."""
    return isinstance(value, kind) and not isinstance(value, bool)


def syntax_problem(shown: str, err: tomllib.TOMLDecodeError, text: str) -> str:
    message, line = str(err), "1"
    if match := re.search(r"\s*\(at line (\d+), column (\d+)\)$", message):
        message, line = f"{message[: match.start()]} (column {match[2]})", match[1]
    elif match := re.search(r"\s*\(at end of document\)$", message):
        message, line = f"{message[: match.start()]} (at end of file)", str(text.count("\n") + 1)
    return f"{shown}:{line}: TOML syntax error: {message}"


def collect(errors: Sequence[Mapping[str, Any]], model: type[BaseModel]) -> Problems:
    found: Problems = []
    for e in errors:
        loc: Loc = tuple(e["loc"])
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, SectionProblems):
            found += [((*loc, *sub), msg) for sub, msg in cause.items]
        else:
            found.append((loc, _message(e, loc, model, cause)))
    return found


def _message(e: Mapping[str, Any], loc: Loc, model: type[BaseModel], cause: object) -> str:
    """One pydantic error in a technician's words."""
    if e["type"] == "value_error" and cause is not None:
        return str(cause)  # our own validators' messages, without pydantic's prefix
    if e["type"] == "missing":
        if isinstance(loc[-1], str) and _fields_at(model, loc):
            return f"missing required table [{dotted(loc)}]"
        return "missing required key"
    if e["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _fields_at(model, loc[:-1]), n=1)
        return "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    value = e.get("input")
    if loc and loc[-1] == "password":
        return str(e["msg"])  # never echo a secret into a terminal or the journal
    if scalar(value, str | int | float) and e["type"] != "finite_number":
        return f"{e['msg']} (got {value!r})"
    return str(e["msg"])


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``X``, ``list[X]`` or ``X | None``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if (found := _model_of(arg)) is not None:
                return found
    return None


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys allowed in the table at ``loc`` (empty if ``loc`` is not a table)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, str) and current is not None:
            field = current.model_fields.get(part)
            current = _model_of(field.annotation) if field else None
    return [name for name in current.model_fields if name != "path"] if current else []


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"
