"""The center's store in SQL, shared by the SQLite and PostgreSQL backends: statements are
written once with ``?`` parameters and ``{max}`` / ``{skip_locked}`` words a backend fills in.
A backend supplies the connection, the transaction and its driver's error types."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, NoReturn

from center.store.base import (
    WINDOW,
    Admission,
    OutboxItem,
    SchemaTooNew,
    StoreError,
    rows,
)
from center.store.burst import BurstAdmission
from center.store.consoledata import ConsoleQueries
from center.store.rows import (
    ALARM_TYPES,
    INSERT_ACCEPTED,
    INSERT_ALARM,
    INSERT_AUDIT,
    INSERT_ENVELOPE,
    INSERT_HEARTBEAT,
    KNOWN_MAX,
    accepted_row,
    alarm_row,
    dumps,
    envelope_row,
    heartbeat_row,
    received_audit,
    sessions_query,
    storable,
)
from center.store.schema import LATEST, statements
from gateway.contract.envelope import Envelope

LIFECYCLE_COLUMNS = frozenset(
    {"status", "acked_by", "acked_at", "resolved_by", "resolved_at", "outcome", "note"}
)


class SqlStore(ConsoleQueries, BurstAdmission, ABC):
    """Everything but the connection (see the module docstring)."""

    dialect = "sql"
    words: ClassVar[Mapping[str, str]] = {}

    def __init__(self) -> None:
        self._in_batch = False
        self._in_tx = False  # a transaction (the batch's or a method's) is open
        self._high: dict[str, int] = {}  # kid -> highest accepted seq (as in table signer)
        self._dirty: set[str] = set()  # kids whose high moved in the open transaction
        self._sql: dict[str, str] = {}

    # -- what a backend supplies ------------------------------------------------------

    @abstractmethod
    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Execute one statement (native parameter style) in the open transaction; a cursor."""

    @abstractmethod
    def _run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Execute one statement for each of ``rows``; the number of rows changed."""

    @abstractmethod
    def _begin(self) -> None: ...

    @abstractmethod
    def _end(self, commit: bool) -> None:
        """Commit (or roll back) the open transaction and release what it held."""

    @abstractmethod
    def _wrap(self, err: Exception) -> StoreError | None:
        """A driver error as a StoreError (None: not a database error)."""

    def _native(self, sql: str) -> str:
        return sql

    # -- transactions -----------------------------------------------------------------

    def _text(self, sql: str) -> str:
        text = self._sql.get(sql)
        if text is None:
            text = self._sql[sql] = self._native(sql.format(**self.words) if "{" in sql else sql)
        return text

    def _x(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._run(self._text(sql), params)

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Execute one statement for each of ``rows``; how many rows it changed in all."""
        return self._run_many(self._text(sql), rows) if rows else 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction, or a part of the open one (a batch's); driver errors come out
        as StoreError (the batch's owner then aborts it)."""
        if self._in_tx:
            try:
                yield
            except Exception as err:
                self._raise_wrapped(err)
            return
        try:
            self._begin()
            self._in_tx = True
            try:
                yield
                self._flush_high()
            except BaseException:
                self._rollback()
                raise
            self._in_tx = False
            self._end(commit=True)
        except Exception as err:
            self._in_tx = False
            self._forget()
            self._raise_wrapped(err)
        self._dirty.clear()

    def _raise_wrapped(self, err: Exception) -> NoReturn:
        wrapped = self._wrap(err)
        if wrapped is None or wrapped is err:
            raise err
        raise wrapped from err

    def begin_batch(self) -> None:
        """Open one transaction for a burst of envelopes (group commit): what follows
        writes into it and ``commit_batch`` makes all of it durable with one sync."""
        if not self._in_batch:
            try:
                self._begin()
            except Exception as err:
                raise self._wrap(err) or err from err
            self._in_batch = self._in_tx = True

    def commit_batch(self) -> None:
        if not self._in_batch:
            return
        self._in_batch = self._in_tx = False
        try:
            self._flush_high()
            self._end(commit=True)
        except Exception as err:
            self._rollback()
            raise self._wrap(err) or err from err
        self._dirty.clear()

    def abort_batch(self) -> None:
        self._rollback()

    def _rollback(self) -> None:
        self._in_batch = self._in_tx = False
        try:
            self._end(commit=False)
        except Exception as err:
            if self._wrap(err) is None:
                raise
        self._forget()

    def _forget(self) -> None:
        self._high.clear()  # re-read from the table: the moves were not committed
        self._dirty.clear()

    def _flush_high(self) -> None:
        for kid in self._dirty:
            high = self._high[kid]
            self._x(
                "INSERT INTO signer (kid, high) VALUES (?, ?) ON CONFLICT (kid) "
                "DO UPDATE SET high = {max}(signer.high, excluded.high)",
                (kid, high),
            )
            # Rows below the window can never matter again (those seqs are rejected).
            self._x("DELETE FROM accepted WHERE kid = ? AND seq <= ?", (kid, high - WINDOW))

    def migrate(self) -> None:
        """Bring the schema to ``LATEST``; refuse a database from a newer version."""
        with self.transaction():
            self._lock_for_migration()
            self._x("CREATE TABLE IF NOT EXISTS schema_version (version {int} NOT NULL)")
            row = self._x("SELECT MAX(version) FROM schema_version").fetchone()
            have = int(row[0]) if row and row[0] is not None else 0
            if have > LATEST:
                raise SchemaTooNew(
                    f"the {self.dialect} database has schema version {have}; this alarmgw "
                    f"knows versions up to {LATEST}: upgrade alarmgw"
                )
            for version in range(have + 1, LATEST + 1):
                for sql in statements(self.dialect, version):
                    self._run(sql)
                self._x("INSERT INTO schema_version (version) VALUES (?)", (version,))

    @abstractmethod
    def _lock_for_migration(self) -> None:
        """Serialise migrations of several instances starting at once."""

    def schema_version(self) -> int:
        with self.transaction():
            row = self._x("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def ping(self) -> None:
        with self.transaction():
            self._x("SELECT 1").fetchone()

    # -- ingest -----------------------------------------------------------------------

    def lookup(self, kid: str, seq: int, event_id: str) -> tuple[str | None, bool]:
        """(id accepted under this kid and seq or None, whether this id was accepted from
        this kid under any seq) in one statement."""
        by_seq: str | None = None
        id_seen = False
        with self.transaction():
            found_rows = self._x(
                "SELECT id, 0 FROM accepted WHERE kid = ? AND seq = ? "
                "UNION ALL SELECT id, 1 FROM accepted WHERE id = ? AND kid = ?",
                (kid, seq, event_id, kid),
            ).fetchall()
        for found, same_id in found_rows:
            if same_id:
                id_seen = True
            else:
                by_seq = str(found)
        return by_seq, id_seen

    def high(self, kid: str) -> int:
        high = self._high.get(kid)
        if high is None:
            with self.transaction():
                row = self._x("SELECT high FROM signer WHERE kid = ?", (kid,)).fetchone()
            high = self._high[kid] = 0 if row is None else int(row[0])
        return high

    def admit(self, env: Envelope, *, received: float, path: str = "primary") -> Admission:
        """Anti-replay, de-duplication and keeping of one verified envelope."""
        with self.transaction():
            return self._admit(env, received, path)

    def _admit(self, env: Envelope, received: float, path: str) -> Admission:
        earlier, id_seen = self.lookup(env.kid, env.seq, env.id)
        if earlier is not None:
            return self._seen(env, earlier, received, path)
        if env.seq <= self.high(env.kid) - WINDOW:
            return self._refused(
                env, received, path, "seq-below-window", f"seq {env.seq} is too old"
            )
        if id_seen:
            # The same event re-signed under a new seq (a gateway keeps its backlog inside the
            # window that way; PROTOCOL.md: the id is the dedupe key): acked, not dispatched.
            return Admission("duplicate")
        if env.type == "heartbeat":
            if not self._insert_accepted(env, received):
                return self._seen_meanwhile(env, received, path)
            self._x(INSERT_HEARTBEAT, heartbeat_row(env, received, dumps(env.body)))
            return Admission("accepted")
        accepted, first = self._record_event(env, received, path)
        if not accepted:
            return self._seen_meanwhile(env, received, path)
        if not first:  # the same event under another seq, accepted by another instance
            return Admission("duplicate")
        stale = False
        if env.type == "state":
            # PROTOCOL.md: a state with a lower session than the latest seen is stale (a late
            # will must not mark a live gateway offline).
            session = int(env.body["session"])
            stale = session < self.session(env.site, env.gw)
            if not stale:
                self.set_state(env.site, env.gw, session, str(env.body["status"]), received)
        return Admission("accepted", stale=stale)

    def _insert_accepted(self, env: Envelope, received: float) -> bool:
        """Record (kid, seq, id); False if another instance recorded that (kid, seq) first."""
        inserted = self._x(INSERT_ACCEPTED + " RETURNING id", accepted_row(env, received))
        if inserted.fetchone() is None:
            return False
        self._raise_high(env)
        return True

    def _raise_high(self, env: Envelope) -> None:
        if env.seq > self.high(env.kid):
            self._high[env.kid] = env.seq
            self._dirty.add(env.kid)

    def _record_event(self, env: Envelope, received: float, path: str) -> tuple[bool, bool]:
        """Record an event or state: (its (kid, seq) was recorded here, its id is new);
        a new alarm or test is kept with its audit row."""
        if not self._insert_accepted(env, received):
            return False, False
        body = dumps(env.body)
        row = envelope_row(env, received, path, body)
        if self._x(INSERT_ENVELOPE + " RETURNING id", row).fetchone() is None:
            return True, False
        if env.type in ALARM_TYPES:
            self._keep_alarm(env, received, path, fresh=True, body=body)
        return True, True

    def _seen_meanwhile(self, env: Envelope, received: float, path: str) -> Admission:
        """Another instance accepted this (kid, seq) since our lookup."""
        earlier, _ = self.lookup(env.kid, env.seq, env.id)
        return self._seen(env, earlier or "", received, path)

    def _seen(self, env: Envelope, earlier: str, received: float, path: str) -> Admission:
        if earlier == env.id:
            return Admission("duplicate")
        return self._refused(
            env,
            received,
            path,
            "replayed-seq",
            f"seq {env.seq} of kid {env.kid} was accepted with another id",
        )

    def _refused(
        self, env: Envelope, received: float, path: str, reason: str, detail: str
    ) -> Admission:
        """An authentic envelope refused for its seq. An alarm is still kept, as one whose
        freshness could not be proven (PROTOCOL.md "resync"): never dropped silently."""
        unproven = env.type in ALARM_TYPES and self._keep_alarm(env, received, path, fresh=False)
        return Admission("rejected", reason, detail, unproven=unproven)

    def _keep_alarm(
        self, env: Envelope, received: float, path: str, *, fresh: bool, body: str | None = None
    ) -> bool:
        row = alarm_row(env, received, path, body or dumps(env.body), fresh=fresh)
        if self._x(INSERT_ALARM + " RETURNING fresh", row).fetchone() is None:
            return False
        actor, detail = received_audit(env, path)
        self._audit(env.id, "received" if fresh else "received-unproven", actor, detail, received)
        return True

    def _audit(self, alarm_id: str, action: str, actor: str, detail: str, at: float) -> None:
        self._x(INSERT_AUDIT, (alarm_id, at, action, actor, detail))

    def reject(
        self,
        *,
        topic: str,
        reason: str,
        detail: str,
        env: Envelope | None,
        payload: bytes,
        received: float,
    ) -> None:
        """Keep a rejection with its reason and (the start of) the payload."""
        kept = storable(payload[:65536].decode("utf-8", "replace"))
        with self.transaction():
            self._x(
                "INSERT INTO rejections (at, topic, reason, detail, site, gw, kid, seq, id, "
                "payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (received, storable(topic), reason, storable(detail), *_who(env), kept),
            )

    def session(self, site: str, gw: str) -> int:
        with self.transaction():
            row = self._x(
                "SELECT session FROM gateway_state WHERE site = ? AND gw = ?", (site, gw)
            ).fetchone()
        return -1 if row is None else int(row[0])

    def sessions(self, gateways: Collection[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """``session`` of each of ``gateways`` (-1 for one without a state), in one
        statement per ``KNOWN_MAX``."""
        out = dict.fromkeys(gateways, -1)
        listed = list(out)
        with self.transaction():
            for start in range(0, len(listed), KNOWN_MAX):
                for site, gw, session in self._x(
                    *sessions_query(listed[start : start + KNOWN_MAX])
                ):
                    out[(site, gw)] = int(session)
        return out

    def set_state(self, site: str, gw: str, session: int, status: str, at: float = 0.0) -> None:
        with self.transaction():
            self._x(
                "INSERT INTO gateway_state (site, gw, session, status, at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (site, gw) DO UPDATE SET session = excluded.session, "
                "status = excluded.status, at = excluded.at",
                (site, gw, session, status, at),
            )

    def claim_resync(self, kid: str, *, now: float, every_s: float) -> bool:
        """Whether this instance may send a resync for ``kid`` now (at most one per
        ``every_s`` per signer, whichever instance asks)."""
        with self.transaction():
            row = self._x(
                "INSERT INTO resync_sent (kid, at) VALUES (?, ?) ON CONFLICT (kid) DO UPDATE "
                "SET at = excluded.at WHERE resync_sent.at <= ? RETURNING kid",
                (kid, now, now - every_s),
            ).fetchone()
        return row is not None

    def report_liveness(self, site: str, gw: str, status: str, *, now: float) -> bool:
        """Record a gateway's liveness; True for the one caller that changed it."""
        with self.transaction():
            row = self._x(
                "INSERT INTO liveness (site, gw, status, at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (site, gw) DO UPDATE SET status = excluded.status, at = excluded.at "
                "WHERE liveness.status <> excluded.status RETURNING status",
                (site, gw, status, now),
            ).fetchone()
        return row is not None

    def last_heartbeat(self, site: str, gw: str) -> float | None:
        with self.transaction():
            row = self._x(
                "SELECT received_at FROM heartbeats WHERE site = ? AND gw = ?", (site, gw)
            ).fetchone()
        return None if row is None else float(row[0])

    # -- lifecycle --------------------------------------------------------------------

    def alarms(self, *, open_only: bool = False, limit: int = 1000) -> list[dict[str, Any]]:
        query = (
            "SELECT * FROM alarms WHERE status <> 'resolved' ORDER BY received_at LIMIT ?"
            if open_only
            else "SELECT * FROM alarms ORDER BY received_at LIMIT ?"
        )
        with self.transaction():
            found = list(rows(self._x(query, (limit,))))
        return [_alarm_row(r) for r in found]

    def alarm(self, alarm_id: str) -> dict[str, Any] | None:
        with self.transaction():
            found = list(rows(self._x("SELECT * FROM alarms WHERE id = ?", (alarm_id,))))
        return _alarm_row(found[0]) if found else None

    def audit(self, alarm_id: str) -> list[dict[str, Any]]:
        with self.transaction():
            return list(
                rows(
                    self._x(
                        "SELECT at, action, actor, detail FROM alarm_audit WHERE alarm_id = ? "
                        "ORDER BY n",
                        (alarm_id,),
                    )
                )
            )

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
    ) -> bool:
        """One lifecycle step in one transaction: the alarm's new fields (only if its status
        is one of ``expect``), its audit row and, if any, the envelope to send."""
        if not fields.keys() <= LIFECYCLE_COLUMNS or not expect:
            raise ValueError("not a lifecycle column")
        sets = ", ".join(f"{name} = ?" for name in fields)
        marks = ", ".join("?" for _ in expect)
        with self.transaction():
            row = self._x(
                f"UPDATE alarms SET {sets} WHERE id = ? AND status IN ({marks}) "  # noqa: S608 - checked names
                "RETURNING site, gw",
                (*fields.values(), alarm_id, *expect),
            ).fetchone()
            if row is None:
                return False
            self._audit(alarm_id, action, actor, detail, now)
            if outbox is not None:
                kind, body = outbox
                self._x(
                    "INSERT INTO outbox (type, site, gw, body, created_at) VALUES (?, ?, ?, ?, ?)",
                    (kind, row[0], row[1], dumps(body), now),
                )
        return True

    def claim_outbox(
        self, owner: str, *, now: float, lease_s: float = 30.0, limit: int = 50
    ) -> list[OutboxItem]:
        """Unsent envelopes for ``owner`` to publish; another instance may take them over
        when ``owner`` has not marked them sent within ``lease_s``."""
        with self.transaction():
            found = self._x(
                "UPDATE outbox SET claimed_by = ?, claimed_at = ? WHERE n IN (SELECT n FROM "
                "outbox WHERE sent_at IS NULL AND (claimed_at IS NULL OR claimed_at < ?) "
                "ORDER BY n LIMIT ? {skip_locked}) RETURNING n, type, site, gw, body",
                (owner, now, now - lease_s, limit),
            ).fetchall()
        items = [OutboxItem(int(n), t, s, g, json.loads(b)) for n, t, s, g, b in found]
        return sorted(items, key=lambda i: i.n)

    def mark_sent(self, n: int, sent_id: str, *, now: float) -> None:
        with self.transaction():
            self._x("UPDATE outbox SET sent_at = ?, sent_id = ? WHERE n = ?", (now, sent_id, n))

    def summary(self, *, now: float) -> dict[str, Any]:
        """What ``alarmgw center status`` shows: open alarms by status and age, the
        gateways by liveness, rejections by reason, unsent dispatches."""
        with self.transaction():
            open_rows = self._x(
                "SELECT status, type, fresh, received_at FROM alarms WHERE status <> 'resolved'"
            ).fetchall()
            live = self._x("SELECT status, COUNT(*) FROM liveness GROUP BY status").fetchall()
            rejected = self._x("SELECT reason, COUNT(*) FROM rejections GROUP BY reason").fetchall()
            accepted = self._x("SELECT COUNT(*) FROM envelopes").fetchone()
            unsent = self._x("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()
        ages = {"lt_1m": 0, "lt_10m": 0, "lt_1h": 0, "ge_1h": 0}
        by_status: dict[str, int] = {}
        tests = unproven = 0
        for status, kind, fresh, received_at in open_rows:
            if kind == "test":
                tests += 1
                continue
            unproven += not fresh
            by_status[status] = by_status.get(status, 0) + 1
            age = now - float(received_at)
            bucket = (
                "lt_1m"
                if age < 60
                else "lt_10m"
                if age < 600
                else "lt_1h"
                if age < 3600
                else "ge_1h"
            )
            ages[bucket] += 1
        return {
            "open_alarms": by_status,
            "open_alarms_by_age": ages,
            "open_unproven": unproven,
            "open_tests": tests,
            "gateways": {str(s): int(c) for s, c in live},
            "rejected": {str(r): int(c) for r, c in rejected},
            "accepted_envelopes": int(accepted[0]) if accepted else 0,
            "unsent_dispatches": int(unsent[0]) if unsent else 0,
        }


def _who(env: Envelope | None) -> tuple[Any, ...]:
    if env is None:
        return (None, None, None, None, None)
    return (env.site, env.gw, env.kid, env.seq, env.id)


def _alarm_row(row: dict[str, Any]) -> dict[str, Any]:
    row["body"] = json.loads(row["body"])
    row["fresh"] = bool(row["fresh"])
    return row
