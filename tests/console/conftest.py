"""The center's store fixtures (SQLite and PostgreSQL) for the console's tests."""

from tests.center.conftest import backend, postgres, store

__all__ = ["backend", "postgres", "store"]
