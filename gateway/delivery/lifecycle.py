"""An event's lifecycle in the delivery core: its stages, what moves it between them, what
the presser sees on each move (PROTOCOL.md "Delivery semantics"), and the record the core
keeps of each event while it is queued."""

from __future__ import annotations

from enum import StrEnum

from gateway.delivery.events import OrderKey, Row, send_order
from gateway.feedback import LedMode


class Stage(StrEnum):  # str-valued: the transition lookups hash in C
    NEW = "new"
    QUEUED = "queued"  # held, never sent (or sent before a restart)
    INFLIGHT = "inflight"  # a publish attempt is under way
    WAITING = "waiting"  # sent; waits for the center's ack, re-sent when its backoff runs out
    ACKED = "acked"  # the center's signed ack named it: forgotten
    GONE = "gone"  # no longer in the outbox (evicted telemetry): forgotten


class Trigger(StrEnum):
    COMMIT = "commit"  # durable in the outbox
    HOLD = "hold"  # could not be committed: held in memory and sent from there
    PUBLISH = "publish"
    PUBACK = "puback"  # the broker took it: the attempt ends, the event does not
    REFUSED = "refused"  # the broker refused it, or the publish failed
    NO_SESSION = "no-session"  # the session was lost before a PUBACK
    LINK_UP = "link-up"  # a new session: what waits for an ack is due again now
    OVERDUE = "overdue"  # no ack within ack_timeout_s
    RESIGN = "resign"  # a fresh seq and signature, same id, ts and body
    ACK = "ack"
    MISSING = "missing"  # its outbox row is gone


_LIVE = (Stage.QUEUED, Stage.INFLIGHT, Stage.WAITING)

# (stage, trigger) -> (next stage, LED mode shown to the presser, if any)
TRANSITIONS: dict[tuple[Stage, Trigger], tuple[Stage, LedMode | None]] = {
    (Stage.NEW, Trigger.COMMIT): (Stage.QUEUED, "blink"),  # "registered" means durable
    (Stage.NEW, Trigger.HOLD): (Stage.QUEUED, None),
    (Stage.QUEUED, Trigger.PUBLISH): (Stage.INFLIGHT, None),
    (Stage.WAITING, Trigger.PUBLISH): (Stage.INFLIGHT, None),
    (Stage.INFLIGHT, Trigger.PUBACK): (Stage.WAITING, None),
    (Stage.INFLIGHT, Trigger.REFUSED): (Stage.WAITING, None),
    (Stage.INFLIGHT, Trigger.NO_SESSION): (Stage.WAITING, None),
    (Stage.INFLIGHT, Trigger.MISSING): (Stage.GONE, None),
    (Stage.WAITING, Trigger.LINK_UP): (Stage.WAITING, None),
    (Stage.QUEUED, Trigger.RESIGN): (Stage.QUEUED, None),
    (Stage.WAITING, Trigger.RESIGN): (Stage.WAITING, None),
    **{(s, Trigger.OVERDUE): (s, "fast") for s in _LIVE},
    **{(s, Trigger.ACK): (Stage.ACKED, "solid") for s in _LIVE},
}


class ProtocolViolation(RuntimeError):
    """The driver fed an event that the lifecycle does not allow (a bug, not bad input)."""


class Entry:
    """One queued event during this run."""

    __slots__ = (
        "as_is",
        "attempts",
        "created",
        "dispatch",
        "durable",
        "first_sent_at",
        "id",
        "input",
        "key",
        "last_sent_at",
        "next_due",
        "overdue_at",
        "path",
        "payload",
        "presser",
        "registered_at",
        "resigning",
        "seq",
        "stage",
        "type",
    )

    def __init__(self, row: Row, now: float, *, durable: bool, key: OrderKey | None = None) -> None:
        self.id = row.id
        self.type = row.type
        self.seq = row.seq
        self.payload = row.payload
        self.created = row.created
        self.key = send_order(row.type, row.created, row.seq) if key is None else key
        self.durable = durable
        self.stage = Stage.NEW
        self.registered_at = now
        self.attempts = 0
        self.first_sent_at: float | None = None
        self.last_sent_at = 0.0
        self.next_due = 0.0
        self.overdue_at: float | None = None
        self.path = ""
        self.input = ""
        self.presser = False  # someone waits for LED feedback on it
        self.resigning = False  # a Resign for it is out
        self.as_is = False  # re-signing it failed: send these bytes once more
        self.dispatch: LedMode | None = None  # what the center's dispatch has shown so far
