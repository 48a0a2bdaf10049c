"""The operator docs stay complete: docs/configuration.md names every key the config models
accept, and the README links the deployment and integration docs."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from center.config import CenterConfig
from gateway.config import GatewayConfig, MqttSection

REPO = Path(__file__).resolve().parent.parent
REFERENCE = (REPO / "docs" / "configuration.md").read_text()


def tables(config: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """(TOML table as written, e.g. ``[[button]]``, its model) for every table of ``config``."""
    out = []
    for name, field in config.model_fields.items():
        ann = field.annotation
        for arg in [ann] if typing.get_origin(ann) is list else [ann, *typing.get_args(ann)]:
            if typing.get_origin(arg) is list:  # before the class test: list[X] passes it
                model = typing.get_args(arg)[0]
                if isinstance(model, type) and issubclass(model, BaseModel):
                    out.append((f"[[{name}]]", model))
            elif isinstance(arg, type) and issubclass(arg, BaseModel):
                out.append((f"[{name}]", arg))
    return out


def block(part: str, table: str) -> str:
    """The text under the ``###`` heading that names ``table`` within ``## {part}``."""
    start = REFERENCE.index(f"\n## {part}")
    end = REFERENCE.find("\n## ", start + 1)
    section = REFERENCE[start : end if end != -1 else None]
    for chunk in re.split(r"\n(?=### )", section):
        if chunk.startswith("### ") and f"`{table}`" in chunk.splitlines()[0]:
            return chunk
    raise AssertionError(f"docs/configuration.md ## {part}: no heading for {table}")


@pytest.mark.parametrize(
    ("part", "config"), [("Gateway", GatewayConfig), ("Command center", CenterConfig)]
)
def test_configuration_reference_names_every_key(part: str, config: type[BaseModel]) -> None:
    missing = []
    for table, model in tables(config):
        # The center's [mqtt] tables are the gateway's keys minus center_keys: one table.
        text = block("Gateway", "[mqtt]") if issubclass(model, MqttSection) else block(part, table)
        missing += [f"{table} {key}" for key in model.model_fields if f"| `{key}` |" not in text]
    assert missing == []


def test_readme_links_the_docs() -> None:
    readme = (REPO / "README.md").read_text()
    for doc in (
        "docs/install.md",
        "docs/configuration.md",
        "docs/integration.md",
        "docs/troubleshooting.md",
        "docs/asyncapi.yaml",
    ):
        assert f"({doc}" in readme, doc
        assert (REPO / doc).is_file(), doc
