"""With a share group, several instances see the same gateways: a liveness change is
reported by one of them, and a gateway whose heartbeats went to the other instance is not
called stale."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from center.liveness import GatewayStatus, Liveness
from center.service import Center, Registry
from center.store import open_store
from gateway.contract import envelope as E
from gateway.delivery.seq import SeqCounter
from tests.center.helpers import CENTER_KEY, GW, GW_KEY, PREFIX, SITE, heartbeat


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, backend: dict[str, Any], name: str, clock: Clock) -> Center:
    reg = Registry()
    reg.add(SITE, GW, GW_KEY.verify_key, heartbeat_s=30.0)
    center = Center(
        prefix=PREFIX,
        key=CENTER_KEY,
        seq=SeqCounter(tmp_path / f"{name}.seq"),
        state=open_store(**backend),
        registry=reg,
        share_group="centers",
    )
    center.liveness = Liveness(reg.heartbeat_s, clock=clock)
    return center


async def until(cond: Any) -> None:
    async with asyncio.timeout(30):
        while not cond():
            await asyncio.sleep(0.01)


async def test_one_report_per_change_and_no_false_stale(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    clock = Clock()
    a, b = make(tmp_path, backend, "a", clock), make(tmp_path, backend, "b", clock)
    reports: list[tuple[str, GatewayStatus]] = []
    a.status_listeners.append(lambda c: reports.append(("a", c)))
    b.status_listeners.append(lambda c: reports.append(("b", c)))
    try:
        assert a.subscriptions()[0] == f"$share/centers/{PREFIX}/+/+/event"
        online = E.build(
            type="state",
            site=SITE,
            gw=GW,
            seq=1,
            key=GW_KEY,
            body={"status": "online", "session": 1, "version": "t"},
        )
        a.on_message(f"{PREFIX}/{SITE}/{GW}/state", online.to_bytes())
        await until(lambda: reports)
        b.on_message(f"{PREFIX}/{SITE}/{GW}/heartbeat", heartbeat(2).to_bytes())
        await until(lambda: b.counts["accepted"] == 1)
        assert [(who, c.status) for who, c in reports] == [("a", "online")]
        # 80 s later by a's clock (no heartbeat reached a), but b had one just now
        clock.now += 80
        assert a.check_stale() == []
        assert a.liveness.status(SITE, GW) == "online"
        assert [(who, c.status) for who, c in reports] == [("a", "online")]
    finally:
        for c in (a, b):
            c.close()
            c.state.close()
