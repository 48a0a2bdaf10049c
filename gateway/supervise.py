"""Supervision of the daemon's long-running loops.

Each loop (uplink, outbox pump, each input, each monitor) runs under ``Supervisor.run``: when
it dies (an exception) or returns, it is restarted after a short, growing delay
(``retry.RESTART``) and the restart is logged and counted; when it reports progress through a
``tick`` callable and that tick grows older than ``stall_s``, it is cancelled and restarted
the same way. A stuck event
loop cannot be seen from inside; that is what the systemd watchdog is for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable

import structlog

from gateway import retry

log = structlog.get_logger("alarmgw.supervise")


class LoopEnded(Exception):
    """A supervised loop died, returned or stalled; ``why`` says which."""


# A loop that ran this long before it ended was not crash-looping: it is restarted at once
# and the restart policy starts over.
STABLE_RUN_S = 60.0


class Supervisor:
    """Restarts loops that die or stall; ``restarts`` and ``last_failure`` per loop name.

    The waits between restarts are ``retry.RESTART``'s (jittered exponential); the two
    arguments shorten them for tests."""

    def __init__(
        self, *, first_delay_s: float | None = None, max_delay_s: float | None = None
    ) -> None:
        self.policy = retry.RESTART.limited(first_s=first_delay_s, cap_s=max_delay_s)
        self.restarts: Counter[str] = Counter()
        self.last_failure: dict[str, str] = {}
        self.running: dict[str, asyncio.Task[None]] = {}

    async def run(
        self,
        name: str,
        factory: Callable[[], Awaitable[None]],
        *,
        tick: Callable[[], float] | None = None,
        stall_s: float = 30.0,
    ) -> None:
        """Run ``factory()`` forever under supervision; returns only when cancelled.

        ``tick`` returns the loop time of the loop's last sign of life."""
        while True:
            attempts = self.policy.retrying(
                LoopEnded, log=log, event="loop restart scheduled", loop=name
            )
            async for attempt in attempts:
                with attempt:
                    await self._run_once(name, factory, tick, stall_s)

    async def _run_once(
        self,
        name: str,
        factory: Callable[[], Awaitable[None]],
        tick: Callable[[], float] | None,
        stall_s: float,
    ) -> None:
        """Run the loop until it ends; raise ``LoopEnded`` unless it ran ``STABLE_RUN_S``."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        task: asyncio.Task[None] = asyncio.ensure_future(factory())
        task.set_name(name)
        self.running[name] = task
        why = await self._watch(task, tick, stall_s)
        self.restarts[name] += 1
        self.last_failure[name] = why
        log.error("loop restarted", loop=name, why=why, restarts=self.restarts[name])
        if loop.time() - started < STABLE_RUN_S:
            raise LoopEnded(why)

    async def _watch(
        self, task: asyncio.Task[None], tick: Callable[[], float] | None, stall_s: float
    ) -> str:
        loop = asyncio.get_running_loop()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=1.0)
                if done:
                    if task.cancelled():
                        return "cancelled from inside"
                    err = task.exception()
                    return f"died: {err!r}" if err is not None else "returned"
                if tick is not None:
                    age = loop.time() - tick()
                    if age > stall_s:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
                        return f"stalled: no progress for {age:.0f} s"
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise
