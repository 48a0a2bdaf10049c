"""The body's JSON text cut from a payload laid out as RFC 8785 lays out an envelope."""

from __future__ import annotations

import json

from center.check import wire_body
from gateway.contract import envelope as E
from tests.center.helpers import alarm


def test_the_body_of_a_gateways_payload_is_cut_from_it() -> None:
    env = alarm(7, kind='pänic "x" \u2028 😀', name=',"gw":"gw-1","v":1}')
    payload = env.to_bytes()
    parsed = E.parse(payload)
    text = wire_body(parsed, payload)
    assert text is not None and json.loads(text) == parsed.body
    assert text.encode() in payload


def test_any_other_layout_is_encoded_instead() -> None:
    env = alarm(8)
    obj = json.loads(env.to_bytes())
    for payload in (
        json.dumps(obj, indent=1).encode(),  # whitespace between members
        json.dumps(dict(reversed(list(obj.items())))).encode(),  # body last
        json.dumps({k: obj[k] for k in E.FIELDS}, separators=(",", ":")).encode(),  # v first
    ):
        assert wire_body(E.parse(payload), payload) is None
