"""Supervised loops: a loop that dies, returns or stalls is restarted and reported."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from gateway.supervise import Supervisor


async def test_dead_loop_is_restarted_and_counted() -> None:
    sup = Supervisor(first_delay_s=0.01)
    runs = {"n": 0}
    done = asyncio.Event()

    async def flaky() -> None:
        runs["n"] += 1
        if runs["n"] < 3:
            raise RuntimeError(f"crash {runs['n']}")
        done.set()
        await asyncio.Event().wait()

    with capture_logs() as logs:
        task = asyncio.create_task(sup.run("flaky", flaky))
        await asyncio.wait_for(done.wait(), 15)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sup.restarts["flaky"] == 2
    assert "crash 2" in sup.last_failure["flaky"]
    assert [e["why"] for e in logs if e["event"] == "loop restarted"] == [
        "died: RuntimeError('crash 1')",
        "died: RuntimeError('crash 2')",
    ]


async def test_stalled_loop_is_cancelled_and_restarted() -> None:
    sup = Supervisor(first_delay_s=0.01)
    loop = asyncio.get_running_loop()
    state = {"tick": loop.time(), "runs": 0, "cancelled": 0}
    second = asyncio.Event()

    async def sticky() -> None:
        state["runs"] += 1
        state["tick"] = loop.time()
        if state["runs"] >= 2:
            second.set()
        try:
            await asyncio.Event().wait()  # never ticks again: a stall
        except asyncio.CancelledError:
            state["cancelled"] += 1
            raise

    task = asyncio.create_task(sup.run("sticky", sticky, tick=lambda: state["tick"], stall_s=1.5))
    await asyncio.wait_for(second.wait(), 20)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert state["cancelled"] >= 1
    assert sup.last_failure["sticky"].startswith("stalled")


async def test_cancelling_the_supervisor_cancels_the_loop() -> None:
    sup = Supervisor()
    stopped = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    task = asyncio.create_task(sup.run("forever", forever))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert stopped.is_set() and sup.restarts["forever"] == 0
