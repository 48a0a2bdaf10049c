"""The backlog never spans more than the center's 65,536-seq window (PROTOCOL.md): an
event about to leave it is re-signed with a fresh seq before it is sent."""

from __future__ import annotations

import json
from pathlib import Path

from firmware_sim.broker import Mosquitto
from gateway.contract import envelope as E
from gateway.contract.signing import SigningKey
from gateway.delivery.outbox import Outbox
from tests.test_uplink_relay import GW, SITE, accepted, rig, wait_until


async def test_event_about_to_leave_the_replay_window_is_resigned(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """PROTOCOL.md: a gateway never lets its backlog span more than 65,536 seqs. An alarm
    queued at seq 5 while the counter is at 100,000 goes out re-signed: same id and ts,
    a fresh seq, accepted (and dispatched once) by the center."""
    old = _alarm(SigningKey.generate(), 5, ts="2026-11-01T08:00:00.000Z")
    Outbox(tmp_path / "outbox.sqlite").add(old)
    (tmp_path / "gseq").write_text(
        json.dumps({"next": 100_000, "reserved": 100_000, "clean": True})
    )
    async with rig(tmp_path, broker.port) as r:
        await wait_until(lambda: bool(accepted(r, old.id)))
        await wait_until(lambda: r.relay.outbox.count() == 0)
    (verdict,) = accepted(r, old.id)
    assert verdict.env is not None
    assert verdict.env.seq >= 100_000 and verdict.env.ts == old.ts
    assert verdict.env.body == old.body


def _alarm(key: SigningKey, seq: int, ts: str | None = None) -> E.Envelope:
    body = {
        "code": "120",
        "kind": "panic",
        "input": "gpio:gate",
        "test": False,
        "location": {"name": "Gate", "address": "Road 1", "lat": 1.0, "lon": 2.0},
        "contact": {"phone": "110"},
    }
    return E.build(type="alarm", site=SITE, gw=GW, seq=seq, body=body, key=key, ts=ts)
