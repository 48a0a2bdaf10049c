"""Logs: library warnings (Python ``warnings``, gpiozero's pin factory fallback) come out as
one JSON line each, like our own lines; on the journal's stream every line starts with its
syslog priority (``<4>``) so that ``journalctl -p warning`` filters them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gateway import logs

SCRIPT = textwrap.dedent(
    """
    import logging, sys, warnings
    import structlog
    from gateway import logs

    logs.configure(sys.stdout)
    structlog.get_logger("alarmgw.test").info("hello", n=1)
    warnings.warn("old thing\\nsecond line", DeprecationWarning, stacklevel=1)
    logging.getLogger("somelib").error("library failed")
    logging.getLogger("somelib").info("library chatter")  # below the library floor
    from gpiozero import Button
    try:
        Button(17)  # no Raspberry Pi here: every pin factory falls back, then none is left
    except Exception as err:
        structlog.get_logger("alarmgw.test").error("no pin factory", error=type(err).__name__)
    """
)


def run_logging(tmp_path: Path, *, journal: bool) -> list[str]:
    """Run SCRIPT with stdout on a file (as journald's stream would be); its lines."""
    out = tmp_path / "stdout"
    env = {k: v for k, v in os.environ.items() if k not in ("GPIOZERO_PIN_FACTORY",)}
    env.pop("JOURNAL_STREAM", None)
    env["PYTHONWARNINGS"] = "always"
    with out.open("w") as stdout:
        if journal:
            st = os.fstat(stdout.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing raw on stderr either
    return out.read_text().splitlines()


def parse(line: str) -> tuple[int | None, dict[str, Any]]:
    prefix = None
    if line.startswith("<"):
        end = line.index(">")
        prefix, line = int(line[1:end]), line[end + 1 :]
    return prefix, json.loads(line)


def test_warnings_and_library_logs_are_prefixed_json_lines_on_the_journal(
    tmp_path: Path,
) -> None:
    lines = [parse(line) for line in run_logging(tmp_path, journal=True)]
    by_event = {doc["event"]: (prio, doc) for prio, doc in lines}
    prio, hello = by_event["hello"]
    assert prio == 6 and hello["level"] == "info" and hello["n"] == 1
    deprecated = [
        (p, d) for p, d in lines if d.get("logger") == "py.warnings" and "old thing" in d["event"]
    ]
    assert len(deprecated) == 1
    prio, doc = deprecated[0]
    assert prio == 4 and doc["level"] == "warning" and "DeprecationWarning" in doc["event"]
    assert "\n" not in doc["event"] and "timestamp" in doc
    assert by_event["library failed"][0] == 3
    assert by_event["library failed"][1]["logger"] == "somelib"
    assert "library chatter" not in by_event
    fallbacks = [
        (p, d) for p, d in lines if "PinFactoryFallback" in d["event"] and d["level"] == "warning"
    ]
    assert fallbacks and all(p == 4 for p, _ in fallbacks)
    assert by_event["no pin factory"][0] == 3


def test_plain_json_lines_off_the_journal(tmp_path: Path) -> None:
    lines = run_logging(tmp_path, journal=False)
    assert lines and all(line.startswith("{") for line in lines)
    docs = [json.loads(line) for line in lines]
    assert any(d.get("logger") == "py.warnings" for d in docs)


@pytest.mark.parametrize(("level", "prio"), [("warning", 4), ("error", 3), ("debug", 7)])
def test_priority_prefix(level: str, prio: int) -> None:
    render = logs.Prefixed(lambda _l, _m, d: json.dumps(d))
    assert render(None, level, {"level": level, "event": "x"}).startswith(f"<{prio}>{{")


def test_journal_stream_must_be_this_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        st = os.fstat(a.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.to_journal(a) and not logs.to_journal(b)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not logs.to_journal(a)
