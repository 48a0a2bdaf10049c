"""The DC-09 path as a technician sees it, against pysiaalarm's receiver on loopback: the
transmitter's snapshot and verdict, its ``alarmgw status`` lines and ``/metrics`` families,
``alarmgw diag``'s probe (connect, NULL and ACK, time offset), and the queue per path."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.broker import free_port
from gateway.delivery.dc09.frame import Header, parse_key
from gateway.delivery.dc09.transmitter import Dc09Settings, Dc09Transmitter
from gateway.delivery.relay import Relay
from gateway.technician import dc09 as view
from gateway.technician import metrics, tools
from gateway.technician.dc09_probe import probe
from gateway.technician.diag import Check, exit_code, format_check
from gateway.technician.status import read_owed, read_queue, readonly_outbox
from tests.dc09_helpers import ACCOUNT, KEY_128, Forwarder, Receiver, hex_of, make_relay
from tests.helpers import wait_until
from tests.test_health import _snapshot

pytestmark = pytest.mark.timeout(90)


def settings(port: int, key_text: str | None = None, **over: Any) -> Dc09Settings:
    base: dict[str, Any] = {
        "receivers": (("127.0.0.1", port),),
        "header": Header(ACCOUNT, "R1", "L1"),
        "key": None if key_text is None else parse_key(hex_of(key_text)),
        "supervision_s": 0.2,
        "answer_timeout_s": 1.0,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.3,
        "trouble_after_s": 0.0,
    }
    return Dc09Settings(**(base | over))


@contextlib.asynccontextmanager
async def running(relay: Relay, s: Dc09Settings) -> AsyncIterator[Dc09Transmitter]:
    tx = Dc09Transmitter(s, relay.outbox, relay)
    task = asyncio.create_task(tx.run())
    try:
        yield tx
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def owed(relay: Relay) -> dict[str, Any]:
    with readonly_outbox(relay.outbox.path) as conn:
        return read_owed(conn, dc09=True)


def status_doc(tx: Dc09Transmitter, relay: Relay) -> dict[str, Any]:
    """A ``/status`` document with the DC-09 section as the endpoint renders it."""
    o = owed(relay)
    return _snapshot(
        dc09=view.section(tx.snapshot(), o["by_path"]["dc09"]),
        supervision={"ok": True, "troubles": []},
        inputs=[],
    )


# --- status and metrics -------------------------------------------------------------------


async def test_receiver_stopped_status_shows_the_path_down_with_reason_and_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    rx = Receiver(key=KEY_128)
    await rx.start()
    fwd = Forwarder(rx.port)
    await fwd.start()
    relay = make_relay(tmp_path)
    try:
        async with running(relay, settings(fwd.port, KEY_128)) as tx:
            await wait_until(lambda: tx.snapshot().state == "up", what="a NULL's ACK")
            st = status_doc(tx, relay)
            assert st["dc09"]["verdict"]["level"] == "ok"
            assert tools.status_verdict(st)[0] == tools.OK
            text = "\n".join(tools.format_status(st))
            assert f"DC-09       up 127.0.0.1:{fwd.port}" in text
            assert "(TCP, AES)" in text
            page = metrics.render(view.families(tx.snapshot(), owed(relay)["by_path"]["dc09"]))
            assert "alarmgw_dc09_up 1" in page
            assert "alarmgw_dc09_connected 1" in page
            assert "alarmgw_dc09_queue_owed 0" in page
            assert "alarmgw_dc09_last_ack_age_seconds " in page

            await fwd.cut()  # the receiver goes away
            relay.raise_alarm(input_ref="gpio:gate", feedback=None)
            await wait_until(
                lambda: tx.snapshot().error_kind == "connect", what="a refused connection"
            )
            snap = tx.snapshot()
            assert snap.state == "down"
            st = status_doc(tx, relay)
            code, problems = tools.status_verdict(st)
            assert code == tools.FAIL
            assert any(
                p.startswith(f"dc09: DC-09 receiver 127.0.0.1:{fwd.port} not acknowledging")
                and "cannot connect" in p
                and "-> is the receiver up" in p
                for p in problems
            ), problems
            lines = tools.format_status(st)
            assert all(len(line) <= 50 for line in lines), lines
            text = "\n".join(lines)
            assert "Health      FAILING" in text
            assert "DC-09       DOWN 127.0.0.1:" in text
            flat = " ".join(text.split())  # unwrapped
            assert "down for " in flat and "1 owed" in flat
            assert "last error: cannot connect to 127.0.0.1:" in flat
            assert "Connection refused" in flat
            page = metrics.render(view.families(snap, owed(relay)["by_path"]["dc09"]))
            assert "alarmgw_dc09_up 0" in page
            assert "alarmgw_dc09_connected 0" in page
            assert "alarmgw_dc09_queue_owed 1" in page
            assert "alarmgw_dc09_trouble_open 1" in page
            assert 'alarmgw_dc09_answers_total{answer="DUH"} 0' in page

            await fwd.start()
            await wait_until(lambda: relay.outbox.count_dc09() == 0, what="the alarm's ACK")
            await wait_until(lambda: tx.snapshot().state == "up", what="up again")
            assert view.verdict(tx.snapshot()).ok
    finally:
        await fwd.cut()
        await rx.stop()
        relay.outbox.close()


async def test_nak_is_counted_and_a_far_clock_warns(tmp_path: Path) -> None:
    rx = Receiver()
    await rx.start()
    relay = make_relay(tmp_path)
    s = settings(rx.port, supervision_s=60.0)
    try:
        tx = Dc09Transmitter(s, relay.outbox, relay, clock=lambda: time.time() - 300)
        task = asyncio.create_task(tx.run())
        try:
            relay.raise_alarm(input_ref="gpio:gate", feedback=None)
            await wait_until(lambda: relay.outbox.count_dc09() == 0, what="the ACK after NAK")
            snap = tx.snapshot()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert (snap.state, snap.naks, snap.resyncs) == ("up", 1, 1)
        v = view.verdict(snap)
        assert v.level == "warning"
        behind = re.search(r"our clock is (\d+) s behind its time", v.found)
        assert behind is not None and 290 < int(behind[1]) < 310, v.found
        page = metrics.render(view.families(snap))
        assert 'alarmgw_dc09_answers_total{answer="NAK"} 1' in page
        assert "alarmgw_dc09_resyncs_total 1" in page
        sec = view.section(snap, {"pending": 0, "oldest_age_s": None})
        text = "\n".join(view.status_lines(sec, tools.ago))
        assert re.search(r"NAK 1, DUH 0, clock offset \+(29\d|30\d) s", text), text
    finally:
        await rx.stop()
        relay.outbox.close()


def test_status_escapes_what_the_daemon_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    sec = {
        "state": "down",
        "receiver": "rx.example:12300",
        "transport": "tcp",
        "encrypted": False,
        "failing_for_s": 40.0,
        "last_ack_age_s": None,
        "owed": 1,
        "oldest_owed_age_s": 40.0,
        "last_error": "evil\x1b[2J\nFORGED LINE\u202e",
        "offset_s": 0.0,
        "counters": {"naks": 0, "duhs": 0},
        "verdict": {"check": "dc09", "level": "failing", "found": "x\x07y", "fix": "z"},
    }
    lines = tools.format_status(_snapshot(dc09=sec))
    text = "\n".join(lines)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "evil\\x1b[2J\\x0aFORGED" in text
    assert "LINE\\u202e" in text
    assert not any(line.startswith("FORGED") for line in lines)
    assert all(len(line) <= 50 for line in lines)


# --- diag's probe -------------------------------------------------------------------------


def statuses(checks: list[Check]) -> list[str]:
    return [c.status for c in checks]


async def test_probe_connects_sends_null_gets_ack_and_the_offset(tmp_path: Path) -> None:
    rx = Receiver(key=KEY_128)
    await rx.start()
    try:
        checks = await probe(settings(rx.port, KEY_128), "127.0.0.1", rx.port, "primary")
        assert statuses(checks) == ["PASS", "PASS", "PASS"], checks
        connect, null, clock = (c.found for c in checks)
        assert connect.startswith(f"primary 127.0.0.1:{rx.port}: connected in ")
        assert "NULL (AES) acknowledged (ACK)" in null
        assert "time offset " in clock and "from its ACK" in clock  # an encrypted ACK has it
        await wait_until(lambda: rx.codes() == ["RP"], what="the NULL at the receiver")
    finally:
        await rx.stop()


async def test_probe_plain_and_udp(tmp_path: Path) -> None:
    for transport in ("tcp", "udp"):
        rx = Receiver(transport=transport)
        await rx.start()
        try:
            s = settings(rx.port, transport=transport)
            checks = await probe(s, "127.0.0.1", rx.port, "primary")
            assert set(statuses(checks)) == {"PASS"}, checks
            assert ("connected in" in checks[0].found) is (transport == "tcp")
            assert "a plain ACK carries no time" in checks[-1].found
        finally:
            await rx.stop()


async def test_probe_far_clock_warns_with_the_offset(tmp_path: Path) -> None:
    rx = Receiver(key=KEY_128)
    await rx.start()
    try:
        s = settings(rx.port, KEY_128)
        checks = await probe(s, "127.0.0.1", rx.port, "primary", clock=lambda: time.time() - 300)
        assert statuses(checks) == ["PASS", "PASS", "WARN"], checks
        offset = checks[2]
        assert "from its NAK" in offset.found
        shown = float(offset.found.split("time offset ")[1].split(" s")[0])
        assert 290 < shown < 310
        assert "NTP" in offset.action
        assert exit_code(checks) == 1
    finally:
        await rx.stop()


async def test_probe_receiver_down_fails_connect(tmp_path: Path) -> None:
    port = free_port()  # nobody listens
    checks = await probe(settings(port), "127.0.0.1", port, "secondary")
    assert statuses(checks) == ["FAIL"]
    assert f"secondary 127.0.0.1:{port}: cannot connect" in checks[0].found
    assert "is the receiver up" in checks[0].action
    assert exit_code(checks) == 2
    assert all(len(line) <= 50 for line in _formatted(checks, 50))


async def test_probe_wrong_key_fails_the_null(tmp_path: Path) -> None:
    rx = Receiver(key=KEY_128)
    await rx.start()
    try:
        s = settings(rx.port, "0123456789ABCDEF")
        checks = await probe(s, "127.0.0.1", rx.port, "primary")
        assert statuses(checks) == ["PASS", "FAIL"], checks
        assert "NULL (AES)" in checks[1].found
        assert "key_file" in checks[1].action
        assert rx.events == []
    finally:
        await rx.stop()


def _formatted(checks: list[Check], width: int) -> list[str]:
    with pytest.MonkeyPatch.context() as m:
        m.setenv("COLUMNS", str(width))
        return [line for c in checks for line in format_check(c)]


# --- the queue per path -------------------------------------------------------------------


async def test_queue_shows_per_event_which_paths_owe_an_ack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    relay = make_relay(tmp_path)
    try:
        both = relay.raise_alarm(input_ref="gpio:gate", feedback=None).event_id
        dc09_only = relay.raise_alarm(input_ref="gpio:gate2", feedback=None).event_id
        center_only = relay.raise_alarm(input_ref="gpio:gate3", feedback=None).event_id
        relay.outbox.remove([dc09_only])  # the center's ack
        relay.outbox.mark_dc09_delivered(center_only)  # the receiver's ACK
        relay.raise_event("trouble", {"code": "330", "device": "gateway", "detail": "x"})
        with readonly_outbox(relay.outbox.path) as conn:
            o = read_owed(conn, dc09=True)
            center = read_queue(conn)
        by_id = {e["id"]: e["owed_by"] for e in o["events"]}
        assert by_id[both] == ["mqtt", "dc09"]
        assert by_id[dc09_only] == ["dc09"]
        assert by_id[center_only] == ["mqtt"]
        assert o["by_path"]["mqtt"]["pending"] == 3  # two alarms and the trouble
        assert o["by_path"]["dc09"]["pending"] == 2
        # The center's queue by type no longer counts what only the receiver owes.
        assert {r.type: r.pending for r in center.rows} == {"alarm": 2, "trouble": 1}
        doc = {
            "pending": 3,
            "oldest_age_s": 1.0,
            "by_type": {
                "alarm": {
                    "pending": 2,
                    "oldest_age_s": 1.0,
                    "failed_attempts": 0,
                    "last_error": None,
                },
                "trouble": {
                    "pending": 1,
                    "oldest_age_s": 0.5,
                    "failed_attempts": 0,
                    "last_error": None,
                },
            },
            **o,
        }
        lines = tools.format_queue(doc, "from the outbox file")
        assert all(len(line) <= 50 for line in lines), lines
        text = "\n".join(lines)
        assert "DC-09: 2 wait for the receiver's ACK" in text
        assert "center, DC-09" in text
        assert f"    id {dc09_only}" in text
        i = lines.index(f"    id {dc09_only}")
        assert lines[i - 1].split()[-1] == "DC-09" and "center" not in lines[i - 1]
        assert tools.queue_verdict(doc, 60.0) == tools.WARN
        # An alarm the receiver has owed for longer than the presser waits fails.
        late = {**doc, "events": [{**o["events"][1], "age_s": 120.0}]}
        assert tools.queue_verdict(late, 60.0) == tools.FAIL
    finally:
        relay.outbox.close()


def test_an_outbox_from_before_the_paths_were_tracked(tmp_path: Path) -> None:
    db = tmp_path / "outbox.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE outbox (id TEXT PRIMARY KEY, type TEXT, prio INTEGER, seq INTEGER, "
            "payload BLOB, created REAL, attempts INTEGER, last_error TEXT)"
        )
        conn.execute("INSERT INTO outbox VALUES ('e1', 'alarm', 0, 1, x'00', 100.0, 2, 'x')")
    with readonly_outbox(db) as conn:
        o = read_owed(conn, now=130.0, dc09=True)
        center = read_queue(conn, now=130.0)
    assert o["by_path"] == {
        "mqtt": {"pending": 1, "oldest_age_s": 30.0},
        "dc09": {"pending": 0, "oldest_age_s": None},
    }
    assert [(e["id"], e["owed_by"], e["failed_attempts"]) for e in o["events"]] == [
        ("e1", ["mqtt"], 2)
    ]
    assert [(r.type, r.pending, r.last_error) for r in center.rows] == [("alarm", 1, "x")]
