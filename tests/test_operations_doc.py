"""docs/operations.md: linked from the README, and every ``alarmgw`` command line it tells a
technician to type parses with the real command-line parser."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from gateway.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "operations.md"


def commands() -> list[list[str]]:
    """``alarmgw ...`` inside backticks or code blocks, up to a shell operator."""
    found = set()
    for match in re.finditer(r"`(?:sudo (?:-u \w+ )?)?alarmgw ([a-z][^`]*)`", DOC.read_text()):
        found.add(tuple(shlex.split(re.split(r"\s(?:&&|\||;)\s", match[1])[0])))
    return [list(words) for words in sorted(found)]


def test_readme_links_operations() -> None:
    assert "(docs/operations.md)" in (REPO / "README.md").read_text()
    assert DOC.is_file()


def test_the_doc_covers_what_a_technician_needs() -> None:
    text = DOC.read_text()
    for heading in (
        "## Replacing the Pi or its SD card",
        "## Rotating the gateway's key",
        "## Rotating the center's key",
        "## Backups",
    ):
        assert heading in text, heading
    for path in ("/etc/alarmgw/gateway.key", "/var/lib/alarmgw", "outbox.sqlite", "center_keys"):
        assert path in text, path


@pytest.mark.parametrize("argv", commands(), ids=" ".join)
def test_every_command_in_the_doc_parses(argv: list[str]) -> None:
    if argv[0] == "config" and argv[1:] == ["check"]:
        argv = [*argv, "FILE"]  # "alarmgw config check" named without its file
    if argv == ["config", "check", "--center"]:
        argv = [*argv, "FILE"]
    build_parser().parse_args(argv)
