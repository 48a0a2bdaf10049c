"""The durable store-and-forward queue (PROTOCOL.md "Delivery semantics").

One SQLite file in WAL mode. An alarm is committed with ``synchronous=FULL`` before anyone is
told it is registered; it stays until the center's signed ack names its id. Rows hold the
exact signed payload, so a re-send is byte-identical (same id, seq, sig).

Delivery paths: every row is owed to the MQTT center; with a SIA DC-09 receiver configured,
rows of the types in ``dc09_types`` are owed to it as well (``dc09`` = 1 until its ``ACK``).
A row leaves the queue once every path it is owed to has it: the center's ack marks the MQTT
part done (``mqtt_done``) and removes the row only when DC-09 no longer owes it, and the
other way round. The MQTT reads (``pending``, ``after``, ``get``, ``count``) skip rows whose
MQTT part is done; ``pending_dc09`` / ``mark_dc09_delivered`` serve the DC-09 transmitter.

Also kept here, so that they commit in the same transaction as the alarm they belong to:
serial PRESS dedupe keys (SERIAL.md "Rules": a re-sent PRESS raises no new alarm,
also across a gateway restart), and small durable counters such as the MQTT session.

All methods are synchronous and meant for the event-loop thread: a FULL commit costs
~0.1-0.2 ms on this class of machine, cheaper than a thread hop.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from gateway.contract.envelope import Envelope
from gateway.delivery.salvage import Salvage, salvage
from gateway.errors import OutboxError
from gateway.private_files import private_file

log = structlog.get_logger("alarmgw.outbox")

# Lower sorts first: "alarms before everything else; within a type, oldest first".
PRIORITY = {"alarm": 0, "test": 1, "trouble": 2, "restore": 2}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id       TEXT PRIMARY KEY,
    type     TEXT NOT NULL,
    prio     INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    payload  BLOB NOT NULL,
    created  REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    mqtt_done INTEGER NOT NULL DEFAULT 0,
    dc09     INTEGER NOT NULL DEFAULT 0
);
DROP INDEX IF EXISTS outbox_order;
CREATE INDEX IF NOT EXISTS outbox_send_order ON outbox (prio, created, seq);
CREATE TABLE IF NOT EXISTS dedupe (
    key      TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    at       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    k TEXT PRIMARY KEY,
    v INTEGER NOT NULL
);
"""
# Columns added after the first release: an older outbox file gets them with their default
# (nothing delivered to the center yet, nothing owed to DC-09).
_ADDED_COLUMNS = {
    "mqtt_done": "INTEGER NOT NULL DEFAULT 0",
    "dc09": "INTEGER NOT NULL DEFAULT 0",
}
_PATH_INDEXES = """
CREATE INDEX IF NOT EXISTS outbox_dc09_order ON outbox (prio, created, seq) WHERE dc09 = 1;
"""
_COLS = "SELECT id, type, seq, payload, created, attempts, last_error FROM outbox"


@dataclass(frozen=True, slots=True)
class Pending:
    """One queued envelope, as stored."""

    id: str
    type: str
    seq: int
    payload: bytes
    created: float
    attempts: int
    last_error: str | None


class Outbox:
    """SQLite-backed queue of signed event envelopes awaiting the center's ack.

    ``max_events`` bounds the queued non-alarm events (trouble/restore): past it the oldest
    are evicted, counted in ``evicted`` and logged by the caller; alarms and tests never are.
    A file that is not a sound SQLite database is moved aside (``moved_aside`` says where)
    and a fresh one started, so a corrupt outbox can never make the daemon crash-loop; every
    row still readable in it is first copied into the fresh one (``salvaged`` says how many
    were saved and lost)."""

    def __init__(
        self, path: str | Path, *, max_events: int = 10_000, dc09_types: Iterable[str] = ()
    ) -> None:
        self.path = Path(path)
        self.max_events = max_events
        # Event types the DC-09 receiver must also get (empty: no DC-09 path).
        self.dc09_types = frozenset(dc09_types)
        # Called after every commit of a new row: the DC-09 transmitter's wake-up.
        self.listeners: list[Callable[[], None]] = []
        self.moved_aside: Path | None = None
        self.salvaged: Salvage | None = None
        self.evicted = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._open()
        except sqlite3.DatabaseError as err:
            self.moved_aside = self._move_aside(err)
            try:
                self._db = self._open()
            except sqlite3.Error as again:
                raise OutboxError(f"{self.path}: cannot open outbox: {again}") from again
            self._salvage(self.moved_aside)
        except (sqlite3.Error, OSError) as err:
            raise OutboxError(f"{self.path}: cannot open outbox: {err}") from err
        try:
            self._settle_paths()
        except sqlite3.Error as err:
            raise OutboxError(f"{self.path}: cannot open outbox: {err}") from err
        (n,) = self._db.execute("SELECT COUNT(*) FROM outbox WHERE prio >= 2").fetchone()
        self._telemetry = int(n)

    def _settle_paths(self) -> None:
        """Rows owed to a path that is no longer configured for them are not owed any more;
        rows that thereby have every path done are gone."""
        types = sorted(self.dc09_types)
        marks = ",".join("?" * len(types))
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute(
            f"UPDATE outbox SET dc09 = 0 WHERE dc09 = 1 AND type NOT IN ({marks})",  # noqa: S608 - placeholders only
            types,
        )
        self._db.execute("DELETE FROM outbox WHERE mqtt_done = 1 AND dc09 = 0")
        self._db.execute("COMMIT")

    def _open(self) -> sqlite3.Connection:
        private_file(self.path, "outbox")
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a commit is explicit.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            (verdict,) = db.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {verdict}")
            db.executescript(_SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
            for name, decl in _ADDED_COLUMNS.items():
                if name not in have:
                    db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {decl}")
            db.executescript(_PATH_INDEXES)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _move_aside(self, err: Exception) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{self.path}{suffix}")
            if part.exists():
                part.replace(Path(f"{target}{suffix}"))
        log.critical(
            "outbox file is corrupt; moved aside, starting a fresh one",
            path=str(self.path),
            moved_to=str(target),
            error=str(err),
        )
        return target

    def _salvage(self, source: Path) -> None:
        try:
            self.salvaged = salvage(source, self._db, self.dc09_types)
        except sqlite3.Error as err:  # the fresh file failed: nothing could be saved
            self.salvaged = Salvage(0, 0, {})
            log.critical("outbox salvage failed", path=str(source), error=str(err))
            return
        log.critical(
            "corrupt outbox salvaged",
            path=str(source),
            saved=self.salvaged.saved,
            lost=self.salvaged.lost,
            by_type=self.salvaged.by_type,
        )

    def close(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()

    # -- writes -----------------------------------------------------------------------

    def add(
        self,
        env: Envelope,
        *,
        payload: bytes | None = None,
        dedupe_key: str | None = None,
        now: float | None = None,
    ) -> None:
        """Commit ``env`` (its wire ``payload``, and its dedupe key) durably; returns once it
        is on disk."""
        at = time.time() if now is None else now
        data = env.to_bytes() if payload is None else payload
        prio = PRIORITY[env.type]
        evict = max(0, self._telemetry + 1 - self.max_events) if prio >= 2 else 0
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO outbox (id, type, prio, seq, payload, created, dc09) "
                "VALUES (?,?,?,?,?,?,?)",
                (env.id, env.type, prio, env.seq, data, at, env.type in self.dc09_types),
            )
            if dedupe_key is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO dedupe (key, event_id, at) VALUES (?,?,?)",
                    (dedupe_key, env.id, at),
                )
            if evict:
                # The oldest telemetry goes first; alarms (prio 0) and tests (1) never do.
                self._db.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE prio >= 2 "
                    "AND id != ? ORDER BY created, seq LIMIT ?)",
                    (env.id, evict),
                )
            self._db.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            raise OutboxError(f"{self.path}: cannot commit {env.type} {env.id}: {err}") from err
        if prio >= 2:
            self._telemetry += 1 - evict
        if evict:
            self.evicted += evict
            log.warning(
                "outbox full: oldest telemetry evicted",
                evicted=evict,
                evicted_total=self.evicted,
                max_events=self.max_events,
            )
        self._tell_listeners()

    def _tell_listeners(self) -> None:
        for listener in self.listeners:
            try:
                listener()
            except Exception:  # a listener must never undo a commit that happened
                log.exception("outbox listener failed")

    def remove(self, ids: Iterable[str]) -> list[str]:
        """The center acknowledged these: their MQTT part is done; a row goes once no other
        path owes it (else it waits for the DC-09 receiver). Returns the ids that were
        waiting for the center.

        Committed with ``synchronous=NORMAL``: a removal lost to a power cut only means one
        more re-send, which the center acknowledges as a duplicate."""
        wanted = list(ids)
        if not wanted:
            return []
        marks = ",".join("?" * len(wanted))
        with self._relaxed("remove acknowledged rows"):
            rows = self._db.execute(
                f"SELECT id, prio, dc09 FROM outbox WHERE mqtt_done = 0 AND id IN ({marks})",  # noqa: S608 - placeholders only
                wanted,
            ).fetchall()
            found = [r[0] for r in rows]
            self._db.execute(
                f"UPDATE outbox SET mqtt_done = 1 WHERE dc09 = 1 AND id IN ({marks})",  # noqa: S608 - placeholders only
                wanted,
            )
            self._db.execute(f"DELETE FROM outbox WHERE dc09 = 0 AND id IN ({marks})", wanted)  # noqa: S608 - placeholders only
        self._telemetry -= sum(1 for r in rows if r[1] >= 2 and not r[2])
        return found

    def mark_dc09_delivered(self, event_id: str) -> bool:
        """The DC-09 receiver acknowledged ``event_id``: the row goes if the center has it
        too. Returns whether it was owed to DC-09. ``synchronous=NORMAL``, like ``remove``: a
        mark lost to a power cut means one more frame, which a receiver takes as a repeat."""
        with self._relaxed(f"mark {event_id} delivered over DC-09"):
            row = self._db.execute(
                "SELECT prio, mqtt_done FROM outbox WHERE id = ? AND dc09 = 1", (event_id,)
            ).fetchone()
            if row is not None and row[1]:
                self._db.execute("DELETE FROM outbox WHERE id = ?", (event_id,))
            elif row is not None:
                self._db.execute("UPDATE outbox SET dc09 = 0 WHERE id = ?", (event_id,))
        if row is not None and row[1] and row[0] >= 2:
            self._telemetry -= 1
        return row is not None

    def add_raw(self, p: Pending) -> None:
        """Commit an already signed envelope kept in memory (after a refused commit)."""
        try:
            self._db.execute(
                "INSERT OR IGNORE INTO outbox (id, type, prio, seq, payload, created, dc09) "
                "VALUES (?,?,?,?,?,?,?)",
                (
                    p.id,
                    p.type,
                    PRIORITY[p.type],
                    p.seq,
                    p.payload,
                    p.created,
                    p.type in self.dc09_types,
                ),
            )
        except sqlite3.Error as err:
            raise OutboxError(f"{self.path}: cannot commit {p.type} {p.id}: {err}") from err
        if PRIORITY[p.type] >= 2:
            self._telemetry += 1
        self._tell_listeners()

    def replace_payloads(self, rows: Iterable[Pending]) -> None:
        """Store re-signed envelopes (same id, new seq) in place of the queued ones, in one
        transaction. Committed with ``synchronous=NORMAL``: if a power cut loses it, the
        event is still queued under its old signature and is simply re-signed again (a
        fresh seq; the center knows the id)."""
        with self._relaxed("store re-signed events"):
            self._db.executemany(
                "UPDATE outbox SET seq = ?, payload = ? WHERE id = ?",
                [(p.seq, p.payload, p.id) for p in rows],
            )

    @contextlib.contextmanager
    def _relaxed(self, what: str) -> Iterator[None]:
        """One transaction committed with ``synchronous=NORMAL``, for writes a power cut may
        undo without losing an event; OutboxError saying ``cannot <what>`` on failure."""
        try:
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            yield
            self._db.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            raise OutboxError(f"{self.path}: cannot {what}: {err}") from err
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA synchronous=FULL")

    def note_attempt(self, event_id: str, error: str | None = None) -> None:
        """Count a publish attempt (and its error). Not critical: NORMAL durability is fine."""
        try:
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                (error, event_id),
            )
        except sqlite3.Error as err:
            raise OutboxError(f"{self.path}: cannot update {event_id}: {err}") from err

    def incr(self, key: str) -> int:
        """Durably increment a named counter (e.g. the MQTT session) and return the new value."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO kv (k, v) VALUES (?, 1) ON CONFLICT(k) DO UPDATE SET v = v + 1", (key,)
            )
            (value,) = self._db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
            self._db.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            raise OutboxError(f"{self.path}: cannot update counter {key}: {err}") from err
        return int(value)

    def get_counter(self, key: str) -> int | None:
        """A named durable value (``incr``, ``set_counter``); None if never set."""
        row = self._db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def set_counter(self, key: str, value: int) -> None:
        """Durably set a named value (e.g. whether a trouble is open)."""
        try:
            self._db.execute(
                "INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                (key, value),
            )
        except sqlite3.Error as err:
            raise OutboxError(f"{self.path}: cannot update counter {key}: {err}") from err

    def dedupe_lookup(self, key: str, *, window_s: float, now: float | None = None) -> str | None:
        """The event id stored under ``key`` within the last ``window_s`` seconds, if any."""
        at = time.time() if now is None else now
        row = self._db.execute("SELECT event_id, at FROM dedupe WHERE key = ?", (key,)).fetchone()
        # A row "from the future" means the wall clock went back: still recent (dedupe rather
        # than raise a second alarm for one press).
        if row is None or row[1] < at - window_s:
            return None
        return str(row[0])

    def forget_dedupe(self, prefix: str, *, older_than: float | None = None) -> None:
        """Drop dedupe keys starting with ``prefix`` (all of them, or those older than a time)."""
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        sql = "DELETE FROM dedupe WHERE key LIKE ? ESCAPE '\\'"
        args: tuple[object, ...] = (pattern,)
        if older_than is not None:
            sql += " AND at < ?"
            args = (pattern, older_than)
        self._db.execute(sql, args)

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # no transaction open: nothing to undo
            self._db.execute("ROLLBACK")

    # -- reads ------------------------------------------------------------------------

    def pending(self, limit: int = 100, exclude: Iterable[str] = ()) -> list[Pending]:
        """Queued envelopes in send order (alarms first, then oldest first)."""
        skip = set(exclude)
        rows = self._db.execute(
            _COLS + " WHERE mqtt_done = 0 ORDER BY prio, created, seq LIMIT ?",
            (limit + len(skip),),
        ).fetchall()
        out = [
            Pending(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6])
            for r in rows
            if r[0] not in skip
        ]
        return out[:limit]

    def after(self, key: tuple[int, float, int] | None, limit: int) -> list[Pending]:
        """Queued envelopes in send order strictly after ``key`` = (prio, created, seq)
        (from the start when None): the pump's cursor through a large backlog."""
        order = " ORDER BY prio, created, seq LIMIT ?"
        if key is None:
            rows = self._db.execute(_COLS + " WHERE mqtt_done = 0" + order, (limit,)).fetchall()
        else:
            rows = self._db.execute(
                _COLS + " WHERE mqtt_done = 0 AND (prio, created, seq) > (?, ?, ?)" + order,
                (*key, limit),
            ).fetchall()
        return [Pending(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6]) for r in rows]

    def get(self, event_id: str) -> Pending | None:
        r = self._db.execute(_COLS + " WHERE id = ? AND mqtt_done = 0", (event_id,)).fetchone()
        return None if r is None else Pending(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6])

    def count(self) -> int:
        """Rows waiting for the center's ack."""
        (n,) = self._db.execute("SELECT COUNT(*) FROM outbox WHERE mqtt_done = 0").fetchone()
        return int(n)

    def pending_dc09(self, limit: int = 1) -> list[Pending]:
        """Rows the DC-09 receiver has not acknowledged, in send order."""
        rows = self._db.execute(
            _COLS + " WHERE dc09 = 1 ORDER BY prio, created, seq LIMIT ?", (limit,)
        ).fetchall()
        return [Pending(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6]) for r in rows]

    def owes_dc09(self, event_id: str) -> bool:
        """Whether ``event_id`` is queued and waiting for the DC-09 receiver's ACK."""
        row = self._db.execute(
            "SELECT 1 FROM outbox WHERE id = ? AND dc09 = 1", (event_id,)
        ).fetchone()
        return row is not None

    def count_dc09(self) -> int:
        """Rows waiting for the DC-09 receiver's ACK."""
        (n,) = self._db.execute("SELECT COUNT(*) FROM outbox WHERE dc09 = 1").fetchone()
        return int(n)

    def summary(self) -> dict[str, dict[str, float | int | str | None]]:
        """Per type, of the events the center still owes an ack (as ``/status`` counts
        them; rows only the DC-09 receiver owes are not here): pending count, oldest
        creation time, last error."""
        out: dict[str, dict[str, float | int | str | None]] = {}
        for kind, n, oldest in self._db.execute(
            "SELECT type, COUNT(*), MIN(created) FROM outbox WHERE mqtt_done = 0 GROUP BY type"
        ):
            err = self._db.execute(
                "SELECT last_error FROM outbox WHERE type = ? AND mqtt_done = 0 "
                "AND last_error IS NOT NULL ORDER BY created DESC LIMIT 1",
                (kind,),
            ).fetchone()
            out[kind] = {"pending": n, "oldest": oldest, "last_error": err[0] if err else None}
        return out
