"""A link that goes dead without a RST for 60 s: the gateway
notices within keepalive x 1.5, the center sees its will, and every alarm pressed before,
during and after is delivered once the link heals."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

import pytest

from tests.fault.common import assert_exactly_once, boxes, linked, wait_accepted
from tests.fault.proxy import BlackholeProxy
from tests.harness import Site

pytestmark = pytest.mark.slow

KEEPALIVE_S = 4
BLACKHOLE_S = 25


def _ts(entry: dict) -> float:  # type: ignore[type-arg]
    return datetime.fromisoformat(entry["timestamp"]).timestamp()


@pytest.mark.timeout(300)
async def test_blackholed_link_for_60_s(site: Site) -> None:
    proxy = BlackholeProxy(site.broker.port)
    await proxy.start()
    try:
        async with boxes(site, 1) as sims:
            site.write_configs()
            # The gateway reaches the broker only through the proxy; the center directly.
            text = site.gateway_toml.read_text()
            text = text.replace(f"port = {site.broker.port}", f"port = {proxy.port}")
            text = text.replace("keepalive_s = 5", f"keepalive_s = {KEEPALIVE_S}")
            site.gateway_toml.write_text(text)
            center = site.start_center()
            gateway = site.start_gateway(env={**__import__("os").environ, "ALARMGW_LOG_LEVEL": "debug"})
            await linked(sims)
            (box,) = sims.values()
            await asyncio.to_thread(
                center.wait_for, lambda e: e.get("type") == "state" and e["status"] == "online"
            )
            box.press()
            await wait_accepted(center, 1, 30)

            loop = asyncio.get_running_loop()
            cut_at = loop.time()
            wall_cut = datetime.now().timestamp()
            proxy.blackhole()
            during = [box.press()]
            lost = await asyncio.to_thread(
                gateway.wait_for, lambda e: e["event"] == "broker connection lost", 30
            )
            noticed_s = _ts(lost) - wall_cut
            will = await asyncio.to_thread(
                center.wait_for,
                lambda e: e.get("type") == "state" and e["status"] == "offline",
                30,
            )
            during.append(box.press())
            for seq in during:
                await box.wait_ack(seq, 30)  # durable on the gateway while the link is dead
            await asyncio.sleep(max(0.0, BLACKHOLE_S - (loop.time() - cut_at)))
            assert len(center.matching(lambda e: e.get("type") == "alarm")) == 1
            proxy.heal()
            try:
                await wait_accepted(center, 3, 90)
            except TimeoutError:
                recent = "\n".join(map(str, gateway.lines + ["STDERR"] + gateway.errors))
                raise AssertionError(
                    f"not delivered after the heal; gateway log:\n{recent}"
                ) from None
            await box.wait_led("solid", 30)
        print(json.dumps({"noticed_after_s": round(noticed_s, 2), "limit_s": KEEPALIVE_S * 1.5}))
        # keepalive x 1.5, plus the 0.5 s housekeeping tick and scheduling slack on a shared
        # machine; paho alone would need 2 x keepalive.
        assert noticed_s <= KEEPALIVE_S * 1.5 + 1.0, lost
        assert will["session"] >= 1
        assert_exactly_once(center, 3)
    finally:
        await proxy.stop()
