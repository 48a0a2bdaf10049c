"""CCTV recorder (NVR) recording and retention (issue 3; shared/spec/OPERATOR.md ``[camera]``).

The recorder is read through a small ``NvrAdapter`` interface, one method returning a
``CameraStatus``; ``JsonAdapter`` is the generic one (``GET url`` returns ``{"recording":
true, "retention_days": 34}``). Vendor adapters (ONVIF, ISAPI, ...) plug in beside it in
``ADAPTERS`` and the config's ``adapter`` key.

Every ``poll_s`` the monitor asks the recorder and reports condition (camera, 393)
(maintenance, PROTOCOL.md "Bodies": "e.g. camera retention below policy"): recording off,
retention below ``required_days``, recorder unreachable, an error status, a bad document or no
answer within ``timeout_s`` are troubles (reasons ``not-recording``, ``retention``,
``unreachable``, ``timeout``, ``http-status``, ``bad-response``); it is restored once the
recorder records again with enough retention. Nothing it receives can crash it.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import structlog

from gateway.config import CameraSection
from gateway.monitors.http import StatusError, get_json, new_session
from gateway.monitors.reporter import TroubleReporter

log = structlog.get_logger("alarmgw.camera")

DEVICE, CODE = "camera", "393"


@dataclass(frozen=True, slots=True)
class CameraStatus:
    """What a recorder says about itself."""

    recording: bool
    retention_days: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.retention_days) and self.retention_days >= 0):
            raise ValueError(f"retention_days must be >= 0, got {self.retention_days!r}")


class NvrAdapter(Protocol):
    """One recorder make: ask it for its status. Raise ``StatusError`` on any failure."""

    async def fetch(self, session: aiohttp.ClientSession, *, timeout_s: float) -> CameraStatus:
        """The recorder's status now."""
        ...


class JsonAdapter:
    """Generic adapter: ``GET url`` → ``{"recording": bool, "retention_days": number}``."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def fetch(self, session: aiohttp.ClientSession, *, timeout_s: float) -> CameraStatus:
        return parse_json_status(await get_json(session, self.url, timeout_s=timeout_s))


def parse_json_status(doc: Any) -> CameraStatus:
    """The generic document → ``CameraStatus``; StatusError ``bad-response`` otherwise."""
    if not isinstance(doc, dict):
        raise StatusError("bad-response", f"expected an object, got {str(doc)[:40]!r}")
    recording, days = doc.get("recording"), doc.get("retention_days")
    if not isinstance(recording, bool):
        raise StatusError("bad-response", f"'recording' must be true/false, got {recording!r}")
    if isinstance(days, bool) or not isinstance(days, int | float):
        raise StatusError("bad-response", f"'retention_days' must be a number, got {days!r}")
    try:
        return CameraStatus(recording, float(days))
    except ValueError as err:
        raise StatusError("bad-response", str(err)) from None


ADAPTERS = {"json": JsonAdapter}


class CameraMonitor:
    """Polls the recorder every ``cfg.poll_s`` and reports condition (camera, 393)."""

    def __init__(
        self, cfg: CameraSection, reporter: TroubleReporter, *, adapter: NvrAdapter | None = None
    ) -> None:
        self.cfg = cfg
        self._reporter = reporter
        self.adapter: NvrAdapter = adapter or ADAPTERS[cfg.adapter](cfg.url)
        self.last: CameraStatus | None = None
        self.error: StatusError | None = None
        self.polls = 0

    def snapshot(self) -> dict[str, Any]:
        """The heartbeat's ``camera``: ``recording``, ``retention_days`` (when known),
        ``required_days`` and ``ok`` (recording with retention at or above the policy)."""
        out: dict[str, Any] = {"recording": False, "required_days": self.cfg.required_days}
        last = None if self.error is not None else self.last
        if last is not None:
            out["recording"] = last.recording
            days = float(last.retention_days)
            out["retention_days"] = int(days) if days.is_integer() else days
        out["ok"] = last is not None and not self._problems(last)
        return out

    def _problems(self, status: CameraStatus) -> list[tuple[str, str]]:
        found = []
        if not status.recording:
            found.append(("not-recording", "recorder is not recording"))
        if status.retention_days < self.cfg.required_days:
            found.append(
                (
                    "retention",
                    f"retention {status.retention_days:g} days, policy {self.cfg.required_days}",
                )
            )
        return found

    def evaluate(self, result: CameraStatus | StatusError) -> None:
        """Take one poll's result and report the condition."""
        self.polls += 1
        if isinstance(result, StatusError):
            self.error = result
            problems = [(result.reason, f"recorder {result.reason}: {result.detail}")]
        else:
            self.error, self.last = None, result
            problems = self._problems(result)
        if problems:
            self._reporter.set(
                DEVICE,
                CODE,
                True,
                reason="+".join(reason for reason, _ in problems),
                detail="; ".join(detail for _, detail in problems),
            )
        else:
            assert isinstance(result, CameraStatus)
            self._reporter.set(
                DEVICE,
                CODE,
                False,
                detail=f"recording, retention {result.retention_days:g} days",
            )

    async def run(self) -> None:
        """Poll for ever on a fixed cadence (a slow answer does not stretch the interval)."""
        loop = asyncio.get_running_loop()
        # A request may not outlast the interval: a hung recorder shows within one poll.
        timeout = min(self.cfg.timeout_s, self.cfg.poll_s)
        async with new_session() as session:
            next_at = loop.time()
            while True:
                try:
                    result: CameraStatus | StatusError = await self.adapter.fetch(
                        session, timeout_s=timeout
                    )
                except StatusError as err:
                    result = err
                if isinstance(result, StatusError) and self.error is None:
                    log.warning("recorder status failed", reason=result.reason, error=result.detail)
                self.evaluate(result)
                next_at = max(next_at + self.cfg.poll_s, loop.time())
                await asyncio.sleep(next_at - loop.time())
