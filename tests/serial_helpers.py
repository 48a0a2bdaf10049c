"""Shared helpers for the serial-box tests: a fake alarm sink with real dedupe semantics,
a running ``BoxLink`` as an async context manager, and a line reader for subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable

from gateway.inputs.serial_box import BoxLink
from tests.helpers import FakeSink, SinkCall, wait_until

__all__ = ["FakeSink", "LineReader", "SinkCall", "eventually", "running"]


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
    """``wait_until`` under the name these tests use."""
    await wait_until(predicate, timeout_s, every=0.02)


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
