"""The DC-09 path through the running daemon, as a technician meets it: ``alarmgw status``,
``diag``, ``queue`` and ``/metrics``, with pysiaalarm's receiver behind a forwarder that is
cut to make the receiver go away and started again to bring it back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.dc09_helpers import ACCOUNT, KEY_128, Forwarder, Receiver, hex_of
from tests.harness import Site, alarmgw_cmd
from tests.helpers import poll
from tests.http_helpers import cli, healthz_is, request, wait_addr

pytestmark = pytest.mark.slow


def run(*args: str, columns: int = 50) -> subprocess.CompletedProcess[str]:
    """``alarmgw ARGS`` in a terminal ``columns`` wide (a phone over SSH)."""
    return subprocess.run(
        alarmgw_cmd(*args),
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": str(columns)},
        check=False,
    )


def status(config: Path) -> dict[str, Any]:
    proc = cli("status", "--config", str(config), "--json")
    return dict(json.loads(proc.stdout))


def dc09_checks(config: Path) -> tuple[int, list[dict[str, Any]]]:
    proc = cli("diag", "--config", str(config), "--json")
    out = json.loads(proc.stdout)
    return proc.returncode, [c for c in out["checks"] if c["name"] == "dc09"]


def metric(addr: str, line_start: str) -> str | None:
    _, text = request(addr, "GET", "/metrics")
    return next((line for line in text.splitlines() if line.startswith(line_start)), None)


async def test_status_diag_metrics_and_queue_show_the_dc09_path(site: Site) -> None:
    rx = Receiver(key=KEY_128)
    await rx.start()
    fwd = Forwarder(rx.port)
    await fwd.start()
    key_file = site.root / "dc09.key"
    key_file.write_text(hex_of(KEY_128) + "\n")
    site.buttons = [{"name": "gate-main", "pin": 17}]
    site.tables["dc09"] = {
        "host": "127.0.0.1",
        "port": fwd.port,
        "account": ACCOUNT,
        "key_file": str(key_file),
        "supervision_s": 1,
        "answer_timeout_s": 1.0,
        "trouble_after_s": 0.0,
    }
    site.write_configs()
    config = site.gateway_toml
    try:
        site.start_center()
        site.start_gateway()
        addr = await asyncio.to_thread(wait_addr, site.root / "state" / "gateway")
        await asyncio.to_thread(poll, healthz_is(addr, 200))

        # Up: the first NULL has its ACK.
        st = await asyncio.to_thread(
            poll, lambda: (s := status(config)).get("dc09", {}).get("state") == "up" and s
        )
        assert st["dc09"]["receiver"] == f"127.0.0.1:{fwd.port}"
        assert st["dc09"]["verdict"]["level"] == "ok"
        proc = await asyncio.to_thread(run, "status", "--config", str(config))
        assert f"DC-09       up 127.0.0.1:{fwd.port} (TCP, AES)" in proc.stdout
        assert await asyncio.to_thread(metric, addr, "alarmgw_dc09_up 1")
        assert await asyncio.to_thread(metric, addr, "alarmgw_dc09_connected 1")
        assert await asyncio.to_thread(metric, addr, "alarmgw_dc09_last_ack_age_seconds ")
        code, checks = await asyncio.to_thread(dc09_checks, config)
        assert [c["status"] for c in checks] == ["PASS", "PASS", "PASS"], checks
        assert "connected in" in checks[0]["found"]
        assert "NULL (AES) acknowledged (ACK)" in checks[1]["found"]
        assert "time offset" in checks[2]["found"]

        # The receiver goes away.
        await fwd.cut()
        st = await asyncio.to_thread(
            poll, lambda: (s := status(config)).get("dc09", {}).get("error_kind") == "connect" and s
        )
        assert st["dc09"]["state"] == "down"
        proc = await asyncio.to_thread(run, "status", "--config", str(config))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert all(len(line) <= 50 for line in proc.stdout.splitlines()), proc.stdout
        assert "Health      FAILING" in proc.stdout
        assert "DC-09       DOWN" in proc.stdout
        text = " ".join(proc.stdout.split())  # unwrapped
        assert "dc09: DC-09 receiver" in text and "not acknowledging" in text
        assert "cannot connect" in text and "-> is the receiver up" in text

        # A test alarm: the center acks it, the receiver still owes its ACK.
        proc = await asyncio.to_thread(cli, "test-alarm", "--config", str(config))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        proc = await asyncio.to_thread(cli, "queue", "--config", str(config), "--json")
        q = json.loads(proc.stdout)
        assert proc.returncode == 1  # waiting, not yet late
        assert q["by_path"]["dc09"]["pending"] == 1
        assert [(e["type"], e["owed_by"]) for e in q["events"]] == [("test", ["dc09"])]
        proc = await asyncio.to_thread(run, "queue", "--config", str(config))
        assert all(len(line) <= 50 for line in proc.stdout.splitlines()), proc.stdout
        assert "DC-09: 1 wait for the receiver's ACK" in proc.stdout
        assert f"id {q['events'][0]['id']}" in proc.stdout
        assert await asyncio.to_thread(metric, addr, "alarmgw_dc09_up 0")
        assert await asyncio.to_thread(metric, addr, "alarmgw_dc09_queue_owed 1")
        code, checks = await asyncio.to_thread(dc09_checks, config)
        assert code == 2
        assert "FAIL" in [c["status"] for c in checks]
        assert any("cannot connect" in c["found"] for c in checks), checks
        proc = await asyncio.to_thread(run, "diag", "--config", str(config))
        assert proc.returncode == 2
        assert "FAIL  dc09" in proc.stdout
        assert all(len(line) <= 50 for line in proc.stdout.splitlines()), proc.stdout

        # Back: the test reaches the receiver and the path is up again.
        await fwd.start()
        await asyncio.to_thread(
            poll,
            lambda: (
                (s := status(config)).get("dc09", {}).get("state") == "up"
                and s["queue"]["by_path"]["dc09"]["pending"] == 0
            ),
        )
        assert [e.event_type for _, e in rx.events if e.code != "RP"] == ["601"]
    finally:
        site.close()
        await fwd.cut()
        await rx.stop()
