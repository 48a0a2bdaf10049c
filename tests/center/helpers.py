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


def alarm(
    seq: int,
    *,
    key: SigningKey = GW_KEY,
    site: str = SITE,
    gw: str = GW,
    id: str | None = None,
    **body: Any,
) -> E.Envelope:
    kind = "test" if body.get("code") == "601" else "alarm"
    return E.build(type=kind, site=site, gw=gw, seq=seq, body=alarm_body(**body), key=key, id=id)


def heartbeat(seq: int, session: int = 1, *, gw: str = GW) -> E.Envelope:
    body = {
        "uptime_s": 5,
        "session": session,
        "queue": {"pending": 0, "oldest_s": 0},
        "inputs": {},
        "clock": {"synced": True},
        "disk": {"free_bytes": 1},
    }
    return E.build(type="heartbeat", site=SITE, gw=gw, seq=seq, body=body, key=GW_KEY)


class FakeGateway:
    """A gateway stand-in: publishes signed envelopes with paho and collects what the center
    sends to its ``ack`` topic (verified with the center's key)."""

    def __init__(
        self,
        port: int,
        *,
        site: str = SITE,
        gw: str = GW,
        center_key: SigningKey = CENTER_KEY,
        name: str = "fake-gw",
    ) -> None:
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.site, self.gw, self._center = site, gw, center_key
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{gw}", protocol=mqtt.MQTTv5)
        c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/{site}/{gw}/ack", qos=1)
        c.on_subscribe = lambda c, u, mid, rcs, p: self._ready.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c
        assert self._ready.wait(20), "no SUBACK from the broker"

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        import json as _json

        from gateway.contract.envelope import canonical

        obj = _json.loads(msg.payload)
        sig = obj.pop("sig")
        assert self._center.verify_key.verify(canonical(obj), sig), "bad center signature"
        with self._lock:
            self.received.append(obj)

    def publish(self, env: E.Envelope, kind: str = "event", *, wait: bool = True) -> None:
        info = self.client.publish(f"{PREFIX}/{self.site}/{self.gw}/{kind}", env.to_bytes(), qos=1)
        if wait:
            info.wait_for_publish(20)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.received if m["type"] == kind]

    def acked_ids(self) -> set[str]:
        return {i for m in self.of_type("ack") for i in m["body"]["ids"]}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
