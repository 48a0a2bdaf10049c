"""A box that stops reading its side of the line while it keeps sending valid frames: every
ACK the gateway owes it piles up in the pty. Writes must never block the event loop (other
inputs, the uplink and heartbeats run on it); what does not fit is dropped and the link says
it is not draining, and recovers once the box reads again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty

import pytest

from gateway.inputs import serial_box
from gateway.inputs.codec import Frame, encode
from gateway.inputs.serial_box import BoxLink
from tests.serial_helpers import FakeSink, eventually, running

FRAMES = 20_000  # ~360 KB of ACKs owed: far more than a pty buffers


@pytest.fixture
def pty_pair():  # type: ignore[no-untyped-def]
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    yield master, path
    for fd in (master, slave):
        with contextlib.suppress(OSError):
            os.close(fd)


async def test_a_box_that_does_not_drain_never_stalls_the_loop(
    pty_pair, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(serial_box, "WRITE_STALL_S", 0.2)
    master, path = pty_pair
    link = BoxLink("box-a", path, 9600, FakeSink(), heartbeat_s=60.0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    async with running(link):
        await eventually(lambda: link.connected)
        tick_task = asyncio.create_task(ticker())
        frames = b"".join(encode(Frame(i % 65536, "HB")) for i in range(FRAMES))
        os.set_blocking(master, False)
        sent = 0

        async def feed() -> None:
            # The box writes its frames as fast as the line takes them and never reads.
            nonlocal sent
            while sent < len(frames):
                try:
                    sent += os.write(master, frames[sent : sent + 4096])
                except BlockingIOError:
                    await asyncio.sleep(0.01)
                    continue
                await asyncio.sleep(0)

        # Were writes blocking (0.5 s each once the pty is full), these frames would take
        # hours; without blocking they are all read and answered or dropped in seconds.
        await asyncio.wait_for(feed(), 120)
        await eventually(lambda: link.frames_ok >= FRAMES, 120)
        assert link.frames_dropped > 0
        await eventually(lambda: link.write_stalled, 30)
        before = ticks
        await eventually(lambda: ticks > before + 5, 30)  # the loop still runs other work

        # The box reads again: the backlog drains and the link is no longer stalled.
        async def drain() -> None:
            while True:
                try:
                    os.read(master, 65536)
                except BlockingIOError:
                    await asyncio.sleep(0.01)

        drainer = asyncio.create_task(drain())
        await eventually(lambda: not link.write_stalled, 30)
        drainer.cancel()
        tick_task.cancel()
