"""A cloned gateway end to end: two ``alarmgw run`` daemons with one config (one id, one
key) but state directories of their own, as from a copied SD card, on a real Mosquitto
(through ``TakeoverShim`` where the broker does not send the takeover DISCONNECT itself).
The daemon that is taken over says so in one line in its journal, and ``alarmgw status``
shows it FAILING with the reason and the fix."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Proc, Site, alarmgw_cmd
from tests.http_helpers import cli
from tests.takeover_shim import TakeoverShim, needs_shim

pytestmark = pytest.mark.slow

TAKEOVER_LINE = "took this session over"


def clone_configs(site: Site, port: int) -> Path:
    """Point the site's gateway at ``port``; write the clone's config; its path."""
    site.write_configs()
    text = re.sub(r"(?m)^port = \d+$", f"port = {port}", site.gateway_toml.read_text())
    site.gateway_toml.write_text(text)
    clone = site.root / "gateway-clone.toml"
    clone.write_text(text.replace('state_dir = "state/gateway"', 'state_dir = "state/clone"'))
    return clone


def is_takeover_line(e: Any) -> bool:
    return isinstance(e, dict) and TAKEOVER_LINE in str(e.get("event", ""))


async def status(config: Path, *extra: str) -> Any:
    return await asyncio.to_thread(cli, "status", "--config", str(config), *extra)


async def test_a_cloned_gateway_is_named_in_the_journal_and_in_status(site: Site) -> None:
    shim = TakeoverShim(site.broker.port, emulate=needs_shim())
    await shim.start()
    try:
        clone_toml = clone_configs(site, shim.port)
        first = site.start_gateway()
        await asyncio.to_thread(first.wait_for, lambda e: e["event"] == "subscribed", 30)
        clone = Proc(alarmgw_cmd("run", "--config", str(clone_toml)), name="clone")
        site.procs.append(clone)
        line = await asyncio.to_thread(first.wait_for, is_takeover_line, 60)

        # Back on the broker after its wait, the first daemon is connected but FAILING: the
        # takeover is not over until a session holds.
        async def connected_and_failing() -> dict[str, Any]:
            while True:
                proc = await status(site.gateway_toml, "--json")
                st = json.loads(proc.stdout)
                if st.get("uplink", {}).get("connected") and st["uplink"].get("verdict"):
                    return dict(st)
                await asyncio.sleep(0.2)

        st = await asyncio.wait_for(connected_and_failing(), 90)
        text = await status(site.gateway_toml)
    finally:
        site.close()
        await shim.stop()

    assert line["level"] == "error"
    assert "another gateway with the id alarmgw-" in line["event"]
    assert "a cloned SD card?" in line["event"]
    assert "give each gateway its own [gateway] id and key" in line["event"]
    assert isinstance(line["retry_in_s"], float | int) and line["retry_in_s"] > 0
    # The ordinary lost-link lines do not repeat it.
    assert not first.matching(lambda e: e["event"] == "broker connection lost")

    verdict = st["uplink"]["verdict"]
    assert verdict["level"] == "failing" and TAKEOVER_LINE in verdict["found"]
    assert st["verdict"]["exit"] == 2
    assert text.returncode == 2, text.stdout
    out = " ".join(text.stdout.split())  # wrapped to the terminal's width
    assert "Health FAILING" in out
    assert "uplink: another gateway with the id" in out
    assert "-> give each gateway its own [gateway] id and key" in out
    troubles = st["supervision"]["troubles"]
    assert {"device": "gateway", "code": "350"}.items() <= troubles[0].items()
