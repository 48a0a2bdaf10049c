"""Rescuing the queued events of an outbox file that failed its integrity check.

A damaged index leaves the rows themselves readable: the ``outbox`` table is read by rowid
with ``NOT INDEXED`` (never through an index), one row at a time, so one unreadable row
costs that row only. A row is kept when its payload is still a well-formed envelope of the
id and type the row says; the rest are counted as lost. The dedupe keys and counters are
copied the same way, best effort. Pure Python: no ``sqlite3`` command-line tool needed.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import structlog

from gateway.contract.envelope import parse
from gateway.errors import EnvelopeError

log = structlog.get_logger("alarmgw.outbox")

MAX_READ_ERRORS = 1000  # a file this broken gives up the rest of its rows
_ROW = (
    "SELECT rowid, id, type, prio, seq, payload, created, attempts, last_error, {extra} "
    "FROM outbox NOT INDEXED WHERE rowid > ? ORDER BY rowid LIMIT 1"
)


@dataclass(frozen=True, slots=True)
class Salvage:
    """What came over from a corrupt outbox: rows saved, rows known to be lost."""

    saved: int
    lost: int
    by_type: dict[str, int]


def salvage(source: Path, target: sqlite3.Connection, dc09_types: frozenset[str]) -> Salvage:
    """Copy every readable queued row of the outbox file ``source`` (opened read-only) into
    ``target`` (a sound outbox), in one transaction; ``source`` is not changed."""
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    except sqlite3.Error as err:
        log.error("corrupt outbox cannot be opened for salvage", path=str(source), error=str(err))
        return Salvage(0, 0, {})
    try:
        return _copy(src, target, dc09_types)
    finally:
        src.close()


def _columns(src: sqlite3.Connection) -> set[str]:
    try:
        return {str(row[1]) for row in src.execute("PRAGMA table_info(outbox)")}
    except sqlite3.Error:
        return set()


def _copy(src: sqlite3.Connection, dst: sqlite3.Connection, dc09_types: frozenset[str]) -> Salvage:
    have = _columns(src)
    if "payload" not in have:
        return Salvage(0, 0, {})
    # Per-path columns of files written by older releases may be missing: their defaults.
    extra = ", ".join(c if c in have else "0" for c in ("mqtt_done", "dc09"))
    query = _ROW.format(extra=extra)
    saved, lost, errors, last = 0, 0, 0, 0
    by_type: dict[str, int] = {}
    dst.execute("BEGIN IMMEDIATE")
    try:
        while errors < MAX_READ_ERRORS:
            try:
                row = src.execute(query, (last,)).fetchone()
            except sqlite3.Error:
                # This rowid (or the page under it) cannot be read: skip past it.
                errors += 1
                lost += 1
                last += 1
                continue
            if row is None:
                break
            last = int(row[0])
            if _keep(dst, row[1:], dc09_types):
                saved += 1
                by_type[str(row[2])] = by_type.get(str(row[2]), 0) + 1
            else:
                lost += 1
        for table, cols in (("dedupe", "key, event_id, at"), ("kv", "k, v")):
            _copy_small(src, dst, table, cols)
        dst.execute("COMMIT")
    except sqlite3.Error:
        with contextlib.suppress(sqlite3.Error):
            dst.execute("ROLLBACK")
        raise
    return Salvage(saved, lost, by_type)


def _keep(dst: sqlite3.Connection, row: tuple[object, ...], dc09_types: frozenset[str]) -> bool:
    """Insert one salvaged row if its payload is still the envelope the row names."""
    event_id, kind, prio, seq, payload, created, attempts, last_error, mqtt_done, dc09 = row
    if not isinstance(payload, bytes | str):
        return False
    try:
        env = parse(payload)
    except (EnvelopeError, ValueError):
        return False
    if (env.id, env.type, env.seq) != (event_id, kind, seq):
        return False
    dst.execute(
        "INSERT OR IGNORE INTO outbox (id, type, prio, seq, payload, created, attempts, "
        "last_error, mqtt_done, dc09) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (
            event_id,
            kind,
            prio,
            seq,
            payload if isinstance(payload, bytes) else payload.encode(),
            created,
            attempts,
            last_error,
            mqtt_done,
            1 if dc09 and kind in dc09_types else 0,
        ),
    )
    return True


def _copy_small(src: sqlite3.Connection, dst: sqlite3.Connection, table: str, cols: str) -> None:
    """Best effort: the dedupe keys and counters (a loss costs a repeat, not an alarm)."""
    marks = ",".join("?" * len(cols.split(",")))
    try:
        rows = src.execute(f"SELECT {cols} FROM {table} NOT INDEXED").fetchall()  # noqa: S608 - fixed names
    except sqlite3.Error:
        return
    with contextlib.suppress(sqlite3.Error):
        dst.executemany(f"INSERT OR IGNORE INTO {table} ({cols}) VALUES ({marks})", rows)  # noqa: S608
