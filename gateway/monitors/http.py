"""Polling a device's HTTP status document (bollard controller, recorder) with aiohttp.

One GET, bounded in time and size; every way it can go wrong is a ``StatusError`` with a
short ``reason`` (``unreachable``, ``timeout``, ``http-status``, ``bad-response``) and a
detail for the technician. A monitor turns it into a trouble; it never crashes one.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import structlog

from gateway import retry
from gateway.errors import AlarmgwError

log = structlog.get_logger("alarmgw.http")

MAX_BODY = 64 * 1024  # a status document is a few hundred bytes; bounds what a peer sends


class StatusError(AlarmgwError):
    """A status request failed. ``reason`` is a short token, ``detail`` one line."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class Unreachable(StatusError):
    """No connection to the device (refused, reset, no route): worth one more try."""

    def __init__(self, detail: str) -> None:
        super().__init__("unreachable", detail)


def new_session() -> aiohttp.ClientSession:
    """A client session for one monitor. No keep-alive: a poll every few seconds gains
    nothing from it, and a device that restarts would leave a dead pooled connection."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=2, force_close=True),
        headers={"Accept": "application/json"},
    )


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


async def get_json(session: aiohttp.ClientSession, url: str, *, timeout_s: float) -> Any:
    """GET ``url`` and decode its JSON body; StatusError on anything else."""
    try:
        async with asyncio.timeout(timeout_s):
            async with session.get(url, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise StatusError("http-status", f"HTTP {resp.status} from {url}")
                data = bytearray()
                while chunk := await resp.content.read(16 * 1024):
                    data += chunk
                    if len(data) > MAX_BODY:
                        raise StatusError("bad-response", f"more than {MAX_BODY} bytes")
    except TimeoutError:
        raise StatusError("timeout", f"no answer from {url} within {timeout_s:g} s") from None
    except aiohttp.ClientError as err:
        text = str(err) or type(err).__name__
        raise Unreachable(f"{url}: {text}"[:160]) from None
    except OSError as err:
        raise Unreachable(f"{url}: {err.strerror or err}"[:160]) from None
    try:
        return json.loads(bytes(data), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise StatusError("bad-response", f"not JSON: {bytes(data[:40])!r}") from None


class StatusPoller:
    """``get_json`` for a periodic poll of one URL: a GET that finds the device unreachable
    (a refused or reset connection, e.g. while it restarts its web server) is tried again
    per ``retry.HTTP_POLL`` before the poll fails with it; a timeout or a bad answer fails
    the poll at once."""

    def __init__(self, session: aiohttp.ClientSession, url: str, *, timeout_s: float) -> None:
        self.session = session
        self.url = url
        self.timeout_s = timeout_s
        self._retry_log = retry.RetryLog(log, "status poll retry", kind="poll", url=url)

    async def get(self) -> Any:
        doc: Any = None
        attempts = retry.HTTP_POLL.retrying(Unreachable, retry_log=self._retry_log)
        async for attempt in attempts:
            with attempt:
                doc = await get_json(self.session, self.url, timeout_s=self.timeout_s)
        return doc
