"""Shared pieces of the fault suite: a site with several simulated button boxes, a burst
driver, and the end-of-test bookkeeping (every press acknowledged by the gateway, every
alarm dispatched at the center exactly once)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from firmware_sim.box import BoxSimulator
from tests.harness import Proc, Site, is_event


@dataclass
class Burst:
    """Presses spread over several boxes; ``pressed[name]`` = the SEQs each box sent."""

    boxes: dict[str, BoxSimulator]
    pressed: dict[str, list[int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.pressed.values())

    async def run(self, n: int, *, per_second: float, rng: random.Random) -> None:
        names = list(self.boxes)
        for i in range(n):
            name = names[i % len(names)]
            self.pressed.setdefault(name, []).append(self.boxes[name].press())
            await asyncio.sleep(rng.expovariate(per_second))

    def unacked(self) -> dict[str, list[int]]:
        return {
            name: [s for s in seqs if s not in set(self.boxes[name].acks)]
            for name, seqs in self.pressed.items()
        }

    async def wait_all_acked(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while any(self.unacked().values()):
                await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def boxes(site: Site, count: int) -> AsyncIterator[dict[str, BoxSimulator]]:
    # These tests judge the gateway, not the box's give-up rule (50 sends, 10 s): on a loaded
    # machine a killed gateway can take longer than that to start again, and a box that gave
    # up would fail the test for a reason outside the gateway. The boxes keep re-sending.
    sims = {
        f"box-{i}": BoxSimulator(box_id=f"sim-{i}", heartbeat_s=1.0, max_sends=10_000)
        for i in range(count)
    }
    for sim in sims.values():
        await sim.start()
    try:
        site.boxes = [{"name": n, "port": s.path, "heartbeat_s": 1.0} for n, s in sims.items()]
        yield sims
    finally:
        for sim in sims.values():
            await sim.stop()


async def linked(sims: dict[str, BoxSimulator]) -> None:
    for sim in sims.values():
        await sim.wait_linked(30)


def accepted_alarms(center: Proc) -> list[dict]:  # type: ignore[type-arg]
    return center.matching(is_event("accepted"))


async def wait_accepted(center: Proc, n: int, timeout: float) -> list[dict]:  # type: ignore[type-arg]
    async with asyncio.timeout(timeout):
        while len(accepted_alarms(center)) < n:
            await asyncio.sleep(0.25)
    await asyncio.sleep(1.0)  # room for a stray extra one to show up
    return accepted_alarms(center)


def assert_exactly_once(center: Proc, expected: int) -> None:
    alarms = accepted_alarms(center)
    ids = [a["id"] for a in alarms]
    assert len(ids) == len(set(ids)), "an alarm id was dispatched twice"
    assert len(alarms) == expected, f"{len(alarms)} alarms dispatched for {expected} presses"
