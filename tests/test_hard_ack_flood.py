"""A flood of forged acks on the real broker: each is refused and counted, and the log gets
one line per reason per interval with the count, not one line per forgery."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from structlog.testing import capture_logs

from firmware_sim.broker import Mosquitto
from gateway.contract import envelope as E
from gateway.contract.signing import SigningKey
from gateway.contract.topics import topic
from tests.test_uplink_relay import GW, PREFIX, SITE, rig, wait_until

FORGED = 1000


async def test_forged_ack_flood_is_logged_as_counted_summaries(
    tmp_path: Path, broker: Mosquitto
) -> None:
    rogue = SigningKey.generate()
    with capture_logs() as logs:
        async with rig(tmp_path, broker.port) as r:
            r.relay.refusals.interval_s = 0.5
            raised = r.relay.raise_alarm(input_ref="gpio:gate", feedback=None)
            ack_topic = topic(PREFIX, SITE, GW, "ack")
            pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="forger")
            pub.connect("127.0.0.1", broker.port)
            pub.loop_start()
            try:
                for n in range(FORGED):
                    if n % 2:
                        payload = b"not json %d" % n
                    else:
                        payload = E.build(
                            type="ack", site=SITE, gw=GW, seq=n + 1,
                            body={"ids": [raised.event_id]}, key=rogue,
                        ).to_bytes()  # fmt: skip
                    pub.publish(ack_topic, payload, qos=1).wait_for_publish(10)
            finally:
                pub.loop_stop()
                pub.disconnect()
            await wait_until(lambda: r.relay.stats["acks_rejected"] >= FORGED, timeout=60)
            lines = [e for e in logs if e["event"] in ("ignored ack", "ignored acks")]
            reasons = {e["reason"] for e in lines}

            def counted() -> int:
                return sum(
                    1 if e["event"] == "ignored ack" else int(e["count"])
                    for e in logs
                    if e["event"] in ("ignored ack", "ignored acks")
                )

            # Every refusal is accounted for in the log, by the summaries' counts.
            await wait_until(lambda: counted() == FORGED, timeout=30)
    lines = [e for e in logs if e["event"] in ("ignored ack", "ignored acks")]
    assert len(reasons) == 2, reasons
    assert len(lines) <= 40, len(lines)
    assert any(e["event"] == "ignored acks" and e["count"] > 10 for e in lines)
