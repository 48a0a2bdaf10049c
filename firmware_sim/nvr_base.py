"""What the vendor recorder simulators share (``alarmgw-sim nvr --kind onvif|hikvision``).

``Recorder`` is the recorder's state: channels 1..N, each with its retention (days of data
held) and whether it records, disks, and the one user it accepts. ``VendorServer`` serves a
vendor's routes on loopback with aiohttp and the faults every simulator offers: an error
status, garbage, slowness, hanging, not listening (``down``/``up``).

Commands (besides ``ok``, ``error [STATUS]``, ``garbage``, ``hang``, ``slow S``, ``down``,
``up``): ``retention DAYS [CH]``, ``recording on|off [CH]`` (off: the channel's newest data
is an hour old), ``disk N ok|failed|full``, ``password NEW`` (the recorder's password: the
gateway's is now wrong), ``channels N``. Without CH a command applies to every channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from firmware_sim.script import seconds

MODES = ("ok", "error", "garbage", "hang")
STOPPED_AGO_S = 3600.0  # "recording off": the newest data is this old
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Channel:
    retention_days: float
    stopped_at: float | None = None  # wall time of the newest data when not recording

    def earliest(self, now: float) -> float:
        return now - self.retention_days * 86400

    def latest(self, now: float) -> float:
        return now if self.stopped_at is None else min(now, self.stopped_at)


@dataclass
class Disk:
    state: str = "ok"  # ok, failed (error), full
    capacity_mb: int = 3_815_447
    free_mb: int = 0  # an overwriting recorder keeps its disks full


@dataclass
class Recorder:
    """A recorder's state, shared by a vendor's routes and the commands."""

    user: str = "admin"
    password: str = "admin12345"  # noqa: S105 - a simulator's default
    channels: dict[str, Channel] = field(default_factory=dict)
    disks: list[Disk] = field(default_factory=lambda: [Disk(), Disk()])

    @classmethod
    def with_channels(
        cls,
        count: int,
        retention_days: float,
        *,
        user: str = "admin",
        password: str = "admin12345",  # noqa: S107 - a simulator's default
    ) -> Recorder:
        rec = cls(user=user, password=password)
        rec.channels = {str(n): Channel(retention_days) for n in range(1, count + 1)}
        return rec

    @staticmethod
    def _where(words: list[str]) -> str:
        return f"channel {words[0]}" if words else "every channel"

    def _pick(self, words: list[str]) -> list[Channel]:
        if not words:
            return list(self.channels.values())
        if len(words) != 1 or words[0] not in self.channels:
            raise ValueError(f"no channel {' '.join(words)!r} (1..{len(self.channels)})")
        return [self.channels[words[0]]]

    def command(self, words: list[str]) -> str | None:
        """Perform a recorder command; None when it is not one."""
        verb, args = words[0], words[1:]
        if verb == "retention" and 1 <= len(args) <= 2:
            try:
                days = float(args[0])
            except ValueError:
                days = math.nan
            if not (math.isfinite(days) and days >= 0):
                raise ValueError(f"retention: expected days >= 0, got {args[0]!r}")
            for ch in self._pick(args[1:]):
                ch.retention_days = days
            return f"retention {days:g} days on {self._where(args[1:])}"
        if verb == "recording" and 1 <= len(args) <= 2 and args[0] in ("on", "off"):
            for ch in self._pick(args[1:]):
                if args[0] == "on":
                    ch.stopped_at = None
                elif ch.stopped_at is None:
                    ch.stopped_at = time.time() - STOPPED_AGO_S
            return f"recording {args[0]} on {self._where(args[1:])}"
        if verb == "disk" and len(args) == 2 and args[1] in ("ok", "failed", "full"):
            if not (args[0].isdigit() and 1 <= int(args[0]) <= len(self.disks)):
                raise ValueError(f"no disk {args[0]!r} (1..{len(self.disks)})")
            self.disks[int(args[0]) - 1].state = args[1]
            return f"disk {args[0]} {args[1]}"
        if verb == "password" and len(args) == 1:
            self.password = args[0]
            return "password changed"
        if verb == "channels" and len(args) == 1 and args[0].isdigit():
            days = min((c.retention_days for c in self.channels.values()), default=34.0)
            count = int(args[0])
            self.channels = {
                str(n): self.channels.get(str(n), Channel(days)) for n in range(1, count + 1)
            }
            return f"{count} channels"
        return None


class VendorServer:
    """aiohttp routes on ``http://host:port`` (0: a free port, kept across down/up), with
    the shared faults applied in front of every route."""

    def __init__(
        self,
        routes: list[tuple[str, str, Handler]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        garbage: tuple[tuple[bytes, str], ...],
    ) -> None:
        self._routes = routes
        self.host, self.port = host, port
        self.garbage = garbage
        self.mode = "ok"
        self.error_status = 500
        self.delay_s = 0.0
        self.requests = 0
        self._garbage = 0
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def set_mode(self, mode: str, *, status: int | None = None) -> None:
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
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._faults])
        for method, path, handler in self._routes:
            app.router.add_route(method, path, handler)
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
        runner, self._runner = self._runner, None
        if runner is not None:
            self._changed.set()
            await runner.cleanup()

    @web.middleware
    async def _faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
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
            return web.Response(text="simulated error", status=self.error_status)
        if self.mode == "garbage":
            body, content_type = self.garbage[self._garbage % len(self.garbage)]
            self._garbage += 1
            return web.Response(body=body, content_type=content_type)
        return await handler(request)

    async def command(self, words: list[str]) -> str:
        """The shared fault commands; ValueError for anything else."""
        verb, args = words[0], words[1:]
        if verb in ("ok", "garbage", "hang") and not args:
            self.set_mode(verb)
            return f"http {verb}"
        if verb == "error" and len(args) <= 1:
            status = int(args[0]) if args and args[0].isdigit() else None
            if args and status is None:
                raise ValueError(f"error: expected an HTTP status, got {args[0]!r}")
            self.set_mode("error", status=status)
            return f"http error {self.error_status}"
        if verb == "slow" and len(args) == 1:
            self.delay_s = seconds(args[0])
            return f"http answers after {self.delay_s:g} s"
        if verb == "down" and not args:
            await self.stop()
            return "http down (connection refused)"
        if verb == "up" and not args:
            await self.start()
            return f"http up {self.base}"
        raise ValueError(f"unknown command {' '.join(words)!r}")
