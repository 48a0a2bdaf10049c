#!/usr/bin/env python3
"""Broker back → queued alarm verified at the center: the median over ``--outages`` (20).

One gateway path in this process (relay, SQLite outbox, uplink with the gateway's own
reconnect policy) and an in-process center on a real Mosquitto. Each round stops the broker,
waits until the gateway has noticed, queues an alarm, keeps the broker down ``--outage-s``
(default 5 s, so the reconnect waits grow to their cap), starts it again and measures from
the broker accepting connections to the center's ``accepted`` verdict for that alarm.

The floor, measured in the same rounds: from the broker accepting connections to the
center's own link being up again (the center reconnects with a 0.1 s cap): nothing can be
verified at the center before that.

Prints figures for a person, then one JSON object as the last line (OPERATOR.md).
Usage: bench/outage.py [--outages 20] [--outage-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from center.service import Center, Registry, Verdict
from center.state import CenterState
from firmware_sim.broker import Mosquitto
from gateway import logs, retry
from gateway.contract.signing import SigningKey
from gateway.contract.topics import topic
from gateway.delivery.outbox import Outbox
from gateway.delivery.relay import Identity, Relay
from gateway.delivery.seq import SeqCounter
from gateway.delivery.uplink import MqttSettings, Uplink

SITE, GW, PREFIX = "bench-school", "gw-bench", "schoolalarm/v1"


async def until(pred: object, timeout_s: float = 60.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not pred():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def measure(root: Path, outages: int, outage_s: float) -> dict[str, object]:
    gw_key, c_key = SigningKey.generate(), SigningKey.generate()
    reg = Registry()
    reg.add(SITE, GW, gw_key.verify_key)
    with Mosquitto(root / "broker") as broker:
        center = Center(
            prefix=PREFIX,
            key=c_key,
            seq=SeqCounter(root / "cseq"),
            state=CenterState(root / "c.sqlite"),
            registry=reg,
        )
        verdicts: list[Verdict] = []
        center.listeners.append(verdicts.append)
        c_up = Uplink(
            MqttSettings("127.0.0.1", broker.port, 5, "center", backoff_max_s=0.1),
            subscriptions=center.subscriptions(),
            on_message=center.on_message,
        )
        center.attach(c_up)
        relay = Relay(
            ident=Identity(SITE, GW, PREFIX),
            key=gw_key,
            seq=SeqCounter(root / "gseq"),
            outbox=Outbox(root / "outbox.sqlite"),
            center_keys={c_key.kid: c_key.verify_key},
            location={"name": "Gate", "address": "Road 1", "lat": 1.0, "lon": 2.0},
            contact={"phone": "110"},
        )
        g_up = Uplink(
            MqttSettings("127.0.0.1", broker.port, 5, "gw"),  # the gateway's own policy
            subscriptions=[topic(PREFIX, SITE, GW, "ack")],
            on_message=relay.on_message,
            prepare=relay.prepare_session,
            on_state=relay.on_link,
        )
        relay.attach(g_up)
        tasks = [asyncio.create_task(c) for c in (c_up.run(), g_up.run(), relay.pump())]
        delays: list[float] = []
        floors: list[float] = []
        try:
            await until(lambda: c_up.connected and g_up.connected)
            for _ in range(outages):
                await asyncio.to_thread(broker.stop)
                await until(lambda: not g_up.connected and not c_up.connected)
                alarm = relay.raise_alarm(input_ref="serial:box", feedback=None)
                await asyncio.sleep(outage_s)
                await asyncio.to_thread(broker.start)  # returns once the port accepts
                back = time.monotonic()
                floor_task = asyncio.create_task(_up_after(c_up, back))

                def verified(event_id: str = alarm.event_id) -> bool:
                    return any(
                        v.env is not None and v.env.id == event_id and v.result == "accepted"
                        for v in verdicts
                    )

                await until(verified)
                delays.append(time.monotonic() - back)
                floors.append(await floor_task)
                await until(lambda: relay.outbox.count() == 0)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            relay.outbox.close()
            center.state.close()
    return {
        "outages": outages,
        "outage_s": outage_s,
        "median_s": round(statistics.median(delays), 3),
        "max_s": round(max(delays), 3),
        "min_s": round(min(delays), 3),
        "floor_median_s": round(statistics.median(floors), 3),
        "reconnect_cap_s": retry.RECONNECT.cap_s,
    }


async def _up_after(link: Uplink, back: float) -> float:
    """Seconds from ``back`` (the broker's return) to ``link``'s session being up."""
    await until(lambda: link.connected)
    return time.monotonic() - back


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outages", type=int, default=20)
    parser.add_argument("--outage-s", type=float, default=5.0)
    args = parser.parse_args()
    if args.outages < 1 or args.outage_s < 0:
        parser.error("--outages must be >= 1 and --outage-s >= 0")
    logs.configure(level="error", json=True)
    with tempfile.TemporaryDirectory(prefix="agw-outage-", dir="/tmp") as tmp:
        got = asyncio.run(measure(Path(tmp), args.outages, args.outage_s))
    print(
        f"broker back -> queued alarm verified at the center, {got['outages']} outages "
        f"of {got['outage_s']} s: median {got['median_s']} s "
        f"(min {got['min_s']}, max {got['max_s']}; reconnect cap {got['reconnect_cap_s']} s); "
        f"floor (the center's own link back) median {got['floor_median_s']} s"
    )
    print(json.dumps({"bench": "outage", **got}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
