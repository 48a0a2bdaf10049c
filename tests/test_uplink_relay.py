"""The relay and the uplink in-process against a real Mosquitto and an in-process center:
delivery, ack feedback, broker outage, PUBACK refusals, unverifiable acks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from structlog.testing import capture_logs

from center.service import Center, Registry, Verdict
from center.state import CenterState
from firmware_sim.broker import Mosquitto
from gateway.contract.signing import SigningKey
from gateway.contract.topics import topic
from gateway.delivery.outbox import Outbox
from gateway.delivery.relay import Identity, Relay
from gateway.delivery.seq import SeqCounter
from gateway.delivery.uplink import MqttSettings, Uplink

SITE, GW, PREFIX = "school-1", "gw-1", "schoolalarm/v1"


@dataclass
class Led:
    modes: list[str] = field(default_factory=list)

    def led(self, mode: str) -> None:
        self.modes.append(mode)


@dataclass
class Rig:
    relay: Relay
    center: Center
    verdicts: list[Verdict]
    gw_uplink: Uplink
    tasks: list[asyncio.Task[None]]


async def wait_until(pred, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def rig(
    tmp: Path,
    port: int,
    *,
    center_key: SigningKey | None = None,
    ack_timeout_s: float = 15.0,
    gw_user: str | None = None,
    protocol: str = "5",
    backoff_max_s: float | None = 1.0,  # None: the gateway's own reconnect policy
) -> AsyncIterator[Rig]:
    gw_key, c_key = SigningKey.generate(), SigningKey.generate()
    reg = Registry()
    reg.add(SITE, GW, gw_key.verify_key)
    center = Center(
        prefix=PREFIX,
        key=c_key,
        seq=SeqCounter(tmp / "cseq"),
        state=CenterState(tmp / "c.sqlite"),
        registry=reg,
    )
    verdicts: list[Verdict] = []
    center.listeners.append(verdicts.append)
    c_up = Uplink(
        MqttSettings("127.0.0.1", port, 5, "center", protocol=protocol, backoff_max_s=1.0),
        subscriptions=center.subscriptions(),
        on_message=center.on_message,
    )
    center.attach(c_up)
    trusted = center_key or c_key
    relay = Relay(
        ident=Identity(SITE, GW, PREFIX),
        key=gw_key,
        seq=SeqCounter(tmp / "gseq"),
        outbox=Outbox(tmp / "outbox.sqlite"),
        center_keys={trusted.kid: trusted.verify_key},
        location={"name": "Gate", "address": "Road 1", "lat": 1.0, "lon": 2.0},
        contact={"phone": "110"},
        ack_timeout_s=ack_timeout_s,
        resend_initial_s=0.3,
        resend_max_s=1.0,
    )
    g_up = Uplink(
        MqttSettings(
            "127.0.0.1",
            port,
            5,
            "gw",
            protocol=protocol,
            username=gw_user,
            backoff_max_s=backoff_max_s,
        ),
        subscriptions=[topic(PREFIX, SITE, GW, "ack")],
        on_message=relay.on_message,
        prepare=relay.prepare_session,
        on_state=relay.on_link,
    )
    relay.attach(g_up)
    tasks = [asyncio.create_task(c) for c in (c_up.run(), g_up.run(), relay.pump())]
    try:
        await wait_until(lambda: c_up.connected and g_up.connected)
        yield Rig(relay, center, verdicts, g_up, tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        relay.outbox.close()
        center.state.close()


def bare_relay(tmp: Path, key: SigningKey, **options: float) -> Relay:
    """A relay with its outbox and seq file in ``tmp``, attached to no broker."""
    return Relay(
        ident=Identity(SITE, GW, PREFIX),
        key=key,
        seq=SeqCounter(tmp / "gseq"),
        outbox=Outbox(tmp / "outbox.sqlite"),
        center_keys={},
        location={"name": "Gate", "address": "Road 1", "lat": 1.0, "lon": 2.0},
        contact={"phone": "110"},
        **options,
    )


def accepted(r: Rig, event_id: str) -> list[Verdict]:
    return [v for v in r.verdicts if v.env and v.env.id == event_id and v.result == "accepted"]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_alarm_delivered_acked_led_solid(
    tmp_path: Path, broker: Mosquitto, protocol: str
) -> None:
    # Both MQTT versions: the two encode PUBLISH and PUBACK differently.
    async with rig(tmp_path, broker.port, protocol=protocol) as r:
        led = Led()
        raised = r.relay.raise_alarm(input_ref="gpio:gate", feedback=led)
        assert r.relay.outbox.get(raised.event_id) is not None  # durable when it returns
        assert led.modes == []  # "registered" comes on the next loop turn
        await asyncio.sleep(0)
        assert led.modes[0] == "blink"
        await wait_until(lambda: led.modes[-1:] == ["solid"])
        assert len(accepted(r, raised.event_id)) == 1
        assert r.relay.outbox.count() == 0
        births = [v for v in r.verdicts if v.env and v.env.type == "state"]
        assert births and births[0].env.body["status"] == "online"  # type: ignore[union-attr]


async def test_broker_down_then_back(tmp_path: Path, broker: Mosquitto) -> None:
    async with rig(tmp_path, broker.port) as r:
        broker.stop()
        await wait_until(lambda: not r.gw_uplink.connected)
        led = Led()
        raised = r.relay.raise_alarm(input_ref="serial:box", feedback=led)
        await asyncio.sleep(1.0)
        assert led.modes == ["blink"] and r.relay.outbox.count() == 1
        broker.start()
        await wait_until(lambda: led.modes[-1:] == ["solid"], timeout=30)
        assert len(accepted(r, raised.event_id)) == 1


async def test_no_ack_turns_led_fast_and_keeps_resending(tmp_path: Path, broker: Mosquitto) -> None:
    wrong = SigningKey.generate()  # the gateway trusts another center key: every ack is ignored
    with capture_logs() as logs:
        async with rig(tmp_path, broker.port, center_key=wrong, ack_timeout_s=1.0) as r:
            led = Led()
            raised = r.relay.raise_alarm(input_ref="gpio:gate", feedback=led)
            await wait_until(lambda: "fast" in led.modes)
            await wait_until(lambda: r.relay.stats["events_sent"] >= 3)
            assert r.relay.outbox.get(raised.event_id) is not None  # never forgotten
            dup = [v for v in r.verdicts if v.env and v.env.id == raised.event_id]
            assert dup[0].result == "accepted" and {v.result for v in dup[1:]} == {"duplicate"}
            payloads = {v.env.to_bytes() for v in dup if v.env}
            assert len(payloads) == 1  # re-sent byte for byte: same id, seq, sig
    assert any(e["event"] == "ignored ack" and e["reason"] == "unknown-kid" for e in logs)


async def test_puback_not_authorised_is_loud_and_not_forgotten(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text(
        f"user center\ntopic readwrite {PREFIX}/#\n\nuser gw\n"
        f"topic read {PREFIX}/{SITE}/{GW}/ack\ntopic write {PREFIX}/{SITE}/{GW}/state\n"
    )
    with Mosquitto(tmp_path / "b", extra=f"acl_file {acl}\n") as b, capture_logs() as logs:
        async with rig(tmp_path, b.port, gw_user="gw") as r:
            led = Led()
            raised = r.relay.raise_alarm(input_ref="gpio:gate", feedback=led)
            await wait_until(lambda: r.relay.stats["publish_refused"] >= 2)
            assert "solid" not in led.modes
            pending = r.relay.outbox.get(raised.event_id)
            assert pending is not None and pending.last_error and "135" in pending.last_error
    refused = [e for e in logs if e["event"] == "broker refused publish"]
    assert refused and refused[0]["code"] == 135 and refused[0]["log_level"] == "error"


@pytest.mark.parametrize("bad", [b"garbage", b"{}"])
async def test_garbage_on_ack_topic_is_ignored(
    tmp_path: Path, broker: Mosquitto, bad: bytes
) -> None:
    async with rig(tmp_path, broker.port) as r:
        r.relay.on_message(topic(PREFIX, SITE, GW, "ack"), bad)
        assert r.relay.stats["acks_rejected"] == 1
        led = Led()
        r.relay.raise_alarm(input_ref="gpio:gate", feedback=led)
        await wait_until(lambda: led.modes[-1:] == ["solid"])


async def test_exception_in_a_callback_does_not_kill_the_network_loop(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with rig(tmp_path, broker.port) as r:
        real = r.relay.on_message
        calls = {"n": 0}

        def flaky(name: str, payload: bytes) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("boom in on_message")
            real(name, payload)

        r.gw_uplink._on_message = flaky
        first, second = Led(), Led()
        with capture_logs() as logs:
            r.relay.raise_alarm(input_ref="gpio:gate", feedback=first)
            await wait_until(lambda: calls["n"] >= 1)
            r.relay.raise_alarm(input_ref="gpio:gate", feedback=second)
            # the first ack was lost to the exception; the re-send gets a fresh ack
            await wait_until(lambda: second.modes[-1:] == ["solid"])
            await wait_until(lambda: first.modes[-1:] == ["solid"])
        assert r.gw_uplink.connected
        assert any(e["event"] == "mqtt callback failed" for e in logs)


async def test_subscription_is_reported_granted_or_refused(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """ "subscribed" once the broker's SUBACK grants every topic (tests and the demo wait for
    it: a center is not routed anything before); a refused topic is an error naming it.
    Mosquitto 2.0 grants a subscription its ACL will not deliver on, so the refusal is fed
    to the real session's handler here."""
    with capture_logs() as logs:
        async with rig(tmp_path, broker.port) as r:
            await wait_until(lambda: sum(e["event"] == "subscribed" for e in logs) == 2)
            up = r.gw_uplink
            granted = ReasonCode(PacketTypes.SUBACK, identifier=1)
            refused = ReasonCode(PacketTypes.SUBACK, identifier=0x87)
            up._handle_subscribe(up._client, None, up._suback_mid, [refused], None)  # type: ignore[arg-type]
            up._handle_subscribe(up._client, None, up._suback_mid + 1, [refused], None)  # type: ignore[arg-type]
            up._handle_subscribe(up._client, None, up._suback_mid, [granted], None)  # type: ignore[arg-type]
    subscribed = [e for e in logs if e["event"] == "subscribed"]
    # the center's three topics and the gateway's ack topic, then the one fed here
    assert sorted(e["topics"] for e in subscribed) == [1, 1, 3]
    errors = [e for e in logs if e["event"] == "broker refused subscription"]
    assert len(errors) == 1  # the SUBACK of another SUBSCRIBE is not this session's
    assert errors[0]["log_level"] == "error"
    assert errors[0]["topics"] == [f"{topic(PREFIX, SITE, GW, 'ack')} (Not authorized)"]
