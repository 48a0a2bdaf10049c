"""The center's storage: ``open_store`` picks the backend from the config."""

from __future__ import annotations

from pathlib import Path

from center.store.base import (
    WINDOW,
    Admission,
    Arrival,
    OutboxItem,
    SchemaTooNew,
    Store,
    StoreError,
)

__all__ = [
    "WINDOW",
    "Admission",
    "Arrival",
    "OutboxItem",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "open_store",
]


def open_store(kind: str, *, state_dir: Path, dsn: str | None = None) -> Store:
    """``sqlite`` (``state_dir/center.sqlite``) or ``postgresql`` (``dsn``); migrated."""
    if kind == "postgresql":
        from center.store.postgres import PostgresStore  # noqa: PLC0415 - psycopg only if used

        if not dsn:
            raise StoreError('store = postgresql needs dsn = "postgresql://..."')
        return PostgresStore(dsn)
    from center.store.sqlite import SqliteStore  # noqa: PLC0415

    return SqliteStore(state_dir / "center.sqlite")
