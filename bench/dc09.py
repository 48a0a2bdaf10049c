#!/usr/bin/env python3
"""Press → DC-09 receiver callback, p50/p99 over N presses on loopback, beside the floor.

The gateway path is the real one, in one process: ``Relay.raise_alarm`` signs the alarm and
commits it to the outbox (SQLite FULL, owed to DC-09), the outbox wakes the DC-09
transmitter, which builds the ADM-CID frame (AES-128 with ``--aes``) and sends it over TCP
to pysiaalarm's asyncio receiver on loopback. The clock stops in the receiver's callback
(which pysiaalarm calls after writing its ACK). The next press starts once the transmitter
has taken the ACK and marked the row, so each press meets an idle path.

The floor, measured in the same run against the same receiver: an ADM-CID frame built in
advance, written on an open TCP connection, until the same callback. The time spent in
``raise_alarm`` itself (sign + commit, shared with the MQTT path) is reported beside it.

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
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pysiaalarm import CommunicationsProtocol, SIAAccount, SIAEvent
from pysiaalarm.aio import SIAClient

from firmware_sim.broker import free_port
from gateway import logs
from gateway.contract.signing import SigningKey
from gateway.delivery.dc09.frame import Header, build_cid
from gateway.delivery.dc09.transmitter import Dc09Settings, Dc09Transmitter
from gateway.delivery.outbox import Outbox
from gateway.delivery.relay import Identity, Relay
from gateway.delivery.seq import SeqCounter

ACCOUNT = "AB12"
KEY_TEXT = "A1B2C3D4E5F60718"  # pysiaalarm: the characters are the key


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


class Callbacks:
    def __init__(self) -> None:
        self.count = 0
        self.changed = asyncio.Event()

    async def on_event(self, event: SIAEvent) -> None:
        if event.code == "PA":
            self.count += 1
            self.changed.set()

    async def wait_for(self, n: int) -> None:
        while self.count < n:
            self.changed.clear()
            await self.changed.wait()


async def floor(port: int, presses: int, key: bytes | None, seen: Callbacks) -> list[float]:
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
            target = seen.count + 1
            t0 = time.perf_counter()
            writer.write(frame)
            await seen.wait_for(target)
            out.append(time.perf_counter() - t0)
            await reader.readuntil(b"\r")  # the ACK, before the next frame
    finally:
        writer.close()
    return out


async def alarm_path(
    port: int, presses: int, key: bytes | None, tmp: Path, seen: Callbacks
) -> tuple[list[float], list[float], int]:
    outbox = Outbox(tmp / "outbox.sqlite", dc09_types=("alarm", "test"))
    relay = Relay(
        ident=Identity("bench-site", "gw-a", "schoolalarm/v1"),
        key=SigningKey.generate(),
        seq=SeqCounter(tmp / "gseq"),
        outbox=outbox,
        center_keys={},
        location={"name": "Gate", "address": "Road 1", "lat": 1.0, "lon": 2.0},
        contact={"phone": "110"},
        ack_timeout_s=3600.0,
    )
    settings = Dc09Settings(
        receivers=(("127.0.0.1", port),),
        header=Header(ACCOUNT),
        key=key,
        supervision_s=3600.0,
        zones={"gpio:gate": 1},
    )
    tx = Dc09Transmitter(settings, outbox, relay)
    task = asyncio.create_task(tx.run())
    out = []
    committed: list[float] = []
    try:
        for _ in range(presses):
            target = seen.count + 1
            t0 = time.perf_counter()
            raised = relay.raise_alarm(input_ref="gpio:gate", feedback=None)
            committed.append(time.perf_counter() - t0)
            await seen.wait_for(target)
            out.append(time.perf_counter() - t0)
            while outbox.count_dc09():
                await asyncio.sleep(0.0005)
            outbox.remove([raised.event_id])  # the center's half, so the queue stays empty
        left = outbox.count_dc09()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        outbox.close()
    return out, committed, left


async def run(
    presses: int, aes: bool, tmp: Path
) -> tuple[list[float], list[float], list[float], int]:
    seen = Callbacks()
    port = free_port()
    rx = SIAClient(
        "127.0.0.1",
        port,
        [SIAAccount(ACCOUNT, KEY_TEXT if aes else None)],
        seen.on_event,
        protocol=CommunicationsProtocol.TCP,
    )
    await rx.async_start()
    key = KEY_TEXT.encode("ascii") if aes else None
    try:
        fl = await floor(port, presses, key, seen)
        path, committed, left = await alarm_path(port, presses, key, tmp, seen)
        # Let the receiver's connection handlers see their peers' EOF and end.
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=5.0)
    finally:
        await rx.async_stop()
    return path, committed, fl, left


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presses", type=int, default=200)
    parser.add_argument("--aes", action="store_true", help="AES-128 frames")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logs.configure(open(os.devnull, "w"), json=True, level="error")  # noqa: SIM115
    with tempfile.TemporaryDirectory(prefix="alarmgw-bench-dc09-") as d:
        path, committed, fl, left = asyncio.run(run(args.presses, args.aes, Path(d)))
    ms = 1000.0
    result = {
        "presses": args.presses,
        "aes": args.aes,
        "p50_ms": round(pct(path, 50) * ms, 3),
        "p99_ms": round(pct(path, 99) * ms, 3),
        "max_ms": round(max(path) * ms, 3),
        "mean_ms": round(statistics.fmean(path) * ms, 3),
        "raise_p50_ms": round(pct(committed, 50) * ms, 3),
        "floor_p50_ms": round(pct(fl, 50) * ms, 3),
        "floor_p99_ms": round(pct(fl, 99) * ms, 3),
        "ratio_p50": round(pct(path, 50) / pct(fl, 50), 2),
        "ratio_p99": round(pct(path, 99) / pct(fl, 99), 2),
        "left_pending": left,
    }
    mode = "AES-128" if args.aes else "plain"
    print(f"press -> DC-09 receiver callback ({mode}), {args.presses} presses on loopback:")
    print(
        f"  alarm path  p50 {result['p50_ms']:.3f} ms   p99 {result['p99_ms']:.3f} ms"
        f"   max {result['max_ms']:.3f} ms"
    )
    print(
        f"  of which    p50 {result['raise_p50_ms']:.3f} ms in raise_alarm"
        " (sign + SQLite FULL commit)"
    )
    print(
        f"  floor       p50 {result['floor_p50_ms']:.3f} ms   p99 {result['floor_p99_ms']:.3f} ms"
        "   (prebuilt frame on an open TCP connection -> same callback)"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
