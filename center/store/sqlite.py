"""The embedded store: one SQLite file (WAL, synchronous=FULL), for one center instance."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from center.store.base import StoreError
from center.store.schema import DIALECTS
from center.store.sql import SqlStore
from gateway.contract.envelope import Envelope
from gateway.private_files import private_file


class SqliteStore(SqlStore):
    """The store in one SQLite file; a transaction is ``BEGIN IMMEDIATE`` ... ``COMMIT``."""

    dialect = "sqlite"
    words: ClassVar[Mapping[str, str]] = {"max": "MAX", "skip_locked": "", **DIALECTS["sqlite"]}

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            private_file(path, "center store")  # 0600, and so its -wal and -shm files
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")  # the CLI and the service share it
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"cannot open the SQLite store {path}: {err}") from None
        self.migrate()

    def close(self) -> None:
        self._db.close()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._db.execute(sql, params)

    def _run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return int(self._db.executemany(sql, rows).rowcount)

    def _begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def _end(self, commit: bool) -> None:
        if self._db.in_transaction:
            self._db.execute("COMMIT" if commit else "ROLLBACK")

    def _lock_for_migration(self) -> None:
        """``BEGIN IMMEDIATE`` already holds the write lock."""

    def _wrap(self, err: Exception) -> StoreError | None:
        if isinstance(err, StoreError):
            return err
        if isinstance(err, sqlite3.Error):
            return StoreError(f"SQLite store {self.path}: {err}")
        return None

    def accept(self, env: Envelope) -> None:
        """Record an envelope as accepted without the checks (a test's shortcut)."""
        self.admit(env, received=0.0)
