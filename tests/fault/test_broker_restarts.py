"""The broker restarted 10 times during a burst of 1,000 presses: nothing lost, nothing
dispatched twice."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.fault.common import Burst, assert_exactly_once, boxes, linked, wait_accepted
from tests.harness import Site

pytestmark = pytest.mark.slow

PRESSES = 1000
RESTARTS = 10


@pytest.mark.timeout(600)
async def test_broker_restarted_ten_times_during_a_burst(site: Site) -> None:
    rng = random.Random(7)
    async with boxes(site, 3) as sims:
        site.write_configs()
        center = site.start_center()
        gateway = site.start_gateway()
        await linked(sims)
        burst = Burst(sims)
        driver = asyncio.ensure_future(burst.run(PRESSES, per_second=25.0, rng=rng))
        try:
            for done in range(RESTARTS):
                await asyncio.sleep(rng.uniform(1.0, 3.0))
                # Each outage must hit a connected gateway (its reconnect backoff can be
                # longer than the gap between two restarts on a loaded machine).
                async with asyncio.timeout(60):
                    while len(gateway.matching(is_connected)) <= done:
                        await asyncio.sleep(0.05)
                # a crash (SIGKILL) half the time: no clean DISCONNECTs, no saved state
                if rng.random() < 0.5:
                    site.broker.kill()
                else:
                    site.broker.stop()
                await asyncio.sleep(rng.uniform(0.1, 1.5))
                site.broker.start()
            await driver
        finally:
            driver.cancel()
        await burst.wait_all_acked(120)
        await wait_accepted(center, PRESSES, 180)
    assert_exactly_once(center, PRESSES)
    assert gateway.proc.poll() is None
    lost = gateway.matching(lambda e: e["event"] == "broker connection lost")
    assert len(lost) >= RESTARTS  # it really went through every outage


def is_connected(entry: dict) -> bool:  # type: ignore[type-arg]
    return entry["event"] == "connected to broker"
