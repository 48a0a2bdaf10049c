"""What the center keeps, behind one interface (``Store``) with two backends: SQLite (the
embedded default) and PostgreSQL (several center instances on one database).

The store decides anti-replay and de-duplication itself (PROTOCOL.md "Delivery semantics"),
so that with several instances the database's unique keys settle who accepted what: the
(kid, seq) of every accepted envelope and the id of every accepted event are primary keys,
inserted with ``ON CONFLICT DO NOTHING``; whoever's row is there first, accepted it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.contract.envelope import Envelope
from gateway.errors import AlarmgwError

WINDOW = 65_536  # PROTOCOL.md: the center remembers which of the 65,536 seqs below the top it saw


class StoreError(AlarmgwError):
    """The database cannot be used (unreachable, refused, not ours); one line."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer alarmgw."""


@dataclass(frozen=True, slots=True)
class Admission:
    """The store's decision about one verified envelope."""

    result: str  # accepted | duplicate | rejected
    reason: str | None = None  # replayed-seq | seq-below-window (rejected for its seq)
    detail: str = ""
    stale: bool = False  # a state envelope from an older session
    unproven: bool = False  # a refused alarm kept as one whose freshness is not proven


@dataclass(frozen=True, slots=True)
class Arrival:
    """One verified envelope of a burst, for ``admit_all``."""

    env: Envelope
    received: float
    path: str = "primary"
    body: str | None = None  # env.body as JSON text, when the checker made it already


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A center -> gateway envelope a person caused, waiting to be signed and published."""

    n: int
    type: str
    site: str
    gw: str
    body: Mapping[str, Any]


class Store(Protocol):
    """The center's storage. Every method is one transaction, except inside
    ``begin_batch`` ... ``commit_batch`` (one transaction for a burst: group commit)."""

    dialect: str

    def close(self) -> None: ...
    def begin_batch(self) -> None: ...
    def commit_batch(self) -> None: ...
    def abort_batch(self) -> None: ...
    def ping(self) -> None: ...
    def transaction(self) -> AbstractContextManager[None]: ...

    # ingest
    def admit(self, env: Envelope, *, received: float, path: str = "primary") -> Admission: ...
    def admit_all(self, arrivals: Sequence[Arrival]) -> list[Admission]: ...
    def reject(
        self,
        *,
        topic: str,
        reason: str,
        detail: str,
        env: Envelope | None,
        payload: bytes,
        received: float,
    ) -> None: ...
    def lookup(self, kid: str, seq: int, event_id: str) -> tuple[str | None, bool]: ...
    def high(self, kid: str) -> int: ...
    def session(self, site: str, gw: str) -> int: ...
    def sessions(self, gateways: Collection[tuple[str, str]]) -> dict[tuple[str, str], int]: ...
    def claim_resync(self, kid: str, *, now: float, every_s: float) -> bool: ...
    def report_liveness(self, site: str, gw: str, status: str, *, now: float) -> bool: ...
    def last_heartbeat(self, site: str, gw: str) -> float | None: ...

    # lifecycle
    def alarms(self, *, open_only: bool = False, limit: int = 1000) -> list[dict[str, Any]]: ...
    def alarm(self, alarm_id: str) -> dict[str, Any] | None: ...
    def audit(self, alarm_id: str) -> list[dict[str, Any]]: ...
    def update_alarm(
        self,
        alarm_id: str,
        *,
        expect: Sequence[str],
        fields: Mapping[str, Any],
        action: str,
        actor: str,
        detail: str,
        now: float,
        outbox: tuple[str, Mapping[str, Any]] | None,
    ) -> bool: ...
    def claim_outbox(
        self, owner: str, *, now: float, lease_s: float = 30.0, limit: int = 50
    ) -> list[OutboxItem]: ...
    def mark_sent(self, n: int, sent_id: str, *, now: float) -> None: ...
    def summary(self, *, now: float) -> dict[str, Any]: ...


def rows(cursor: Any) -> Iterator[dict[str, Any]]:
    """Rows of a DB-API cursor as dicts."""
    names = [d[0] for d in cursor.description or ()]
    for row in cursor.fetchall():
        yield dict(zip(names, row, strict=True))
