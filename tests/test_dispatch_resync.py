"""The gateway side of the center's ``dispatch`` and ``resync`` (PROTOCOL.md): verified like
an ack, the presser's LED pulses / goes off, the seq counter moves and the queue is
re-signed. On ``DeliveryCore`` with a fake clock, then the real ``Relay`` over the
in-memory pair."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.broker import Mosquitto
from gateway.contract import envelope as E
from gateway.contract.signing import SigningKey
from gateway.contract.topics import topic
from gateway.delivery.core import PRIMARY, DeliveryCore
from gateway.delivery.events import (
    AckRefused,
    Feedback,
    Forget,
    Need,
    Outcome,
    Publish,
    Release,
    Resign,
    Resync,
)
from gateway.delivery.memory import MemoryCenter, MemoryTransport
from gateway.delivery.seq import SeqCounter
from gateway.delivery.uplink import MqttSettings, Uplink
from gateway.inputs.codec import Decoder, Frame, encode
from gateway.inputs.gpio import LedFeedback
from tests.test_delivery_core import (
    CENTER_KEY,
    GW,
    GW_KEY,
    PREFIX,
    SITE,
    TROUBLE_BODY,
    Led,
    memory_relay,
    of,
    row,
    wait_until,
)


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("dispatch", {"ids": [E.uuid7()], "status": "sent"}),
        ("dispatch", {"ids": [], "status": "resolved"}),
        ("resync", {"kid": "XYZ", "next_seq": 5}),
        ("resync", {"kid": GW_KEY.kid, "next_seq": 0}),
        ("resync", {"kid": GW_KEY.kid, "next_seq": True}),
    ],
)
def test_malformed_center_bodies_cannot_exist(kind: str, body: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="malformed"):
        E.build(type=kind, site=SITE, gw=GW, seq=1, body=body, key=CENTER_KEY)


def center_msg(
    kind: str, body: dict[str, Any], *, key: SigningKey = CENTER_KEY, gw: str = GW
) -> bytes:
    return E.build(type=kind, site=SITE, gw=gw, seq=7, body=body, key=key).to_bytes()


def acked_alarm(core: DeliveryCore) -> str:
    """An alarm pressed, published, acknowledged; its LED solid."""
    r = row()
    (p,) = of(Publish, core.committed(r, 0.0, live=True, presser=True))
    core.published(p.id, Outcome.OK, 0.0)
    out = core.message(core.ack_topic, center_msg("ack", {"ids": [r.id]}), 0.1)
    assert of(Feedback, out) == [Feedback(r.id, "solid")] and of(Release, out) == []
    return r.id


def new_core(**options: Any) -> DeliveryCore:
    core = DeliveryCore(
        site=SITE,
        gw=GW,
        prefix=PREFIX,
        center_keys={CENTER_KEY.kid: CENTER_KEY.verify_key},
        kid=GW_KEY.kid,
        **options,
    )
    core.link(PRIMARY, True, 0.0)
    core.loaded([], Need(None, 1), 0.0)  # an empty outbox at start
    return core


def test_dispatch_acknowledged_pulses_and_resolved_turns_off() -> None:
    core = new_core()
    alarm = acked_alarm(core)
    taken = center_msg("dispatch", {"ids": [alarm], "status": "acknowledged"})
    assert core.message(core.ack_topic, taken, 1.0) == [Feedback(alarm, "pulse")]
    closed = center_msg("dispatch", {"ids": [alarm, E.uuid7()], "status": "resolved"})
    assert core.message(core.ack_topic, closed, 2.0) == [
        Feedback(alarm, "off"),
        Release((alarm,)),
    ]
    assert core.message(core.ack_topic, closed, 3.0) == []  # once


def test_dispatch_feedback_can_be_turned_off() -> None:
    core = new_core(show_dispatch=False)
    r = row()
    core.committed(r, 0.0, live=True, presser=True)
    out = core.message(core.ack_topic, center_msg("ack", {"ids": [r.id]}), 0.1)
    assert of(Feedback, out) == [Feedback(r.id, "solid")]
    assert of(Release, out) == [Release((r.id,))]  # nothing more will be shown
    taken = center_msg("dispatch", {"ids": [r.id], "status": "acknowledged"})
    assert core.message(core.ack_topic, taken, 1.0) == []


def test_dispatch_before_its_ack_is_not_overwritten_by_solid_or_fast() -> None:
    core = new_core(ack_timeout_s=15.0)
    r = row()
    core.committed(r, 0.0, live=True, presser=True)
    taken = center_msg("dispatch", {"ids": [r.id], "status": "acknowledged"})
    assert core.message(core.ack_topic, taken, 1.0) == [Feedback(r.id, "pulse")]
    assert of(Feedback, core.tick(20.0, seq_next=10, seq_sent=0)) == []
    out = core.message(core.ack_topic, center_msg("ack", {"ids": [r.id]}), 21.0)
    assert of(Feedback, out) == [] and of(Forget, out)[0].ids == (r.id,)


@pytest.mark.parametrize(
    ("kind", "body"),
    [("dispatch", {"status": "acknowledged"}), ("resync", {"kid": GW_KEY.kid, "next_seq": 9})],
)
def test_center_messages_are_verified_like_an_ack(kind: str, body: dict[str, Any]) -> None:
    core = new_core()
    alarm = acked_alarm(core)
    if kind == "dispatch":
        body = {**body, "ids": [alarm]}
    untrusted = center_msg(kind, body, key=SigningKey.generate())
    other_gw = center_msg(kind, body, gw="gw-2")
    forged = center_msg(kind, body).replace(b'"sig":"', b'"sig":"A')
    reasons = [
        a.reason
        for m in (untrusted, other_gw, forged)
        for a in of(AckRefused, core.message(core.ack_topic, m, 1.0))
    ]
    assert reasons == ["unknown-kid", "wrong-target", "bad-signature"]
    assert sum(core.acks_refused.values()) == 3


def test_resync_moves_the_counter_and_resigns_what_is_queued() -> None:
    core = new_core(resend_initial_s=60.0)
    low, high = row(seq=5), row(seq=50)
    for r in (low, high):
        core.committed(r, 0.0)
    sent = of(Publish, core.tick(0.0, seq_next=51, seq_sent=50))
    assert len(sent) == 2
    for p in sent:
        core.published(p.id, Outcome.OK, 0.0)
    resync = center_msg("resync", {"kid": GW_KEY.kid, "next_seq": 40})
    assert core.message(core.ack_topic, resync, 1.0) == [Resync(40)]
    # Not 60 s later: seq 5 was refused, so it goes again now, re-signed first.
    out = core.tick(1.0, seq_next=51, seq_sent=50)
    (resign,) = of(Resign, out)
    assert [i.id for i in resign.items] == [low.id] and of(Publish, out) == []
    other = center_msg("resync", {"kid": "0123456789abcdef", "next_seq": 1000})
    assert [a.reason for a in of(AckRefused, core.message(core.ack_topic, other, 2.0))] == [
        "wrong-target"
    ]


def test_seq_counter_advances_never_backwards(tmp_path: Path) -> None:
    seq = SeqCounter(tmp_path / "gseq")
    assert seq.next() == 1
    assert seq.advance(500) and seq.next() == 500
    assert not seq.advance(10) and seq.next() == 501
    # The new position is reserved on disk at once: an unclean restart starts above it.
    assert SeqCounter(tmp_path / "gseq").peek > 501


def test_pulse_on_the_wire_and_on_a_gpio_led() -> None:
    frame = Frame.of(4, "LED", mode="pulse")
    assert encode(frame) == b"4,LED,mode=pulse*E622\r\n"
    assert Decoder().receive(encode(frame)) == [frame]

    class Pin:
        def __init__(self) -> None:
            self.calls: list[tuple[float, float]] = []

        def blink(self, *, on_time: float, off_time: float, background: bool) -> None:
            self.calls.append((on_time, off_time))

    pin = Pin()
    led = LedFeedback(pin, 17)
    for mode in ("blink", "fast", "pulse"):
        led.led(mode)  # type: ignore[arg-type]
    blink, fast, pulse = pin.calls
    assert pulse not in (blink, fast) and pulse[0] + pulse[1] > blink[0] + blink[1]


async def test_relay_resync_and_dispatch_over_the_memory_pair(tmp_path: Path) -> None:
    relay = memory_relay(tmp_path)
    center = MemoryCenter(CENTER_KEY, {GW_KEY.kid: GW_KEY.verify_key}, PREFIX)
    link = MemoryTransport(center, relay.on_message)
    relay.attach(link)
    pump = asyncio.create_task(relay.pump())
    try:
        led = Led()
        alarm = relay.raise_alarm(input_ref="gpio:gate", feedback=led).event_id
        await wait_until(lambda: led.modes == ["blink", "solid"])
        relay.on_message(
            relay.core.ack_topic,
            center.sign(SITE, GW, "dispatch", {"ids": [alarm], "status": "acknowledged"}),
        )
        assert led.modes[-1] == "pulse"
        # The center stops acking; two troubles wait; then it asks for a resync.
        center.acking = False
        queued = [relay.raise_event("trouble", TROUBLE_BODY) for _ in range(2)]
        await wait_until(lambda: len(center.received) == 3)
        before = {e.id: e for e in center.received[1:]}
        relay.on_message(
            relay.core.ack_topic,
            center.sign(SITE, GW, "resync", {"kid": GW_KEY.kid, "next_seq": 10_000}),
        )
        center.acking = True
        await wait_until(lambda: relay.outbox.count() == 0)
        again = [e for e in center.received[3:] if e.id in queued]
        assert {e.id for e in again} == set(queued)
        for e in again:
            old = before[e.id]
            assert e.seq >= 10_000 and (e.ts, e.body) == (old.ts, old.body)
        relay.on_message(
            relay.core.ack_topic,
            center.sign(SITE, GW, "dispatch", {"ids": [alarm], "status": "resolved"}),
        )
        assert led.modes[-1] == "off"
    finally:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
        relay.outbox.close()


async def test_dispatch_through_a_real_broker(tmp_path: Path, broker: Mosquitto) -> None:
    """The center's ack and dispatch reach the presser's LED over Mosquitto (MQTT 5)."""
    relay = memory_relay(tmp_path)
    center = MemoryCenter(CENTER_KEY, {GW_KEY.kid: GW_KEY.verify_key}, PREFIX)
    c_up: Uplink

    def center_gets(name: str, payload: bytes) -> None:
        reply = center.take(name, payload)
        if reply is not None:
            c_up.publish(*reply)

    c_up = Uplink(
        MqttSettings("127.0.0.1", broker.port, 5, "center", backoff_max_s=1.0),
        subscriptions=[topic(PREFIX, SITE, GW, "event")],
        on_message=center_gets,
    )
    g_up = Uplink(
        MqttSettings("127.0.0.1", broker.port, 5, "gw", backoff_max_s=1.0),
        subscriptions=[relay.core.ack_topic],
        on_message=relay.on_message,
        prepare=relay.prepare_session,
        on_state=relay.on_link,
    )
    relay.attach(g_up)
    tasks = [asyncio.create_task(c) for c in (c_up.run(), g_up.run(), relay.pump())]
    try:
        await wait_until(lambda: c_up.connected and g_up.connected)
        led = Led()
        alarm = relay.raise_alarm(input_ref="gpio:gate", feedback=led).event_id
        await wait_until(lambda: led.modes[-1:] == ["solid"])
        for status, mode in (("acknowledged", "pulse"), ("resolved", "off")):
            body = {"ids": [alarm], "status": status}
            c_up.publish(relay.core.ack_topic, center.sign(SITE, GW, "dispatch", body))
            await wait_until(lambda mode=mode: led.modes[-1:] == [mode])  # type: ignore[misc]
        assert led.modes == ["blink", "solid", "pulse", "off"]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        relay.outbox.close()
