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

from gateway.errors import AlarmgwError

MAX_BODY = 64 * 1024  # a status document is a few hundred bytes; bounds what a peer sends


class StatusError(AlarmgwError):
    """A status request failed. ``reason`` is a short token, ``detail`` one line."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


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
        raise StatusError("unreachable", f"{url}: {text}"[:160]) from None
    except OSError as err:
        raise StatusError("unreachable", f"{url}: {err.strerror or err}"[:160]) from None
    try:
        return json.loads(bytes(data), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise StatusError("bad-response", f"not JSON: {bytes(data[:40])!r}") from None
