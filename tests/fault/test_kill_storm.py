"""SIGKILL the gateway at 20+ random points during a burst of 1,000 presses from three
button boxes: every press reaches the center exactly once as a dispatch."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.fault.common import Burst, assert_exactly_once, boxes, linked, wait_accepted
from tests.harness import Site

pytestmark = pytest.mark.slow

PRESSES = 1000
KILLS = 20


@pytest.mark.timeout(600)
async def test_kill_9_storm_loses_and_doubles_nothing(site: Site) -> None:
    rng = random.Random(20261128)
    async with boxes(site, 3) as sims:
        site.write_configs()
        center = site.start_center()
        gateway = site.start_gateway()
        await linked(sims)
        burst = Burst(sims)
        driver = asyncio.ensure_future(burst.run(PRESSES, per_second=25.0, rng=rng))
        kills = 0
        try:
            while kills < KILLS:
                await asyncio.sleep(rng.uniform(0.3, 2.0))
                gateway.kill()
                kills += 1
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                gateway = site.start_gateway()
            await driver
        finally:
            driver.cancel()
        await burst.wait_all_acked(180)
        await wait_accepted(center, burst.total, 180)
    assert kills >= 20 and burst.total == PRESSES
    assert_exactly_once(center, PRESSES)
