"""The stateless half of the reference center's decision (PROTOCOL.md
"Envelope", "Delivery semantics"): is a payload a well-formed envelope, on its own
gateway's topic, signed by a key registered for that gateway? Pure, so the center's
checker process runs it (``alarmgw center`` checks bursts there, beside the GIL); that
process imports only this module and what it needs, not the MQTT side.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.contract.envelope import EVENT_TYPES, Envelope, format_ts, parse, parse_ts, verify
from gateway.contract.signing import VerifyKey
from gateway.contract.topics import parse_topic
from gateway.errors import EnvelopeError

TOPIC_TYPES = {
    "event": EVENT_TYPES,
    "heartbeat": frozenset({"heartbeat"}),
    "state": frozenset({"state"}),
}
# An envelope stamped further ahead of the center's clock than this is refused
# (``ts-future``), except an alarm: an alarm from a gateway whose clock is wrong is still an
# alarm, accepted and flagged ``clock: "ahead"``. An envelope older than ``OLD_AFTER_S`` is
# accepted and flagged ``clock: "old"`` (an alarm queued for days is still an alarm).
MAX_AHEAD_S = 300.0
OLD_AFTER_S = 3600.0


def clock_flag(ts: str, received: float) -> str | None:
    """``"ahead"``, ``"old"`` or None for an envelope stamped ``ts`` received at ``received``."""
    age = received - parse_ts(ts).timestamp()
    if age < -MAX_AHEAD_S:
        return "ahead"
    if age > OLD_AFTER_S:
        return "old"
    return None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the center decided about one received payload."""

    result: str  # accepted | duplicate | rejected
    topic: str
    reason: str | None = None
    detail: str = ""
    env: Envelope | None = None
    latency_ms: float | None = None
    stale: bool = False
    verified_at: float = 0.0  # perf_counter() when the signature and replay checks passed
    # An authentic alarm refused for its seq, kept as one whose freshness is not proven.
    unproven: bool = False
    path: str = "primary"  # which broker session it came in on (primary | secondary)
    received: float = 0.0  # time.time() when it arrived

    def to_json(self) -> dict[str, Any]:
        env = self.env
        out: dict[str, Any] = {
            "result": self.result,
            "reason": self.reason,
            "type": env.type if env else None,
            "id": env.id if env else None,
            "site": env.site if env else None,
            "gw": env.gw if env else None,
            "seq": env.seq if env else None,
            "latency_ms": self.latency_ms,
            "topic": self.topic,
        }
        if self.detail:
            out["detail"] = self.detail
        if env is not None and env.type in ("alarm", "test", "trouble", "restore"):
            out["ts"] = env.ts
            out["received"] = format_ts(self.received) if self.received else None
            out["path"] = self.path
            out["code"] = env.body.get("code")
            out["test"] = env.type == "test" or bool(env.body.get("test"))
            out["input"] = env.body.get("input")
            out["device"] = env.body.get("device")
            if self.received:
                out["clock"] = clock_flag(env.ts, self.received)
            if env.type in ("alarm", "test"):
                out["kind"] = env.body.get("kind")
                out["location"] = env.body.get("location")
                out["contact"] = env.body.get("contact")
                out["fresh"] = not self.unproven
            if env.type in ("trouble", "restore") and self.result != "rejected":
                out["detail"] = env.body.get("detail")
                out["count"] = env.body.get("count")  # a flapping device's summary
        if env is not None and env.type == "heartbeat" and self.result != "rejected":
            out["session"] = env.body.get("session")
            out["ts"] = env.ts
            out["heartbeat"] = dict(env.body)
        if env is not None and env.type == "state":
            out["status"] = env.body.get("status")
            out["session"] = env.body.get("session")
            out["stale"] = self.stale
        return out


def precheck(
    prefix: str,
    keys: Mapping[tuple[str, str], Mapping[str, VerifyKey]],
    name: str,
    payload: bytes,
    now: float | None = None,
) -> Verdict | Envelope:
    """The stateless half of the center's decision (pure but for the clock, so a worker can
    run it): the envelope if it is well formed, on its own gateway's topic, signed by a key
    registered for that gateway and, unless it is an alarm, not stamped more than
    ``MAX_AHEAD_S`` ahead of ``now``; else the rejection."""
    where = parse_topic(prefix, name)
    if where is None:
        return Verdict("rejected", name, "bad-topic", "not a gateway topic under the prefix")
    site, gw, kind = where
    try:
        env = parse(payload)
    except EnvelopeError as err:
        return Verdict("rejected", name, err.reason, err.detail)
    gw_keys = keys.get((site, gw), {})
    try:
        _check_route(env, site, gw, kind, gw_keys)
        verify(env, gw_keys)
    except EnvelopeError as err:
        return Verdict("rejected", name, err.reason, err.detail, env)
    if env.type != "alarm":
        now = time.time() if now is None else now
        if clock_flag(env.ts, now) == "ahead":
            ahead = parse_ts(env.ts).timestamp() - now
            return Verdict(
                "rejected",
                name,
                "ts-future",
                f"ts {env.ts} is {ahead:.0f} s ahead of the center's clock "
                f"(at most {MAX_AHEAD_S:.0f} s)",
                env,
            )
    return env


def wire_body(env: Envelope, payload: bytes) -> str | None:
    """``env.body`` as JSON text, cut from the payload it was parsed from when that payload
    is laid out as RFC 8785 lays out an envelope (as a gateway sends it): ``{"body":``
    first, then every other member in sorted order; None otherwise. Cheaper than encoding
    the body again; the text is the body's JSON as the gateway signed it."""
    head = b'{"body":'
    tail = (
        f',"gw":"{env.gw}","id":"{env.id}","kid":"{env.kid}","seq":{env.seq},'
        f'"sig":"{env.sig}","site":"{env.site}","ts":"{env.ts}","type":"{env.type}",'
        f'"v":{env.v}}}'
    ).encode()
    if len(payload) <= len(head) + len(tail):
        return None
    if not (payload.startswith(head) and payload.endswith(tail)):
        return None
    # The tail has no backslash, and a quote in it cannot be inside a string (the
    # payload parsed): its members are the top-level ones, and the rest is the body.
    return payload[len(head) : -len(tail)].decode()


def _check_route(
    env: Envelope, site: str, gw: str, kind: str, gw_keys: Mapping[str, VerifyKey]
) -> None:
    if (env.site, env.gw) != (site, gw):
        raise EnvelopeError(
            "topic-mismatch", f"envelope says {env.site}/{env.gw}, topic says {site}/{gw}"
        )
    if env.type not in TOPIC_TYPES.get(kind, ()):
        raise EnvelopeError("wrong-topic", f"{env.type} published on {kind}")
    if not gw_keys:
        raise EnvelopeError("unknown-gateway", f"{site}/{gw} is not in the registry")
    if env.kid not in gw_keys:
        raise EnvelopeError("kid-not-registered", f"kid {env.kid} may not sign for {gw}")


# -- the checking process of ``Center(workers="process")`` (its initializer and task) ---

_REMOTE: tuple[str, dict[tuple[str, str], dict[str, VerifyKey]]] | None = None


def remote_init(prefix: str, raw: dict[tuple[str, str], list[bytes]], parent: int) -> None:
    global _REMOTE  # noqa: PLW0603 - one checker per worker process
    with contextlib.suppress(OSError, AttributeError):
        # Die with the center, even when it is killed with SIGKILL (Linux prctl).
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the center died while this process was starting
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the center's to handle
    keys = {sg: {k.kid: k for k in map(VerifyKey.from_raw, pubs)} for sg, pubs in raw.items()}
    _REMOTE = (prefix, keys)


def remote_precheck(burst: list[tuple[str, bytes]]) -> list[Verdict | Envelope]:
    assert _REMOTE is not None
    prefix, keys = _REMOTE
    return [precheck(prefix, keys, name, payload) for name, payload in burst]
