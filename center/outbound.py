"""Envelopes the center signs for a gateway (PROTOCOL.md "Bodies": ``ack``, ``dispatch``,
``resync``): the gateway's ``site``/``gw``, a fresh UUIDv7 ``id``, the center signer's own
``seq`` and ``ts`` = when the center decided. The payload is the RFC 8785 form of the whole
signed envelope."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.contract.envelope import build
from gateway.contract.signing import SigningKey

DISPATCH_STATUSES = frozenset({"acknowledged", "resolved"})


@dataclass(frozen=True, slots=True)
class Outbound:
    """A signed center -> gateway envelope: its id and its payload bytes."""

    id: str
    type: str
    seq: int
    payload: bytes


def sign(
    *,
    type: str,
    site: str,
    gw: str,
    seq: int,
    body: Mapping[str, Any],
    key: SigningKey,
    ts: str | None = None,
    id: str | None = None,
) -> Outbound:
    """The envelope signed by ``gateway.contract.envelope.build`` (which checks every field
    first), as the id and payload the center publishes."""
    env = build(type=type, site=site, gw=gw, seq=seq, body=body, key=key, ts=ts, id=id)
    return Outbound(env.id, type, seq, env.to_bytes())


def dispatch_body(ids: Sequence[str], status: str) -> dict[str, Any]:
    """A human acted on alarms ``ids``: ``acknowledged`` (help is being sent) or ``resolved``."""
    if status not in DISPATCH_STATUSES or not ids:
        raise ValueError(f"not a dispatch: {status!r} for {len(ids)} ids")
    return {"ids": list(ids), "status": status}


def resync_body(kid: str, next_seq: int) -> dict[str, Any]:
    """The gateway signer ``kid`` should move its counter to at least ``next_seq``."""
    return {"kid": kid, "next_seq": next_seq}
