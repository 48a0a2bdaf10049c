"""A loop turn that reads more than a burst (a broker handing over a backlog) sends each
full burst to the checker at once, not at the end of the turn; everything is still
decided in arrival order and acknowledged."""

from __future__ import annotations

import asyncio
from pathlib import Path

from center.service import BURST_MAX, CHECKING_MAX
from gateway.contract import envelope as E
from tests import helpers
from tests.center.helpers import CENTER_KEY, GW, GW_KEY, PREFIX, SITE, alarm

EVENT_TOPIC = f"{PREFIX}/{SITE}/{GW}/event"


class _Up:
    connected = True

    def __init__(self) -> None:
        self.acks: list[bytes] = []

    def publish(self, _topic: str, payload: bytes, **_kw: object) -> asyncio.Future[int]:
        self.acks.append(payload)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        fut.set_result(0)
        return fut


async def test_full_bursts_go_to_the_checker_within_one_loop_turn(tmp_path: Path) -> None:
    c = helpers.make_center(tmp_path, [(SITE, GW, GW_KEY.verify_key)], key=CENTER_KEY)
    up = _Up()
    c.attach(up)  # type: ignore[arg-type]
    verdicts: list = []
    c.listeners.append(verdicts.append)
    total = BURST_MAX * (CHECKING_MAX + 1) + 10
    payloads = [alarm(seq).to_bytes() for seq in range(1, total + 1)]
    try:
        for payload in payloads:  # one loop turn: no await in between
            c.on_message(EVENT_TOPIC, payload)
        assert len(c._checking) >= CHECKING_MAX  # full bursts left during the turn
        assert len(c._incoming) == total - len(c._checking) * BURST_MAX
        async with asyncio.timeout(120):
            while len(verdicts) < total:
                await asyncio.sleep(0.01)
        assert [v.env.seq for v in verdicts] == list(range(1, total + 1))
        assert {v.result for v in verdicts} == {"accepted"}
        acked = [i for a in up.acks for i in E.parse(a).body["ids"]]
        assert sorted(acked) == sorted(v.env.id for v in verdicts)
    finally:
        c.close()
        c.state.close()
