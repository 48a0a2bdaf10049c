"""After a broker outage the gateway is back within its reconnect policy's cap, and a queued
alarm reaches the center before a test queued earlier (PROTOCOL.md "Order")."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from firmware_sim.broker import Mosquitto
from gateway import retry
from tests.test_uplink_relay import accepted, rig, wait_until


async def test_queued_alarm_first_after_the_broker_returns(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with rig(tmp_path, broker.port, backoff_max_s=None) as r:
        with capture_logs() as logs:
            broker.stop()
            await wait_until(lambda: not r.gw_uplink.connected)
            test = r.relay.raise_alarm(
                input_ref="gpio:gate", feedback=None, code="601", kind="test", test=True
            )
            alarm = r.relay.raise_alarm(input_ref="serial:box", feedback=None)
            # Let the gateway fail a few reconnects, so its waits have grown to the cap.
            await wait_until(lambda: _retries(logs) >= 4, timeout=60)
            broker.start()
            await wait_until(lambda: accepted(r, alarm.event_id), timeout=30)
            await wait_until(lambda: accepted(r, test.event_id), timeout=30)
        waits = [e["retry_in_s"] for e in logs if "retry_in_s" in e]
        assert waits and max(waits) <= retry.RECONNECT.cap_s
        ids = [v.env.id for v in r.verdicts if v.env and v.result == "accepted"]
        assert ids.index(alarm.event_id) < ids.index(test.event_id)


def _retries(logs: list[dict[str, object]]) -> int:
    return sum(1 for e in logs if "retry_in_s" in e)
