"""Envelopes of PROTOCOL.md "Envelope": build, canonicalise (RFC 8785), sign,
parse and verify.

The wire payload is the RFC 8785 canonical form of the whole signed object (so it is
deterministic and compact); the signature covers the canonical form without ``sig``.
Parsing and verification are pure functions, so the center and ``alarmgw verify`` share them.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.contract import jcs
from gateway.contract.signing import SigningKey, VerifyKey
from gateway.errors import EnvelopeError

VERSION = 1
TYPES = frozenset(
    {"alarm", "test", "trouble", "restore", "heartbeat", "state", "ack", "dispatch", "resync"}
)
DISPATCH_STATUSES = frozenset({"acknowledged", "resolved"})
EVENT_TYPES = frozenset({"alarm", "test", "trouble", "restore"})
FIELDS = ("v", "id", "type", "site", "gw", "seq", "ts", "kid", "body", "sig")
MAX_SEQ = 2**53 - 1
MAX_PAYLOAD = 64 * 1024  # far above any real envelope; bounds what a peer can make us parse

ALARM_CODES = frozenset({"120", "121", "122", "123"})
TEST_CODES = frozenset({"601"})
TROUBLE_CODES = frozenset({"137", "301", "302", "330", "350", "380", "393", "626"})

IDENT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
UUID7_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
KID_RE = re.compile(r"^[0-9a-f]{16}$")
INPUT_RE = re.compile(r"^(gpio|serial):[a-z0-9][a-z0-9_-]{0,31}$")
DEVICE_RE = re.compile(r"^(button|bollard|camera|gateway|serial:[a-z0-9][a-z0-9_-]{0,31})$")


def uuid7(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version 7, variant 10, 74 random bits."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76 | ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62 | (rand & (2**62 - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def format_ts(when: datetime | float | None = None) -> str:
    """RFC 3339 UTC with milliseconds and ``Z``; a float is Unix seconds."""
    if when is None:
        when = time.time()
    if isinstance(when, datetime):
        when = when.astimezone(UTC)
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    global _ts_second  # noqa: PLW0603 - a one-entry cache
    # As datetime.fromtimestamp: microseconds rounded half-even, then truncated to ms.
    frac, whole_f = math.modf(when)
    us = round(frac * 1e6)
    whole = int(whole_f)
    if us >= 1_000_000:
        whole, us = whole + 1, us - 1_000_000
    elif us < 0:
        whole, us = whole - 1, us + 1_000_000
    ms = us // 1000
    second, text = _ts_second
    if second != whole:  # on the hot path most stamps fall in the same second as the last
        text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole))
        _ts_second = (whole, text)
    return f"{text}{ms:03d}Z"


_ts_second: tuple[int, str] = (-1, "")


def parse_ts(ts: str) -> datetime:
    if not TS_RE.match(ts):
        raise ValueError(f"not RFC 3339 UTC with milliseconds: {ts!r}")
    return datetime.fromisoformat(ts)  # 3.11 reads the "Z"; checks the calendar too


def canonical(obj: Mapping[str, Any]) -> bytes:
    """RFC 8785 (JCS) canonical UTF-8 bytes (gateway/contract/jcs.py,
    checked against ``rfc8785``)."""
    return jcs.dumps(obj)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A signed envelope. Construct with ``build`` or ``parse``; fields mirror the spec."""

    v: int
    id: str
    type: str
    site: str
    gw: str
    seq: int
    ts: str
    kid: str
    body: Mapping[str, Any]
    sig: str
    # The payload bytes when ``build`` made this envelope (the JCS form it already had).
    wire: bytes | None = field(default=None, compare=False, repr=False)

    def __reduce__(self) -> tuple[Callable[..., Envelope], tuple[Any, ...]]:
        # Plain positional arguments: pickling (the center's checker process sends parsed
        # envelopes back) then runs in C, not through dataclass __getstate__/__setstate__.
        return Envelope, (
            self.v,
            self.id,
            self.type,
            self.site,
            self.gw,
            self.seq,
            self.ts,
            self.kid,
            self.body,
            self.sig,
            self.wire,
        )

    def unsigned(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "id": self.id,
            "type": self.type,
            "site": self.site,
            "gw": self.gw,
            "seq": self.seq,
            "ts": self.ts,
            "kid": self.kid,
            "body": self.body,
        }

    def signing_bytes(self) -> bytes:
        """What ``sig`` covers: the JCS form of the envelope without ``sig``."""
        return canonical(self.unsigned())

    def to_dict(self) -> dict[str, Any]:
        return {**self.unsigned(), "sig": self.sig}

    def to_bytes(self) -> bytes:
        """The MQTT payload: the RFC 8785 form of the whole signed envelope (receivers
        re-canonicalise to verify, so any JSON would do; this one is deterministic, and it
        lets ``resign`` work on the bytes). Compact JSON if JCS cannot represent a value
        (a parsed envelope that was never verified)."""
        if self.wire is not None:
            return self.wire
        try:
            return _splice_sig(self.signing_bytes(), self.sig)
        except (TypeError, ValueError):
            return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


def _splice_sig(signed: bytes, sig: str) -> bytes:
    """The JCS form of the whole envelope from that of the envelope without ``sig``: ``sig``
    sorts just before the top-level ``site``, and nothing after ``body`` (which sorts first
    and is the only member that can hold an object) can contain ``,"site":``."""
    at = signed.rfind(b',"site":')
    return signed[:at] + b',"sig":"' + sig.encode() + b'"' + signed[at:]


def build(
    *,
    type: str,
    site: str,
    gw: str,
    seq: int,
    body: Mapping[str, Any],
    key: SigningKey,
    ts: str | None = None,
    id: str | None = None,
) -> Envelope:
    """Build and sign an envelope; validates every field first, so an invalid one cannot exist."""
    fields: dict[str, Any] = {
        "v": VERSION,
        "id": id or uuid7(),
        "type": type,
        "site": site,
        "gw": gw,
        "seq": seq,
        "ts": ts or format_ts(),
        "kid": key.kid,
        "body": dict(body),
    }
    try:
        _check_fields({**fields, "sig": "x"})
    except EnvelopeError as err:
        raise ValueError(f"cannot build envelope: {err}") from err
    signed = canonical(fields)
    sig = key.sign(signed)
    return Envelope(sig=sig, wire=_splice_sig(signed, sig), **fields)


# What follows ``body`` in the JCS form of one of our envelopes: flat members only.
_TAIL_RE = re.compile(
    rb'(,"gw":"[a-z0-9-]+","id":"[0-9a-f-]+"),"kid":"[0-9a-f]{16}","seq":[0-9]+'
    rb',"sig":"[A-Za-z0-9_-]+"(,"site":"[a-z0-9-]+","ts":"[0-9:.TZ-]+","type":"[a-z]+","v":1})'
)


def resign(payload: bytes, *, seq: int, key: SigningKey) -> tuple[int, bytes]:
    """Our own queued envelope under a fresh ``seq`` and signature (same id, type, ts and
    body; the current key's kid): (seq, payload). Skips the validation ``build`` does,
    because the payload is one we built; raises ValueError if it is not an envelope.

    The new payload is the JCS form of the whole signed envelope. A payload already in that
    form (``build`` writes it) is edited as bytes: ``body`` is left as it is, and only the
    flat members after it are written again. Others (rows queued by an older version) are
    parsed and canonicalised."""
    at = payload.rfind(b',"gw":"')
    tail = _TAIL_RE.fullmatch(payload, at) if payload.startswith(b'{"body":{') else None
    if tail is not None:
        head = b'%s%s,"kid":"%s","seq":%d' % (payload[:at], tail[1], key.kid.encode(), seq)
        sig = key.sign(head + tail[2])
        return seq, b'%s,"sig":"%s"%s' % (head, sig.encode(), tail[2])
    obj = json.loads(payload)
    if not isinstance(obj, dict) or set(obj) != set(FIELDS):
        raise ValueError("not an envelope")
    del obj["sig"]
    obj["seq"] = seq
    obj["kid"] = key.kid
    signed = canonical(obj)
    return seq, _splice_sig(signed, key.sign(signed))


def parse(payload: bytes | str) -> Envelope:
    """Decode and structurally validate a payload (no signature check yet).

    Raises EnvelopeError with reason ``too-large``, ``not-json`` (also for a payload that
    is not UTF-8), ``duplicate-key`` or ``malformed``."""
    if len(payload) > MAX_PAYLOAD:
        raise EnvelopeError("too-large", f"{len(payload)} bytes")
    try:
        obj = _loads(payload)
    except DuplicateKey as err:
        raise EnvelopeError("duplicate-key", str(err)[:80]) from None
    except (ValueError, RecursionError) as err:
        raise EnvelopeError("not-json", str(err)[:80]) from None
    if not isinstance(obj, dict):
        raise EnvelopeError("malformed", "not a JSON object")
    _check_fields(obj)
    return Envelope(**{k: obj[k] for k in FIELDS})


def verify(
    env: Envelope,
    keys: Mapping[str, VerifyKey],
    *,
    canonicalize: Callable[[Mapping[str, Any]], bytes] = canonical,
) -> None:
    """Check the signature against the key named by ``env.kid`` among ``keys``.

    ``canonicalize`` lets ``alarmgw verify`` use the independent ``rfc8785`` package.
    Raises EnvelopeError ``unknown-kid`` or ``bad-signature``."""
    key = keys.get(env.kid)
    if key is None:
        raise EnvelopeError("unknown-kid", f"kid {env.kid} is not trusted here")
    try:
        data = canonicalize(env.unsigned())
    except (TypeError, ValueError) as err:  # e.g. a float JCS cannot represent
        raise EnvelopeError("malformed", f"cannot canonicalise: {err}") from None
    if not key.verify(data, env.sig):
        raise EnvelopeError("bad-signature", f"signature does not verify with kid {env.kid}")


def parse_and_verify(payload: bytes | str, keys: Mapping[str, VerifyKey]) -> Envelope:
    env = parse(payload)
    verify(env, keys)
    return env


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


class DuplicateKey(ValueError):
    """An object names one member twice (PROTOCOL.md "Envelope": member names are unique)."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # the common case costs one len() each
        names = [name for name, _value in pairs]
        twice = next(name for name in names if names.count(name) > 1)
        raise DuplicateKey(f"member {twice!r} appears twice")
    return obj


_DECODE = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_pairs).decode


def _loads(payload: bytes | str) -> Any:
    """The JSON value of a payload that must be UTF-8 without a BOM (PROTOCOL.md "Envelope"),
    with no NaN/Infinity and no member name twice in any object. A decoder made once."""
    if not isinstance(payload, str):
        if payload.startswith(b"\xef\xbb\xbf"):
            raise UnicodeError("not UTF-8 JSON: starts with a byte order mark")
        payload = payload.decode()  # strict UTF-8: UTF-16/32 and lone surrogates fail here
    elif payload.startswith("\ufeff"):
        raise UnicodeError("not UTF-8 JSON: starts with a byte order mark")
    return _DECODE(payload)


_FIELD_SET = frozenset(FIELDS)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fields(obj: Mapping[str, Any]) -> None:
    if obj.keys() != _FIELD_SET:
        missing = [k for k in FIELDS if k not in obj]
        if missing:
            raise EnvelopeError("malformed", f"missing field(s): {', '.join(missing)}")
        extra = sorted(set(obj) - _FIELD_SET)
        raise EnvelopeError("malformed", f"unexpected field(s): {', '.join(extra)}")
    if not _is_int(obj["v"]) or obj["v"] != VERSION:
        raise EnvelopeError("malformed", f"v must be {VERSION}")
    checks: list[tuple[str, re.Pattern[str]]] = [
        ("id", UUID7_RE),
        ("site", IDENT_RE),
        ("gw", IDENT_RE),
        ("ts", TS_RE),
        ("kid", KID_RE),
    ]
    for name, pattern in checks:
        value = obj[name]
        if not isinstance(value, str) or not pattern.match(value):
            raise EnvelopeError("malformed", f"{name} is not valid: {str(value)[:40]!r}")
    if obj["type"] not in TYPES:
        raise EnvelopeError("malformed", f"unknown type {str(obj['type'])[:20]!r}")
    if not _is_int(obj["seq"]) or not 1 <= obj["seq"] <= MAX_SEQ:
        raise EnvelopeError("malformed", "seq must be an integer in 1..2^53-1")
    if not isinstance(obj["sig"], str):
        raise EnvelopeError("malformed", "sig must be a string")
    try:
        parse_ts(obj["ts"])
    except ValueError:
        raise EnvelopeError("malformed", f"ts is not a valid time: {obj['ts']!r}") from None
    if not isinstance(obj["body"], dict):
        raise EnvelopeError("malformed", "body must be an object")
    _check_body(obj["type"], obj["body"])


def _need(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(key)
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float))
    if not ok:
        raise EnvelopeError("malformed", f"body.{key} missing or of the wrong type")
    return value


def _finite(body: Mapping[str, Any], key: str) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EnvelopeError("malformed", f"body.{key} must be a finite number")
    return float(value)


def _check_body(kind: str, body: Mapping[str, Any]) -> None:
    """Per-type body rules of PROTOCOL.md "Bodies" (only what the center relies on)."""
    if kind in ("alarm", "test"):
        code = _need(body, "code", str)
        is_test = _need(body, "test", bool)
        if kind == "test" and (code not in TEST_CODES | ALARM_CODES or not is_test):
            raise EnvelopeError("malformed", "a test envelope must have test=true")
        if kind == "alarm" and (code not in ALARM_CODES or is_test):
            raise EnvelopeError("malformed", f"alarm with code {code!r} or test=true")
        _need(body, "kind", str)
        if not INPUT_RE.match(_need(body, "input", str)):
            raise EnvelopeError("malformed", "body.input must be gpio:<name> or serial:<name>")
        location = _need(body, "location", dict)
        _need(location, "name", str)
        _need(location, "address", str)
        _finite(location, "lat")
        _finite(location, "lon")
        _need(_need(body, "contact", dict), "phone", str)
    elif kind in ("trouble", "restore"):
        if _need(body, "code", str) not in TROUBLE_CODES:
            raise EnvelopeError("malformed", f"unknown trouble code {body['code']!r}")
        if not DEVICE_RE.match(_need(body, "device", str)):
            raise EnvelopeError("malformed", f"unknown device {body['device'][:40]!r}")
        _need(body, "detail", str)
        # A flapping device's summary carries how many changes it stands for (PROTOCOL.md
        # "Delivery semantics": "summarised (with a count)").
        if "count" in body and not (_is_int(body["count"]) and body["count"] >= 1):
            raise EnvelopeError("malformed", "body.count must be an integer >= 1")
    elif kind in ("ack", "dispatch"):
        ids = _need(body, "ids", list)
        if not ids or not all(isinstance(i, str) and UUID7_RE.match(i) for i in ids):
            raise EnvelopeError("malformed", "body.ids must be a non-empty list of envelope ids")
        if kind == "dispatch" and body.get("status") not in DISPATCH_STATUSES:
            raise EnvelopeError("malformed", "body.status must be acknowledged or resolved")
    elif kind == "resync":
        if not KID_RE.match(_need(body, "kid", str)):
            raise EnvelopeError("malformed", "body.kid must be 16 lowercase hex digits")
        next_seq = body.get("next_seq")
        if not (isinstance(next_seq, int) and _is_int(next_seq) and 1 <= next_seq <= MAX_SEQ):
            raise EnvelopeError("malformed", "body.next_seq must be an integer from 1 to 2^53-1")
    elif kind == "state":
        if body.get("status") not in ("online", "offline"):
            raise EnvelopeError("malformed", "body.status must be online or offline")
        if not _is_int(body.get("session")):
            raise EnvelopeError("malformed", "body.session must be an integer")
    elif kind == "heartbeat":
        _check_heartbeat(body)


HEARTBEAT_INPUT_STATES = frozenset({"ok", "trouble", "unknown"})
BOLLARD_STATES = frozenset({"up", "down", "moving", "fault", "unknown"})


def _count(body: Mapping[str, Any], key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise EnvelopeError("malformed", f"body.{key} must be an integer >= 0")
    return value


def _flag(body: Mapping[str, Any], key: str) -> None:
    if not isinstance(body.get(key), bool):
        raise EnvelopeError("malformed", f"body.{key} must be true or false")


def _check_heartbeat(body: Mapping[str, Any]) -> None:
    """PROTOCOL.md "Bodies" heartbeat: every field; ``bollard`` and ``camera`` only where the
    site has them (docs/schemas/body/heartbeat.schema.json). Unknown extra keys are allowed."""
    if _finite(body, "uptime_s") < 0:
        raise EnvelopeError("malformed", "body.uptime_s must be >= 0")
    _count(body, "session")
    queue = _need(body, "queue", dict)
    _count(queue, "pending")
    if _finite(queue, "oldest_s") < 0:
        raise EnvelopeError("malformed", "body.queue.oldest_s must be >= 0")
    inputs = _need(body, "inputs", dict)
    if not all(INPUT_RE.match(k) and v in HEARTBEAT_INPUT_STATES for k, v in inputs.items()):
        raise EnvelopeError("malformed", "body.inputs: gpio:/serial:<name> → ok|trouble|unknown")
    _flag(_need(body, "clock", dict), "synced")
    _count(_need(body, "disk", dict), "free_bytes")
    if "bollard" in body:
        bollard = _need(body, "bollard", dict)
        if bollard.get("state") not in BOLLARD_STATES:
            raise EnvelopeError("malformed", "body.bollard.state is not a bollard state")
        since = bollard.get("since")
        if since is not None and not (isinstance(since, str) and TS_RE.match(since)):
            raise EnvelopeError("malformed", "body.bollard.since must be an RFC 3339 time")
    if "camera" in body:
        camera = _need(body, "camera", dict)
        for key in ("recording", "ok"):  # null: not known yet (the recorder not asked yet)
            if camera.get(key) is not None:
                _flag(camera, key)
            elif key not in camera:
                raise EnvelopeError("malformed", f"body.camera.{key} must be present")
        if "retention_days" in camera and _finite(camera, "retention_days") < 0:
            raise EnvelopeError("malformed", "body.camera.retention_days must be >= 0")
        if "required_days" in camera and _count(camera, "required_days") < 1:
            raise EnvelopeError("malformed", "body.camera.required_days must be >= 1")
