"""The generic recorder adapter: ``GET url`` returns ``{"recording": true,
"retention_days": 34}``."""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.monitors.camera.model import CameraStatus
from gateway.monitors.http import StatusError, get_json


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
