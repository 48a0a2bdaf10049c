"""Sans-I/O codec for the button-box serial link (SERIAL.md "Framing").

Bytes go in through ``Decoder.feed``; ``Decoder.next_event`` hands back one ``Frame`` or one
``SerialProtocolError`` at a time (``None`` when it needs more bytes). ``encode`` turns a
``Frame`` into the bytes of one line. Nothing here touches a port, a clock or a logger, so the
same code runs in the gateway, in the simulator and under property tests.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import overload

from gateway.errors import SerialProtocolError

__all__ = [
    "ALL_TYPES",
    "BOX_TYPES",
    "GATEWAY_TYPES",
    "MAX_LINE",
    "MAX_SEQ",
    "Decoder",
    "Frame",
    "crc16",
    "encode",
]

# SERIAL.md "Framing": a line longer than 128 bytes is dropped whole. We count the bytes
# before the line end (`\r\n` or a bare `\n`), so `BODY*CRC` is at most 128 bytes.
MAX_LINE = 128
MAX_SEQ = 0xFFFF

BOX_TYPES: frozenset[str] = frozenset(
    {"HELLO", "HB", "PRESS", "RELEASE", "TAMPER", "POWER", "FAULT"}
)
GATEWAY_TYPES: frozenset[str] = frozenset({"ACK", "LED", "BUZZ", "PING"})
ALL_TYPES: frozenset[str] = BOX_TYPES | GATEWAY_TYPES

_TYPE_RE = re.compile(r"[A-Z]+")
_KEY_RE = re.compile(r"[a-z_]+")
_VALUE_RE = re.compile(r"[A-Za-z0-9._:-]*")
_SEQ_RE = re.compile(r"[0-9]+")
_CRC_RE = re.compile(r"[0-9A-F]{4}")
_UINT_RE = re.compile(r"[0-9]{1,10}")


# --- CRC-16/CCITT-FALSE (SERIAL.md "Framing": poly 0x1021, init 0xFFFF, no reflection) ---


def _make_crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _make_crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data``; ``crc16(b"123456789") == 0x29B1``."""
    crc = 0xFFFF
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[(crc >> 8) ^ byte]
    return crc


# --- Per-type keys (SERIAL.md "Box → gateway" and "Gateway → box") ---


def _uint(value: str) -> bool:
    return _UINT_RE.fullmatch(value) is not None


def _seq_ref(value: str) -> bool:
    return _uint(value) and int(value) <= MAX_SEQ


def _nonempty(value: str) -> bool:
    return value != ""


def _one_of(*allowed: str) -> Callable[[str], bool]:
    choices = frozenset(allowed)
    return lambda value: value in choices


# Required keys and what their values must look like. Keys not listed are allowed and kept
# (a newer box firmware may add one; dropping the whole line would drop a PRESS with it).
_REQUIRED: Mapping[str, Mapping[str, Callable[[str], bool]]] = {
    "HELLO": {"fw": _nonempty, "id": _nonempty},
    "HB": {},
    "PRESS": {"btn": _uint},
    "RELEASE": {"btn": _uint, "ms": _uint},
    "TAMPER": {"state": _one_of("open", "closed")},
    "POWER": {"state": _one_of("mains", "battery", "low")},
    "FAULT": {"code": _nonempty},
    "ACK": {"ref": _seq_ref},
    "LED": {"mode": _one_of("off", "blink", "fast", "solid", "pulse")},
    "BUZZ": {"ms": _uint},
    "PING": {},
}


def _problem(seq: int, type_: str, fields: tuple[tuple[str, str], ...]) -> tuple[str, str] | None:
    """The (reason, detail) that makes a frame invalid, or None when it is valid."""
    if not 0 <= seq <= MAX_SEQ:
        return "bad-seq", f"SEQ {seq} is outside 0..{MAX_SEQ}"
    if _TYPE_RE.fullmatch(type_) is None:
        return "malformed", f"TYPE {type_!r} is not uppercase letters"
    if type_ not in _REQUIRED:
        return "unknown-type", f"TYPE {type_!r} is not in the contract"
    seen: set[str] = set()
    for key, value in fields:
        if _KEY_RE.fullmatch(key) is None:
            return "malformed", f"key {key!r} is not [a-z_]+"
        if _VALUE_RE.fullmatch(value) is None:
            return "malformed", f"value of {key} is not [A-Za-z0-9._:-]*"
        if key in seen:
            return "malformed", f"key {key} appears twice"
        seen.add(key)
    values = dict(fields)
    for key, check in _REQUIRED[type_].items():
        if key not in values:
            return "malformed", f"{type_} needs {key}"
        if not check(values[key]):
            return "malformed", f"{type_} has a bad {key}={values[key]!r}"
    return None


@dataclass(frozen=True, slots=True)
class Frame:
    """One valid frame: ``SEQ,TYPE[,key=value]...``. Construction validates it, so an
    invalid frame cannot exist (``ValueError`` names the reason token and the problem)."""

    seq: int
    type: str
    fields: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        problem = _problem(self.seq, self.type, self.fields)
        if problem is not None:
            raise ValueError(f"{problem[0]}: {problem[1]}")
        # The whole line must fit the reader's limit, or the peer would drop it.
        if len(self.body) + 5 > MAX_LINE:
            raise ValueError(f"too-long: frame would be over {MAX_LINE} bytes")

    @classmethod
    def of(cls, seq: int, type_: str, /, **fields: str) -> Frame:
        """Shorthand: ``Frame.of(2, "PRESS", btn="1")``."""
        return cls(seq, type_, tuple(fields.items()))

    @overload
    def get(self, key: str) -> str | None: ...
    @overload
    def get(self, key: str, default: str) -> str: ...
    def get(self, key: str, default: str | None = None) -> str | None:
        """The value of ``key``, or ``default`` when the frame has no such key."""
        for name, value in self.fields:
            if name == key:
                return value
        return default

    @property
    def body(self) -> str:
        """The text before ``*CRC``, e.g. ``2,PRESS,btn=1``."""
        return ",".join([str(self.seq), self.type, *(f"{k}={v}" for k, v in self.fields)])


def encode(frame: Frame) -> bytes:
    """The bytes of one line for ``frame``: ``BODY*CRC\\r\\n``."""
    body = frame.body.encode("ascii")
    return body + b"*%04X\r\n" % crc16(body)


class Decoder:
    """Turns a byte stream into frames and protocol errors, one line at a time.

    ``accept`` limits the TYPEs this side takes (``BOX_TYPES`` in the gateway,
    ``GATEWAY_TYPES`` in the box); any other TYPE is an ``unknown-type`` error. A partial line
    is held in a buffer of at most ``MAX_LINE + 1`` bytes (room for the ``\\r``); past that the
    line is reported ``too-long`` at once and skipped up to the next ``\\n``. Blank lines are
    ignored. Nothing here raises on input: errors are returned as values.
    """

    def __init__(self, *, accept: Iterable[str] = ALL_TYPES) -> None:
        self._accept = frozenset(accept)
        unknown = self._accept - ALL_TYPES
        if unknown:
            raise ValueError(f"not frame types of the contract: {sorted(unknown)}")
        self._buf = bytearray()
        self._skipping = False
        self._events: deque[Frame | SerialProtocolError] = deque()

    @property
    def buffered(self) -> int:
        """Bytes of the current partial line held (never more than ``MAX_LINE + 1``)."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Take more bytes from the wire; complete lines become events."""
        limit = MAX_LINE + 1
        start, end = 0, len(data)
        while start < end:
            newline = data.find(b"\n", start)
            stop = end if newline < 0 else newline
            if not self._skipping:
                room = limit - len(self._buf)
                if stop - start > room:
                    # Over the limit: report now and drop the rest of the line, so a
                    # stream without line ends cannot grow the buffer (SERIAL.md "Framing").
                    self._buf += data[start : start + room]
                    self._events.append(SerialProtocolError("too-long", bytes(self._buf)))
                    self._buf.clear()
                    self._skipping = True
                else:
                    self._buf += data[start:stop]
            if newline < 0:
                return
            if self._skipping:
                self._skipping = False  # resynchronised at the line end
            else:
                event = self._parse(bytes(self._buf))
                self._buf.clear()
                if event is not None:
                    self._events.append(event)
            start = newline + 1

    def next_event(self) -> Frame | SerialProtocolError | None:
        """The next frame or error, or None when more bytes are needed."""
        return self._events.popleft() if self._events else None

    def receive(self, data: bytes) -> list[Frame | SerialProtocolError]:
        """``feed(data)`` and return every event that is complete now."""
        self.feed(data)
        events = list(self._events)
        self._events.clear()
        return events

    def _parse(self, line: bytes) -> Frame | SerialProtocolError | None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            return None
        if len(line) > MAX_LINE:
            return SerialProtocolError("too-long", line)
        if max(line) > 0x7F:
            return SerialProtocolError("non-ascii", line)
        if min(line) < 0x20 or 0x7F in line:  # control bytes: line noise, not a body
            return SerialProtocolError("malformed", line)
        body, star, crc_text = line.decode("ascii").rpartition("*")
        if not star or not crc_text:
            return SerialProtocolError("no-crc", line)
        if _CRC_RE.fullmatch(crc_text) is None:
            return SerialProtocolError("malformed", line)
        if int(crc_text, 16) != crc16(body.encode("ascii")):
            return SerialProtocolError("bad-crc", line)
        parts = body.split(",")
        if len(parts) < 2:
            return SerialProtocolError("malformed", line)
        seq_text, type_, *pairs = parts
        if _SEQ_RE.fullmatch(seq_text) is None:
            return SerialProtocolError("bad-seq", line)
        fields = []
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if not eq:
                return SerialProtocolError("malformed", line)
            fields.append((key, value))
        seq = int(seq_text)
        problem = _problem(seq, type_, tuple(fields))
        if problem is not None:
            return SerialProtocolError(problem[0], line)
        if type_ not in self._accept:
            return SerialProtocolError("unknown-type", line)
        return Frame(seq, type_, tuple(fields))
