"""Envelopes reproduce the independent vectors byte for byte and reject what must be rejected."""

from __future__ import annotations

import json
import pickle
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.contract import envelope as E
from gateway.contract.signing import (
    SigningKey,
    b64url,
    b64url_decode,
    kid_of,
    load_signing_key,
    load_verify_key,
    write_keypair,
)
from gateway.errors import EnvelopeError, KeyFileError
from tests.harness import alarmgw_cmd

VECTORS = json.loads((Path(__file__).parent / "data" / "envelopes.json").read_text())


def key_for(role: str) -> SigningKey:
    return SigningKey.from_seed(bytes.fromhex(VECTORS["keys"][role]["seed_hex"]))


# Each vector is signed by the key whose kid it names: the gateway's or the center's.
ROLE_OF_KID = {k["kid"]: role for role, k in VECTORS["keys"].items()}


@pytest.mark.parametrize("role", ["gateway", "command_center"])
def test_kid_and_public_key_match_vectors(role: str) -> None:
    key = key_for(role)
    assert key.verify_key.public_raw.hex() == VECTORS["keys"][role]["public_hex"]
    assert key.kid == VECTORS["keys"][role]["kid"] == kid_of(key.verify_key.public_raw)


@pytest.mark.parametrize("vector", VECTORS["envelopes"], ids=lambda v: v["name"])
def test_vectors_reproduce_byte_for_byte(vector: dict) -> None:
    u = vector["unsigned"]
    key = key_for(ROLE_OF_KID[u["kid"]])
    env = E.build(
        type=u["type"],
        site=u["site"],
        gw=u["gw"],
        seq=u["seq"],
        body=u["body"],
        key=key,
        ts=u["ts"],
        id=u["id"],
    )
    assert env.signing_bytes() == vector["jcs_utf8"].encode("utf-8")
    assert env.to_dict() == vector["signed"]
    assert env.sig == vector["signed"]["sig"]
    # and the independent implementation's envelope verifies here
    parsed = E.parse_and_verify(json.dumps(vector["signed"]).encode(), {key.kid: key.verify_key})
    assert parsed == env


@pytest.mark.parametrize("case", VECTORS["must_reject"], ids=lambda c: c["why"])
def test_must_reject(case: dict) -> None:
    key = key_for("gateway")
    with pytest.raises(EnvelopeError) as err:
        E.parse_and_verify(json.dumps(case["envelope"]).encode(), {key.kid: key.verify_key})
    assert err.value.reason == "bad-signature"


def test_unknown_kid_and_malformed() -> None:
    key = key_for("gateway")
    signed = VECTORS["envelopes"][0]["signed"]
    with pytest.raises(EnvelopeError, match="unknown-kid"):
        E.parse_and_verify(json.dumps(signed), {})
    for bad in (
        b"",
        b"not json",
        b"[]",
        b'{"v":1}',
        b"NaN",
        json.dumps({**signed, "x": 1}).encode(),
        json.dumps({**signed, "seq": True}).encode(),
        json.dumps({**signed, "v": 2}).encode(),
        json.dumps({**signed, "ts": "2026-11-28T07:41:05Z"}).encode(),
    ):
        with pytest.raises(EnvelopeError):
            E.parse_and_verify(bad, {key.kid: key.verify_key})


@given(st.binary(max_size=300))
def test_garbage_payload_is_an_envelope_error_never_a_crash(data: bytes) -> None:
    key = key_for("gateway")
    with pytest.raises(EnvelopeError):
        E.parse_and_verify(data, {key.kid: key.verify_key})


def test_jcs_is_not_sort_keys_json() -> None:
    # json.dumps(sort_keys=True) differs from RFC 8785 on these.
    assert E.canonical({"a": 1e-7, "b": 100.0}) == b'{"a":1e-7,"b":100}'
    # JCS sorts keys by UTF-16 code units: the surrogate pair D83D.. sorts before FB01.
    keys = {"\ufb01": 2, "\U0001f600": 1}
    assert E.canonical(keys) == '{"\U0001f600":1,"\ufb01":2}'.encode()
    assert json.dumps(keys, sort_keys=True, ensure_ascii=False).startswith('{"\ufb01"')


def test_uuid7_and_ts_format() -> None:
    ids = {E.uuid7() for _ in range(1000)}
    assert len(ids) == 1000 and all(E.UUID7_RE.match(i) for i in ids)
    assert E.format_ts(0.0) == "1970-01-01T00:00:00.000Z"
    assert E.format_ts(1764315665.1239) == "2025-11-28T07:41:05.123Z"


@given(
    st.floats(min_value=0, max_value=4e9)
    | st.integers(0, 4_000_000_000).map(lambda s: s + 0.0009995)
    | st.integers(0, 4_000_000_000).map(lambda s: s + 0.9999995)
)
def test_format_ts_matches_datetime(when: float) -> None:
    # The fast path (a cached second, no datetime) gives what datetime gives, rounding
    # of microseconds included.
    dt = datetime.fromtimestamp(when, UTC)
    expected = dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    assert E.format_ts(when) == expected
    assert E.format_ts(dt) == expected


def test_keygen_cli_writes_0600_and_refuses_overwrite(tmp_path: Path) -> None:
    out = subprocess.run(
        alarmgw_cmd("keygen", "--out", str(tmp_path), "--name", "gw"),
        capture_output=True,
        text=True,
        check=True,
    )
    kid = out.stdout.strip()
    key = load_signing_key(tmp_path / "gw.key")
    assert key.kid == kid == load_verify_key(tmp_path / "gw.pub").kid
    assert stat.S_IMODE((tmp_path / "gw.key").stat().st_mode) == 0o600
    again = subprocess.run(
        alarmgw_cmd("keygen", "--out", str(tmp_path), "--name", "gw"),
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr and "Traceback" not in again.stderr
    assert load_signing_key(tmp_path / "gw.key").kid == kid
    forced = subprocess.run(
        alarmgw_cmd("keygen", "--out", str(tmp_path), "--name", "gw", "--force"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert forced.stdout.strip() != kid


def test_bad_key_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        load_signing_key(tmp_path / "missing.key")
    (tmp_path / "junk.key").write_text("junk")
    with pytest.raises(KeyFileError, match="not a PEM"):
        load_signing_key(tmp_path / "junk.key")
    _key, _, pub = write_keypair(tmp_path, "k")
    with pytest.raises(KeyFileError):
        load_signing_key(pub)


def test_verify_cli(tmp_path: Path) -> None:
    gw = key_for("gateway")
    (tmp_path / "gw.pub").write_bytes(gw.public_pem())
    good = tmp_path / "good.json"
    good.write_text(json.dumps(VECTORS["envelopes"][0]["signed"]))
    ok = subprocess.run(
        alarmgw_cmd("verify", str(good), "--key", str(tmp_path / "gw.pub")),
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and ok.stdout.startswith("VALID: alarm")
    bad = subprocess.run(
        alarmgw_cmd("verify", "-", "--key", str(tmp_path / "gw.pub"), "--json"),
        input=json.dumps(VECTORS["must_reject"][0]["envelope"]),
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and json.loads(bad.stdout)["reason"] == "bad-signature"


def test_libsodium_and_openssl_agree() -> None:
    """The hot path signs and verifies with PyNaCl; OpenSSL (cryptography) must agree."""
    key = SigningKey.generate()
    for data in (b"", b"x", json.dumps(VECTORS["envelopes"][0]["unsigned"]).encode()):
        sig = key.sign(data)
        assert b64url_decode(sig) == key.private.sign(data)  # Ed25519 is deterministic
        key.private.public_key().verify(b64url_decode(sig), data)  # raises if they disagree
        assert key.verify_key.verify(data, b64url(key.private.sign(data)))
        assert not key.verify_key.verify(data + b"!", sig)


def test_resign_keeps_the_event_and_verifies() -> None:
    old_key, new_key = SigningKey.generate(), SigningKey.generate()
    body = {"code": "137", "device": "gateway", "detail": "x"}
    env = E.build(type="trouble", site="s", gw="g", seq=5, body=body, key=old_key)
    seq, payload = E.resign(env.to_bytes(), seq=70_000, key=new_key)
    again = E.parse_and_verify(payload, {new_key.kid: new_key.verify_key})
    assert (seq, again.seq, again.kid) == (70_000, 70_000, new_key.kid)
    assert (again.id, again.type, again.ts, again.body) == (env.id, env.type, env.ts, env.body)
    assert payload == E.canonical(again.to_dict())  # the JCS form of the whole envelope
    nested = {**body, "detail": 'a ,"site": b', "extra": {"site": "x", "z": [1]}}
    tricky = E.Envelope(**{**env.to_dict(), "body": nested})
    _, payload = E.resign(tricky.to_bytes(), seq=70_001, key=new_key)
    assert E.parse_and_verify(payload, {new_key.kid: new_key.verify_key}).body == nested
    with pytest.raises(ValueError, match="not an envelope"):
        E.resign(b'{"v": 1}', seq=1, key=new_key)


_RESIGN_OLD, _RESIGN_NEW = SigningKey.generate(), SigningKey.generate()
_details = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_extras = st.dictionaries(
    st.sampled_from(["gw", "site", "kid", "sig", "seq", "x", "é"]),
    st.one_of(_details, st.integers(-(2**53) + 1, 2**53 - 1), st.floats(-1e6, 1e6)),
    max_size=4,
)


@given(detail=_details, extra=_extras)
def test_resign_edits_canonical_bytes_exactly_as_the_general_path(
    detail: str, extra: dict[str, object]
) -> None:
    """``build`` writes the JCS form, and ``resign`` edits those bytes without parsing the
    body; a row in another form (an older version's compact JSON) is parsed and
    canonicalised. Both must give the same bytes (Ed25519 is deterministic), and verify."""
    body = {"code": "137", "device": "gateway", "detail": detail, "extra": extra}
    env = E.build(type="trouble", site="s", gw="g", seq=5, body=body, key=_RESIGN_OLD)
    assert env.to_bytes() == E.canonical(env.to_dict())
    compact = json.dumps(env.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()
    fast = E.resign(env.to_bytes(), seq=99_999, key=_RESIGN_NEW)
    assert fast == E.resign(compact, seq=99_999, key=_RESIGN_NEW)
    again = E.parse_and_verify(fast[1], {_RESIGN_NEW.kid: _RESIGN_NEW.verify_key})
    assert (again.id, again.seq, again.kid, again.body) == (env.id, 99_999, _RESIGN_NEW.kid, body)
    assert fast[1] == again.to_bytes() == E.canonical(again.to_dict())


def test_envelopes_pickle_in_c_and_keep_their_payload() -> None:
    body = {"code": "137", "device": "gateway", "detail": "x"}
    env = E.build(type="trouble", site="s", gw="g", seq=5, body=body, key=_RESIGN_OLD)
    parsed = E.parse(env.to_bytes())
    for one in (env, parsed):
        back = pickle.loads(pickle.dumps(one))
        assert back == one and back.to_bytes() == env.to_bytes() and back.wire == one.wire
    assert parsed.wire is None and env.wire == env.to_bytes()


@given(
    text=st.one_of(
        st.text(max_size=30),
        st.builds(json.dumps, st.dictionaries(st.text(max_size=5), st.text(max_size=5))),
    ),
    form=st.sampled_from(["str", "utf-8", "utf-8-sig", "utf-16", "utf-32-le", "bom-str"]),
)
def test_payload_decoding_is_json_loads(text: str, form: str) -> None:
    """parse() keeps one decoder instead of json.loads making one per call: same results
    (and same refusals) for str and UTF-8 bytes; every other encoding json.loads detects,
    and a byte order mark, is refused (PROTOCOL.md: a payload is UTF-8)."""
    if form == "str":
        payload: str | bytes = text
    elif form == "bom-str":
        payload = "\ufeff" + text
    else:
        try:
            payload = text.encode(form)
        except UnicodeEncodeError:
            return
    try:
        expected = ("ok", json.loads(payload, parse_constant=E._reject_constant))
    except (ValueError, RecursionError) as err:
        expected = ("error", type(err).__name__)
    try:
        got = ("ok", E._loads(payload))
    except (ValueError, RecursionError) as err:
        got = ("error", type(err).__name__)
    if form in ("str", "utf-8"):
        assert got == expected
    else:
        assert got[0] == "error"
