"""A corrupt outbox with only an index page damaged: the daemon moves it aside but first
salvages every readable row, so the queued alarms still reach the center."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.contract import envelope as E
from gateway.delivery.outbox import Outbox
from tests.harness import GW, SITE, Site, is_event
from tests.helpers import wait_line

pytestmark = pytest.mark.slow

QUEUED = 40


def alarm_body(n: int) -> dict[str, object]:
    return {
        "code": "120",
        "kind": "panic",
        "input": f"gpio:gate-{n}",
        "location": {"name": "Gate", "address": "Road 1", "lat": 1.0, "lon": 2.0},
        "contact": {"phone": "110"},
        "test": False,
    }


def corrupt_index(path: Path, index: str) -> None:
    """Overwrite the root page of ``index`` (the table's pages stay intact)."""
    db = sqlite3.connect(path)
    try:
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        (root,) = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE type = 'index' AND name = ?", (index,)
        ).fetchone()
    finally:
        db.close()
    with path.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)
    check = sqlite3.connect(path)
    try:
        (verdict,) = check.execute("PRAGMA quick_check").fetchone()
        assert verdict != "ok"
        (rows,) = check.execute("SELECT COUNT(*) FROM outbox NOT INDEXED").fetchone()
        assert rows == QUEUED  # the rows themselves are still readable
    finally:
        check.close()


async def test_alarms_in_an_outbox_with_a_corrupt_index_reach_the_center(site: Site) -> None:
    site.write_configs()
    state = site.root / "state" / "gateway"
    state.mkdir(parents=True, mode=0o700)
    outbox = Outbox(state / "outbox.sqlite")
    ids = []
    for n in range(QUEUED):
        env = E.build(
            type="alarm", site=SITE, gw=GW, seq=1000 + n, body=alarm_body(n), key=site.gw_key
        )
        outbox.add(env)
        ids.append(env.id)
    outbox.close()  # checkpointed: everything is in the main file
    corrupt_index(state / "outbox.sqlite", "outbox_send_order")

    center = site.start_center()
    gateway = site.start_gateway()
    salvaged = await wait_line(gateway, lambda e: e.get("event") == "corrupt outbox salvaged")
    assert (salvaged["saved"], salvaged["lost"]) == (QUEUED, 0)
    seen: set[str] = set()

    def arrived(e: object) -> bool:
        if is_event("accepted")(e) and isinstance(e, dict):
            seen.add(str(e["id"]))
        return seen >= set(ids)

    await wait_line(center, arrived, timeout=60)
    trouble = await wait_line(
        center, lambda e: is_event("accepted", "trouble")(e) and e.get("code") == "330"
    )
    assert f"{QUEUED} queued events salvaged, 0 lost" in trouble["detail"]


def test_salvage_keeps_each_paths_state(tmp_path: Path, site: Site) -> None:
    """What each delivery path still owes survives the salvage: a row the center acked but
    the DC-09 receiver has not stays owed to DC-09 only."""
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path, dc09_types={"alarm"})
    envs = [
        E.build(type="alarm", site=SITE, gw=GW, seq=1 + n, body=alarm_body(n), key=site.gw_key)
        for n in range(QUEUED)
    ]
    for env in envs:
        outbox.add(env)
    outbox.remove([envs[0].id])  # the center's part is done
    outbox.mark_dc09_delivered(envs[1].id)  # the receiver's part is done
    outbox.close()
    corrupt_index(path, "sqlite_autoindex_outbox_1")
    again = Outbox(path, dc09_types={"alarm"})
    try:
        assert again.moved_aside is not None and again.salvaged is not None
        assert (again.salvaged.saved, again.salvaged.lost) == (QUEUED, 0)
        assert again.get(envs[0].id) is None and again.owes_dc09(envs[0].id)
        got = again.get(envs[1].id)
        assert got is not None and got.payload == envs[1].to_bytes()
        assert not again.owes_dc09(envs[1].id)
        assert again.count() == QUEUED - 1 and again.count_dc09() == QUEUED - 1
    finally:
        again.close()
