"""Bounds on the local HTTP endpoint's connections, so that idle or half-sent connections
cannot use up the daemon's file descriptors (which the alarm path needs to reconnect).

``GuardedConnections`` wraps the protocol factory of an aiohttp ``web.Server``
(``web.AppRunner.server``) for ``loop.create_server``:

- at most ``limit`` connections are open; one more evicts the oldest, so an endpoint
  flooded with idle connections still answers the next honest request;
- a connection that sends nothing within ``first_byte_s`` is closed;
- no connection lives longer than ``max_life_s`` (a half-sent request never ends by itself;
  the longest honest request, ``GET /events/{id}?wait=30``, fits well inside).

Idle keep-alive connections between requests are aiohttp's ``keepalive_timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class GuardedConnections:
    """A protocol factory: ``loop.create_server(GuardedConnections(runner.server), ...)``."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        *,
        limit: int,
        first_byte_s: float,
        max_life_s: float,
    ) -> None:
        self._factory = factory
        self.limit = limit
        self.first_byte_s = first_byte_s
        self.max_life_s = max_life_s
        # Open connections, oldest first (dicts keep insertion order).
        self.open: dict[_Guarded, None] = {}
        self.evicted = 0

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self, self._factory())

    def admit(self, conn: _Guarded) -> None:
        while len(self.open) >= self.limit:
            oldest = next(iter(self.open))
            self.open.pop(oldest)
            self.evicted += 1
            oldest.abort()
        self.open[conn] = None

    def close_all(self) -> None:
        for conn in list(self.open):
            conn.abort()
        self.open.clear()


class _Guarded(asyncio.Protocol):
    """One connection: the aiohttp handler behind a guard that can cut it off."""

    def __init__(self, guard: GuardedConnections, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.BaseTransport | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._heard = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        loop = asyncio.get_running_loop()
        self._timers = [
            loop.call_later(self._guard.first_byte_s, self._silent),
            loop.call_later(self._guard.max_life_s, self.abort),
        ]
        self._guard.admit(self)
        self._inner.connection_made(transport)

    def _silent(self) -> None:
        if not self._heard:
            self.abort()

    def abort(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            # abort(), not close(): nothing is flushed to a peer that is not reading.
            if isinstance(transport, asyncio.Transport):
                transport.abort()
            else:
                transport.close()

    def data_received(self, data: bytes) -> None:
        self._heard = True
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in self._timers:
            timer.cancel()
        self._guard.open.pop(self, None)
        self._inner.connection_lost(exc)

    def __getattr__(self, name: str) -> Any:
        # Anything else a transport or aiohttp asks of the protocol is the handler's.
        return getattr(self._inner, name)
