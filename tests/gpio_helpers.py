"""Test helpers for GPIO inputs: an in-memory AlarmSink, a manual clock, waiting without
tight timing assertions, and a short directory for unix sockets."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gateway.feedback import Feedback, Raised

# Generous on purpose: the test machine is shared and noisy. A test waits up to this long
# for something that should happen; it never asserts that something happened *quickly*.
WAIT_S = 10.0


@dataclass(frozen=True)
class RecordedAlarm:
    input_ref: str
    feedback: Feedback | None
    code: str
    kind: str
    test: bool


@dataclass
class FakeSink:
    """Records alarms; like the real sink it sets the presser's LED to ``blink`` once the
    alarm is "durable" (gateway/feedback.py). ``fail`` makes raise_alarm raise."""

    alarms: list[RecordedAlarm] = field(default_factory=list)
    fail: Exception | None = None
    forgotten: list[str] = field(default_factory=list)

    def raise_alarm(
        self,
        *,
        input_ref: str,
        feedback: Feedback | None,
        code: str = "120",
        kind: str = "panic",
        test: bool = False,
        dedupe_key: str | None = None,
        dedupe_window_s: float = 30.0,
    ) -> Raised:
        if self.fail is not None:
            raise self.fail
        self.alarms.append(RecordedAlarm(input_ref, feedback, code, kind, test))
        if feedback is not None:
            feedback.led("blink")
        return Raised(event_id=f"evt-{len(self.alarms)}", new=True)

    def forget_dedupe(self, prefix: str) -> None:
        self.forgotten.append(prefix)


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


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
