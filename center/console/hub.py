"""Live updates for the console's Server-Sent Events: every connected page gets a short
event (``alarms`` or ``fleet``) when something it shows may have changed, and fetches the
new state itself."""

from __future__ import annotations

import asyncio


class Hub:
    """Fans change notices out to the connected clients (one bounded queue each)."""

    QUEUE_MAX = 16

    def __init__(self) -> None:
        self._clients: set[asyncio.Queue[str]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def clients(self) -> int:
        return len(self._clients)

    def subscribe(self) -> asyncio.Queue[str]:
        q: asyncio.Queue[str] = asyncio.Queue(self.QUEUE_MAX)
        self._clients.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[str]) -> None:
        self._clients.discard(q)

    def notify(self, kind: str) -> None:
        """Safe from any thread."""
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._put, kind)

    def _put(self, kind: str) -> None:
        for q in self._clients:
            if not q.full():  # a slow client misses notices, not the state: it re-fetches
                q.put_nowait(kind)
