"""The center as a service, on each backend: the real ``alarmgw center`` process on a real
broker; a fake gateway publishes signed envelopes and reads what the center sends back."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.broker import Mosquitto
from gateway.contract import envelope as E
from tests.center.helpers import GW, SITE, FakeGateway, alarm_body
from tests.center.rig import CenterRig
from tests.helpers import poll as wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def rig(tmp_path: Path, backend: dict[str, Any]) -> Iterator[CenterRig]:
    with Mosquitto(tmp_path / "broker") as broker:
        r = CenterRig(tmp_path, broker, backend)
        try:
            yield r
        finally:
            r.close()


def _alarm(rig: CenterRig, seq: int, **kw: Any) -> E.Envelope:
    kind = "test" if kw.get("code") == "601" else "alarm"
    ident = kw.pop("id", None)
    return E.build(
        type=kind, site=SITE, gw=GW, seq=seq, body=alarm_body(**kw), key=rig.gw_key, id=ident
    )


def test_alarm_ack_dispatch_and_resolve(rig: CenterRig) -> None:
    center = rig.start(extra_gateway='school = "Xiangmihu School"\naddress = "Road 9"\n')
    gw = FakeGateway(rig.broker.port, center_key=rig.center_key)
    try:
        env, test = _alarm(rig, 1, kind="panic"), _alarm(rig, 2, code="601")
        gw.publish(env)
        gw.publish(test)
        wait_until(lambda: {env.id, test.id} <= gw.acked_ids(), what="acks")
        line = center.wait_for(lambda e: e.get("id") == env.id)
        assert line["location"]["lat"] == 22.5 and line["contact"] == {"phone": "110"}
        assert line["location_mismatch"] is True  # the registry says Road 9
        assert line["registry"]["school"] == "Xiangmihu School" and line["path"] == "primary"
        gw.publish(env)  # a re-send: acked again, kept once
        center.wait_for(lambda e: e.get("id") == env.id and e["result"] == "duplicate")
        alarms = rig.cli_json("alarms", "--open")
        assert [(a["id"], a["type"], a["status"]) for a in alarms] == [
            (env.id, "alarm", "new"),
            (test.id, "test", "new"),
        ]
        done = rig.cli("ack", env.id, "--by", "Officer Li")
        assert done.returncode == 0, done.stderr
        got = wait_until(lambda: gw.of_type("dispatch"), what="dispatch")
        assert got[0]["body"] == {"ids": [env.id], "status": "acknowledged"}
        assert (got[0]["site"], got[0]["gw"]) == (SITE, GW)
        done = rig.cli(
            "resolve", env.id, "--outcome", "real", "--by", "Officer Li", "--note", "patrol sent"
        )
        assert done.returncode == 0, done.stderr
        wait_until(lambda: len(gw.of_type("dispatch")) == 2, what="second dispatch")
        assert gw.of_type("dispatch")[1]["body"]["status"] == "resolved"
        assert rig.cli("resolve", test.id, "--outcome", "test", "--by", "x").returncode == 0
        assert rig.cli_json("alarms", "--open") == []
        bad = rig.cli("ack", env.id, "--by", "x")
        assert bad.returncode == 2 and "already resolved" in bad.stderr
        assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
        status = rig.cli_json("status")[0]
        assert status["service"]["status"] == "ok" and status["unsent_dispatches"] == 0
        seqs = [m["seq"] for m in gw.received]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # the center's own counter
        assert len(gw.of_type("dispatch")) == 2  # the test was never dispatched
    finally:
        gw.close()


def test_a_refused_seq_asks_for_resync_and_keeps_the_alarm_unproven(rig: CenterRig) -> None:
    center = rig.start()
    gw = FakeGateway(rig.broker.port, center_key=rig.center_key)
    try:
        first = _alarm(rig, 100)
        gw.publish(first)
        wait_until(lambda: first.id in gw.acked_ids(), what="ack")
        lost = [_alarm(rig, 100, kind="duress", code="121"), _alarm(rig, 100)]  # state lost
        for env in lost:
            gw.publish(env)
        center.wait_for(lambda e: e.get("id") == lost[1].id and e["result"] == "rejected")
        resync = wait_until(lambda: gw.of_type("resync"), what="resync")
        assert resync[0]["body"] == {"kid": rig.gw_key.kid, "next_seq": 101}
        assert len(gw.of_type("resync")) == 1  # at most one per signer per 10 s
        shown = {a["id"]: a for a in rig.cli_json("alarms")}
        assert shown[lost[0].id]["fresh"] is False and shown[first.id]["fresh"] is True
        text = rig.cli("alarms").stdout
        assert "FRESHNESS NOT PROVEN" in text and "Gate, Road 1" in text
        # the gateway re-signs its queue from next_seq: the alarm is proven and acked
        gw.publish(_alarm(rig, 101, kind="duress", code="121", id=lost[0].id))
        wait_until(lambda: lost[0].id in gw.acked_ids(), what="ack after resync")
        assert {a["id"]: a for a in rig.cli_json("alarms")}[lost[0].id]["fresh"] is True
        url = f"http://127.0.0.1:{rig.health_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            metrics = resp.read().decode()
        assert (
            'alarmgw_center_envelopes_total{result="rejected",reason="replayed-seq"} 2' in metrics
        )
        assert 'alarmgw_center_envelopes_total{result="accepted"} 2' in metrics
        assert 'alarmgw_center_open_alarms{age="lt_1m"} 3' in metrics
    finally:
        gw.close()


def test_text_output_escapes_gateway_text_and_hides_heartbeats(rig: CenterRig) -> None:
    center = rig.start(as_json=False)
    gw = FakeGateway(rig.broker.port, center_key=rig.center_key)
    try:
        env = _alarm(rig, 1, kind="panic\n12:00:00  ALARM forged\x1b[2J")
        gw.publish(env)
        wait_until(lambda: env.id in gw.acked_ids(), what="ack")
        line = center.wait_for(lambda e: isinstance(e, str) and "ALARM" in e)
        assert "panic\\x0a12:00:00  ALARM forged\\x1b[2J" in line
        assert not any(
            isinstance(x, str) and x.startswith("12:00:00  ALARM forged") for x in center.lines
        )
        listed = rig.cli("alarms").stdout
        assert "\x1b" not in listed and "\\x0a" in listed
    finally:
        gw.close()
