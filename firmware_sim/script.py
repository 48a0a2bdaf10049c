"""Scripts and stdin commands for the HTTP-facing simulators (``alarmgw-sim bollard``, ``nvr``).

A script is commands separated by ``;``; then stdin is read, one command per line, until
``quit``, end of input (or, with ``--stay``, until SIGTERM/SIGINT). ``wait S`` pauses. Each
simulator supplies ``execute(words) -> str`` that performs one command and says what it did,
or raises ValueError naming what is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Awaitable, Callable

Execute = Callable[[list[str]], Awaitable[str]]


def split_script(text: str) -> list[list[str]]:
    """``"down; wait 2; up"`` → ``[["down"], ["wait", "2"], ["up"]]`` (comments after ``#``)."""
    return [words for part in text.split(";") if (words := part.split("#", 1)[0].split())]


def seconds(word: str) -> float:
    """A non-negative number of seconds; ValueError otherwise."""
    try:
        value = float(word)
    except ValueError:
        raise ValueError(f"expected seconds, got {word!r}") from None
    if not 0 <= value <= 86_400:
        raise ValueError(f"seconds out of range: {word}")
    return value


async def run_commands(
    execute: Execute, script: list[list[str]], *, stay: bool, say: Callable[[str], None]
) -> None:
    """Run ``script``, then stdin's commands, until ``quit``, end of input or a signal."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    # A daemon thread, not to_thread: a blocking readline must not hold up the exit.
    threading.Thread(target=_read_stdin, args=(loop, lines), daemon=True).start()

    async def one(words: list[str]) -> bool:
        if words[0] == "quit":
            return False
        try:
            if words[0] == "wait" and len(words) == 2:
                await asyncio.sleep(seconds(words[1]))
                return True
            say(await execute(words))
        except ValueError as err:
            say(f"error {err}")
        return True

    async def commands() -> None:
        for words in script:
            if not await one(words):
                return
        while (line := await lines.get()) is not None:
            words = line.split("#", 1)[0].split()
            if words and not await one(words):
                return
        if stay:
            await stop.wait()

    runner = asyncio.create_task(commands())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (runner, stopper):
            task.cancel()
        await asyncio.gather(runner, stopper, return_exceptions=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _read_stdin(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed first: nobody wants the rest
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)
