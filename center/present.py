"""What the reference center shows a person: one line per envelope (or one JSON object with
``--json``) and per gateway liveness change. Text from a gateway is untrusted: every human
line has its control characters escaped, so a ``kind`` with a newline cannot forge a line."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from center.check import Verdict
from center.liveness import GatewayStatus
from center.service import Center

# C0, DEL, C1, and the Unicode line/paragraph separators and bidirectional controls.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
LOCATION_TOLERANCE_DEG = 0.001  # about 100 m: farther from the registry's site is a mismatch


def escape(line: str) -> str:
    """``line`` with every control character shown as ``\\xNN`` / ``\\uNNNN``."""
    return _CONTROL.sub(_escape_one, line)


def _escape_one(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


@dataclass(frozen=True, slots=True)
class SiteData:
    """The center's own record of a gateway's site ([[gateways]] school, address, ...)."""

    school: str | None = None
    address: str | None = None
    lat: float | None = None
    lon: float | None = None
    phone: str | None = None
    contact: str | None = None

    def mismatch(self, location: Mapping[str, Any]) -> bool:
        """The alarm's location disagrees with the registry (address or position)."""
        if self.address is not None and location.get("address") != self.address:
            return True
        if self.lat is not None and self.lon is not None:
            lat, lon = location.get("lat"), location.get("lon")
            if not isinstance(lat, int | float) or not isinstance(lon, int | float):
                return True
            far = abs(lat - self.lat) > LOCATION_TOLERANCE_DEG
            return far or abs(lon - self.lon) > LOCATION_TOLERANCE_DEG
        return False

    def describe(self) -> str:
        parts = [p for p in (self.school, self.address, self.phone) if p]
        if self.lat is not None and self.lon is not None:
            parts.append(f"{self.lat:.5f},{self.lon:.5f}")
        return ", ".join(parts) or "no site data"

    def to_json(self) -> dict[str, Any]:
        return {
            "school": self.school,
            "address": self.address,
            "lat": self.lat,
            "lon": self.lon,
            "phone": self.phone,
            "contact": self.contact,
        }


def json_line(v: Verdict, site_data: Mapping[tuple[str, str], SiteData]) -> dict[str, Any]:
    """The ``--json`` object: the verdict, and for an alarm or test the registry's site data
    and whether the alarm's location disagrees with it."""
    out = v.to_json()
    env = v.env
    if env is not None and env.type in ("alarm", "test"):
        registered = site_data.get((env.site, env.gw))
        location = env.body.get("location")
        out["registry"] = registered.to_json() if registered is not None else None
        out["location_mismatch"] = bool(
            registered is not None
            and isinstance(location, Mapping)
            and registered.mismatch(location)
        )
    return out


def human_line(v: Verdict, site_data: Mapping[tuple[str, str], SiteData] | None = None) -> str:
    """One line a dispatcher can read; what came from a gateway is escaped."""
    return escape(_human_line(v, site_data or {}))


def _human_line(v: Verdict, site_data: Mapping[tuple[str, str], SiteData]) -> str:
    env = v.env
    when = time.strftime("%H:%M:%S")
    if v.result == "rejected" and not (v.unproven and env is not None):
        who = f"{env.site}/{env.gw} seq {env.seq}" if env else v.topic
        return f"{when}  REJECTED   {who}: {v.reason}" + (f" ({v.detail})" if v.detail else "")
    assert env is not None
    who = f"{env.site}/{env.gw}"
    lat = f"{v.latency_ms:.0f} ms" if v.latency_ms is not None else "?"
    if v.result == "duplicate":
        return f"{when}  duplicate  {who} {env.type} {env.id} (re-acked, not dispatched again)"
    body = env.body
    if env.type in ("alarm", "test"):
        loc = body["location"]
        label = "TEST (not dispatched)" if env.type == "test" else "ALARM"
        if v.unproven:
            what = "TEST" if env.type == "test" else "ALARM"
            label = (
                f"{what}, FRESHNESS NOT PROVEN ({v.reason}: possible replay or gateway state loss)"
            )
        elif v.result == "rejected":
            return f"{when}  REJECTED   {who} seq {env.seq}: {v.reason} ({v.detail})"
        flag = ""
        registered = site_data.get((env.site, env.gw))
        if registered is not None and registered.mismatch(loc):
            flag = f"  LOCATION DIFFERS FROM REGISTRY ({registered.describe()})"
        return (
            f"{when}  {label:<9} {who}  {body['kind']} ({body['code']}) at {loc['name']}, "
            f"{loc['address']}  input {body['input']}  phone {body['contact']['phone']}  "
            f"[verified {env.kid}, seq {env.seq}, {lat}]{flag}"
        )
    if env.type in ("trouble", "restore"):
        count = f" ({body['count']} changes)" if "count" in body else ""
        return (
            f"{when}  {env.type.upper():<9} {who}  {body['code']} {body['device']}: "
            f"{body['detail']}{count}  [{lat}]"
        )
    if env.type == "heartbeat":
        return f"{when}  heartbeat {who}  {heartbeat_summary(body)}"
    if env.type == "state":
        stale = "  (stale session, ignored)" if v.stale else ""
        return f"{when}  {body['status']:<9} {who}  session {body['session']}{stale}"
    return f"{when}  {env.type:<9} {who}  seq {env.seq}"


def heartbeat_summary(body: Mapping[str, Any]) -> str:
    """A heartbeat body in one line."""
    queue, inputs = body.get("queue", {}), body.get("inputs", {})
    parts = [
        f"session {body.get('session')}",
        f"up {body.get('uptime_s')} s",
        f"queue {queue.get('pending')} (oldest {queue.get('oldest_s')} s)",
        "inputs " + (", ".join(f"{k} {v}" for k, v in sorted(inputs.items())) or "none"),
    ]
    if "bollard" in body:
        parts.append(f"bollard {body['bollard'].get('state')}")
    if "camera" in body:
        cam = body["camera"]
        days = cam.get("retention_days", "?")
        if cam.get("ok") is None:  # the gateway has not asked its recorder yet
            parts.append("camera unknown (not polled yet)")
        else:
            parts.append(
                f"camera {'ok' if cam.get('ok') else 'NOT ok'} "
                f"({'recording' if cam.get('recording') else 'not recording'}, {days} days)"
            )
    clock = body.get("clock", {}).get("synced")
    parts.append("clock synced" if clock else "clock NOT synced")
    free = body.get("disk", {}).get("free_bytes")
    if isinstance(free, int):
        parts.append(f"disk {free // 2**20} MB free")
    return ", ".join(parts)


def console(
    center: Center,
    out: TextIO,
    *,
    as_json: bool,
    heartbeats: bool | None = None,
    site_data: Mapping[tuple[str, str], SiteData] | None = None,
) -> None:
    """Print each verdict and status change on ``out``, in order, one write per burst: the
    lines are joined here, so that holds whatever ``out``'s own buffering is (with
    PYTHONUNBUFFERED, as under many service managers, every line was a system call).
    Heartbeat lines are left out of the text output unless ``heartbeats`` (default: shown
    in ``--json`` only)."""
    lines: list[str] = []
    show_beats = as_json if heartbeats is None else heartbeats
    sites = site_data or {}

    def show(v: Verdict) -> None:
        env = v.env
        beat = env is not None and env.type == "heartbeat" and v.result != "rejected"
        if beat and not show_beats:
            return
        if as_json:
            lines.append(json.dumps(json_line(v, sites)) + "\n")
        else:
            lines.append(human_line(v, sites) + "\n")

    def write_out() -> None:
        if lines:
            out.write("".join(lines))
            lines.clear()
        out.flush()

    def show_status(change: GatewayStatus) -> None:
        # At once (a stale gateway is noticed by a timer, outside any burst), after the
        # lines of the burst so far.
        text = json.dumps(change.to_json()) if as_json else escape(change.human())
        lines.append(text + "\n")
        write_out()

    center.listeners.append(show)
    center.burst_listeners.append(write_out)
    center.status_listeners.append(show_status)
