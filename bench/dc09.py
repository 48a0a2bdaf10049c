#!/usr/bin/env python3
"""Press → DC-09 receiver callback and press → verified at the center (MQTT), p50/p99 over
N presses on loopback, both paths live in the same run, beside each path's floor.

The gateway is the real one, configured as with ``[dc09]``: a press is
``Relay.raise_alarm``, which signs the alarm and commits it to the outbox (SQLite FULL,
owed to both paths). The outbox wakes the DC-09 transmitter, which builds the ADM-CID frame
(AES-128 with ``--aes``) and sends it over TCP to pysiaalarm's asyncio receiver; the clock
of the DC-09 path stops in the receiver's callback (called after it has written its ACK).
The relay's pump publishes the same alarm (QoS 1) to a real Mosquitto, where the reference
center receives, verifies and de-duplicates it; the clock of the MQTT path stops when the
center's verdict is ``accepted`` (as in bench/latency.py, which starts at a GPIO edge
instead). The receiver and the center each run on an event loop of their own (a thread),
as they would on machines of their own: neither's work holds up the gateway's loop. The
next press starts once both acks are in and the row has left the outbox, so each press
meets an idle gateway.

The floors, measured in the same run against the same receiver and broker: a DC-09 frame
built in advance, written on an open TCP connection, until the same callback; a raw paho
QoS 1 publish of an alarm-sized payload to a raw paho subscriber on the same broker. The
time spent in ``raise_alarm`` (sign, commit, and the MQTT publish of a live alarm, which the
relay makes at once; part of both paths) is reported beside them.

Prints figures for a person, then one JSON object as the last line.
Usage: bench/dc09.py [--presses 200] [--aes]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pysiaalarm import CommunicationsProtocol, SIAAccount, SIAEvent
from pysiaalarm.aio import SIAClient

from center.service import Center, Registry, Verdict
from center.state import CenterState
from firmware_sim.broker import Mosquitto, free_port
from gateway import logs
from gateway.contract.signing import SigningKey
from gateway.contract.topics import topic
from gateway.delivery.dc09.frame import Header, build_cid
from gateway.delivery.dc09.transmitter import Dc09Settings, Dc09Transmitter
from gateway.delivery.outbox import Outbox
from gateway.delivery.relay import Identity, Relay
from gateway.delivery.seq import SeqCounter
from gateway.delivery.uplink import MqttSettings, Uplink

ACCOUNT = "AB12"
KEY_TEXT = "A1B2C3D4E5F60718"  # pysiaalarm: the characters are the key
SITE, GW, PREFIX = "bench-school", "gw-bench", "schoolalarm/v1"
WAIT_S = 10.0
T = TypeVar("T")


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


class LoopThread:
    """An event loop on a thread of its own (a receiver's or a center's machine)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT_S * 3)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_S)
        self.loop.close()


class Signal:
    """Wakes a waiter on the gateway's loop from another thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()

    def set(self) -> None:
        self.loop.call_soon_threadsafe(self.event.set)

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not done():
                self.event.clear()
                if not done():
                    await self.event.wait()


class Receiver:
    """pysiaalarm's asyncio receiver on its own loop; counts ADM-CID alarms and notes when
    the last reached its callback (perf_counter)."""

    def __init__(self, aes: bool, main: asyncio.AbstractEventLoop) -> None:
        self.port = free_port()
        self.count = 0
        self.at = 0.0
        self.signal = Signal(main)
        self.thread = LoopThread("receiver")
        self.client = SIAClient(
            "127.0.0.1",
            self.port,
            [SIAAccount(ACCOUNT, KEY_TEXT if aes else None)],
            self._on_event,
            protocol=CommunicationsProtocol.TCP,
        )
        self.thread.call(self.client.async_start())

    async def _on_event(self, event: SIAEvent) -> None:
        if event.code == "PA":
            self.at = time.perf_counter()
            self.count += 1
            self.signal.set()

    async def wait_for(self, n: int) -> float:
        """The time the ``n``-th alarm reached the callback."""
        await self.signal.until(lambda: self.count >= n)
        return self.at

    def close(self) -> None:
        try:
            self.thread.call(self.client.async_stop())
        finally:
            self.thread.close()


class CenterSide:
    """The reference center and its broker session, on their own loop; the verify time of
    every accepted alarm, by id."""

    def __init__(
        self, broker_port: int, gw_key: SigningKey, tmp: Path, main: asyncio.AbstractEventLoop
    ) -> None:
        self.key = SigningKey.generate()
        self.verified: dict[str, float] = {}
        self.signal = Signal(main)
        self.thread = LoopThread("center")
        # Built on its own loop, which its asyncio parts then belong to.
        self.center, self.uplink = self.thread.call(self._build(broker_port, gw_key, tmp))

    async def _build(
        self, broker_port: int, gw_key: SigningKey, tmp: Path
    ) -> tuple[Center, Uplink]:
        reg = Registry()
        reg.add(SITE, GW, gw_key.verify_key)
        center = Center(
            prefix=PREFIX,
            key=self.key,
            seq=SeqCounter(tmp / "cseq"),
            state=CenterState(tmp / "center.sqlite"),
            registry=reg,
        )
        uplink = Uplink(
            MqttSettings("127.0.0.1", broker_port, 10, "bench-center"),
            subscriptions=center.subscriptions(),
            on_message=center.on_message,
        )
        center.attach(uplink)
        center.listeners.append(self._on_verdict)
        self._task = asyncio.create_task(uplink.run())
        return center, uplink

    async def _stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def _on_verdict(self, v: Verdict) -> None:
        if v.result == "accepted" and v.env is not None and v.env.type == "alarm":
            self.verified[v.env.id] = v.verified_at
            self.signal.set()

    async def verified_at(self, event_id: str) -> float:
        await self.signal.until(lambda: event_id in self.verified)
        return self.verified.pop(event_id)

    def close(self) -> None:
        try:
            self.thread.call(self._stop())
        finally:
            self.thread.close()
            self.center.state.close()


async def dc09_floor(port: int, presses: int, key: bytes | None, rx: Receiver) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    header = Header(ACCOUNT)
    out = []
    try:
        for i in range(presses):
            frame = build_cid(
                header,
                i % 9999 + 1,
                qualifier=1,
                code="120",
                partition=1,
                zone=1,
                when=datetime.now(UTC),
                key=key,
            )
            target = rx.count + 1
            t0 = time.perf_counter()
            writer.write(frame)
            out.append(await rx.wait_for(target) - t0)
            await reader.readuntil(b"\r")  # the ACK, before the next frame
    finally:
        writer.close()
    return out


def mqtt_floor(port: int, presses: int) -> list[float]:
    """Raw paho QoS 1 publish → raw paho subscriber (its on_message), per sample."""
    got = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="floor-sub", protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: got.set()
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.subscribe("floor/t", qos=1)
    sub.loop_start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="floor-pub", protocol=mqtt.MQTTv5)
    pub.on_socket_open = lambda c, u, s: s.setsockopt(6, 1, 1)  # TCP_NODELAY: no Nagle delay
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    payload = b"x" * 600  # about the size of a signed alarm envelope
    samples = []
    try:
        if not subscribed.wait(WAIT_S):
            raise RuntimeError("floor subscriber not subscribed")
        for _ in range(presses):
            got.clear()
            t0 = time.perf_counter()
            pub.publish("floor/t", payload, qos=1)
            if not got.wait(WAIT_S):
                raise RuntimeError("floor subscriber got nothing")
            samples.append(time.perf_counter() - t0)
    finally:
        pub.loop_stop()
        sub.loop_stop()
        pub.disconnect()
        sub.disconnect()
    return samples


async def both_paths(
    broker_port: int, rx: Receiver, presses: int, key: bytes | None, tmp: Path
) -> dict[str, Any]:
    """The presses through the gateway, with both paths live."""
    gw_key = SigningKey.generate()
    center = CenterSide(broker_port, gw_key, tmp, asyncio.get_running_loop())
    outbox = Outbox(tmp / "outbox.sqlite", dc09_types=("alarm", "test"))
    relay = Relay(
        ident=Identity(SITE, GW, PREFIX),
        key=gw_key,
        seq=SeqCounter(tmp / "gseq"),
        outbox=outbox,
        center_keys={center.key.kid: center.key.verify_key},
        location={"name": "Gate", "address": "Road 1", "lat": 22.5431, "lon": 114.0287},
        contact={"phone": "+86-755-0000-0000"},
    )
    uplink = Uplink(
        MqttSettings("127.0.0.1", broker_port, 10, "bench-gw"),
        subscriptions=[topic(PREFIX, SITE, GW, "ack")],
        on_message=relay.on_message,
        prepare=relay.prepare_session,
        on_state=relay.on_link,
    )
    relay.attach(uplink)
    settings = Dc09Settings(
        receivers=(("127.0.0.1", rx.port),),
        header=Header(ACCOUNT),
        key=key,
        supervision_s=3600.0,
        zones={"gpio:gate": 1},
    )
    tx = Dc09Transmitter(settings, outbox, relay)
    tasks = [asyncio.create_task(c) for c in (uplink.run(), relay.pump(), tx.run())]
    out: dict[str, Any] = {"dc09": [], "mqtt": [], "raise": []}
    try:
        async with asyncio.timeout(WAIT_S):
            while not (center.uplink.connected and uplink.connected):
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # the subscriptions settle
        for _ in range(presses):
            target = rx.count + 1
            t0 = time.perf_counter()
            raised = relay.raise_alarm(input_ref="gpio:gate", feedback=None)
            out["raise"].append(time.perf_counter() - t0)
            at_rx, at_center = await asyncio.gather(
                rx.wait_for(target), center.verified_at(raised.event_id)
            )
            out["dc09"].append(at_rx - t0)
            out["mqtt"].append(at_center - t0)
            async with asyncio.timeout(WAIT_S):  # both acks in: the row has left the outbox
                while outbox.get(raised.event_id) is not None or outbox.count_dc09():
                    await asyncio.sleep(0.0005)
        out["left"] = outbox.count() + outbox.count_dc09()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        outbox.close()
        center.close()
    return out


async def run(presses: int, aes: bool, tmp: Path, broker_port: int) -> dict[str, Any]:
    rx = Receiver(aes, asyncio.get_running_loop())
    key = KEY_TEXT.encode("ascii") if aes else None
    try:
        fl = await dc09_floor(rx.port, presses, key, rx)
        got = await both_paths(broker_port, rx, presses, key, tmp)
    finally:
        rx.close()
    return {**got, "dc09_floor": fl}


def figures(xs: list[float]) -> dict[str, float]:
    ms = 1000.0
    return {
        "p50_ms": round(pct(xs, 50) * ms, 3),
        "p99_ms": round(pct(xs, 99) * ms, 3),
        "max_ms": round(max(xs) * ms, 3),
        "mean_ms": round(statistics.fmean(xs) * ms, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presses", type=int, default=200)
    parser.add_argument("--aes", action="store_true", help="AES-128 frames")
    args = parser.parse_args()
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the broker we started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logs.configure(open(os.devnull, "w"), json=True, level="error")  # noqa: SIM115
    with tempfile.TemporaryDirectory(prefix="alarmgw-bench-dc09-") as d:
        tmp = Path(d)
        with Mosquitto(tmp / "broker") as broker:
            mq_floor = mqtt_floor(broker.port, args.presses)
            got = asyncio.run(run(args.presses, args.aes, tmp, broker.port))
    series = {
        "dc09": got["dc09"],
        "mqtt": got["mqtt"],
        "raise": got["raise"],
        "dc09_floor": got["dc09_floor"],
        "mqtt_floor": mq_floor,
    }
    figs = {name: figures(xs) for name, xs in series.items() if isinstance(xs, list)}
    result = {"presses": args.presses, "aes": args.aes, **figs, "left_pending": got["left"]}
    mode = "AES-128" if args.aes else "plain"
    print(f"press -> acknowledged, {args.presses} presses on loopback, both paths live:")
    print(f"  {'':<12} {'p50':>10} {'p99':>10} {'max':>10}")
    notes = {
        "dc09": f"press -> pysiaalarm callback ({mode} ADM-CID)",
        "mqtt": "press -> verified at the center (QoS 1)",
        "raise": "of both: raise_alarm (sign, SQLite FULL commit, MQTT publish)",
        "dc09_floor": "prebuilt frame on an open TCP connection -> same callback",
        "mqtt_floor": "raw paho QoS 1 publish -> subscriber, same broker",
    }
    labels = {
        "dc09": "DC-09 path",
        "mqtt": "MQTT path",
        "raise": "raise",
        "dc09_floor": "DC-09 floor",
        "mqtt_floor": "MQTT floor",
    }
    for name, f in figs.items():
        print(
            f"  {labels[name]:<12} {f['p50_ms']:>7.3f} ms {f['p99_ms']:>7.3f} ms"
            f" {f['max_ms']:>7.1f} ms  {notes[name]}"
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
