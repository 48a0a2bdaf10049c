"""The command center's view of which gateways are alive (PROTOCOL.md "Delivery
semantics", offline detection).

A gateway is ``online`` once a heartbeat or its ``online`` state arrived; ``stale`` when no
heartbeat came within 2.5 x its heartbeat interval (a hung gateway or a path that lost its
messages: the broker has not noticed anything yet); ``offline`` when its ``offline`` state
arrived (the will on a broken connection, or a clean stop). Only news counts: the center
passes states here only when they are not from an older session than the latest seen (a late
will must not mark a live gateway offline), and heartbeats with whether their session is
current. No I/O; times come from ``clock``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

STALE_INTERVALS = 2.5  # PROTOCOL.md: stale when no heartbeat arrived within 2.5 x its interval


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """A gateway's liveness changed: ``status`` is ``online``, ``stale`` or ``offline``."""

    site: str
    gw: str
    status: str
    reason: str  # heartbeat | online-state | offline-state | no-heartbeat
    session: int | None
    silent_s: float | None  # seconds since the last heartbeat (None: none yet)
    heartbeat_s: float

    def to_json(self) -> dict[str, Any]:
        """One ``--json`` line; ``type`` tells it from the per-envelope lines."""
        return {
            "type": "gateway-status",
            "site": self.site,
            "gw": self.gw,
            "status": self.status,
            "reason": self.reason,
            "session": self.session,
            "silent_s": self.silent_s,
            "heartbeat_s": self.heartbeat_s,
        }

    def human(self) -> str:
        who = f"{self.site}/{self.gw}"
        if self.reason == "no-heartbeat":
            silent = "since the center started" if self.silent_s is None else "for"
            took = f" {self.silent_s:.0f} s" if self.silent_s is not None else ""
            why = f"no heartbeat {silent}{took} (interval {self.heartbeat_s:g} s)"
        elif self.reason == "offline-state":
            why = f"said offline (will or clean stop), session {self.session}"
        else:
            why = f"{self.reason.replace('-', ' ')}, session {self.session}"
        return f"{time.strftime('%H:%M:%S')}  {self.status.upper():<9} {who}  {why}"


@dataclass(slots=True)
class _Live:
    heartbeat_s: float
    watching_since: float
    status: str = "unknown"
    session: int | None = None
    last_heartbeat: float | None = None


class Liveness:
    """Liveness of the gateways in ``intervals`` ((site, gw) → heartbeat interval, s)."""

    def __init__(
        self,
        intervals: Mapping[tuple[str, str], float],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        now = clock()
        self._gws = {key: _Live(interval, now) for key, interval in intervals.items()}

    def status(self, site: str, gw: str) -> str | None:
        """``unknown``, ``online``, ``stale`` or ``offline`` (None: not in the registry)."""
        live = self._gws.get((site, gw))
        return None if live is None else live.status

    def period(self) -> float:
        """How often ``check`` should run: often enough to be late by a tenth of an interval."""
        shortest = min((g.heartbeat_s for g in self._gws.values()), default=30.0)
        return min(5.0, max(0.05, shortest / 10))

    def heartbeat(self, site: str, gw: str, session: int, *, current: bool) -> GatewayStatus | None:
        """An accepted heartbeat; ``current``: its session is not older than the latest state."""
        live = self._gws.get((site, gw))
        if live is None or not current:
            return None
        live.last_heartbeat = self._clock()
        live.session = session
        return self._move(site, gw, live, "online", "heartbeat")

    def state(self, site: str, gw: str, status: str, session: int) -> GatewayStatus | None:
        """An accepted, not stale ``state`` (``online`` birth or ``offline`` will)."""
        live = self._gws.get((site, gw))
        if live is None:
            return None
        live.session = session
        if status == "online":
            live.last_heartbeat = self._clock()  # a birth is a sign of life too
            return self._move(site, gw, live, "online", "online-state")
        return self._move(site, gw, live, "offline", "offline-state")

    def check(self) -> list[GatewayStatus]:
        """Gateways that just became stale."""
        now = self._clock()
        out = []
        for (site, gw), live in self._gws.items():
            if live.status not in ("unknown", "online"):
                continue
            since = live.last_heartbeat if live.last_heartbeat is not None else live.watching_since
            if now - since > STALE_INTERVALS * live.heartbeat_s:
                change = self._move(site, gw, live, "stale", "no-heartbeat")
                if change is not None:
                    out.append(change)
        return out

    def _move(
        self, site: str, gw: str, live: _Live, status: str, reason: str
    ) -> GatewayStatus | None:
        if live.status == status:
            return None
        live.status = status
        silent = (
            None if live.last_heartbeat is None else round(self._clock() - live.last_heartbeat, 1)
        )
        return GatewayStatus(site, gw, status, reason, live.session, silent, live.heartbeat_s)
