"""A device's HTTP status document, served by aiohttp on loopback, with faults on demand.

The bollard controller and the recorder simulators (firmware_sim/bollard.py, nvr.py) serve
``GET <path>`` through ``StatusServer``. Besides the real document it can answer with an error
status, with garbage (each request the next of several kinds of wrong), slowly, not at all
(``hang``: the request stays open until the mode changes), or stop listening (``down``:
connection refused) and come back on the same port (``up``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiohttp import web

from firmware_sim.script import seconds

MODES = ("ok", "error", "garbage", "hang")
GARBAGE: tuple[tuple[bytes, str], ...] = (
    (b"<html><body>502 Bad Gateway</body></html>", "text/html"),
    (b'{"truncated": ', "application/json"),
    (b"[1, 2, 3]", "application/json"),
    (b'{"state": 42, "recording": "yes", "retention_days": "many"}', "application/json"),
    (b"NaN", "application/json"),
    (bytes(range(0x80, 0x90)), "application/octet-stream"),
)


class StatusServer:
    """Serves ``document()`` as JSON on ``http://host:port/path`` (port 0: a free one,
    kept across ``down``/``up``)."""

    def __init__(
        self,
        document: Callable[[], dict[str, Any]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/status",
    ) -> None:
        self._document = document
        self.host, self.port, self.path = host, port, path
        self.mode = "ok"
        self.error_status = 500
        self.delay_s = 0.0
        self.requests = 0
        self._garbage = 0
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def listening(self) -> bool:
        return self._runner is not None

    def set_mode(self, mode: str, *, status: int | None = None) -> None:
        """``ok``, ``error`` (with HTTP ``status``, default 500), ``garbage`` or ``hang``."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if status is not None:
            if not 100 <= status <= 599:
                raise ValueError(f"HTTP status must be 100..599, got {status}")
            self.error_status = status
        self.mode = mode
        self._changed.set()  # releases hanging requests
        self._changed = asyncio.Event()

    async def start(self) -> None:
        """Listen (again). Idempotent."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get(self.path, self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        if self.port == 0:
            self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening: requests are refused until ``start`` (``up``). Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self._changed.set()
            await runner.cleanup()

    async def _handle(self, _request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        while self.mode == "hang":
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await changed.wait()
            if self._runner is None:
                break
        if self.mode == "error":
            return web.json_response({"error": "simulated"}, status=self.error_status)
        if self.mode == "garbage":
            body, content_type = GARBAGE[self._garbage % len(GARBAGE)]
            self._garbage += 1
            return web.Response(body=body, content_type=content_type)
        return web.json_response(self._document())


async def http_command(server: StatusServer, words: list[str]) -> str:
    """The shared commands: ``ok``, ``error [STATUS]``, ``garbage``, ``hang``, ``slow S``,
    ``down``, ``up``. ValueError for anything else."""
    verb, args = words[0], words[1:]
    if verb in ("ok", "garbage", "hang") and not args:
        server.set_mode(verb)
        return f"http {verb}"
    if verb == "error" and len(args) <= 1:
        status = int(args[0]) if args and args[0].isdigit() else None
        if args and status is None:
            raise ValueError(f"error: expected an HTTP status, got {args[0]!r}")
        server.set_mode("error", status=status)
        return f"http error {server.error_status}"
    if verb == "slow" and len(args) == 1:
        server.delay_s = seconds(args[0])
        return f"http answers after {server.delay_s:g} s"
    if verb == "down" and not args:
        await server.stop()
        return "http down (connection refused)"
    if verb == "up" and not args:
        await server.start()
        return f"http up {server.url}"
    raise ValueError(f"unknown command {' '.join(words)!r}")
