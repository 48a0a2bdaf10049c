"""Technician output fits a phone's terminal, ends quietly on a closed pipe, shows times in
the site's time zone with the date, and never hides an unacknowledged alarm behind a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.technician import tools
from tests.test_health import _snapshot


def test_status_fits_a_50_column_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    lines = tools.format_status(_snapshot())
    assert max(len(line) for line in lines) <= 50
    assert all(len(line) <= 50 for line in tools.format_queue(_snapshot()["queue"], "x"))


def test_times_in_the_site_time_zone_with_the_date() -> None:
    shown = tools.local_time("2026-12-03T17:00:00.000Z", "Asia/Shanghai")
    assert shown == "2026-12-04 01:00:00 CST"
    assert tools.local_time(0.0, "UTC") == "1970-01-01 00:00:00 UTC"
    assert tools.local_time("garbage", "UTC") == "garbage"


def test_a_later_test_does_not_hide_an_unacked_alarm() -> None:
    st: dict[str, Any] = _snapshot()
    st["last_alarm"] = {
        "id": "t1",
        "type": "test",
        "input": "gpio:gate",
        "ts": "2026-12-03T17:00:00.000Z",
        "acked_at": 1.0,
        "ack_ms": 5.0,
    }
    st["queue"]["by_type"]["alarm"] = {
        "pending": 1,
        "oldest_age_s": 30.0,
        "failed_attempts": 0,
        "last_error": None,
    }
    text = "\n".join(tools.format_status(st, ack_timeout_s=60.0))
    assert "1 real alarm(s) NOT acked yet" in text


def test_status_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    # A command that prints much more than a pipe holds, read by `head -1`.
    code = (
        "import sys; from gateway import cli; from gateway.technician import tools\n"
        "def fake(config, *, as_json, out=sys.stdout):\n"
        "    for _ in range(100000):\n"
        "        print('x' * 79, file=out)\n"
        "    return 0\n"
        "tools.cmd_status = fake\n"
        "sys.exit(cli.main(['status', '--config', 'unused.toml']))\n"
    )
    shell = f'{sys.executable} -c "$CODE" | head -1'
    done = subprocess.run(
        ["sh", "-c", shell],
        env={"CODE": code, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout == "x" * 79 + "\n"
    assert "Broken pipe" not in done.stderr and "Traceback" not in done.stderr, done.stderr
