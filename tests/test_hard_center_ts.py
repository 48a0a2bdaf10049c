"""The center's rule for an envelope's ``ts``: far ahead of its clock is refused
(``ts-future``) unless it is an alarm; very old is accepted and flagged."""

from __future__ import annotations

import time
from pathlib import Path

from center.check import MAX_AHEAD_S, OLD_AFTER_S
from gateway.contract import envelope as E
from gateway.contract.signing import SigningKey
from gateway.contract.topics import topic
from tests.helpers import make_center

SITE, GW, PREFIX = "sz-test-001", "gw-001-a", "schoolalarm/v1"
BODY = {
    "alarm": {
        "code": "120",
        "kind": "panic",
        "input": "gpio:gate",
        "location": {"name": "Gate", "address": "Road 1", "lat": 1.0, "lon": 2.0},
        "contact": {"phone": "110"},
        "test": False,
    },
    "trouble": {"code": "330", "device": "gateway", "detail": "x"},
}


def test_future_ts_is_refused_old_ts_is_flagged(tmp_path: Path) -> None:
    key = SigningKey.generate()
    center = make_center(tmp_path, [(SITE, GW, key.verify_key)])
    name = topic(PREFIX, SITE, GW, "event")
    now = time.time()
    seq = 0

    def send(kind: str, ts: str) -> dict[str, object]:
        nonlocal seq
        seq += 1
        env = E.build(type=kind, site=SITE, gw=GW, seq=seq, body=BODY[kind], key=key, ts=ts)
        return center.receive(name, env.to_bytes()).to_json()

    try:
        far = "9999-12-31T23:59:59.999Z"
        ahead = E.format_ts(now + MAX_AHEAD_S + 600)
        for ts in (far, ahead):
            v = send("trouble", ts)
            assert (v["result"], v["reason"]) == ("rejected", "ts-future"), v
        # An alarm is never refused for its clock: accepted, flagged.
        v = send("alarm", far)
        assert (v["result"], v["clock"]) == ("accepted", "ahead"), v
        for kind in ("alarm", "trouble"):
            for ts in ("0001-01-01T00:00:00.000Z", E.format_ts(now - OLD_AFTER_S - 600)):
                v = send(kind, ts)
                assert (v["result"], v["clock"]) == ("accepted", "old"), v
        v = send("alarm", E.format_ts(now))
        assert (v["result"], v["clock"]) == ("accepted", None), v
    finally:
        center.state.close()
