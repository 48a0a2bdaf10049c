"""What the relay needs from a broker path, and how a publish attempt's end reads to the core.

``Uplink`` (the MQTT session, gateway/delivery/uplink.py) is a ``Transport`` as it is: a
``connected`` flag and a QoS 1 ``publish`` whose future resolves with the PUBACK reason code
or fails with ``PublishRefused`` / ``NotConnected``. The in-memory transport for tests
(gateway/delivery/memory.py) keeps the same promise.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from gateway.delivery.events import Outcome
from gateway.delivery.uplink import NotConnected, PublishRefused, Uplink


class Transport(Protocol):
    """One broker path (primary or secondary)."""

    @property
    def connected(self) -> bool: ...

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        expiry_s: int | None = None,
        flush: bool = True,
    ) -> asyncio.Future[int]:
        """QoS 1 publish; the future resolves with the PUBACK reason code, or fails with
        ``PublishRefused`` (reason >= 128) or ``NotConnected`` (no session, or lost first)."""
        ...


def mqtt(uplink: Uplink) -> Transport:
    """The MQTT session as a transport (it already has the shape)."""
    return uplink


def outcome(fut: asyncio.Future[int]) -> tuple[Outcome, str]:
    """How a finished publish future ended, for ``DeliveryCore.published``."""
    if fut.cancelled():
        return Outcome.NOT_CONNECTED, "publish cancelled"
    err = fut.exception()
    if err is None:
        return Outcome.OK, ""
    if isinstance(err, NotConnected):
        return Outcome.NOT_CONNECTED, str(err)
    if isinstance(err, PublishRefused):
        return Outcome.REFUSED, str(err)
    return Outcome.FAILED, str(err)
