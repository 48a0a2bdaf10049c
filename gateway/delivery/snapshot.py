"""The delivery snapshot (gateway/snapshots.py) from the relay's and the uplinks' public
attributes, and the queue snapshot from the outbox."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from gateway import checks
from gateway.snapshots import (
    DeliveryCounters,
    DeliverySnapshot,
    LastAlarm,
    LinkSnapshot,
    QueueRow,
    QueueSnapshot,
    Raised,
    RefusedAcks,
)

if TYPE_CHECKING:
    from gateway.delivery.takeover import Takeover
    from gateway.delivery.uplink import MqttSettings

Summary = Mapping[str, Mapping[str, float | int | str | None]]


class LinkLike(Protocol):
    """What a snapshot reads of ``gateway.delivery.uplink.Uplink``."""

    @property
    def settings(self) -> MqttSettings: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def loop_heartbeat(self) -> float: ...
    @property
    def connected(self) -> bool: ...
    @property
    def takeover(self) -> Takeover | None: ...


class RelayLike(Protocol):
    """What a snapshot reads of ``gateway.delivery.relay.Relay``."""

    @property
    def session(self) -> int: ...
    @property
    def pump_tick(self) -> float: ...
    @property
    def sent_by_path(self) -> Mapping[str, int]: ...
    @property
    def stats(self) -> Mapping[str, int]: ...
    @property
    def raised_by(self) -> Mapping[tuple[str, str], int]: ...
    @property
    def last_alarm(self) -> Mapping[str, Any] | None: ...
    def memory_only_count(self) -> int: ...
    @property
    def acks_rejected_by(self) -> Mapping[str, int]: ...
    @property
    def acks_refused_since_ack(self) -> Mapping[str, int]: ...
    @property
    def acks_refused_kid(self) -> Mapping[str, str]: ...
    @property
    def center_kids(self) -> tuple[str, ...]: ...


class OutboxLike(Protocol):
    def summary(self) -> Summary: ...


def _age(now: float, then: float | None) -> float | None:
    return None if not then else round(max(0.0, now - then), 3)


def link_snapshot(link: LinkLike, path: str, now: float) -> LinkSnapshot:
    s = link.settings
    taken = link.takeover
    return LinkSnapshot(
        path=path,
        broker=f"{s.host}:{s.port}",
        tls=bool(s.tls),
        protocol=str(s.protocol),
        connected=bool(link.connected),
        reconnects=int(link.reconnects),
        last_error=link.last_error,
        loop_age_s=_age(now, link.loop_heartbeat),
        takeover=None
        if taken is None
        else checks.failing(
            "broker-session", f"{taken.problem} ({taken.count} time(s))", taken.fix
        ),
    )


def delivery_snapshot(
    relay: RelayLike, primary: LinkLike, secondary: LinkLike | None, now: float | None = None
) -> DeliverySnapshot:
    """The relay's in-memory figures. Call it on the relay's event loop (it copies
    containers that loop mutates); ``now`` is monotonic (the loop's clock)."""
    at = time.monotonic() if now is None else now
    last = relay.last_alarm
    stats = relay.stats
    return DeliverySnapshot(
        session=int(relay.session),
        memory_only=int(relay.memory_only_count()),
        primary=link_snapshot(primary, "primary", at),
        secondary=None if secondary is None else link_snapshot(secondary, "secondary", at),
        sent_by_path=tuple(sorted((str(k), int(v)) for k, v in relay.sent_by_path.items())),
        counters=DeliveryCounters(
            alarms_raised=int(stats.get("alarms_raised", 0)),
            events_sent=int(stats.get("events_sent", 0)),
            events_acked=int(stats.get("events_acked", 0)),
            publish_refused=int(stats.get("publish_refused", 0)),
            acks_rejected=int(stats.get("acks_rejected", 0)),
        ),
        raised=tuple(
            Raised(input=i, type=t, count=int(n)) for (i, t), n in sorted(relay.raised_by.items())
        ),
        last_alarm=None
        if not last
        else LastAlarm(
            id=str(last["id"]),
            type=str(last["type"]),
            input=str(last["input"]),
            ts=str(last["ts"]),
            acked_at=last.get("acked_at"),
        ),
        pump_age_s=_age(at, relay.pump_tick),
        refused_acks=tuple(
            RefusedAcks(
                reason=str(reason),
                count=int(n),
                since_ack=int(relay.acks_refused_since_ack.get(reason, 0)),
                last_kid=relay.acks_refused_kid.get(reason),
            )
            for reason, n in sorted(relay.acks_rejected_by.items())
            if n
        ),
        center_kids=tuple(relay.center_kids),
    )


def queue_snapshot(
    outbox: OutboxLike, memory_only: int, wall: float | None = None
) -> QueueSnapshot:
    """The queue per type from the outbox's ``summary()`` (a read on the caller's thread)."""
    at = time.time() if wall is None else wall
    rows = []
    for kind, row in sorted(outbox.summary().items()):
        oldest, err = row.get("oldest"), row.get("last_error")
        rows.append(
            QueueRow(
                type=str(kind),
                pending=int(row.get("pending") or 0),
                oldest_age_s=round(max(0.0, at - float(oldest)), 1)
                if isinstance(oldest, int | float)
                else 0.0,
                failed_attempts=None,
                last_error=None if err is None else str(err),
            )
        )
    return QueueSnapshot(rows=tuple(rows), memory_only=memory_only)
