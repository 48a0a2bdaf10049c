"""Heartbeat and liveness in-process on a real Mosquitto: the relay, its uplink and the
heartbeat of a gateway, and the reference center with its liveness watch.

The gateway reaches the broker through a TCP proxy in this process, so its link can be cut
and restored while the center stays connected and misses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from center.liveness import GatewayStatus
from center.service import Center, Registry, Verdict
from center.state import CenterState
from firmware_sim.broker import Mosquitto
from gateway.contract.envelope import parse_ts
from gateway.contract.signing import SigningKey
from gateway.contract.topics import topic
from gateway.delivery.outbox import Outbox
from gateway.delivery.relay import Identity, Relay
from gateway.delivery.seq import SeqCounter
from gateway.delivery.uplink import MqttSettings, Session, Uplink
from gateway.monitors.heartbeat import Heartbeat
from tests.helpers import wait_until

SITE, GW, PREFIX = "school-1", "gw-1", "schoolalarm/v1"
HB_S = 0.4
WAIT_S = 20.0
BODY = {
    "uptime_s": 1,
    "queue": {"pending": 0, "oldest_s": 0},
    "inputs": {},
    "clock": {"synced": True},
    "disk": {"free_bytes": 1},
}


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target``; ``cut()`` drops every connection and stops
    listening, ``start()`` listens again on the same port."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_w}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))


@dataclass
class CenterRig:
    center: Center
    verdicts: list[Verdict]
    changes: list[GatewayStatus]

    def heartbeats(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.env is not None and v.env.type == "heartbeat"]


@contextlib.asynccontextmanager
async def center_running(tmp: Path, port: int, gw_key: SigningKey) -> AsyncIterator[CenterRig]:
    reg = Registry()
    reg.add(SITE, GW, gw_key.verify_key, heartbeat_s=HB_S)
    center = Center(
        prefix=PREFIX,
        key=SigningKey.generate(),
        seq=SeqCounter(tmp / "cseq"),
        state=CenterState(tmp / "center.sqlite"),
        registry=reg,
    )
    rig = CenterRig(center, [], [])
    center.listeners.append(rig.verdicts.append)
    center.status_listeners.append(rig.changes.append)
    up = Uplink(
        MqttSettings("127.0.0.1", port, 5, "center", backoff_max_s=0.5),
        subscriptions=center.subscriptions(),
        on_message=center.on_message,
    )
    center.attach(up)
    tasks = [asyncio.create_task(up.run()), asyncio.create_task(center.watch())]
    try:
        await wait_until(lambda: up.connected)
        yield rig
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        center.state.close()


@dataclass
class GatewayRig:
    relay: Relay
    uplink: Uplink
    heartbeat: Heartbeat


@contextlib.asynccontextmanager
async def gateway_running(
    tmp: Path, port: int, gw_key: SigningKey, sessions: list[Session]
) -> AsyncIterator[GatewayRig]:
    """A gateway run; its state (outbox, seq) lives in ``tmp`` across runs. Leaving the
    block stops it cleanly without an ``offline`` state: the broker discards its will."""
    seq = SeqCounter(tmp / "gseq")
    relay = Relay(
        ident=Identity(SITE, GW, PREFIX),
        key=gw_key,
        seq=seq,
        outbox=Outbox(tmp / "outbox.sqlite"),
        center_keys={},
        location={"name": "Gate", "address": "Road 1", "lat": 1.0, "lon": 2.0},
        contact={"phone": "110"},
    )

    def prepare() -> Session:
        session = relay.prepare_session()
        sessions.append(session)
        return session

    up = Uplink(
        MqttSettings("127.0.0.1", port, 5, "gw", backoff_initial_s=0.1, backoff_max_s=0.5),
        subscriptions=[topic(PREFIX, SITE, GW, "ack")],
        on_message=relay.on_message,
        prepare=prepare,
        on_state=relay.on_link,
    )
    relay.attach(up)
    hb = Heartbeat(
        ident=relay.ident,
        key=gw_key,
        seq=seq,
        uplink=up,
        interval_s=HB_S,
        snapshot=lambda: dict(BODY),
        session=lambda: relay.session,
    )
    tasks = [asyncio.create_task(c) for c in (up.run(), relay.pump(), hb.run())]
    try:
        await wait_until(lambda: up.connected)
        yield GatewayRig(relay, up, hb)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        relay.outbox.close()
        seq.close()


def publish_raw(port: int, name: str, payload: bytes, *, retain: bool) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="replayer", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(name, payload, qos=1, retain=retain).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def heartbeat_expiry(port: int, timeout: float = WAIT_S) -> int | None:
    """The MQTT 5 message expiry of the next heartbeat the broker delivers."""
    got: list[int | None] = []
    arrived = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        props = msg.properties
        got.append(getattr(props, "MessageExpiryInterval", None) if props else None)
        arrived.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher", protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(topic(PREFIX, SITE, GW, "heartbeat"), qos=1)
    client.loop_start()
    try:
        assert arrived.wait(timeout), "no heartbeat reached the watcher"
    finally:
        client.loop_stop()
        client.disconnect()
    return got[0]


async def test_only_the_newest_heartbeat_waits_offline_and_none_is_on_disk(
    tmp_path: Path, broker: Mosquitto
) -> None:
    gw_key = SigningKey.generate()
    proxy = TcpProxy(broker.port)
    await proxy.start()
    try:
        async with (
            center_running(tmp_path, broker.port, gw_key) as c,
            gateway_running(tmp_path, proxy.port, gw_key, []) as g,
        ):
            await wait_until(lambda: len(c.heartbeats()) >= 2)
            expiry = await asyncio.to_thread(heartbeat_expiry, broker.port)
            assert expiry is not None and 0 < expiry <= math.ceil(3 * HB_S)
            await proxy.cut()
            await wait_until(lambda: not g.uplink.connected)
            down_at = time.time()
            taken = g.heartbeat.stats["taken"]
            await wait_until(lambda: g.heartbeat.stats["taken"] >= taken + 4)
            assert g.heartbeat.waiting is not None  # only the newest, in memory
            assert g.heartbeat.stats["replaced"] >= 3
            assert g.relay.outbox.count() == 0  # heartbeats never go to the outbox
            await proxy.start()
            await wait_until(lambda: g.uplink.connected)
            up_at = time.time()
            await wait_until(
                lambda: any(
                    parse_ts(v.env.ts).timestamp() >= up_at for v in c.heartbeats() if v.env
                )
            )
            offline = [
                v
                for v in c.heartbeats()
                if v.env and down_at <= parse_ts(v.env.ts).timestamp() < up_at
            ]
            assert len(offline) == 1, [v.env.ts for v in offline if v.env]
            assert all(v.result == "accepted" for v in c.heartbeats())
    finally:
        await proxy.cut()


async def test_a_late_will_of_an_old_session_does_not_mark_the_gateway_offline(
    tmp_path: Path, broker: Mosquitto
) -> None:
    gw_key = SigningKey.generate()
    sessions: list[Session] = []
    async with center_running(tmp_path, broker.port, gw_key) as c:
        async with gateway_running(tmp_path, broker.port, gw_key, sessions):
            await wait_until(lambda: len(c.heartbeats()) >= 1)
        # The gateway restarted; its first session's will was signed at connect time and
        # never published (that run ended cleanly). Now it shows up late.
        async with gateway_running(tmp_path, broker.port, gw_key, sessions) as g:
            await wait_until(
                lambda: (
                    c.center.liveness.status(SITE, GW) == "online"
                    and any(v.env and v.env.body.get("session") == 2 for v in c.heartbeats())
                )
            )
            assert g.relay.session == 2
            mark = len(c.changes)
            old = sessions[0]
            await asyncio.to_thread(
                publish_raw, broker.port, old.will_topic, old.will_payload, retain=True
            )
            await wait_until(lambda: any(v.stale for v in c.verdicts))
            (late,) = [v for v in c.verdicts if v.stale]
            assert late.result == "accepted" and late.env is not None
            assert (late.env.body["status"], late.env.body["session"]) == ("offline", 1)
            beats = len(c.heartbeats())
            await wait_until(lambda: len(c.heartbeats()) >= beats + 3)  # time passes
            assert c.center.liveness.status(SITE, GW) == "online"
            assert [ch.status for ch in c.changes[mark:] if ch.status != "online"] == []
