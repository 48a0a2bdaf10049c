"""Supervision of the daemon's long-running loops (issue 5 "Supervised loops").

Each loop (uplink, outbox pump, each input, each monitor) runs under ``Supervisor.run``: when
it dies (an exception) or returns, it is restarted after a short, growing delay and the
restart is logged and counted; when it reports progress through a ``tick`` callable and that
tick grows older than ``stall_s``, it is cancelled and restarted the same way. A stuck event
loop cannot be seen from inside; that is what the systemd watchdog is for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("alarmgw.supervise")


class Supervisor:
    """Restarts loops that die or stall; ``restarts`` and ``last_failure`` per loop name."""

    def __init__(self, *, first_delay_s: float = 0.5, max_delay_s: float = 30.0) -> None:
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
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
        loop = asyncio.get_running_loop()
        delay = self.first_delay_s
        while True:
            started = loop.time()
            task: asyncio.Task[None] = asyncio.ensure_future(factory())
            task.set_name(name)
            self.running[name] = task
            why = await self._watch(task, tick, stall_s)
            self.restarts[name] += 1
            self.last_failure[name] = why
            log.error("loop restarted", loop=name, why=why, restarts=self.restarts[name])
            if loop.time() - started > 60:
                delay = self.first_delay_s  # it ran well for a while: not a crash loop
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_delay_s)

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
