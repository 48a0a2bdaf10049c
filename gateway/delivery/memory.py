"""A gateway and a center stand-in joined in memory, for tests without a broker.

Like h11's ``ConnectionPair``: ``MemoryTransport`` is a ``Transport`` (gateway/delivery/
transport.py) whose publishes land in a ``MemoryCenter`` on the same event loop; the center
verifies each envelope with the gateway's key and answers with a signed ``ack`` on the
gateway's ack topic, one loop turn later, as a broker would. The gateway side under test is
the real ``Relay`` with its outbox and ``DeliveryCore``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.contract.envelope import Envelope, build, parse_and_verify
from gateway.contract.signing import SigningKey, VerifyKey
from gateway.contract.topics import topic
from gateway.delivery.uplink import NotConnected, PublishRefused
from gateway.errors import EnvelopeError


@dataclass
class MemoryCenter:
    """Verifies what a gateway publishes and acks it (unless ``acking`` is off)."""

    key: SigningKey
    gateway_keys: Mapping[str, VerifyKey]
    prefix: str
    acking: bool = True
    seq: int = 0
    received: list[Envelope] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why envelopes were not accepted

    def take(self, name: str, payload: bytes) -> tuple[str, bytes] | None:
        """One publish from a gateway; returns the ack (topic, payload) to send back."""
        try:
            env = parse_and_verify(payload, self.gateway_keys)
        except EnvelopeError as err:
            self.refused.append(err.reason)
            return None
        if name != topic(self.prefix, env.site, env.gw, "event"):
            self.refused.append("wrong-topic")
            return None
        self.received.append(env)
        if not self.acking:
            return None
        return topic(self.prefix, env.site, env.gw, "ack"), self.ack(env.site, env.gw, [env.id])

    def ack(self, site: str, gw: str, ids: list[str]) -> bytes:
        """A signed ``ack`` naming ``ids``."""
        return self.sign(site, gw, "ack", {"ids": ids})

    def sign(self, site: str, gw: str, kind: str, body: Mapping[str, object]) -> bytes:
        """A signed center → gateway envelope (``ack``, ``dispatch``, ``resync``)."""
        self.seq += 1
        return build(type=kind, site=site, gw=gw, seq=self.seq, body=body, key=self.key).to_bytes()


class MemoryTransport:
    """One in-memory broker path from a gateway to a ``MemoryCenter``."""

    def __init__(
        self,
        center: MemoryCenter,
        on_message: Callable[[str, bytes], None],
        *,
        connected: bool = True,
    ) -> None:
        self.center = center
        self._on_message = on_message
        self.connected = connected
        self.refuse_code: int | None = None  # answer every publish with this PUBACK error
        self.published: list[tuple[str, bytes]] = []

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        expiry_s: int | None = None,
        flush: bool = True,
    ) -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        if not self.connected:
            fut.set_exception(NotConnected("not connected to the broker"))
            return fut
        if self.refuse_code is not None:
            fut.set_exception(PublishRefused(topic, self.refuse_code, "refused"))
            return fut
        self.published.append((topic, payload))
        fut.set_result(0)
        reply = self.center.take(topic, payload)
        if reply is not None:
            loop.call_soon(self._on_message, *reply)
        return fut
