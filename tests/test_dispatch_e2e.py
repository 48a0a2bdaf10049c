"""End to end, real processes: a press on the simulated box, ``alarmgw center ack`` at the
center, and the box shows ``LED,mode=pulse`` (a person has it); ``alarmgw center resolve``
turns it off (SERIAL.md "LED", PROTOCOL.md "dispatch")."""

from __future__ import annotations

import asyncio

import pytest

from tests.fault.common import boxes, linked, wait_accepted
from tests.harness import Site
from tests.http_helpers import cli

pytestmark = pytest.mark.slow


def center_cli(site: Site, *args: str) -> str:
    done = cli("center", *args, "--config", str(site.center_toml), timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.timeout(180)
async def test_center_ack_pulses_the_box_led_and_resolve_turns_it_off(site: Site) -> None:
    async with boxes(site, 1) as sims:
        site.write_configs()
        center = site.start_center()
        site.start_gateway()
        await linked(sims)
        (box,) = sims.values()
        box.press()
        (accepted,) = await wait_accepted(center, 1, 60)
        await box.wait_led("solid", 30)  # the center has it
        alarm_id = accepted["id"]

        since = len(box.leds)
        out = await asyncio.to_thread(center_cli, site, "ack", alarm_id, "--by", "dispatcher-7")
        assert f"acknowledged {alarm_id} by dispatcher-7" in out
        await box.wait_led("pulse", 60, since=since)  # a person has it

        since = len(box.leds)
        out = await asyncio.to_thread(
            center_cli, site, "resolve", alarm_id, "--outcome", "false", "--by", "dispatcher-7"
        )
        assert f"resolved {alarm_id} (false)" in out
        await box.wait_led("off", 60, since=since)
