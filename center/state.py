"""The reference center's durable anti-replay and de-duplication state (SQLite): which
(kid, seq, id) it accepted inside each signer's 65,536-seq window (shared/spec/PROTOCOL.md
"Delivery semantics"), each signer's highest seq, and each gateway's latest session."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from gateway.contract.envelope import Envelope

WINDOW = 65_536  # PROTOCOL.md: the center remembers which of the 65,536 seqs below the top it saw

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accepted (
    kid TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (kid, seq)
);
CREATE INDEX IF NOT EXISTS accepted_id ON accepted (id);
CREATE TABLE IF NOT EXISTS signer (kid TEXT PRIMARY KEY, high INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS gateway_state (
    site TEXT NOT NULL, gw TEXT NOT NULL, session INTEGER NOT NULL, status TEXT NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (site, gw)
);
"""


class CenterState:
    """Anti-replay and de-duplication state in SQLite (survives restarts).

    Per envelope it costs one lookup and one insert; the signer's high-water mark is kept in
    memory as well, and written (with the pruning of rows below the window) once per commit."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._in_batch = False
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._high: dict[str, int] = {}  # kid -> highest accepted seq (as in table signer)
        self._dirty: set[str] = set()  # kids whose high moved in the open transaction

    def close(self) -> None:
        self._db.close()

    def lookup(self, kid: str, seq: int, event_id: str) -> tuple[str | None, bool]:
        """(id accepted under this kid and seq or None, whether this id was accepted from
        this kid under any seq) in one statement."""
        by_seq: str | None = None
        id_seen = False
        for found, same_id in self._db.execute(
            "SELECT id, 0 FROM accepted WHERE kid = ?1 AND seq = ?2 "
            "UNION ALL SELECT id, 1 FROM accepted WHERE id = ?3 AND kid = ?1",
            (kid, seq, event_id),
        ):
            if same_id:
                id_seen = True
            else:
                by_seq = str(found)
        return by_seq, id_seen

    def high(self, kid: str) -> int:
        high = self._high.get(kid)
        if high is None:
            row = self._db.execute("SELECT high FROM signer WHERE kid = ?", (kid,)).fetchone()
            high = self._high[kid] = 0 if row is None else int(row[0])
        return high

    def begin_batch(self) -> None:
        """Open one transaction for a burst of envelopes (group commit): ``accept`` then
        writes into it and ``commit_batch`` makes all of them durable with one sync."""
        if not self._in_batch:
            self._db.execute("BEGIN IMMEDIATE")
            self._in_batch = True

    def commit_batch(self) -> None:
        if self._in_batch:
            self._in_batch = False
            self._commit()

    def abort_batch(self) -> None:
        self._in_batch = False
        self._rollback()

    def accept(self, env: Envelope) -> None:
        """Record (kid, seq, id); durable at once, or with the open batch's commit (the
        center acknowledges only after that)."""
        if self._in_batch:
            self._record(env)
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._record(env)
        except sqlite3.Error:
            self._rollback()
            raise
        self._commit()

    def _record(self, env: Envelope) -> None:
        self._db.execute(
            "INSERT INTO accepted (kid, seq, id, type, at) VALUES (?,?,?,?,?)",
            (env.kid, env.seq, env.id, env.type, time.time()),
        )
        if env.seq > self.high(env.kid):
            self._high[env.kid] = env.seq
            self._dirty.add(env.kid)

    def _commit(self) -> None:
        try:
            for kid in self._dirty:
                high = self._high[kid]
                self._db.execute(
                    "INSERT INTO signer (kid, high) VALUES (?, ?) "
                    "ON CONFLICT(kid) DO UPDATE SET high = MAX(high, excluded.high)",
                    (kid, high),
                )
                # Rows below the window can never matter again (those seqs are rejected).
                self._db.execute(
                    "DELETE FROM accepted WHERE kid = ? AND seq <= ?", (kid, high - WINDOW)
                )
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._rollback()
            raise
        self._dirty.clear()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._high.clear()  # re-read from the table: the moves were not committed
        self._dirty.clear()

    def session(self, site: str, gw: str) -> int:
        row = self._db.execute(
            "SELECT session FROM gateway_state WHERE site = ? AND gw = ?", (site, gw)
        ).fetchone()
        return -1 if row is None else int(row[0])

    def set_state(self, site: str, gw: str, session: int, status: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO gateway_state (site, gw, session, status, at) "
            "VALUES (?,?,?,?,?)",
            (site, gw, session, status, time.time()),
        )
