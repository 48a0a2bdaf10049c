"""Payloads the contract forbids (PROTOCOL.md: "one UTF-8 JSON object whose member names are
unique"), sent to the real receivers: the center's check and the gateway's ack handling.

The attack each time is a payload whose signature is genuine: a duplicated member name
(parsers disagree on which one wins, so what was signed and what is acted on can differ)
and text in another encoding than UTF-8 (UTF-16, a byte order mark, an encoded surrogate).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from center.check import Verdict, precheck
from gateway.contract import envelope as E
from gateway.contract.signing import SigningKey, b64url_decode
from gateway.contract.topics import topic
from gateway.delivery.outbox import Outbox
from gateway.delivery.relay import Identity, Relay
from gateway.delivery.seq import SeqCounter
from gateway.errors import EnvelopeError

DATA = Path(__file__).parent / "data"
VECTORS = json.loads((DATA / "envelopes.json").read_text())
MUST_REJECT = json.loads((DATA / "must_reject_payloads.json").read_text())["must_reject_payloads"]
REASON = {"duplicate member name (type)": "duplicate-key", "UTF-16 instead of UTF-8": "not-json"}
PREFIX = "schoolalarm/v1"
SITE, GW = "sz-futian-xmh-014", "gw-014-a"  # the vectors' gateway


def vector_key(role: str) -> SigningKey:
    return SigningKey.from_seed(bytes.fromhex(VECTORS["keys"][role]["seed_hex"]))


def forged_variants(genuine: bytes, duplicate: bytes) -> dict[str, tuple[bytes, str]]:
    """``genuine`` (a JCS envelope) with one attack each, and the reason it must get.
    ``duplicate`` is a member to put before the real ``type`` (the real one comes last)."""
    text = genuine.decode()
    return {
        "duplicate type": (genuine.replace(b'"type":', duplicate + b'"type":', 1), "duplicate-key"),
        "utf-16": (text.encode("utf-16"), "not-json"),
        "utf-16-le, no BOM": (text.encode("utf-16-le"), "not-json"),
        "utf-8 BOM": (b"\xef\xbb\xbf" + genuine, "not-json"),
    }


@pytest.mark.parametrize("case", MUST_REJECT, ids=lambda c: c["why"])
def test_contract_must_reject_payloads_are_refused(case: dict[str, str]) -> None:
    key = vector_key("gateway")
    with pytest.raises(EnvelopeError) as err:
        E.parse_and_verify(b64url_decode(case["payload_b64u"]), {key.kid: key.verify_key})
    assert err.value.reason == REASON[case["why"]]


@pytest.mark.parametrize("case", MUST_REJECT, ids=lambda c: c["why"])
def test_the_center_rejects_them_with_the_reason(case: dict[str, str]) -> None:
    key = vector_key("gateway")
    keys = {(SITE, GW): {key.kid: key.verify_key}}
    name = topic(PREFIX, SITE, GW, "event")
    verdict = precheck(PREFIX, keys, name, b64url_decode(case["payload_b64u"]))
    assert isinstance(verdict, Verdict)
    assert (verdict.result, verdict.reason) == ("rejected", REASON[case["why"]])


def test_the_center_rejects_a_signed_alarm_in_any_other_form() -> None:
    key = vector_key("gateway")
    keys = {(SITE, GW): {key.kid: key.verify_key}}
    genuine = E.parse(json.dumps(VECTORS["envelopes"][0]["signed"]).encode()).to_bytes()
    name = topic(PREFIX, SITE, GW, "event")
    assert isinstance(precheck(PREFIX, keys, name, genuine), E.Envelope)
    for what, (payload, reason) in forged_variants(genuine, b'"type":"test",').items():
        verdict = precheck(PREFIX, keys, name, payload)
        assert isinstance(verdict, Verdict), what
        assert (verdict.result, verdict.reason) == ("rejected", reason), what


def test_an_encoded_surrogate_is_not_utf8() -> None:
    with pytest.raises(EnvelopeError) as err:
        E.parse(b'{"v":1,"x":"\xed\xa0\x80"}')
    assert err.value.reason == "not-json"


def test_duplicates_are_found_at_any_depth() -> None:
    for payload in (b'{"a":1,"a":1}', b'{"body":{"location":{"lat":1,"lat":2}}}'):
        with pytest.raises(EnvelopeError) as err:
            E.parse(payload)
        assert err.value.reason == "duplicate-key"
        assert "appears twice" in err.value.detail


async def test_the_gateway_ignores_a_center_signed_ack_in_any_other_form(tmp_path: Path) -> None:
    center = vector_key("command_center")
    relay = Relay(
        ident=Identity(SITE, GW, PREFIX),
        key=vector_key("gateway"),
        seq=SeqCounter(tmp_path / "gseq"),
        outbox=Outbox(tmp_path / "outbox.sqlite"),
        center_keys={center.kid: center.verify_key},
        location={"name": "Gate", "address": "Road 1", "lat": 1.0, "lon": 2.0},
        contact={"phone": "110"},
    )
    try:
        raised = relay.raise_alarm(input_ref="gpio:gate", feedback=None)
        await asyncio.sleep(0)
        ack = E.build(
            type="ack", site=SITE, gw=GW, seq=1, body={"ids": [raised.event_id]}, key=center
        ).to_bytes()
        ack_topic = topic(PREFIX, SITE, GW, "ack")
        forged = forged_variants(ack, b'"type":"state",')
        for n, (what, (payload, _reason)) in enumerate(forged.items(), start=1):
            relay.on_message(ack_topic, payload)
            assert relay.stats["acks_rejected"] == n, what
            assert relay.outbox.get(raised.event_id) is not None, what
        relay.on_message(ack_topic, ack)  # the genuine one still works
        assert relay.outbox.get(raised.event_id) is None
    finally:
        relay.outbox.close()
