"""The signed periodic heartbeat (PROTOCOL.md "Transport", "Bodies", "Delivery
semantics").

Every ``interval_s`` a snapshot is taken (its ``ts`` is that moment). While the broker is
reachable it is signed and published on ``P/{site}/{gw}/heartbeat`` at once, QoS 1, with MQTT 5
message expiry 3 x the interval (a heartbeat older than that tells the center nothing). While
it is not, only the newest snapshot waits, in memory: each tick replaces the one before, and it
is signed (taking its ``seq``) and published as soon as the session is back. A heartbeat never
touches the outbox or the disk: SD cards wear, and signing late
keeps an outage from burning ``seq`` numbers the center's window must span.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from gateway.contract.envelope import build, format_ts
from gateway.contract.signing import SigningKey
from gateway.contract.topics import topic
from gateway.delivery.relay import Identity
from gateway.delivery.seq import SeqCounter
from gateway.delivery.transport import Transport
from gateway.delivery.uplink import Uplink
from gateway.snapshots import (
    InputSnapshot,
    MonitorsSnapshot,
    ProcessSnapshot,
    QueueSnapshot,
    input_state,
)

log = structlog.get_logger("alarmgw.heartbeat")

EXPIRY_INTERVALS = 3  # PROTOCOL.md "Transport": MQTT 5 message expiry = 3 x interval


def heartbeat_body(
    process: ProcessSnapshot,
    queue: QueueSnapshot,
    inputs: Sequence[InputSnapshot],
    monitors: MonitorsSnapshot,
) -> dict[str, Any]:
    """The heartbeat body without ``session``, from snapshots (PROTOCOL.md "Bodies")."""
    oldest = queue.oldest_age_s
    free = monitors.selfcheck.free_bytes
    body: dict[str, Any] = {
        "uptime_s": round(process.uptime_s),
        "queue": {"pending": queue.pending, "oldest_s": oldest if oldest is not None else 0},
        "inputs": {i.ref: input_state(i, monitors) for i in inputs},
        "clock": {"synced": monitors.selfcheck.clock_synced is True},
        "disk": {"free_bytes": free if free is not None else 0},
    }
    if monitors.bollard is not None:
        b = monitors.bollard
        body["bollard"] = {"state": b.state, **({"since": b.since} if b.since else {})}
    if monitors.camera is not None:
        c = monitors.camera
        camera: dict[str, Any] = {"recording": c.recording, "required_days": c.required_days}
        if c.retention_days is not None:
            days = c.retention_days
            camera["retention_days"] = int(days) if float(days).is_integer() else days
        per_channel = {
            "channels": c.channels,
            "below_policy": c.below_policy,
            "worst_channel": c.worst_channel,
            "disks_failed": c.disks_failed,
        }
        camera.update({k: v for k, v in per_channel.items() if v is not None})
        body["camera"] = {**camera, "ok": c.ok}
        if not c.polled:  # not asked yet: unknown, not "not ok" (null in the schema)
            body["camera"] = {"recording": None, "required_days": c.required_days, "ok": None}
    return body


class Heartbeat:
    """Takes a snapshot every ``interval_s`` and publishes the newest one whenever it can.

    ``snapshot()`` returns the body without ``session``; ``session()`` gives the MQTT session
    the heartbeat goes out in (filled in when it is signed)."""

    def __init__(
        self,
        *,
        ident: Identity,
        key: SigningKey,
        seq: SeqCounter,
        uplink: Uplink,
        interval_s: float,
        snapshot: Callable[[], dict[str, Any]],
        session: Callable[[], int],
        wall: Callable[[], float] = time.time,
        route: Callable[[], Transport | None] | None = None,
    ) -> None:
        """``route``: the session to publish on now (the relay's choice between the primary
        broker and, after its failover time, the secondary), None to wait. Without
        it, ``uplink`` when it is connected."""
        self.ident = ident
        self._key = key
        self._seq = seq
        self._uplink = uplink
        self._route = route
        self.interval_s = interval_s
        self._snapshot = snapshot
        self._session = session
        self._wall = wall
        self.expiry_s = math.ceil(EXPIRY_INTERVALS * interval_s)
        self.topic = topic(ident.prefix, ident.site, ident.gw, "heartbeat")
        self.waiting: tuple[str, dict[str, Any]] | None = None  # (ts, body) not yet sent
        self.stats: dict[str, int] = {"taken": 0, "sent": 0, "replaced": 0, "failed": 0}
        self.last_sent: dict[str, Any] | None = None

    def take(self) -> None:
        """Snapshot now; it replaces a snapshot still waiting (only the newest waits)."""
        body = self._snapshot()
        if self.waiting is not None:
            self.stats["replaced"] += 1
        self.waiting = (format_ts(self._wall()), body)
        self.stats["taken"] += 1

    def _current(self) -> Transport | None:
        if self._route is not None:
            return self._route()
        return self._uplink if self._uplink.connected else None

    def send(self) -> None:
        """Sign and publish the waiting snapshot (if a session can take it)."""
        if self.waiting is None:
            return
        uplink = self._current()
        if uplink is None:
            return
        ts, body = self.waiting
        self.waiting = None
        env = build(
            type="heartbeat",
            site=self.ident.site,
            gw=self.ident.gw,
            seq=self._seq.next(),
            body={**body, "session": self._session()},
            key=self._key,
            ts=ts,
        )
        self._seq.mark_sent(env.seq)
        fut = uplink.publish(self.topic, env.to_bytes(), expiry_s=self.expiry_s)
        fut.add_done_callback(lambda f: self._published(f, ts, body))
        self.last_sent = {"ts": ts, "seq": env.seq, "id": env.id}

    def _published(self, fut: asyncio.Future[int], ts: str, body: dict[str, Any]) -> None:
        if fut.cancelled() or fut.exception() is None:
            self.stats["sent"] += 0 if fut.cancelled() else 1
            return
        self.stats["failed"] += 1
        log.debug("heartbeat not published", error=str(fut.exception()))
        if self.waiting is None:  # nothing newer: this one waits for the next session
            self.waiting = (ts, body)

    async def run(self) -> None:
        """Tick on a fixed cadence for ever; between ticks, send as soon as connected."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            now = loop.time()
            if now >= next_at:
                self.take()
                # A fixed cadence: a late tick does not shift the ones after it, and ticks
                # missed during a stall are skipped, not made up in a burst.
                next_at += self.interval_s
                if next_at <= now:
                    next_at = now + self.interval_s
            self.send()
            left = next_at - loop.time()
            if self.waiting is not None and self._current() is None:
                # Until the primary is back (the secondary, if any, is tried at the next
                # tick). asyncio.timeout, not wait_for: 3.11's can swallow a cancellation.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self._uplink.wait_connected()
            else:
                await asyncio.sleep(left)
