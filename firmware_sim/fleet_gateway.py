"""One simulated gateway of ``alarmgw-sim fleet``: its MQTT session (a paho client driven by
the fleet's event loop through paho's external-loop callbacks, no thread of its own), its
seq counter and session number, its devices, the envelopes it signs (PROTOCOL.md
"Envelope", "Bodies") and what it does with the center's signed ``ack``, ``dispatch`` and
``resync`` envelopes."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_sim.fleet_sites import School
from gateway import __version__
from gateway.contract.envelope import FIELDS, build, canonical, format_ts, resign
from gateway.contract.signing import VerifyKey
from gateway.contract.topics import Kind, topic
from gateway.delivery.seq import SeqCounter

BOX = "serial:box-gate-main"
BUTTON = "gpio:gate-main"
REQUIRED_DAYS = 30

# Trouble kinds a simulated site can have: (code, device, trouble detail, restore detail).
TROUBLES: dict[str, tuple[str, str, str, str]] = {
    "bollard": ("380", "bollard", "bollard controller reports a fault", "bollard fault cleared"),
    "camera": ("393", "camera", "retention 12 days, below policy 30", "retention back to 31 days"),
    "link": ("350", BOX, "button box silent for 30 s", "button box answering again"),
    "mains": ("301", BOX, "button box on battery", "button box back on mains"),
    "tamper": ("137", BOX, "button box cover opened", "button box cover closed"),
}


class MemoryCounter:
    """A seq counter that starts at 1 each run (for a center that starts fresh too)."""

    def __init__(self) -> None:
        self._next = 1

    def next(self) -> int:
        value, self._next = self._next, self._next + 1
        return value

    def move_to(self, at_least: int) -> None:
        self._next = max(self._next, at_least)

    def close(self) -> None:
        pass


class FileCounter:
    """``gateway.delivery.seq.SeqCounter`` (reserved blocks, survives a crash), for one gateway."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seq = SeqCounter(path)

    def next(self) -> int:
        return self._seq.next()

    def move_to(self, at_least: int) -> None:
        while self._seq.peek < at_least:  # never backwards; rare, so one number at a time
            self._seq.next()

    def close(self) -> None:
        self._seq.close()


@dataclass(slots=True)
class Pending:
    """An event waiting for the center's ack (re-sent until it comes)."""

    id: str
    kind: str
    payload: bytes
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    created: float = field(default_factory=time.monotonic)


_EXPIRY: dict[int, Properties] = {}


def expiry(seconds: int) -> Properties:
    """MQTT 5 message expiry properties (one shared object per interval)."""
    props = _EXPIRY.get(seconds)
    if props is None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.MessageExpiryInterval = seconds
        _EXPIRY[seconds] = props
    return props


class SimGateway:
    """The gateway of one ``School``: the fleet calls ``connect``, ``heartbeat``,
    ``raise_event`` and ``disconnect``; paho calls back into it from the fleet's loop."""

    def __init__(
        self,
        school: School,
        *,
        prefix: str,
        center_key: VerifyKey,
        heartbeat_s: float,
        counter: MemoryCounter | FileCounter,
        session: int,
        say: Callable[[dict[str, Any]], None],
    ) -> None:
        self.school = school
        self.site, self.gw = school.site, school.gw
        self.prefix = prefix
        self.center_key = {center_key.kid: center_key}
        self.heartbeat_s = heartbeat_s
        self.seq = counter
        self.session = session
        self.say = say
        self.started = time.monotonic()
        self.pending: dict[str, Pending] = {}
        self.troubles: set[str] = set()  # kinds now in trouble
        self.bollard_since = format_ts()
        self.beating = True  # heartbeats on (``stop-heartbeats`` / ``resume``)
        self.wanted = False  # the fleet wants this gateway connected (``offline`` / ``online``)
        self.connected = asyncio.Event()
        self.opened = False  # paho's connect() done once (reconnect() after that)
        # Set by the fleet: the connection ended (it reconnects if still wanted).
        self.on_lost: Callable[[SimGateway], None] = lambda _g: None
        self.on_online: Callable[[SimGateway], None] = lambda _g: None
        self.acks = 0  # verified acks received
        self.acked_ids = 0
        self.refused = 0  # center envelopes that did not verify or named another gateway
        self.dispatches = 0
        self.resyncs = 0
        self.published = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"fleet-{self.gw}",
            protocol=mqtt.MQTTv5,
        )
        self.client.connect_timeout = 5.0
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def topic(self, kind: Kind) -> str:
        return topic(self.prefix, self.site, self.gw, kind)

    def _build(self, kind: str, body: dict[str, Any], ts: str | None = None) -> Any:
        return build(
            type=kind,
            site=self.site,
            gw=self.gw,
            seq=self.seq.next(),
            body=body,
            key=self.school.key,
            ts=ts,
        )

    # -- the session ---------------------------------------------------------------------

    def prepare(self, session: int) -> None:
        """Before each connect: the new session's signed ``offline`` will."""
        self.session = session
        will = self._build("state", self._state_body("offline"))
        self._will = will.to_bytes()
        self.client.will_set(self.topic("state"), self._will, qos=1, retain=True)

    def _state_body(self, status: str) -> dict[str, Any]:
        return {"status": status, "session": self.session, "version": __version__}

    def _on_connect(
        self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            self.say({"event": "refused", "gw": self.gw, "reason": str(reason)})
            return
        client.subscribe(self.topic("ack"), qos=1)
        birth = self._build("state", self._state_body("online"))
        self._publish("state", birth.to_bytes(), retain=True)
        self.connected.set()
        self.on_online(self)
        self.say({"event": "online", "gw": self.gw, "site": self.site, "session": self.session})
        if self.beating:
            self.heartbeat()

    def _on_disconnect(
        self, _c: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self.connected.clear()
        self.on_lost(self)

    def say_offline(self) -> None:
        """Clean stop: publish the session's signed ``offline`` (the will is not sent then)."""
        if self.connected.is_set():
            self._publish("state", self._will, retain=True)

    def _publish(self, kind: Kind, payload: bytes, *, retain: bool = False) -> None:
        props = expiry(round(3 * self.heartbeat_s)) if kind == "heartbeat" else None
        self.client.publish(self.topic(kind), payload, qos=1, retain=retain, properties=props)
        self.published += 1

    def nodelay(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- what the gateway sends ----------------------------------------------------------

    def heartbeat(self) -> None:
        if not self.connected.is_set():
            return  # a snapshot: the next one after reconnecting says it all
        env = self._build("heartbeat", self.heartbeat_body())
        self._publish("heartbeat", env.to_bytes())

    def heartbeat_body(self) -> dict[str, Any]:
        now = time.monotonic()
        oldest = max((now - p.created for p in self.pending.values()), default=0.0)
        inputs = {BUTTON: "ok", BOX: "trouble" if "link" in self.troubles else "ok"}
        body: dict[str, Any] = {
            "uptime_s": int(now - self.started),
            "session": self.session,
            "queue": {"pending": len(self.pending), "oldest_s": round(oldest, 1)},
            "inputs": inputs,
            "clock": {"synced": True},
            "disk": {"free_bytes": 12_000_000_000 - 1_000_000 * self.school.index},
        }
        if self.school.bollard:
            state = "fault" if "bollard" in self.troubles else "up"
            body["bollard"] = {"state": state, "since": self.bollard_since}
        if self.school.camera:
            low = "camera" in self.troubles
            body["camera"] = {
                "recording": True,
                "retention_days": 12 if low else 31,
                "required_days": REQUIRED_DAYS,
                "ok": not low,
            }
        return body

    def alarm_body(self, *, test: bool, code: str = "120") -> dict[str, Any]:
        s = self.school
        return {
            "code": "601" if test else code,
            "kind": "test" if test else "panic",
            "input": BOX,
            "test": test,
            "location": {"name": f"{s.school} {s.gate}", "address": s.address, "lat": s.lat,
                         "lon": s.lon},
            "contact": {"phone": s.phone},
        }  # fmt: skip

    def trouble(self, kind: str, *, restore: bool) -> tuple[str, dict[str, Any]] | None:
        """The ``trouble``/``restore`` of ``kind`` if it changes anything, else None."""
        if kind not in TROUBLES:
            raise ValueError(f"unknown trouble {kind!r} (one of {', '.join(TROUBLES)})")
        if (kind in self.troubles) != restore:
            return None
        if (kind == "bollard" and not self.school.bollard) or (
            kind == "camera" and not (self.school.camera)
        ):
            return None
        code, device, bad, good = TROUBLES[kind]
        if restore:
            self.troubles.discard(kind)
        else:
            self.troubles.add(kind)
        if kind == "bollard":
            self.bollard_since = format_ts()
        return ("restore" if restore else "trouble"), {
            "code": code,
            "device": device,
            "detail": good if restore else bad,
        }

    def event(self, kind: str, body: dict[str, Any]) -> Pending:
        """Sign an event and queue it; the fleet's deliverer sends it until acked."""
        env = self._build(kind, body)
        item = Pending(env.id, kind, env.to_bytes())
        self.pending[env.id] = item
        self.say({"event": "raised", "gw": self.gw, "site": self.site, "type": kind,
                  "id": env.id, "seq": env.seq, "code": body.get("code")})  # fmt: skip
        return item

    def send(self, item: Pending) -> bool:
        """One attempt; False when not connected."""
        if not self.connected.is_set():
            return False
        item.sent += 1
        self._publish("event", item.payload)
        return True

    # -- what the center sends -----------------------------------------------------------

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        env = read_center(bytes(msg.payload), self.center_key)
        if env is None or (env["site"], env["gw"]) != (self.site, self.gw):
            self.refused += 1
            self.say({"event": "ignored", "gw": self.gw, "reason": "not verified or not ours"})
            return
        body = env["body"]
        if env["type"] == "ack":
            self.acks += 1
            for event_id in body.get("ids", []):
                item = self.pending.pop(event_id, None)
                if item is not None:
                    self.acked_ids += 1
                    item.acked.set()
                    self.say({"event": "acked", "gw": self.gw, "site": self.site,
                              "type": item.kind, "id": event_id, "sent": item.sent})  # fmt: skip
        elif env["type"] == "dispatch":
            self.dispatches += 1
            self.say({"event": "dispatch", "gw": self.gw, "status": body.get("status"),
                      "ids": body.get("ids")})  # fmt: skip
        elif env["type"] == "resync" and body.get("kid") == self.school.key.kid:
            next_seq = body.get("next_seq")
            if not isinstance(next_seq, int) or isinstance(next_seq, bool):
                return
            self.resyncs += 1
            self.seq.move_to(next_seq)
            for item in self.pending.values():  # PROTOCOL.md "resync": same id, new seq
                _seq, item.payload = resign(item.payload, seq=self.seq.next(), key=self.school.key)
            self.say({"event": "resync", "gw": self.gw, "next_seq": next_seq})


def read_center(payload: bytes, keys: Mapping[str, VerifyKey]) -> dict[str, Any] | None:
    """A center -> gateway envelope (``ack``, ``dispatch``, ``resync``) whose signature
    verifies with a trusted center kid; None for anything else (PROTOCOL.md "Bodies": the
    gateway ignores what it cannot verify)."""
    try:
        obj = json.loads(payload)
        if not isinstance(obj, dict) or set(obj) != set(FIELDS):
            return None
        sig, key = obj.pop("sig"), keys.get(obj["kid"])
        if key is None or not isinstance(sig, str) or not isinstance(obj["body"], dict):
            return None
        if not key.verify(canonical(obj), sig):
            return None
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    return obj
