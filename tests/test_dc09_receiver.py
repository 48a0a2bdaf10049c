"""The DC-09 transmitter against a reference receiver (pysiaalarm's asyncio SIAClient)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.delivery.dc09.frame import Header, parse_key
from gateway.delivery.dc09.transmitter import Dc09Settings, Dc09Transmitter
from gateway.delivery.relay import Relay
from tests.dc09_helpers import (
    ACCOUNT,
    KEY_128,
    KEY_256,
    Forwarder,
    Receiver,
    hex_of,
    make_relay,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(90)


def settings(port: int, key_text: str | None = None, **over: Any) -> Dc09Settings:
    base: dict[str, Any] = {
        "receivers": (("127.0.0.1", port),),
        "header": Header(ACCOUNT, "R1", "L1"),
        "key": None if key_text is None else parse_key(hex_of(key_text)),
        "supervision_s": 60.0,
        "zones": {"gpio:gate": 4},
        "answer_timeout_s": 2.0,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.5,
    }
    return Dc09Settings(**(base | over))


@contextlib.asynccontextmanager
async def running(
    relay: Relay, s: Dc09Settings, clock: Callable[[], float] = time.time
) -> AsyncIterator[Dc09Transmitter]:
    tx = Dc09Transmitter(s, relay.outbox, relay, clock=clock)
    task = asyncio.create_task(tx.run())
    try:
        yield tx
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        relay.outbox.close()


def queued(relay: Relay, kind: str) -> list[dict[str, Any]]:
    """Bodies of queued MQTT envelopes of ``kind`` (what the center would be told)."""
    out = []
    for p in relay.outbox.pending(1000):
        env = json.loads(p.payload)
        if env["type"] == kind:
            out.append(env["body"])
    return out


@pytest.mark.parametrize(
    ("key_text", "transport"),
    [(None, "tcp"), (None, "udp"), (KEY_128, "tcp"), (KEY_256, "tcp"), (KEY_128, "udp")],
)
async def test_alarm_reaches_receiver_as_contact_id(
    tmp_path: Path, key_text: str | None, transport: str
) -> None:
    rx = Receiver(key=key_text, transport=transport)
    await rx.start()
    relay = make_relay(tmp_path)
    try:
        async with running(relay, settings(rx.port, key_text, transport=transport)) as tx:
            raised = relay.raise_alarm(input_ref="gpio:gate", feedback=None)
            await wait_until(lambda: rx.events, what="the receiver's callback")
            _, event = rx.events[0]
            assert (event.account, event.code, event.event_qualifier, event.event_type) == (
                ACCOUNT,
                "PA",
                "1",
                "120",
            )
            assert (event.ri, event.partition) == ("004", "01")
            assert event.encrypted is (key_text is not None)
            await wait_until(lambda: relay.outbox.count_dc09() == 0, what="the DC-09 mark")
            # The center's ack is the other half: only then does the row leave.
            assert relay.outbox.get(raised.event_id) is not None
            assert relay.outbox.remove([raised.event_id]) == [raised.event_id]
            assert relay.outbox.summary() == {}
            assert tx.stats["resyncs"] == 0
    finally:
        await rx.stop()


async def test_old_timestamp_gets_nak_then_resync_is_accepted(tmp_path: Path) -> None:
    rx = Receiver(key=KEY_128)
    await rx.start()
    relay = make_relay(tmp_path)
    try:
        # Our clock five minutes behind the receiver's.
        s = settings(rx.port, KEY_128)
        async with running(relay, s, clock=lambda: time.time() - 300) as tx:
            relay.raise_alarm(input_ref="gpio:gate", feedback=None)
            await wait_until(lambda: relay.outbox.count_dc09() == 0, what="the ACK")
            assert tx.stats["resyncs"] == 1
            assert 290 < tx.offset_s < 310
            assert rx.codes() == ["PA"]
            assert not tx.trouble_open
    finally:
        await rx.stop()


async def test_receiver_outage_alarm_arrives_once_and_trouble_restores(tmp_path: Path) -> None:
    rx = Receiver()
    await rx.start()
    fwd = Forwarder(rx.port)
    await fwd.start()
    relay = make_relay(tmp_path)
    s = settings(fwd.port, supervision_s=0.2, trouble_after_s=0.0, answer_timeout_s=1.0)
    try:
        async with running(relay, s) as tx:
            await wait_until(lambda: tx.stats["acks"] >= 1, what="a first NULL")
            await fwd.cut()
            raised = relay.raise_alarm(input_ref="gpio:gate", feedback=None)
            await wait_until(lambda: tx.stats["failures"] >= 2, what="failed attempts")
            assert "PA" not in rx.codes()
            troubles = queued(relay, "trouble")
            assert [(t["code"], t["device"]) for t in troubles] == [("350", "gateway")]
            await fwd.start()
            await wait_until(lambda: relay.outbox.count_dc09() == 0, what="the alarm's ACK")
            acks = tx.stats["acks"]
            await wait_until(lambda: tx.stats["acks"] >= acks + 2, what="NULLs after it")
            assert rx.codes().count("PA") == 1
            assert relay.outbox.get(raised.event_id) is not None  # still owed to the center
            assert [(r["code"], r["device"]) for r in queued(relay, "restore")] == [
                ("350", "gateway")
            ]
            assert not tx.trouble_open
    finally:
        await fwd.cut()
        await rx.stop()


async def test_failover_to_secondary_receiver(tmp_path: Path) -> None:
    rx = Receiver()
    await rx.start()
    dead = Forwarder(rx.port)  # never started: the primary refuses connections
    relay = make_relay(tmp_path)
    s = settings(dead.port, receivers=(("127.0.0.1", dead.port), ("127.0.0.1", rx.port)))
    try:
        async with running(relay, s) as tx:
            relay.raise_alarm(input_ref="gpio:gate", feedback=None)
            await wait_until(lambda: relay.outbox.count_dc09() == 0, what="the ACK")
            assert rx.codes() == ["PA"]
            assert tx.stats["failures"] >= 1
    finally:
        await rx.stop()


async def test_wrong_key_no_ack_raises_trouble(tmp_path: Path) -> None:
    rx = Receiver(key=KEY_128)
    await rx.start()
    relay = make_relay(tmp_path)
    s = settings(rx.port, "0123456789ABCDEF", trouble_after_s=0.0)
    try:
        async with running(relay, s) as tx:
            relay.raise_alarm(input_ref="gpio:gate", feedback=None)
            await wait_until(lambda: tx.trouble_open, what="the trouble")
            assert rx.events == []
            assert relay.outbox.count_dc09() == 1  # kept for when the key is fixed
            troubles = queued(relay, "trouble")
            assert [(t["code"], t["device"]) for t in troubles] == [("350", "gateway")]
            assert troubles[0]["detail"].startswith("DC-09 receiver")
            assert "key" in troubles[0]["detail"]
    finally:
        await rx.stop()


async def test_null_supervision_at_the_configured_interval(tmp_path: Path) -> None:
    rx = Receiver(key=KEY_256)
    await rx.start()
    relay = make_relay(tmp_path)
    interval = 0.2
    try:
        async with running(relay, settings(rx.port, KEY_256, supervision_s=interval)):
            started = time.monotonic()
            await wait_until(lambda: len(rx.events) >= 4, what="four NULL messages")
            elapsed = time.monotonic() - started
            assert set(rx.codes()) == {"RP"}  # pysiaalarm's name for a NULL (link test)
            assert all(e.encrypted for _, e in rx.events)  # a key: every frame encrypted
            # Never more often than configured (a loaded machine only makes them rarer).
            assert len(rx.events) <= elapsed / interval + 1
    finally:
        await rx.stop()


async def test_all_events_send_troubles_and_restores(tmp_path: Path) -> None:
    rx = Receiver()
    await rx.start()
    relay = make_relay(tmp_path, dc09_types=("alarm", "test", "trouble", "restore"))
    try:
        async with running(relay, settings(rx.port, zones={"serial:box": 7})):
            relay.raise_event("trouble", {"code": "137", "device": "serial:box", "detail": "lid"})
            relay.raise_event("restore", {"code": "137", "device": "serial:box", "detail": "ok"})
            await wait_until(lambda: len(rx.events) >= 2, what="trouble and restore")
            got = [(e.event_qualifier, e.event_type, e.ri) for _, e in rx.events]
            assert got == [("1", "137", "007"), ("3", "137", "007")]
    finally:
        await rx.stop()
