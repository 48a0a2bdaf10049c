"""The center's envelopes reproduce the contract's vectors byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from center.outbound import dispatch_body, resync_body, sign
from gateway.contract.envelope import canonical
from gateway.contract.signing import SigningKey

VECTORS = Path(__file__).parents[1] / "data" / "envelopes.json"  # the contract's vectors


def _vectors() -> dict:
    return json.loads(VECTORS.read_text())


@pytest.mark.parametrize("name", ["ack", "dispatch", "resync"])
def test_center_envelopes_match_the_vectors(name: str) -> None:
    data = _vectors()
    vec = next(e for e in data["envelopes"] if e["name"] == name)
    key = SigningKey.from_seed(bytes.fromhex(data["keys"]["command_center"]["seed_hex"]))
    u = vec["unsigned"]
    body = u["body"]
    if name == "dispatch":
        body = dispatch_body(body["ids"], body["status"])
    elif name == "resync":
        body = resync_body(body["kid"], body["next_seq"])
    out = sign(
        type=u["type"],
        site=u["site"],
        gw=u["gw"],
        seq=u["seq"],
        body=body,
        key=key,
        ts=u["ts"],
        id=u["id"],
    )
    assert canonical(u) == vec["jcs_utf8"].encode()
    assert out.payload == canonical(vec["signed"])
    assert json.loads(out.payload)["sig"] == vec["signed"]["sig"]


def test_a_dispatch_needs_ids_and_a_known_status() -> None:
    with pytest.raises(ValueError):
        dispatch_body([], "acknowledged")
    with pytest.raises(ValueError):
        dispatch_body(["x"], "done")
