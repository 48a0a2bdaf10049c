"""The wall clock jumps back an hour: ``seq`` still increases, ``ts`` is what the
clock said when each thing happened, a box's re-sent press across the jump is still one
alarm, and everything is delivered and acknowledged."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from firmware_sim.broker import Mosquitto
from gateway.contract.envelope import parse, parse_ts
from tests.test_uplink_relay import Led, accepted, rig, wait_until


async def test_wall_clock_jumps_back_an_hour(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path, broker.port) as r:
        before = r.relay.raise_alarm(input_ref="serial:box", feedback=Led(), dedupe_key="k:1")
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() - 3600.0)
        again = r.relay.raise_alarm(input_ref="serial:box", feedback=Led(), dedupe_key="k:1")
        after_led = Led()
        after = r.relay.raise_alarm(input_ref="gpio:gate", feedback=after_led)
        await wait_until(lambda: after_led.modes[-1:] == ["solid"])
        await wait_until(lambda: bool(accepted(r, before.event_id)))

    assert again.event_id == before.event_id and not again.new  # one press, one alarm
    first = accepted(r, before.event_id)[0].env
    second = accepted(r, after.event_id)[0].env
    assert first is not None and second is not None
    assert second.seq > first.seq
    jumped = parse_ts(first.ts).timestamp() - parse_ts(second.ts).timestamp()
    assert 3500 < jumped < 3700  # ts says what the clock said: an hour "earlier"
    assert parse(second.to_bytes()).ts == second.ts
