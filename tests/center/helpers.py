"""Signed envelopes for the center's tests."""

from __future__ import annotations

from typing import Any

from gateway.contract import envelope as E
from gateway.contract.signing import SigningKey

SITE, GW, PREFIX = "school-1", "gw-1", "schoolalarm/v1"
GW_KEY = SigningKey.from_seed(bytes(range(32)))
CENTER_KEY = SigningKey.from_seed(bytes(range(1, 33)))


def alarm_body(kind: str = "panic", code: str = "120", **loc: Any) -> dict[str, Any]:
    return {
        "code": code,
        "kind": kind,
        "input": "gpio:gate",
        "test": code == "601",
        "location": {"name": "Gate", "address": "Road 1", "lat": 22.5, "lon": 114.0, **loc},
        "contact": {"phone": "110"},
    }


def alarm(seq: int, *, key: SigningKey = GW_KEY, site: str = SITE, gw: str = GW,
          id: str | None = None, **body: Any) -> E.Envelope:
    kind = "test" if body.get("code") == "601" else "alarm"
    return E.build(type=kind, site=site, gw=gw, seq=seq, body=alarm_body(**body), key=key, id=id)


def heartbeat(seq: int, session: int = 1, *, gw: str = GW) -> E.Envelope:
    body = {
        "uptime_s": 5, "session": session, "queue": {"pending": 0, "oldest_s": 0},
        "inputs": {}, "clock": {"synced": True}, "disk": {"free_bytes": 1},
    }
    return E.build(type="heartbeat", site=SITE, gw=gw, seq=seq, body=body, key=GW_KEY)
