"""Shared helpers for the serial-box tests: a fake alarm sink with real dedupe semantics,
a running ``BoxLink`` as an async context manager, and a line reader for subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from gateway.feedback import Feedback, Raised
from gateway.inputs.serial_box import BoxLink


@dataclass(frozen=True, slots=True)
class SinkCall:
    input_ref: str
    dedupe_key: str | None
    dedupe_window_s: float
    event_id: str
    new: bool


class FakeSink:
    """An in-memory ``AlarmSink``: records calls, dedupes like the real outbox (same key
    within the window → the earlier id, ``new=False``), calls ``feedback.led("blink")`` once
    "durable". ``fail_next`` makes the next N calls raise, like a full disk."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.calls: list[SinkCall] = []
        self.forgotten: list[str] = []
        self.feedback: dict[str, Feedback] = {}
        self.fail_next = 0
        self._dedupe: dict[str, tuple[str, float]] = {}
        self._ids = itertools.count(1)

    @property
    def new_alarms(self) -> list[SinkCall]:
        return [c for c in self.calls if c.new]

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
        if self.fail_next:
            self.fail_next -= 1
            raise OSError(28, "No space left on device (fake)")
        now = self.clock()
        earlier = self._dedupe.get(dedupe_key) if dedupe_key else None
        if earlier is not None and now - earlier[1] < dedupe_window_s:
            event_id, new = earlier[0], False
        else:
            event_id, new = f"alarm-{next(self._ids)}", True
            if dedupe_key:
                self._dedupe[dedupe_key] = (event_id, now)
        self.calls.append(SinkCall(input_ref, dedupe_key, dedupe_window_s, event_id, new))
        if feedback is not None:
            self.feedback[event_id] = feedback
            feedback.led("blink")
        return Raised(event_id, new)

    def forget_dedupe(self, prefix: str) -> None:
        self.forgotten.append(prefix)
        for key in [k for k in self._dedupe if k.startswith(prefix)]:
            del self._dedupe[key]


@contextlib.asynccontextmanager
async def running(link: BoxLink) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``link.run()`` as a task for the body of the ``async with``; cancel it after."""
    task = asyncio.create_task(link.run(), name=f"box-link-{link.name}")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def eventually(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``predicate`` until it holds (generous timeout: the test machine is shared)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.02)


class LineReader:
    """Reads a subprocess's stdout on a thread so a test can wait for lines with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        stream = proc.stdout

        def pump() -> None:
            for line in stream:
                self._lines.put(line.rstrip("\n"))
            self._lines.put(None)

        self._thread = threading.Thread(target=pump, daemon=True)
        self._thread.start()

    def join(self, timeout_s: float = 5.0) -> None:
        """Wait for the end of output (the process has exited)."""
        self._thread.join(timeout_s)

    def next(self, timeout_s: float = 15.0) -> str | None:
        """The next line, or None at end of output."""
        line = self._lines.get(timeout=timeout_s)
        if line is not None:
            self.seen.append(line)
        return line

    def wait_for(self, predicate: Callable[[str], bool], timeout_s: float = 15.0) -> str:
        """Skip lines until one matches ``predicate``."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching line within {timeout_s} s; saw {self.seen}")
            try:
                line = self.next(left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"output ended; saw {self.seen}")
            if predicate(line):
                return line


def stop_process(
    proc: subprocess.Popen[str], reader: LineReader | None = None, timeout_s: float = 10.0
) -> int:
    """Terminate ``proc`` (then kill it if it hangs), close its pipes, return its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
    if reader is not None:
        reader.join()  # stdout is closed only once the reader thread is done with it
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):  # stdin: a broken pipe on flush
                stream.close()
    return proc.returncode
