"""The serial codec against SERIAL.md and its vectors, byte for byte, plus
property tests: any bytes give frames or protocol errors, fed whole or one byte at a time."""

from __future__ import annotations

import binascii
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import SerialProtocolError
from gateway.inputs.codec import (
    ALL_TYPES,
    BOX_TYPES,
    GATEWAY_TYPES,
    MAX_LINE,
    Decoder,
    Frame,
    crc16,
    encode,
)

VECTORS = json.loads((Path(__file__).parent / "data" / "serial.json").read_text())


def parse_body(body: str) -> Frame:
    seq, type_, *pairs = body.split(",")
    return Frame(int(seq), type_, tuple(tuple(p.split("=", 1)) for p in pairs))  # type: ignore[misc]


def summary(events: list[Frame | SerialProtocolError]) -> list[object]:
    """Comparable form (exceptions compare by identity)."""
    return [e if isinstance(e, Frame) else ("error", e.reason, e.line) for e in events]


def one_byte_at_a_time(data: bytes, decoder: Decoder | None = None) -> list[object]:
    decoder = decoder or Decoder()
    events: list[Frame | SerialProtocolError] = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        while (event := decoder.next_event()) is not None:
            events.append(event)
    return summary(events)


# --- CRC ---


def test_crc_check_value() -> None:
    assert crc16(b"123456789") == 0x29B1
    assert f"{crc16(b'123456789'):04X}" == VECTORS["check_123456789"]


@settings(deadline=None)  # shared machine: no per-example deadline
@given(st.binary(max_size=300))
def test_crc_matches_binascii(data: bytes) -> None:
    assert crc16(data) == binascii.crc_hqx(data, 0xFFFF)


# --- vectors ---


@pytest.mark.parametrize("vector", VECTORS["frames"], ids=lambda v: v["body"])
def test_vector_encodes_byte_for_byte(vector: dict[str, str]) -> None:
    frame = parse_body(vector["body"])
    assert f"{crc16(vector['body'].encode()):04X}" == vector["crc"]
    assert encode(frame) == vector["line"].encode("ascii")
    assert frame.body == vector["body"]


@pytest.mark.parametrize("vector", VECTORS["frames"], ids=lambda v: v["body"])
def test_vector_decodes(vector: dict[str, str]) -> None:
    line = vector["line"].encode("ascii")
    assert Decoder().receive(line) == [parse_body(vector["body"])]
    # A bare \n ends a line too (SERIAL.md "Framing").
    assert Decoder().receive(line.replace(b"\r\n", b"\n")) == [parse_body(vector["body"])]


def test_vectors_decode_as_one_stream_both_ways() -> None:
    stream = b"".join(v["line"].encode() for v in VECTORS["frames"])
    expected = [parse_body(v["body"]) for v in VECTORS["frames"]]
    assert Decoder().receive(stream) == expected
    assert one_byte_at_a_time(stream) == expected


EXPECTED_REASONS = {
    "bad CRC": "bad-crc",
    "no CRC": "no-crc",
    "lowercase type": "malformed",
    "over 128 bytes": "too-long",
    "seq out of range": "bad-seq",
}


@pytest.mark.parametrize("vector", VECTORS["must_reject"], ids=lambda v: v["why"])
def test_must_reject(vector: dict[str, str]) -> None:
    events = Decoder().receive(vector["line"].encode("ascii"))
    assert len(events) == 1
    assert isinstance(events[0], SerialProtocolError)
    assert events[0].reason == EXPECTED_REASONS[vector["why"]]


def test_direction_filter() -> None:
    press = encode(Frame.of(2, "PRESS", btn="1"))
    ack = encode(Frame.of(0, "ACK", ref="2"))
    (on_box,) = Decoder(accept=GATEWAY_TYPES).receive(press)
    assert isinstance(on_box, SerialProtocolError)
    assert on_box.reason == "unknown-type"
    (on_gateway,) = Decoder(accept=BOX_TYPES).receive(ack)
    assert isinstance(on_gateway, SerialProtocolError)
    assert on_gateway.reason == "unknown-type"


def line(body: str) -> bytes:
    return body.encode() + b"*%04X\r\n" % crc16(body.encode())


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (line("1,FOO"), "unknown-type"),
        (line("1,TAMPER,state=ajar"), "malformed"),
        (line("1,TAMPER"), "malformed"),
        (line("1,POWER,state=solar"), "malformed"),
        (line("1,LED,mode=disco"), "malformed"),
        (line("1,ACK,ref=x"), "malformed"),
        (line("1,ACK,ref=70000"), "malformed"),
        (line("1,PRESS"), "malformed"),
        (line("1,HELLO,fw=1.0"), "malformed"),
        (line("1,HB,k=v,k=w"), "malformed"),
        (line("1,HB,K=v"), "malformed"),
        (line("1,HB,k"), "malformed"),
        (line("1,HB,"), "malformed"),
        (line("1,HB,k=v w"), "malformed"),
        (line("HB"), "malformed"),
        (line("x,HB"), "bad-seq"),
        (line("65536,HB"), "bad-seq"),
        (b"1,HB*c1d9\r\n", "malformed"),  # CRC digits must be uppercase
        (b"1,HB*C1D\r\n", "malformed"),
        (b"1,HB*\r\n", "no-crc"),
        (b"1,HB*C1D8\r\n", "bad-crc"),
        (b"1,H\xc3\x9f*C1D9\r\n", "non-ascii"),
        (b"1,HB\x00*C1D9\r\n", "malformed"),
        (b"\x7f\n", "malformed"),
    ],
)
def test_rejects(data: bytes, reason: str) -> None:
    events = Decoder().receive(data)
    assert [(type(e), getattr(e, "reason", None)) for e in events] == [
        (SerialProtocolError, reason)
    ]


def test_unknown_keys_are_kept() -> None:
    (frame,) = Decoder().receive(line("7,PRESS,btn=2,zone=gate"))
    assert frame == Frame.of(7, "PRESS", btn="2", zone="gate")
    assert isinstance(frame, Frame)
    assert frame.get("btn") == "2"
    assert frame.get("missing") is None
    assert frame.get("missing", "d") == "d"


def test_blank_lines_are_ignored() -> None:
    assert Decoder().receive(b"\r\n\n\r\n") == []


def test_line_length_limit_is_exact() -> None:
    def hello_of_length(n: int) -> bytes:
        head = "1,HELLO,fw=1,id="
        return line(head + "a" * (n - len(head) - 5))

    at_limit = hello_of_length(MAX_LINE)
    assert len(at_limit) == MAX_LINE + 2
    assert isinstance(Decoder().receive(at_limit)[0], Frame)
    assert isinstance(Decoder().receive(at_limit.replace(b"\r\n", b"\n"))[0], Frame)
    (over,) = Decoder().receive(hello_of_length(MAX_LINE + 1))
    assert isinstance(over, SerialProtocolError)
    assert over.reason == "too-long"


def test_buffer_stays_capped_without_line_ends() -> None:
    decoder = Decoder()
    for _ in range(100):
        decoder.feed(b"A" * 1000)
        assert decoder.buffered <= MAX_LINE + 1
    events = decoder.receive(b"\n" + line("5,HB"))
    # The overlong line was reported once, when it passed the limit; then the decoder resyncs.
    assert [getattr(e, "reason", e) for e in events] == ["too-long", Frame.of(5, "HB")]


def test_overlong_line_reported_once() -> None:
    events = Decoder().receive(b"B" * 5000 + b"\r\n" + line("5,HB"))
    assert [getattr(e, "reason", e) for e in events] == ["too-long", Frame.of(5, "HB")]


def test_next_event_needs_data() -> None:
    decoder = Decoder()
    assert decoder.next_event() is None
    decoder.feed(line("3,HB")[:-1])
    assert decoder.next_event() is None
    decoder.feed(b"\n")
    assert decoder.next_event() == Frame.of(3, "HB")
    assert decoder.next_event() is None


# --- Frame validation ---


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ((-1, "HB", ()), "bad-seq"),
        ((65536, "HB", ()), "bad-seq"),
        ((1, "hb", ()), "malformed"),
        ((1, "NOPE", ()), "unknown-type"),
        ((1, "HB", (("Key", "v"),)), "malformed"),
        ((1, "HB", (("k", "v*"),)), "malformed"),
        ((1, "LED", (("mode", "on"),)), "malformed"),
        ((1, "HELLO", (("fw", "1"), ("id", "x" * 120))), "too-long"),
    ],
)
def test_invalid_frame_cannot_exist(
    args: tuple[int, str, tuple[tuple[str, str], ...]], reason: str
) -> None:
    with pytest.raises(ValueError, match=f"^{reason}:"):
        Frame(*args)


def test_frame_is_frozen() -> None:
    frame = Frame.of(1, "HB")
    with pytest.raises(AttributeError):
        frame.seq = 2  # type: ignore[misc]


def test_decoder_rejects_unknown_accept() -> None:
    with pytest.raises(ValueError, match="NOPE"):
        Decoder(accept={"HB", "NOPE"})


# --- properties ---

KEY = st.from_regex(r"[a-z_]{1,8}", fullmatch=True)
VALUE = st.from_regex(r"[A-Za-z0-9._:-]{0,12}", fullmatch=True)
UINT = st.integers(0, 99999).map(str)
REQUIRED = {
    "HELLO": {"fw": VALUE.filter(bool), "id": VALUE.filter(bool)},
    "HB": {},
    "PRESS": {"btn": UINT},
    "RELEASE": {"btn": UINT, "ms": UINT},
    "TAMPER": {"state": st.sampled_from(["open", "closed"])},
    "POWER": {"state": st.sampled_from(["mains", "battery", "low"])},
    "FAULT": {"code": VALUE.filter(bool)},
    "ACK": {"ref": st.integers(0, 65535).map(str)},
    "LED": {"mode": st.sampled_from(["off", "blink", "fast", "solid", "pulse"])},
    "BUZZ": {"ms": UINT},
    "PING": {},
}


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    type_ = draw(st.sampled_from(sorted(ALL_TYPES)))
    required = {key: draw(value) for key, value in REQUIRED[type_].items()}
    extra = draw(st.dictionaries(KEY.filter(lambda k: k not in required), VALUE, max_size=4))
    fields = list({**required, **extra}.items())
    fields = draw(st.permutations(fields))
    seq = draw(st.integers(0, 65535))
    body_len = len(",".join([str(seq), type_, *(f"{k}={v}" for k, v in fields)]))
    if body_len + 5 > MAX_LINE:
        fields = [(k, v) for k, v in fields if k in required]
    return Frame(seq, type_, tuple(fields))


@settings(deadline=None)  # shared machine: no per-example deadline
@given(frames())
def test_round_trip(frame: Frame) -> None:
    data = encode(frame)
    assert len(data) <= MAX_LINE + 2
    assert Decoder().receive(data) == [frame]
    assert one_byte_at_a_time(data) == [frame]


# Bytes that look like frames often enough to reach every branch of the parser.
NOISY = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"\n", b"\r\n", b"\r", b"*", b",", b"=", b"\x00", b"\xff", b"A" * 140]),
        frames().map(encode),
        frames().map(lambda f: encode(f)[:-2]),
    ),
    max_size=20,
).map(b"".join)


@settings(max_examples=300, deadline=None)  # shared machine: no per-example deadline
@given(NOISY)
def test_any_bytes_whole_or_byte_by_byte(data: bytes) -> None:
    decoder = Decoder()
    whole = decoder.receive(data)
    assert all(isinstance(e, Frame | SerialProtocolError) for e in whole)
    assert all(e.reason in REASONS for e in whole if isinstance(e, SerialProtocolError))
    assert decoder.buffered <= MAX_LINE + 1
    assert one_byte_at_a_time(data) == summary(whole)


REASONS = {"too-long", "no-crc", "bad-crc", "bad-seq", "unknown-type", "malformed", "non-ascii"}


@settings(deadline=None)  # shared machine: no per-example deadline
@given(NOISY, st.lists(st.integers(1, 50), max_size=10))
def test_any_chunking_gives_the_same_events(data: bytes, cuts: list[int]) -> None:
    decoder = Decoder()
    events: list[Frame | SerialProtocolError] = []
    pos = 0
    for size in cuts:
        events += decoder.receive(data[pos : pos + size])
        pos += size
    events += decoder.receive(data[pos:])
    assert summary(events) == summary(Decoder().receive(data))


@settings(deadline=None)  # shared machine: no per-example deadline
@given(st.binary(max_size=400), frames())
def test_resync_after_garbage(garbage: bytes, frame: Frame) -> None:
    events = Decoder().receive(garbage + b"\n" + encode(frame))
    assert events[-1] == frame
