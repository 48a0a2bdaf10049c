"""The daemon with ``[dc09]``: a test alarm reaches the center over MQTT and the DC-09 receiver
(pysiaalarm), and leaves the outbox only once both have it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from tests.dc09_helpers import ACCOUNT, KEY_128, Receiver, hex_of
from tests.harness import Site, is_event
from tests.helpers import wait_until
from tests.http_helpers import cli, healthz_is, poll, wait_addr

pytestmark = pytest.mark.slow


def queued_rows(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (n,) = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
    return int(n)


async def test_test_alarm_over_mqtt_and_dc09(site: Site) -> None:
    rx = Receiver(key=KEY_128)
    await rx.start()
    key_file = site.root / "dc09.key"
    key_file.write_text(hex_of(KEY_128) + "\n")
    site.buttons = [{"name": "gate-main", "pin": 17}]
    site.tables["dc09"] = {
        "host": "127.0.0.1",
        "port": rx.port,
        "account": ACCOUNT,
        "key_file": str(key_file),
        "supervision_s": 60,
    }
    site.write_configs()
    with site.gateway_toml.open("a") as f:
        f.write('\n[dc09.zones]\n"gpio:gate-main" = 9\n')
    try:
        site.start_center()
        gateway = site.start_gateway()
        state = site.root / "state" / "gateway"
        addr = await asyncio.to_thread(wait_addr, state)
        await asyncio.to_thread(poll, healthz_is(addr, 200))
        proc = await asyncio.to_thread(
            cli, "test-alarm", "--config", str(site.gateway_toml), "--timeout", "60"
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        await wait_until(lambda: rx.events, what="the test alarm at the DC-09 receiver")
        _, event = rx.events[0]
        assert (event.account, event.event_qualifier, event.event_type, event.ri) == (
            ACCOUNT,
            "1",
            "601",
            "009",
        )
        assert event.encrypted
        await wait_until(lambda: queued_rows(state / "outbox.sqlite") == 0, what="both acks")
        assert gateway.matching(lambda e: e["event"] == "acknowledged by the DC-09 receiver")
        # The same through `alarmgw test-alarm --path dc09`: it waits for the receiver's ACK.
        proc = await asyncio.to_thread(
            cli, "test-alarm", "--config", str(site.gateway_toml), "--path", "dc09", "--json"
        )
        result = json.loads(proc.stdout)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert (result["path"], result["acked"]) == ("dc09", True)
        assert len(rx.events) == 2
        proc = await asyncio.to_thread(
            cli, "test-alarm", "--config", str(site.gateway_toml), "--path", "dc09"
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "ACKED by the DC-09 receiver" in proc.stdout
    finally:
        site.close()
        await rx.stop()


def owed_to_dc09(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (n,) = conn.execute("SELECT COUNT(*) FROM outbox WHERE dc09 = 1").fetchone()
    return int(n)


async def test_kill9_while_receiver_down_then_it_arrives_once(site: Site) -> None:
    rx = Receiver()  # not started yet: the receiver is down
    site.buttons = [{"name": "gate-main", "pin": 17}]
    site.tables["dc09"] = {
        "host": "127.0.0.1",
        "port": rx.port,
        "account": ACCOUNT,
        "supervision_s": 60,
        "answer_timeout_s": 1.0,
        "trouble_after_s": 0.0,
    }
    site.write_configs()
    state = site.root / "state" / "gateway"
    db = state / "outbox.sqlite"
    try:
        center_log = site.start_center()
        gateway = site.start_gateway()
        addr = await asyncio.to_thread(wait_addr, state)
        await asyncio.to_thread(poll, healthz_is(addr, 200))
        proc = await asyncio.to_thread(
            cli, "test-alarm", "--config", str(site.gateway_toml), "--timeout", "60"
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr  # the center has it
        proc = await asyncio.to_thread(
            cli,
            "test-alarm",
            "--config",
            str(site.gateway_toml),
            "--path",
            "dc09",
            "--timeout",
            "2",
        )
        assert proc.returncode == 2
        assert "NO ACK within 2 s" in proc.stdout
        assert "until the DC-09 receiver acks it" in proc.stdout
        await asyncio.to_thread(
            gateway.wait_for, lambda e: e["event"] == "DC-09 frame not acknowledged, will retry"
        )
        assert owed_to_dc09(db) == 2  # both test alarms
        gateway.kill()
        await rx.start()
        (state / "http.addr").unlink(missing_ok=True)
        site.start_gateway()
        await wait_until(lambda: queued_rows(db) == 0, what="both paths done")
        assert [e.event_type for _, e in rx.events] == ["601", "601"]  # each once
        # The trouble raised before the kill is restored by the new process.
        restore = await asyncio.to_thread(
            center_log.wait_for, lambda e: is_event("accepted", "restore")(e), 30
        )
        assert restore["id"]
    finally:
        site.close()
        await rx.stop()
