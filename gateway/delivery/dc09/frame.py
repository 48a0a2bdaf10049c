"""SIA DC-09 frames, sans I/O: build ``ADM-CID`` and ``NULL`` messages, parse the receiver's
``ACK`` / ``NAK`` / ``DUH`` answers.

A frame on the wire is ``LF crc 0LLL "id"seq Rrcvr Lline #acct [data]_HH:MM:SS,MM-DD-YYYY CR``.
The CRC (CRC-16/ARC, 4 uppercase hex) and the length (``0`` + 3 hex digits) both cover the
span from the first ``"`` to the end of the body (before CR). With a key, the message id
gets a ``*`` and everything after ``[`` is AES-CBC (zero IV) over
``pad|data]_timestamp``, sent as uppercase hex; the pad is random characters that fill the
block. Nothing here reads a clock: the caller passes the time to stamp.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MAX_SEQ = 9999
TIME_FORMAT = "%H:%M:%S,%m-%d-%Y"
_PAD_ALPHABET = string.ascii_letters + string.digits  # never "|", "[" or "]"
_ZERO_IV = bytes(16)
_ACCOUNT = re.compile(r"[0-9A-F]{3,16}")
_RECEIVER = re.compile(r"R[0-9A-F]{1,6}")
_LINE = re.compile(r"L[0-9A-F]{1,6}")
# The answer's header: "id" seq, then R / L / #acct / A0 fields in any order, then "[".
_ANSWER = re.compile(
    r'"(?P<star>\*?)(?P<kind>ACK|NAK|DUH|RSP)"(?P<seq>[0-9]{4})'
    r"(?P<fields>(?:R[0-9A-Fa-f]{1,6}|L[0-9A-Fa-f]{1,6}|#[0-9A-Fa-f]{3,16}|A0)*)\[(?P<rest>.*)",
    re.DOTALL,
)
_STAMP = re.compile(r"_([0-9]{2}:[0-9]{2}:[0-9]{2},[0-9]{2}-[0-9]{2}-[0-9]{4})")

Kind = Literal["ACK", "NAK", "DUH", "RSP"]


class ProtocolError(ValueError):
    """Bytes that are not a well-formed DC-09 answer (one line saying what is wrong)."""


def crc16_arc(data: bytes) -> int:
    """CRC-16/ARC: polynomial 0x8005 reflected (0xA001), initial value 0, no final xor."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def check_key(key: bytes) -> bytes:
    if len(key) not in (16, 24, 32):
        raise ValueError(f"an AES key has 16, 24 or 32 bytes (got {len(key)})")
    return key


def parse_key(text: str) -> bytes:
    """A key as written in a key file: 32, 48 or 64 hex digits (AES-128/192/256)."""
    digits = text.strip()
    if len(digits) not in (32, 48, 64) or not all(c in string.hexdigits for c in digits):
        raise ValueError("expected 32, 48 or 64 hex digits (an AES-128/192/256 key)")
    return bytes.fromhex(digits)


def _aes(key: bytes) -> Cipher[modes.CBC]:
    return Cipher(algorithms.AES(check_key(key)), modes.CBC(_ZERO_IV))


def encrypt(key: bytes, plain: str, pad: str | None = None) -> str:
    """``pad|plain`` encrypted and hex-encoded (uppercase); ``pad`` (tests) or random
    characters fill the last block (at least one)."""
    if pad is None:
        size = 16 - (len(plain) + 1) % 16 or 16
        pad = "".join(secrets.choice(_PAD_ALPHABET) for _ in range(size))
    block = f"{pad}|{plain}".encode("ascii")
    if len(block) % 16:
        raise ValueError("pad does not fill the last AES block")
    enc = _aes(key).encryptor()
    return (enc.update(block) + enc.finalize()).hex().upper()


def decrypt(key: bytes, hex_text: str) -> str:
    """The text of an encrypted block (pad included); ProtocolError if it is not one."""
    try:
        raw = bytes.fromhex(hex_text)
    except ValueError:
        raise ProtocolError("encrypted part is not hex") from None
    if not raw or len(raw) % 16:
        raise ProtocolError("encrypted part is not whole AES blocks")
    dec = _aes(key).decryptor()
    return (dec.update(raw) + dec.finalize()).decode("ascii", errors="replace")


def timestamp(when: datetime) -> str:
    """``_HH:MM:SS,MM-DD-YYYY`` in UTC."""
    return "_" + when.astimezone(UTC).strftime(TIME_FORMAT)


def wrap(body: str) -> bytes:
    """LF, CRC, length, ``body``, CR."""
    raw = body.encode("ascii")
    if len(raw) > 0xFFF:
        raise ValueError("DC-09 message longer than 4095 characters")
    return b"\n" + f"{crc16_arc(raw):04X}0{len(raw):03X}".encode("ascii") + raw + b"\r"


@dataclass(frozen=True, slots=True)
class Header:
    """What every frame from this transmitter carries."""

    account: str  # 3-16 hex digits
    receiver: str = "R1"
    line: str = "L1"

    def __post_init__(self) -> None:
        if not _ACCOUNT.fullmatch(self.account):
            raise ValueError(f"account must be 3-16 uppercase hex digits (got {self.account!r})")
        if not _RECEIVER.fullmatch(self.receiver):
            raise ValueError(f"receiver must be R and 1-6 hex digits (got {self.receiver!r})")
        if not _LINE.fullmatch(self.line):
            raise ValueError(f"line must be L and 1-6 hex digits (got {self.line!r})")


def cid_data(account: str, qualifier: int, code: str, partition: int, zone: int) -> str:
    """The ADM-CID data block: ``#ACCT|QEEE GG ZZZ`` (qualifier 1 new event, 3 restore)."""
    if qualifier not in (1, 3, 6):
        raise ValueError(f"Contact ID qualifier is 1, 3 or 6 (got {qualifier})")
    if len(code) != 3 or not code.isdigit():
        raise ValueError(f"Contact ID event code is 3 digits (got {code!r})")
    if not 0 <= partition <= 99 or not 0 <= zone <= 999:
        raise ValueError(f"partition 0-99 and zone 0-999 (got {partition}, {zone})")
    return f"#{account}|{qualifier}{code} {partition:02d} {zone:03d}"


def build(
    msg_id: str,
    header: Header,
    seq: int,
    data: str,
    when: datetime,
    *,
    key: bytes | None = None,
    pad: str | None = None,
) -> bytes:
    """One frame: ``msg_id`` (``ADM-CID``, ``NULL``) with ``data`` between the brackets.
    With ``key`` the frame is always encrypted."""
    if not 1 <= seq <= MAX_SEQ:
        raise ValueError(f"sequence number is 0001-9999 (got {seq})")
    head = f"{seq:04d}{header.receiver}{header.line}#{header.account}["
    tail = f"]{timestamp(when)}"
    if key is None:
        return wrap(f'"{msg_id}"{head}{data}{tail}')
    return wrap(f'"*{msg_id}"{head}{encrypt(key, data + tail, pad)}')


def build_cid(
    header: Header,
    seq: int,
    *,
    qualifier: int,
    code: str,
    partition: int,
    zone: int,
    when: datetime,
    key: bytes | None = None,
    pad: str | None = None,
) -> bytes:
    data = cid_data(header.account, qualifier, code, partition, zone)
    return build("ADM-CID", header, seq, data, when, key=key, pad=pad)


def build_null(
    header: Header, seq: int, *, when: datetime, key: bytes | None = None, pad: str | None = None
) -> bytes:
    """A supervision (link test) message: no data."""
    return build("NULL", header, seq, "", when, key=key, pad=pad)


@dataclass(frozen=True, slots=True)
class Answer:
    """A receiver's answer. ``time``: the receiver's clock when it says it (NAK carries it so
    that the transmitter can re-synchronise)."""

    kind: Kind
    seq: int
    account: str | None
    encrypted: bool
    time: datetime | None


def parse_answer(frame: bytes, key: bytes | None = None) -> Answer:
    """One answer frame (with or without its LF/CR) → ``Answer``; ProtocolError otherwise."""
    raw = frame.strip(b"\r\n")
    if len(raw) < 8:
        raise ProtocolError("answer shorter than its CRC and length")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("answer is not ASCII") from None
    crc, length, body = text[:4], text[4:8], text[8:]
    if not all(c in string.hexdigits for c in crc + length):
        raise ProtocolError("answer CRC or length is not hex")
    if int(length, 16) != len(body):
        raise ProtocolError(f"answer length {length} does not match {len(body)} characters")
    if int(crc, 16) != crc16_arc(body.encode("ascii")):
        raise ProtocolError(f"answer CRC {crc} does not match")
    m = _ANSWER.fullmatch(body)
    if m is None:
        raise ProtocolError("not an ACK, NAK, DUH or RSP answer")
    account = next((f[1:].upper() for f in re.findall(r"#[0-9A-Fa-f]+", m["fields"])), None)
    rest = m["rest"]
    if m["star"]:
        if key is None:
            raise ProtocolError("encrypted answer but no key is configured")
        rest = decrypt(key, rest.rstrip("]"))
        if "]" not in rest:
            raise ProtocolError("encrypted answer does not decrypt with our key")
    stamp = _STAMP.search(rest)
    when = None
    if stamp is not None:
        try:
            when = datetime.strptime(stamp[1], TIME_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            raise ProtocolError(f"answer timestamp {stamp[1]} is not a date") from None
    elif m["kind"] == "NAK":
        raise ProtocolError("NAK without the receiver's time")
    kind: Kind = m["kind"]  # type: ignore[assignment]  # the regex admits only these four
    return Answer(kind, int(m["seq"]), account, bool(m["star"]), when)


class Splitter:
    """Cuts a byte stream into frames at LF ... CR (bytes before an LF are dropped)."""

    MAX = 4200  # longer than any frame: a stream that never ends one is not DC-09

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            start = self._buf.find(b"\n")
            if start < 0:
                self._buf = b""
                return out
            end = self._buf.find(b"\r", start)
            if end < 0:
                self._buf = self._buf[start:]
                if len(self._buf) > self.MAX:
                    self._buf = b""
                    raise ProtocolError("answer longer than any DC-09 frame")
                return out
            out.append(self._buf[start : end + 1])
            self._buf = self._buf[end + 1 :]
