"""Fixtures of the center's tests: a PostgreSQL server for the session, and a store of each
backend (the same contract tests run against both)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from center.store import Store, open_store
from tests import pg


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg.Postgres]:
    if not pg.available() and os.geteuid() != 0:
        pytest.skip("PostgreSQL is not installed and we are not root to install it")
    server = pg.Postgres()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, object]:
    """What ``open_store`` needs for one backend (a fresh database each time)."""
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres")
        return {"kind": "postgresql", "state_dir": tmp_path, "dsn": server.new_database()}
    return {"kind": "sqlite", "state_dir": tmp_path, "dsn": None}


@pytest.fixture
def store(backend: dict[str, object]) -> Iterator[Store]:
    opened = open_store(**backend)  # type: ignore[arg-type]
    try:
        yield opened
    finally:
        opened.close()
