"""What goes into ``DeliveryCore`` and what comes out of it: publish outcomes and actions
(frozen, slotted dataclasses), and the queued envelope as the core sees it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gateway.delivery.outbox import PRIORITY
from gateway.feedback import LedMode

OrderKey = tuple[int, float, int]


class Outcome(StrEnum):
    """How one publish attempt ended."""

    OK = "ok"  # PUBACK
    REFUSED = "refused"  # PUBACK with an error reason code
    NOT_CONNECTED = "not-connected"  # no session, or it was lost first
    FAILED = "failed"  # any other local failure
    MISSING = "missing"  # the driver found the outbox row gone before publishing


# -- actions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``payload`` on ``path``; an empty ``payload``: the bytes stored in the outbox
    for ``id`` (a re-send; gone from the outbox: report ``Outcome.MISSING``)."""

    path: str
    topic: str
    payload: bytes
    id: str
    seq: int
    attempt: int  # 1 for the first attempt in this run
    durable: bool
    flush: bool  # push the bytes out now (a live alarm) rather than with the batch


@dataclass(frozen=True, slots=True)
class Feedback:
    id: str
    mode: LedMode


@dataclass(frozen=True, slots=True)
class Release:
    """No more feedback for these ids: the driver may drop the presser's LED handle."""

    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ResignItem:
    id: str
    type: str
    payload: bytes  # empty: the bytes stored in the outbox for ``id``
    created: float


@dataclass(frozen=True, slots=True)
class Resign:
    """Give these queued envelopes fresh seqs (same id, ts, body), store them, then call
    ``resigned``."""

    items: tuple[ResignItem, ...]


@dataclass(frozen=True, slots=True)
class Delivered:
    """The center acknowledged an event held in this run (times are ``now`` values)."""

    id: str
    type: str
    input: str
    attempts: int
    registered_at: float
    first_sent_at: float | None
    acked_at: float


@dataclass(frozen=True, slots=True)
class Forget:
    """Remove ``ids`` from the outbox: a verified ack names them (some may not be held in
    this run, e.g. rows not yet loaded from a large backlog)."""

    ids: tuple[str, ...]
    delivered: tuple[Delivered, ...]


@dataclass(frozen=True, slots=True)
class Overdue:
    id: str
    attempts: int
    waited_s: float


@dataclass(frozen=True, slots=True)
class AckRefused:
    """A message on the ack topic was ignored (PROTOCOL.md: unverifiable or not for us)."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Note:
    """Record a failed publish attempt on the outbox row."""

    id: str
    error: str


@dataclass(frozen=True, slots=True)
class Resync:
    """Move the seq counter to at least ``next_seq`` (never backwards)."""

    next_seq: int


Action = Publish | Feedback | Release | Resign | Forget | Overdue | AckRefused | Note | Resync


@dataclass(frozen=True, slots=True)
class Need:
    """Rows the core wants from the outbox: up to ``limit`` in send order after ``after``."""

    after: OrderKey | None
    limit: int


@dataclass(frozen=True, slots=True)
class Row:
    """A queued envelope as the core sees it (an outbox row, or one held in memory)."""

    id: str
    type: str
    seq: int
    payload: bytes
    created: float  # wall-clock seconds, part of the send order only


def send_order(type_: str, created: float, seq: int) -> OrderKey:
    """PROTOCOL.md "Order": alarms, then tests, then the rest; oldest first."""
    return (PRIORITY[type_], created, seq)
