"""The shared store: PostgreSQL through psycopg 3 and a psycopg-pool connection pool, for one
or several center instances on the same database (their unique keys decide between them)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from center.store.base import StoreError
from center.store.schema import DIALECTS
from center.store.sql import ALARM_TYPES, SqlStore, dumps
from gateway.contract.envelope import Envelope

_RECORD_EVENT = """
WITH acc AS (
    INSERT INTO accepted (kid, seq, id, type, at) VALUES (%s, %s, %s, %s, %s)
    ON CONFLICT (kid, seq) DO NOTHING RETURNING id
), env AS (
    INSERT INTO envelopes (id, kid, seq, type, site, gw, ts, received_at, path, body)
    SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM acc)
    ON CONFLICT (id) DO NOTHING RETURNING id
), al AS (
    INSERT INTO alarms (id, site, gw, type, code, kind, input, ts, received_at, path, fresh, body)
    SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1, %s
    WHERE %s AND EXISTS (SELECT 1 FROM env)
    ON CONFLICT (id) DO UPDATE SET fresh = excluded.fresh WHERE alarms.fresh < excluded.fresh
    RETURNING id
), au AS (
    INSERT INTO alarm_audit (alarm_id, at, action, actor, detail)
    SELECT %s, %s, 'received', %s, %s WHERE EXISTS (SELECT 1 FROM al)
)
SELECT EXISTS (SELECT 1 FROM acc), EXISTS (SELECT 1 FROM env)
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

    def _record_event(self, env: Envelope, received: float, path: str) -> tuple[bool, bool]:
        """As the base class, in one round trip (data-modifying CTEs): each statement runs
        only if the one before it inserted its row."""
        body = env.body
        is_alarm = env.type in ALARM_TYPES
        row = self._run(
            _RECORD_EVENT,
            (
                env.kid,
                env.seq,
                env.id,
                env.type,
                received,
                env.id,
                env.kid,
                env.seq,
                env.type,
                env.site,
                env.gw,
                env.ts,
                received,
                path,
                dumps(body),
                env.id,
                env.site,
                env.gw,
                env.type,
                str(body.get("code")),
                str(body.get("kind")),
                str(body.get("input")),
                env.ts,
                received,
                path,
                dumps(body),
                is_alarm,
                env.id,
                received,
                f"{env.site}/{env.gw}",
                f"seq {env.seq} via {path}",
            ),
        ).fetchone()
        accepted, first = bool(row[0]), bool(row[1])
        if accepted and env.seq > self.high(env.kid):
            self._high[env.kid] = env.seq
            self._dirty.add(env.kid)
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
