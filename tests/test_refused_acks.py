"""Acks refused for a wrong or rotated center key: counted with the kid they named, and
shown by ``alarmgw status``, ``queue``, ``diag`` and ``/metrics`` with the fix."""

from __future__ import annotations

import dataclasses

from prometheus_client.parser import text_string_to_metric_families

from gateway.contract.envelope import build, uuid7
from gateway.contract.signing import SigningKey
from gateway.delivery.core import DeliveryCore
from gateway.snapshots import GatewaySnapshot, RefusedAcks, SupervisorSnapshot
from gateway.technician import metrics, status
from gateway.technician.tools import blame_refused_acks, format_queue, status_verdict
from tests.test_snapshots import QUEUE, delivery, process

SITE, GW, PREFIX = "school-1", "gw-1", "schoolalarm/v1"
TRUSTED, ROTATED = SigningKey.generate(), SigningKey.generate()


def ack(key: SigningKey) -> bytes:
    return build(type="ack", site=SITE, gw=GW, seq=1, body={"ids": [uuid7()]}, key=key).to_bytes()


def test_core_records_the_refused_kid_until_a_good_ack() -> None:
    core = DeliveryCore(
        site=SITE, gw=GW, prefix=PREFIX, center_keys={TRUSTED.kid: TRUSTED.verify_key}
    )
    topic = f"{PREFIX}/{SITE}/{GW}/ack"
    core.message(topic, ack(ROTATED), 1.0)
    core.message(topic, ack(ROTATED), 2.0)
    assert core.acks_refused["unknown-kid"] == 2
    assert core.acks_refused_kid["unknown-kid"] == ROTATED.kid
    assert core.acks_refused_since_ack["unknown-kid"] == 2
    assert core.center_kids == (TRUSTED.kid,)
    core.message(topic, ack(TRUSTED), 3.0)
    assert core.acks_refused_since_ack["unknown-kid"] == 0
    assert core.acks_refused["unknown-kid"] == 2


def snapshot_with_refusals() -> GatewaySnapshot:
    d = dataclasses.replace(
        delivery(),
        refused_acks=(RefusedAcks("unknown-kid", 3, 3, ROTATED.kid),),
        center_kids=(TRUSTED.kid,),
    )
    return GatewaySnapshot(process(), d, (), None, SupervisorSnapshot(()))


def test_status_fails_naming_both_kids_and_the_fix() -> None:
    doc = status.to_json(snapshot_with_refusals(), queue=QUEUE, problems=[])
    code, problems = status_verdict(doc)
    assert code == 2
    text = " ".join(problems)
    assert f"the center signs with kid {ROTATED.kid}" in text
    assert f"this gateway trusts {TRUSTED.kid}" in text
    assert "center_keys" in text  # the fix


def test_queue_last_error_names_the_refused_acks() -> None:
    doc = status.to_json(snapshot_with_refusals(), queue=QUEUE, problems=[])
    q = doc["queue"]
    blame_refused_acks(q, doc)
    lines = format_queue(q, "from the running daemon")
    assert any("acks are refused" in line for line in lines)
    assert any(ROTATED.kid in line for line in lines)


def test_metrics_count_refused_acks_by_reason() -> None:
    fams = metrics.families(
        snapshot_with_refusals(), QUEUE, healthy=True, ack_latency=status.AckLog().histogram()
    )
    parsed = {f.name: f for f in text_string_to_metric_families(metrics.render(fams))}
    samples = parsed["alarmgw_acks_refused"].samples
    assert [(s.labels["reason"], s.value) for s in samples] == [("unknown-kid", 3.0)]
