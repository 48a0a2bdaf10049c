"""The shared store: PostgreSQL through psycopg 3 and a psycopg-pool connection pool, for one
or several center instances on the same database (their unique keys decide between them)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from center.store.base import Arrival, StoreError
from center.store.rows import Known, new_rows
from center.store.schema import DIALECTS
from center.store.sql import SqlStore
from gateway.contract.envelope import Envelope

# Envelopes' rows in one round trip (data-modifying CTEs): each row is written only if
# the row before it in its chain was (accepted -> envelope -> alarm -> audit; accepted ->
# heartbeat), so a (kid, seq) or id another instance recorded first leaves no trace; rows
# are inserted in key order, so that two instances' bursts lock them in the same order. Of
# one gateway's heartbeats the latest is kept (the newest ts, the last of equals), as
# writing them one after the other would.
_WRITE_EVENTS = """
WITH acc AS (
    INSERT INTO accepted (kid, seq, id, type, at)
    SELECT * FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], %b::float8[])
        AS r(kid, seq, id, type, at)
    ORDER BY kid, seq
    ON CONFLICT (kid, seq) DO NOTHING RETURNING kid, seq
), env AS (
    INSERT INTO envelopes (id, kid, seq, type, site, gw, ts, received_at, path, body)
    SELECT r.* FROM unnest(
        %b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[],
        %b::float8[], %b::text[], %b::text[]
    ) AS r(id, kid, seq, type, site, gw, ts, received_at, path, body)
    JOIN acc ON acc.kid = r.kid AND acc.seq = r.seq
    ORDER BY r.id
    ON CONFLICT (id) DO NOTHING RETURNING id, kid, seq
), al AS (
    INSERT INTO alarms (id, site, gw, type, code, kind, input, ts, received_at, path, fresh, body)
    SELECT r.* FROM unnest(
        %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
        %b::text[], %b::float8[], %b::text[], %b::bigint[], %b::text[]
    ) AS r(id, site, gw, type, code, kind, input, ts, received_at, path, fresh, body)
    JOIN env ON env.id = r.id
    ORDER BY r.id
    ON CONFLICT (id) DO UPDATE SET fresh = excluded.fresh WHERE alarms.fresh < excluded.fresh
    RETURNING id
), au AS (
    INSERT INTO alarm_audit (alarm_id, at, action, actor, detail)
    SELECT r.alarm_id, r.at, r.action, r.actor, r.detail FROM unnest(
        %b::text[], %b::float8[], %b::text[], %b::text[], %b::text[]
    ) WITH ORDINALITY AS r(alarm_id, at, action, actor, detail, n)
    JOIN al ON al.id = r.alarm_id
    ORDER BY r.n
), hb AS (
    INSERT INTO heartbeats (site, gw, id, session, ts, received_at, body)
    SELECT DISTINCT ON (r.site, r.gw) r.site, r.gw, r.id, r.session, r.ts, r.received_at, r.body
    FROM unnest(
        %b::text[], %b::text[], %b::text[], %b::bigint[], %b::text[], %b::float8[], %b::text[],
        %b::text[], %b::bigint[]
    ) WITH ORDINALITY AS r(site, gw, id, session, ts, received_at, body, kid, seq, n)
    JOIN acc ON acc.kid = r.kid AND acc.seq = r.seq
    ORDER BY r.site, r.gw, r.ts DESC, r.n DESC
    ON CONFLICT (site, gw) DO UPDATE SET id = excluded.id, session = excluded.session,
        ts = excluded.ts, received_at = excluded.received_at, body = excluded.body
    WHERE heartbeats.ts <= excluded.ts
)
SELECT acc.kid, acc.seq, env.id IS NOT NULL
FROM acc LEFT JOIN env ON env.kid = acc.kid AND env.seq = acc.seq
"""
_COLUMNS = (5, 10, 12, 5, 7)  # columns of each table's rows, in NewRows.statements() order

# What the store has about a burst's events (SqlStore._known), in rows for Known.add. Each
# probes an index (LATERAL ... LIMIT 1), whatever the tables' statistics say.
_KNOWN = """
SELECT 0, a.kid, a.seq, a.id FROM unnest(%b::text[], %b::bigint[]) AS v(kid, seq),
LATERAL (SELECT * FROM accepted a WHERE a.kid = v.kid AND a.seq = v.seq LIMIT 1) AS a
UNION ALL
SELECT 1, a.kid, NULL, a.id FROM unnest(%b::text[], %b::text[]) AS v(kid, id),
LATERAL (SELECT * FROM accepted a WHERE a.id = v.id AND a.kid = v.kid LIMIT 1) AS a
UNION ALL
SELECT 2, NULL, NULL, e.id FROM unnest(%b::text[]) AS v(id),
LATERAL (SELECT e.id FROM envelopes e WHERE e.id = v.id LIMIT 1) AS e
"""

# The pool logs each failed connection attempt as a multi-line warning; the store reports
# what matters in one line (StoreError) and the service logs that.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

MIGRATION_LOCK = 0x616C61726D  # pg_advisory_xact_lock key: one instance migrates at a time


def describe(dsn: str) -> str:
    """The dsn without secrets, for messages: ``host:port/dbname``. Raises StoreError when
    it is not a valid connection string."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error as err:
        raise StoreError(f"dsn is not a valid PostgreSQL connection string: {_line(err)}") from None
    host = str(parts.get("host") or parts.get("hostaddr") or "localhost")
    return f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or '(default)'}"


class PostgresStore(SqlStore):
    """The store in PostgreSQL. A transaction holds one pooled connection; a connection
    broken by a database restart is noticed when it is taken from the pool and replaced."""

    dialect = "postgresql"
    words: ClassVar[Mapping[str, str]] = {
        "max": "GREATEST",
        "skip_locked": "FOR UPDATE SKIP LOCKED",
        **DIALECTS["postgresql"],
    }

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        connect_timeout_s: float = 5.0,
        wait_s: float = 1.0,
    ) -> None:
        super().__init__()
        self.where = describe(dsn)
        self._dsn = dsn
        self._wait_s = wait_s
        self._conn: psycopg.Connection[Any] | None = None
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            open=False,
            kwargs={"connect_timeout": max(2, int(connect_timeout_s))},
            check=ConnectionPool.check_connection,
            reconnect_timeout=float(10**9),  # keep trying for as long as the center runs
            name="alarmgw-center",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout:
            self._pool.close()
            raise StoreError(self._unreachable()) from None
        try:
            self.migrate()
        except StoreError:
            self._pool.close()
            raise

    def _unreachable(self) -> str:
        # The pool keeps the cause of its failed attempts to itself; try once for it.
        try:
            psycopg.connect(self._dsn, connect_timeout=2).close()
        except psycopg.Error as err:
            return f"cannot reach PostgreSQL at {self.where}: {_line(err)}"
        return f"cannot reach PostgreSQL at {self.where}: no connection within the timeout"

    def close(self) -> None:
        self._pool.close()

    def _native(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        assert self._conn is not None
        return self._conn.execute(sql, params or None)

    def _begin(self) -> None:
        try:
            self._conn = self._pool.getconn(timeout=self._wait_s)
        except PoolTimeout:
            raise StoreError(f"PostgreSQL at {self.where} is unavailable") from None

    def _end(self, commit: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if commit:
                conn.commit()
            else:
                conn.rollback()
        finally:
            self._pool.putconn(conn)  # a broken one is discarded by the pool

    def _run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        assert self._conn is not None
        with self._conn.cursor() as cur:
            cur.executemany(sql, rows)
            return int(cur.rowcount)

    def _known(self, envs: Sequence[Envelope]) -> Known:
        """As the base class, with arrays: one statement text for any burst (psycopg
        prepares it after a few uses)."""
        known = Known()
        if envs:
            kids, seqs, ids = [e.kid for e in envs], [e.seq for e in envs], [e.id for e in envs]
            for row in self._run(_KNOWN, (kids, seqs, kids, ids, ids)):
                known.add(*row)
        return known

    def _write_new(self, new: Sequence[Arrival]) -> bool:
        """As the base class, in one round trip."""
        written = self._write_events(new)
        return all(
            accepted and (first or a.env.type == "heartbeat")
            for a, (accepted, first) in zip(new, written, strict=True)
        )

    def _write_events(self, events: Sequence[Arrival]) -> list[tuple[bool, bool]]:
        """Write each envelope's rows as ``_record_event`` (or a heartbeat's as ``_admit``)
        does, all in one statement (``_WRITE_EVENTS``): (accepted, first) for each, exactly,
        whatever another instance wrote meanwhile (a heartbeat is never first)."""
        params: list[list[Any]] = []
        for (_, rows, _), width in zip(new_rows(events).statements(), _COLUMNS, strict=True):
            params += [list(column) for column in zip(*rows, strict=True)] or [[]] * width
        beats = [a.env for a in events if a.env.type == "heartbeat"]
        params += [[e.kid for e in beats], [e.seq for e in beats]]
        written = {(str(k), int(s)): bool(f) for k, s, f in self._run(_WRITE_EVENTS, params)}
        out = []
        for a in events:
            first = written.get((a.env.kid, a.env.seq))
            out.append((first is not None, bool(first)))
        return out

    def _record_event(self, env: Envelope, received: float, path: str) -> tuple[bool, bool]:
        """As the base class, in one round trip (``_write_events``)."""
        accepted, first = self._write_events([Arrival(env, received, path)])[0]
        if accepted:
            self._raise_high(env)
        return accepted, first

    def _lock_for_migration(self) -> None:
        self._run("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))

    def _wrap(self, err: Exception) -> StoreError | None:
        if isinstance(err, StoreError):
            return err
        if isinstance(err, psycopg.Error):
            return StoreError(f"PostgreSQL at {self.where}: {_line(err)}")
        return None


def _line(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
