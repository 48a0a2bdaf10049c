"""Two gateways with one MQTT client id: the broker hands the session from one to the other
(MQTT 5 DISCONNECT reason 0x8E). Each says so in one line, waits longer before it
reconnects than after an outage, and raises trouble 350 (device ``gateway``) that reaches
the center; once a session holds again the trouble is restored, an ordinary outage is
still followed by a fast reconnect, and the next takeover waits from the first wait again.

Relays, uplinks and an in-process center on a real Mosquitto; the gateways connect through
``TakeoverShim`` (tests/takeover_shim.py), which sends the takeover DISCONNECT for a
Mosquitto older than 2.0.15 and cuts connections for the outages.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from center.service import Center, Registry, Verdict
from center.state import CenterState
from firmware_sim.broker import Mosquitto
from gateway import retry
from gateway.contract.signing import SigningKey
from gateway.contract.topics import topic
from gateway.delivery.outbox import Outbox
from gateway.delivery.relay import Identity, Relay
from gateway.delivery.seq import SeqCounter
from gateway.delivery.takeover import Takeovers
from gateway.delivery.uplink import MqttSettings, Uplink
from gateway.monitors.reporter import TroubleReporter
from gateway.monitors.takeover import TakeoverMonitor
from tests.takeover_shim import TakeoverShim, needs_shim
from tests.test_uplink_relay import wait_until

SITE, GW, PREFIX = "school-1", "gw-1", "schoolalarm/v1"
CLIENT_ID = "alarmgw-school-1-gw-1"
NORMAL_CAP_S = 0.2  # the gateways' ordinary reconnect waits, kept short here
TAKEOVER_LINE = "took this session over"


@dataclass
class Gw:
    name: str
    key: SigningKey
    relay: Relay
    uplink: Uplink
    connects: list[bool] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    pump: asyncio.Task[None] | None = None

    def connected_count(self) -> int:
        return sum(self.connects)

    async def stop(self) -> None:
        for t in (self.task, self.pump):
            if t is not None:
                t.cancel()
        await asyncio.gather(*(t for t in (self.task, self.pump) if t), return_exceptions=True)


@dataclass
class Rig:
    shim: TakeoverShim
    center: Center
    verdicts: list[Verdict]
    registry: Registry
    center_key: SigningKey
    tmp: Path
    gws: list[Gw] = field(default_factory=list)

    def gateway(self, name: str, **takeover: float) -> Gw:
        key = SigningKey.generate()
        self.registry.add(SITE, GW, key.verify_key)  # a clone with a key of its own
        d = self.tmp / name
        d.mkdir()
        relay = Relay(
            ident=Identity(SITE, GW, PREFIX),
            key=key,
            seq=SeqCounter(d / "seq"),
            outbox=Outbox(d / "outbox.sqlite"),
            center_keys={self.center_key.kid: self.center_key.verify_key},
            location={"name": "Gate", "address": "Road 1", "lat": 1.0, "lon": 2.0},
            contact={"phone": "110"},
            resend_initial_s=0.3,
            resend_max_s=1.0,
        )
        connects: list[bool] = []

        def on_state(up: bool) -> None:
            connects.append(up)
            relay.on_link(up)

        uplink = Uplink(
            MqttSettings(
                "127.0.0.1",
                self.shim.port,
                5,
                CLIENT_ID,
                backoff_max_s=NORMAL_CAP_S,
                **{f"takeover_{k}": v for k, v in takeover.items()},
            ),
            subscriptions=[topic(PREFIX, SITE, GW, "ack")],
            on_message=relay.on_message,
            prepare=relay.prepare_session,
            on_state=on_state,
            who="gateway",
        )
        relay.attach(uplink)
        TakeoverMonitor(TroubleReporter(relay)).watch(uplink)
        gw = Gw(name, key, relay, uplink, connects)
        self.gws.append(gw)
        return gw

    def start(self, gw: Gw) -> None:
        gw.task = asyncio.create_task(gw.uplink.run())
        gw.pump = asyncio.create_task(gw.relay.pump())

    def events(self, gw: Gw, kind: str) -> list[dict[str, Any]]:
        """Bodies of ``kind`` envelopes signed by ``gw`` that the center accepted."""
        return [
            dict(v.env.body)
            for v in self.verdicts
            if v.env is not None
            and v.result == "accepted"
            and v.env.type == kind
            and v.env.kid == gw.key.kid
        ]


@contextlib.asynccontextmanager
async def rig(tmp: Path, broker: Mosquitto) -> AsyncIterator[Rig]:
    shim = TakeoverShim(broker.port, emulate=needs_shim())
    await shim.start()
    c_key = SigningKey.generate()
    registry = Registry()
    center = Center(
        prefix=PREFIX,
        key=c_key,
        seq=SeqCounter(tmp / "cseq"),
        state=CenterState(tmp / "c.sqlite"),
        registry=registry,
    )
    verdicts: list[Verdict] = []
    center.listeners.append(verdicts.append)
    c_up = Uplink(
        MqttSettings("127.0.0.1", broker.port, 5, "center", backoff_max_s=0.2),
        subscriptions=center.subscriptions(),
        on_message=center.on_message,
    )
    center.attach(c_up)
    c_task = asyncio.create_task(c_up.run())
    r = Rig(shim, center, verdicts, registry, c_key, tmp)
    try:
        await wait_until(lambda: c_up.connected)
        yield r
    finally:
        for gw in r.gws:
            await gw.stop()
        c_task.cancel()
        await asyncio.gather(c_task, return_exceptions=True)
        await shim.stop()
        for gw in r.gws:
            gw.relay.outbox.close()
        center.state.close()


def takeover_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if TAKEOVER_LINE in str(e.get("event", ""))]


def test_a_takeover_waits_longer_than_any_ordinary_reconnect() -> None:
    assert retry.TAKEOVER.first_s / 2 >= retry.RECONNECT.cap_s
    assert retry.TAKEOVER.cap_s <= 30.0  # a queued alarm still goes out within half a minute
    taken = Takeovers(who="gateway", client_id="x", broker="b")
    assert taken.clear_s == 2 * retry.TAKEOVER.cap_s


def test_the_shim_reads_the_client_id_of_a_connect() -> None:
    from tests.takeover_shim import parse_connect

    # CONNECT, MQTT 5, clean start, keepalive 5, no properties, client id "gw-a".
    body = b"\x00\x04MQTT\x05\x02\x00\x05\x00" + b"\x00\x04gw-a"
    assert parse_connect(bytes([0x10, len(body)]) + body) == (5, "gw-a")
    body = b"\x00\x04MQTT\x04\x02\x00\x05" + b"\x00\x02gw"
    assert parse_connect(bytes([0x10, len(body)]) + body) == (4, "gw")


async def test_two_gateways_with_one_id_say_so_back_off_and_raise_trouble(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with rig(tmp_path, broker) as r:
        a = r.gateway("a", first_s=3.0, cap_s=6.0)
        b = r.gateway("b", first_s=3.0, cap_s=6.0)
        # A reference client with an id of its own, whose outages the test makes: its
        # reconnects are the yardstick the gateways' reconnects are counted against.
        ref_ups: list[bool] = []
        ref = Uplink(
            MqttSettings("127.0.0.1", r.shim.port, 5, "reference", backoff_max_s=NORMAL_CAP_S),
            subscriptions=[],
            on_message=lambda _t, _p: None,
            on_state=ref_ups.append,
        )
        ref_task = asyncio.create_task(ref.run())
        try:
            with capture_logs() as logs:
                r.start(a)
                await wait_until(lambda: a.uplink.connected)
                r.start(b)
                await wait_until(lambda: len(takeover_lines(logs)) >= 1, timeout=30)
                await wait_until(lambda: ref.connected)

                # The window: ten outages of the reference, each waited out.
                before = a.connected_count() + b.connected_count()
                for _ in range(10):
                    ups = sum(ref_ups)
                    await wait_until(lambda: r.shim.cut("reference"), timeout=30)
                    await wait_until(lambda u=ups: sum(ref_ups) > u and ref.connected, timeout=30)
                during = a.connected_count() + b.connected_count() - before
                # Reconnecting like the reference would be ten or more; after a takeover each
                # gateway waits at least 1.5 s, then 3 s.
                assert during <= 4, (during, len(takeover_lines(logs)))

                # Both come back in turn and each one's trouble reaches the center.
                await wait_until(lambda: r.events(a, "trouble") and r.events(b, "trouble"), 60)
        finally:
            ref_task.cancel()
            await asyncio.gather(ref_task, return_exceptions=True)

    lines = takeover_lines(logs)
    line = lines[0]
    assert line["log_level"] == "error"
    assert f"another gateway with the id {CLIENT_ID}" in line["event"]
    assert "two gateways share this id" in line["event"]
    assert "give each gateway its own [gateway] id" in line["event"]
    # One line per takeover: the ordinary "connection lost" and retry lines are the
    # reference's ten outages only.
    assert len([e for e in logs if e["event"] == "broker connection lost"]) == 10
    assert len([e for e in logs if "session ended early" in str(e["event"])]) == 10
    # Each takeover waits longer than any ordinary reconnect would, with jitter.
    assert all(e["retry_in_s"] >= 1.5 > NORMAL_CAP_S for e in lines)
    for gw in (a, b):
        (trouble, *_) = r.events(gw, "trouble")
        assert (trouble["code"], trouble["device"]) == ("350", "gateway")
        assert trouble["detail"].startswith("MQTT session taken over")


async def test_the_trouble_is_restored_once_a_session_holds_and_outages_stay_fast(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with rig(tmp_path, broker) as r:
        a = r.gateway("a", first_s=0.5, cap_s=1.0)  # a session that holds 2 s clears it
        b = r.gateway("b", first_s=0.5, cap_s=1.0)
        with capture_logs() as logs:
            r.start(a)
            await wait_until(lambda: a.uplink.connected)
            r.start(b)
            await wait_until(lambda: r.events(a, "trouble"), timeout=60)
            await b.stop()  # the clone is switched off
            await wait_until(lambda: r.events(a, "restore"), timeout=60)
            assert a.uplink.takeover is None
            restore = r.events(a, "restore")[-1]
            assert (restore["code"], restore["device"]) == ("350", "gateway")

            # An ordinary outage afterwards: reconnected by the ordinary policy, no
            # takeover line, three times in a row.
            taken = len(takeover_lines(logs))
            mark = len(logs)
            for _ in range(3):
                ups = a.connected_count()
                await wait_until(lambda: r.shim.cut(CLIENT_ID), timeout=30)
                await wait_until(lambda u=ups: a.connected_count() > u, timeout=30)
            assert len(takeover_lines(logs)) == taken
            waits = [e["retry_in_s"] for e in logs[mark:] if "retry_in_s" in e]
            assert all(w <= NORMAL_CAP_S for w in waits), waits

            # The clone comes back: a new run of takeovers, whose waits start from the first.
            again = r.gateway("again", first_s=0.5, cap_s=1.0)
            r.start(again)
            await wait_until(lambda: len(takeover_lines(logs)) > taken, timeout=30)
            assert takeover_lines(logs)[taken]["attempt"] == 1
