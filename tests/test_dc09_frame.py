"""SIA DC-09 frames: byte-exact vectors, AES, answers, and the Contact ID mapping."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st
from pysiaalarm import SIAAccount, SIAEvent

from gateway.delivery.dc09 import cid
from gateway.delivery.dc09.frame import (
    Header,
    ProtocolError,
    Splitter,
    build_cid,
    build_null,
    crc16_arc,
    parse_answer,
    parse_key,
)

WHEN = datetime(2025, 9, 25, 14, 12, 4, tzinfo=UTC)
KEY_TEXT = "A1B2C3D4E5F60718"  # pysiaalarm takes these 16 characters as the AES-128 key
KEY = KEY_TEXT.encode("ascii")
KEY_256_TEXT = "A1B2C3D4E5F60718293A4B5C6D7E8F90"


def reference_crc(data: bytes) -> int:
    """CRC-16/ARC the other way round: a 256-entry table of the reflected polynomial."""
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
        table.append(c)
    crc = 0
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


def framed(body: str) -> bytes:
    """LF, CRC, 0LLL, body, CR, computed independently of the module under test."""
    return b"\n" + f"{reference_crc(body.encode()):04X}0{len(body):03X}{body}".encode() + b"\r"


def test_crc16_arc_check_value() -> None:
    # The catalogue's check value of CRC-16/ARC.
    assert crc16_arc(b"123456789") == 0xBB3D


@pytest.mark.parametrize(
    "captured",
    [
        # Frames captured from alarm panels (pysiaalarm's test data): CRC and 0LLL as sent.
        '76D80055"*NULL"0000R0L0#AAAB[B4BC8B40D0E6D959D6BEA78E88CC0B2155741A3C44FBB96D476A3E557'
        "CAD64D9",
        '85DF0078"*SIA-DCS"4480L0#EA1984[83F153789366885D5F83DD5A8D19F691DE6602D5D71342E244C040C'
        "5D10D89040444068312750F38DF7E63AD3DE8AD5A",
    ],
)
def test_crc_and_length_of_captured_frames(captured: str) -> None:
    body = captured[8:].encode("ascii")
    assert f"{crc16_arc(body):04X}" == captured[:4]
    assert f"0{len(body):03X}" == captured[4:8]


def test_plain_adm_cid_frame_byte_exact() -> None:
    frame = build_cid(
        Header("AB12", "R1", "L1"), 1, qualifier=1, code="120", partition=1, zone=3, when=WHEN
    )
    body = '"ADM-CID"0001R1L1#AB12[#AB12|1120 01 003]_14:12:04,09-25-2025'
    assert frame == framed(body)
    assert frame == b'\nF2BD003D"ADM-CID"0001R1L1#AB12[#AB12|1120 01 003]_14:12:04,09-25-2025\r'


def test_plain_null_frame_byte_exact() -> None:
    frame = build_null(Header("AB12"), 9999, when=WHEN)
    body = '"NULL"9999R1L1#AB12[]_14:12:04,09-25-2025'
    assert (
        frame
        == b"\n" + f"{reference_crc(body.encode()):04X}0{len(body):03X}{body}".encode() + b"\r"
    )


def test_encrypted_frame_byte_exact_and_decrypts() -> None:
    rest = "|#AB12|3350 01 000]_14:12:04,09-25-2025"
    pad = "x" * (16 - len(rest) % 16)
    frame = build_cid(
        Header("AB12"),
        42,
        qualifier=3,
        code="350",
        partition=1,
        zone=0,
        when=WHEN,
        key=KEY,
        pad=pad,
    )
    plain = f"{pad}{rest}".encode()
    enc = Cipher(algorithms.AES(KEY), modes.CBC(bytes(16))).encryptor()
    cipher_hex = (enc.update(plain) + enc.finalize()).hex().upper()
    body = f'"*ADM-CID"0042R1L1#AB12[{cipher_hex}'
    assert frame == framed(body)


@pytest.mark.parametrize("key_text", [None, KEY_TEXT, "A1B2C3D4E5F60718293A4B5C", KEY_256_TEXT])
def test_pysiaalarm_reads_our_frames(key_text: str | None) -> None:
    key = None if key_text is None else key_text.encode()
    account = {"AB12": SIAAccount("AB12", key_text, allowed_timeband=None)}
    frame = build_cid(
        Header("AB12"), 7, qualifier=1, code="120", partition=2, zone=5, when=WHEN, key=key
    )
    event = SIAEvent.from_line(frame.decode().strip(), account)
    assert event.valid_message
    assert (event.code, event.partition, event.ri, event.account) == ("PA", "02", "005", "AB12")
    assert event.encrypted is (key is not None)
    null = SIAEvent.from_line(
        build_null(Header("AB12"), 8, when=WHEN, key=key).decode().strip(), account
    )
    assert null.valid_message
    assert null.code == "RP"


@given(
    seq=st.integers(1, 9999),
    qualifier=st.sampled_from([1, 3]),
    code=st.sampled_from(["120", "121", "122", "137", "301", "330", "350", "601"]),
    partition=st.integers(0, 99),
    zone=st.integers(0, 999),
    account=st.text(alphabet="0123456789ABCDEF", min_size=3, max_size=16),
    key_text=st.sampled_from([None, KEY_TEXT, KEY_256_TEXT]),
)
def test_any_valid_frame_reads_back_in_pysiaalarm(
    seq: int,
    qualifier: int,
    code: str,
    partition: int,
    zone: int,
    account: str,
    key_text: str | None,
) -> None:
    key = None if key_text is None else key_text.encode()
    frame = build_cid(
        Header(account),
        seq,
        qualifier=qualifier,
        code=code,
        partition=partition,
        zone=zone,
        when=WHEN,
        key=key,
    )
    accounts = {account: SIAAccount(account, key_text, allowed_timeband=None)}
    event = SIAEvent.from_line(frame.decode().strip(), accounts)
    assert event.valid_message
    assert (event.sequence, event.account) == (f"{seq:04d}", account)
    assert (event.event_qualifier, event.event_type) == (str(qualifier), code)
    assert (event.partition, event.ri) == (f"{partition:02d}", f"{zone:03d}")
    assert event.timestamp == WHEN


def test_random_pad_fills_the_block_and_differs() -> None:
    a = build_null(Header("AB12"), 1, when=WHEN, key=KEY)
    b = build_null(Header("AB12"), 1, when=WHEN, key=KEY)
    assert a != b  # random pad
    assert len(a) == len(b)


def test_header_and_key_validation() -> None:
    with pytest.raises(ValueError, match="account"):
        Header("ab12")
    with pytest.raises(ValueError, match="receiver"):
        Header("AB12", "X1")
    with pytest.raises(ValueError, match="sequence"):
        build_null(Header("AB12"), 0, when=WHEN)
    with pytest.raises(ValueError, match="sequence"):
        build_null(Header("AB12"), 10000, when=WHEN)
    assert parse_key("41" * 16) == b"A" * 16
    with pytest.raises(ValueError, match="hex digits"):
        parse_key("41" * 15)


# -- answers ---------------------------------------------------------------------------


def _wrap(body: str) -> bytes:
    return b"\n" + f"{reference_crc(body.encode()):04X}{len(body):04X}{body}".encode() + b"\r"


def test_parse_ack_nak_duh() -> None:
    ack = parse_answer(_wrap('"ACK"0012R1L1#AB12[]'))
    assert (ack.kind, ack.seq, ack.account, ack.encrypted, ack.time) == (
        "ACK",
        12,
        "AB12",
        False,
        None,
    )
    nak = parse_answer(_wrap('"NAK"0000R0L0A0[]_14:12:04,09-25-2025'))
    assert (nak.kind, nak.time) == ("NAK", WHEN)
    assert parse_answer(_wrap('"DUH"0003R1L1#AB12[]')).kind == "DUH"


def test_parse_encrypted_ack() -> None:
    enc = Cipher(algorithms.AES(KEY), modes.CBC(bytes(16))).encryptor()
    plain = "0000]_14:12:04,09-25-2025".zfill(32).encode()
    hex_text = (enc.update(plain) + enc.finalize()).hex().upper()
    ack = parse_answer(_wrap(f'"*ACK"0005R1L1#AB12[{hex_text}'), KEY)
    assert (ack.kind, ack.seq, ack.encrypted, ack.time) == ("ACK", 5, True, WHEN)
    with pytest.raises(ProtocolError, match="decrypt"):
        parse_answer(_wrap(f'"*ACK"0005R1L1#AB12[{hex_text}'), b"B" * 16)
    with pytest.raises(ProtocolError, match="no key"):
        parse_answer(_wrap(f'"*ACK"0005R1L1#AB12[{hex_text}'))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\n0000",
        b'\nFFFF0014"ACK"0001R1L1#AB12[]\r',  # bad CRC
        _wrap('"ACK"0001R1L1#AB12[]').replace(b"0014", b"0015"),  # bad length
        _wrap('"NAK"0000R0L0A0[]'),  # NAK without the receiver's time
        _wrap('"NAK"0000R0L0A0[]_99:12:04,19-25-2025'),
        _wrap('"HELLO"0001R1L1[]'),
        _wrap('"*ACK"0001R1L1#AB12[ZZ'),
    ],
)
def test_bad_answers_are_protocol_errors(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_answer(raw, KEY)


@given(st.binary(max_size=300), st.sampled_from([None, KEY]))
def test_any_bytes_give_an_answer_or_a_protocol_error(raw: bytes, key: bytes | None) -> None:
    try:
        answer = parse_answer(raw, key)
    except ProtocolError:
        return
    assert answer.kind in ("ACK", "NAK", "DUH", "RSP")


@given(st.text(alphabet='0123456789ABCDEF"*ACKNDUHRL#[]_:,-|\n\r', max_size=120))
def test_near_miss_text_gives_an_answer_or_a_protocol_error(text: str) -> None:
    body = text.strip("\r\n")
    for raw in (text.encode(), _wrap(body) if body.isascii() else b""):
        try:
            parse_answer(raw, KEY)
        except ProtocolError:
            pass


@given(st.lists(st.binary(max_size=50), max_size=10))
def test_splitter_never_crashes(chunks: list[bytes]) -> None:
    s = Splitter()
    for chunk in chunks:
        for frame in s.feed(chunk):
            assert frame.startswith(b"\n")
            assert frame.endswith(b"\r")


def test_splitter_cuts_frames_across_reads() -> None:
    s = Splitter()
    one, two = _wrap('"ACK"0001R1L1#AB12[]'), _wrap('"ACK"0002R1L1#AB12[]')
    data = b"junk" + one + two
    assert s.feed(data[:10]) == []
    assert s.feed(data[10:]) == [one, two]


# -- Contact ID mapping ------------------------------------------------------------------


def _env(kind: str, body: dict[str, object]) -> bytes:
    return json.dumps({"type": kind, "body": body}).encode()


def test_cid_mapping() -> None:
    zones = cid.zone_map(["gpio:a", "gpio:b", "serial:box"], {"gpio:b": 1})
    assert zones == {"gpio:b": 1, "gpio:a": 2, "serial:box": 3}
    assert cid.from_payload(_env("alarm", {"code": "121", "input": "gpio:a"}), zones) == (
        cid.CidEvent(1, "121", 2)
    )
    assert cid.from_payload(_env("test", {"code": "601", "input": "gpio:x"}), zones) == (
        cid.CidEvent(1, "601", 0)
    )
    assert cid.from_payload(_env("restore", {"code": "137", "device": "serial:box"}), zones) == (
        cid.CidEvent(3, "137", 3)
    )
    assert cid.from_payload(_env("trouble", {"code": "x", "device": "camera"}), zones) == (
        cid.CidEvent(1, "330", 0)
    )
    assert cid.from_payload(b"not json", zones) is None
    assert cid.from_payload(_env("heartbeat", {}), zones) is None
