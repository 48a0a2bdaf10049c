"""Bad input to ``alarmgw center``: one line, exit 2, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gateway.contract.signing import write_keypair
from tests.harness import alarmgw_cmd
from tests.pg import free_port


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(alarmgw_cmd(*args), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("store", "expect"),
    [
        ('store = "postgresql"\ndsn = "host=127.0.0.1 port"\n', "not a valid PostgreSQL"),
        (
            'store = "postgresql"\ndsn = "postgresql://u:pw@127.0.0.1:{port}/db"\n',
            "cannot reach PostgreSQL at 127.0.0.1:{port}/db",
        ),
    ],
)
@pytest.mark.parametrize("action", [[], ["alarms"], ["status"]])
def test_bad_or_unreachable_database(
    tmp_path: Path, store: str, expect: str, action: list[str]
) -> None:
    write_keypair(tmp_path, "center")
    port = str(free_port())
    cfg = tmp_path / "center.toml"
    cfg.write_text(
        f'[center]\nkey_file = "center.key"\nstate_dir = "state"\n{store.format(port=port)}'
    )
    done = run("center", *action, "--config", str(cfg))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and expect.format(port=port) in done.stderr
    assert "Traceback" not in done.stderr and "pw" not in done.stderr


def test_a_schema_from_a_newer_alarmgw_is_one_line(tmp_path: Path) -> None:
    import sqlite3

    write_keypair(tmp_path, "center")
    cfg = tmp_path / "center.toml"
    cfg.write_text('[center]\nkey_file = "center.key"\nstate_dir = "state"\n')
    assert run("center", "alarms", "--config", str(cfg)).returncode == 0
    with sqlite3.connect(tmp_path / "state" / "center.sqlite") as db:
        db.execute("INSERT INTO schema_version (version) VALUES (99)")
    done = run("center", "--config", str(cfg))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "schema version 99" in done.stderr and "upgrade alarmgw" in done.stderr
