"""The building blocks of every config file: field types that validate on construction
(paths resolved against the file's directory, identities, URLs, listen addresses), the base
``Section`` (unknown keys are errors), and ``load_model``: TOML text → a validated model, or
one ``ConfigError`` listing every problem as ``FILE:LINE: key: what is wrong``."""

from __future__ import annotations

import tomllib
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
)

from gateway.configerrors import Problems, collect, dotted, syntax_problem
from gateway.configerrors import SectionProblems as _Problems
from gateway.errors import ConfigError
from gateway.placeholders import placeholder_problems
from gateway.tomlpos import Loc, Locator

IDENTITY_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"  # PROTOCOL.md "Identities"
INPUT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
STANDARD_BAUDS = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)


def raise_if(problems: Problems) -> None:
    if problems:
        raise _Problems(problems)


def given(model: BaseModel) -> dict[str, Any]:
    """The keys set explicitly, like raw TOML: cross-key checks see the same input either
    way, so a problem found both in the model and in the raw data is reported once."""
    return {name: getattr(model, name) for name in model.model_fields_set}


def validation_context(info: ValidationInfo) -> Mapping[str, Any]:
    return info.context if isinstance(info.context, Mapping) else {}


# --- field types -----------------------------------------------------------------------


def to_path(value: object, info: ValidationInfo) -> Path:
    if isinstance(value, Path):
        path = value
    elif isinstance(value, str) and value.strip():
        path = Path(value).expanduser()
    else:
        raise ValueError(f"expected a non-empty path string (got {value!r})")
    base = validation_context(info).get("base_dir")
    if isinstance(base, Path) and not path.is_absolute():
        # Relative to the config file, not the working directory: systemd and tests start
        # the daemon from anywhere.
        path = base / path
    return path


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    if validation_context(info).get("check_files") and not value.is_file():
        raise ValueError(f"file not found: {value}")
    return value


def _directory(value: Path, info: ValidationInfo) -> Path:
    # The daemon creates a missing state directory; an existing non-directory is a mistake.
    if validation_context(info).get("check_files") and value.exists() and not value.is_dir():
        raise ValueError(f"not a directory: {value}")
    return value


def check_prefix(value: str) -> str:
    if not value or "+" in value or "#" in value:
        raise ValueError("must be non-empty, without MQTT wildcards '+' or '#'")
    if value.startswith(("/", "$")) or value.endswith("/") or "//" in value or "\0" in value:
        raise ValueError("must not start with '/' or '$', end with '/' or have empty levels")
    return value


def check_baud(value: int) -> int:
    if value not in STANDARD_BAUDS:
        raise ValueError(f"{value} is not a standard rate ({', '.join(map(str, STANDARD_BAUDS))})")
    return value


def _url(value: str) -> str:
    parts = urlsplit(value)
    if value and (parts.scheme not in ("http", "https") or not parts.netloc):
        raise ValueError(f"expected an http:// or https:// URL (got {value!r})")
    return value


def split_host_port(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8787"`` → ``("127.0.0.1", 8787)``; IPv6 in brackets; port 0: any free."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"expected host:port with port 0..65535, e.g. 127.0.0.1:8787 (got {value!r})"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host or "[" in host:
        raise ValueError(f"write an IPv6 address in brackets, e.g. [::1]:8787 (got {value!r})")
    return host, int(port)


def check_listen(value: str) -> str:
    split_host_port(value)
    return value


FilePath = Annotated[Path, BeforeValidator(to_path), AfterValidator(_existing_file)]
DirPath = Annotated[Path, BeforeValidator(to_path), AfterValidator(_directory)]
NonEmpty = Annotated[str, Field(min_length=1)]
Identity = Annotated[str, Field(pattern=IDENTITY_PATTERN)]
InputName = Annotated[str, Field(pattern=INPUT_NAME_PATTERN)]
BcmPin = Annotated[int, Field(ge=0, le=53)]  # the BCM2835 family has GPIO0..GPIO53
Seconds = Annotated[float, Field(gt=0.0)]
PollSeconds = Annotated[float, Field(ge=0.1)]  # a floor that keeps a poll loop from spinning
Url = Annotated[str, AfterValidator(_url)]


class Section(BaseModel):
    # strict: TOML is typed, so "17" for a pin or true for a number is a mistake, not
    # something to coerce. frozen: settings never change after start.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def duplicates(items: Iterable[tuple[Loc, object]], what: str) -> Problems:
    first: dict[object, Loc] = {}
    problems: Problems = []
    for loc, value in items:
        if value in first:
            problems.append((loc, f"{what} {value!r} is already used by {dotted(first[value])}"))
        else:
            first[value] = loc
    return problems


def entries(value: object) -> list[tuple[int, Mapping[str, Any]]]:
    items = value if isinstance(value, list) else []
    return [(i, entry) for i, entry in enumerate(items) if isinstance(entry, Mapping)]


_M = TypeVar("_M", bound=BaseModel)


def load_model(
    path: Path,
    model: type[_M],
    *,
    check_files: bool,
    raw: typing.Callable[[Mapping[str, Any]], Problems],
) -> _M:
    """Read ``path`` as TOML and validate it as ``model``; ``raw`` repeats the cross-key checks
    on the raw TOML so that every problem is reported in one run."""
    shown = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(shown, [f"{shown}: cannot read config: {err.strerror or err}"]) from err
    except UnicodeDecodeError as err:
        raise ConfigError(shown, [f"{shown}: not UTF-8 text: {err.reason}"]) from err
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(shown, [syntax_problem(shown, err, text)]) from err

    placeholders = placeholder_problems(data)
    found: Problems = list(placeholders)
    if "path" in data:  # filled in by the loader, not a setting
        found.append((("path",), "unknown key"))
        del data["path"]
    context = {"base_dir": path.resolve().parent, "check_files": check_files}
    try:
        config = model.model_validate({**data, "path": path.resolve()}, context=context)
    except ValidationError as err:
        found += collect(err.errors(include_url=False), model) + raw(data)
    else:
        if not found:
            return config
    locator = Locator(text)
    # A placeholder line says "replace this" only, not also what is wrong with the placeholder.
    marked = {locator.line(loc) for loc, _ in placeholders}
    located = sorted(
        {
            (locator.line(loc), dotted(loc), msg)
            for loc, msg in found
            if locator.line(loc) not in marked or (loc, msg) in placeholders
        }
    )
    raise ConfigError(shown, [f"{shown}:{line}: {key}: {msg}" for line, key, msg in located])
