"""Test helpers for GPIO inputs: a manual clock, letting thread hand-overs run, and a short
directory for unix sockets (the fake sink and waiting live in tests/helpers.py)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import WAIT_S, FakeSink, RecordedAlarm, wait_until

__all__ = ["WAIT_S", "FakeClock", "FakeSink", "RecordedAlarm", "drain", "socket_dir", "wait_until"]


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def drain(rounds: int = 5) -> None:
    """Let callbacks handed over with call_soon_threadsafe run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


@contextmanager
def socket_dir() -> Iterator[Path]:
    """A short temporary directory: unix socket paths are limited to about 100 bytes,
    which pytest's tmp_path can exceed."""
    path = Path(tempfile.mkdtemp(prefix="agw-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
