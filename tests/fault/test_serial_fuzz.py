"""10^6 random and mutated serial lines into a running gateway over a real pty:
no crash, no alarm raised by garbage, and the link still works afterwards."""

from __future__ import annotations

import asyncio
import random

import pytest

from gateway.inputs.codec import Frame, encode
from tests.fault.common import boxes, linked, wait_accepted
from tests.harness import Site

pytestmark = pytest.mark.slow

LINES = 1_000_000
# Mutated copies of valid frames that raise no alarm if a mutation happens to keep the CRC
# right (PRESS is left out: a CRC-valid PRESS is a press).
SEEDS = [
    encode(Frame(7, "HB")),
    encode(Frame(8, "RELEASE", (("btn", "1"), ("ms", "1840")))),
    encode(Frame(9, "POWER", (("state", "mains"),))),
    encode(Frame(10, "TAMPER", (("state", "closed"),))),
]


def make_lines(rng: random.Random, n: int) -> bytes:
    out = bytearray()
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:
            line = bytearray(rng.choice(SEEDS))
            for _ in range(rng.randint(1, 4)):
                line[rng.randrange(len(line))] = rng.randrange(256)
        elif kind < 0.9:
            line = bytearray(rng.randbytes(rng.randint(0, 60))) + b"\n"
        else:
            line = bytearray(b"9,PRESS,btn=1*" + rng.randbytes(4) + b"\r\n")  # bad CRCs
        out += line
    return bytes(out)


@pytest.mark.timeout(600)
async def test_a_million_bad_lines_then_a_press(site: Site) -> None:
    rng = random.Random(1_000_000)
    async with boxes(site, 1) as sims:
        site.write_configs()
        center = site.start_center()
        gateway = site.start_gateway()
        await linked(sims)
        (box,) = sims.values()
        data = await asyncio.to_thread(make_lines, rng, LINES)
        await box.send_raw(data)
        box.hb()
        hb = box.hb()
        await box.wait_ack(hb, 300)  # the reader got through all of it
        seq = box.press()
        await box.wait_ack(seq, 30)
        await wait_accepted(center, 1, 60)
        assert gateway.proc.poll() is None
        dropped = gateway.matching(lambda e: e["event"] == "serial bad line dropped")
        assert dropped  # it noticed, rate-limited
        assert len(dropped) < 1000  # ... without a log line per bad line
        alarms = center.matching(lambda e: e.get("type") == "alarm")
        assert len(alarms) == 1
