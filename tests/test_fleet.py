"""``alarmgw-sim fleet``: simulated schools against a real center on a real Mosquitto.

The fleet runs in the test's event loop (its command interface is ``Fleet.execute``, what
stdin and ``--script`` drive); the center is its own process, reading the registry the
fleet wrote. Everything the fleet publishes is captured and checked against docs/schemas.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from center.config import load_center_config
from firmware_sim.broker import Mosquitto
from firmware_sim.demo import console_available
from firmware_sim.fleet import Fleet
from firmware_sim.fleet_sites import PREFIX, make_schools, write_registry
from gateway.contract.envelope import IDENT_RE
from tests.harness import BIN, Proc, alarmgw_cmd
from tests.helpers import wait_line, wait_until
from tests.test_interface_docs import errors, tap

COUNT = 20
SEED = 7


def test_schools_are_deterministic_by_seed() -> None:
    a, b = make_schools(30, SEED), make_schools(30, SEED)
    view = [(s.site, s.gw, s.school, s.address, s.lat, s.lon, s.phone, s.key.kid) for s in a]
    assert view == [
        (s.site, s.gw, s.school, s.address, s.lat, s.lon, s.phone, s.key.kid) for s in b
    ]
    # A smaller fleet is the start of a larger one with the same seed.
    assert [s.key.kid for s in make_schools(10, SEED)] == [s.key.kid for s in a[:10]]
    assert [s.site for s in make_schools(30, SEED + 1)] != [s.site for s in a]
    assert len({s.gw for s in a}) == len(a) and len({s.school for s in a}) == len(a)
    for s in a:
        assert IDENT_RE.match(s.site) and IDENT_RE.match(s.gw)
        assert s.school.startswith("深圳市") and s.address.startswith("深圳市")
        assert 22.4 < s.lat < 22.9 and 113.7 < s.lon < 114.5
        assert re.fullmatch(r"\+86-755-\d{4}-\d{4}", s.phone)
        assert s.contact


def test_registry_written_by_the_cli_loads_and_is_deterministic(tmp_path: Path) -> None:
    texts = []
    for name in ("one", "two"):
        out = tmp_path / name
        done = subprocess.run(
            [str(BIN / "alarmgw-sim"), "fleet", "--gateways", "12", "--seed", str(SEED),
             "--out", str(out), "--port", "1999", "--registry-only"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        cfg = load_center_config(out / "center.toml")
        assert len(cfg.gateways) == 12 and cfg.mqtt.port == 1999
        first = make_schools(1, SEED)[0]
        entry = cfg.gateways[0]
        assert (entry.site, entry.id, entry.school, entry.address) == (
            first.site, first.gw, first.school, first.address
        )  # fmt: skip
        assert (entry.lat, entry.lon, entry.phone, entry.contact) == (
            first.lat, first.lon, first.phone, first.contact
        )  # fmt: skip
        texts.append(
            [(out / "center.toml").read_text()]
            + [(out / "keys" / f"{g.id}.pub").read_text() for g in cfg.gateways]
        )
    assert texts[0] == texts[1]


def test_cli_refuses_bad_arguments_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "alarmgw-sim"), "fleet", "--gateways", "0", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr


def status(gw: str, value: str) -> Any:
    return lambda e: e.get("type") == "gateway-status" and e["gw"] == gw and e["status"] == value


def will_seen(seen: list[tuple[str, bytes]], gw: str) -> bool:
    states = [json.loads(p) for name, p in seen if name.endswith(f"/{gw}/state")]
    return any(e["body"]["status"] == "offline" and e["body"]["session"] == 1 for e in states)


@pytest.fixture
async def running(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[tuple[Fleet, Proc]]:
    schools = make_schools(COUNT, SEED)
    toml = write_registry(tmp_path, schools, host="127.0.0.1", port=broker.port, heartbeat_s=1.0)
    center = Proc(alarmgw_cmd("center", "--config", str(toml), "--json"), name="center")
    fleet: Fleet | None = None
    try:
        await wait_line(center, lambda e: e["event"] == "subscribed", stderr=True)
        fleet = Fleet(
            schools,
            host="127.0.0.1",
            port=broker.port,
            center_pub=tmp_path / "keys" / "center.pub",
            heartbeat_s=1.0,
            state_dir=tmp_path / "state" / "fleet",
            seed=SEED,
        )
        yield fleet, center
    finally:
        if fleet is not None:
            await fleet.stop()
        center.stop()


@pytest.mark.slow
async def test_fleet_against_a_real_center(running: tuple[Fleet, Proc], broker: Mosquitto) -> None:
    fleet, center = running
    async with tap(broker.port, PREFIX) as seen:
        await fleet.start()
        for g in fleet.gateways:  # every gateway seen online, and its heartbeats accepted
            await wait_line(center, status(g.gw, "online"))
            await wait_line(
                center, lambda e, gw=g.gw: e.get("type") == "heartbeat" and e["gw"] == gw
            )
        third = fleet.gateways[2]
        done = await fleet.execute(["alarm", "3"])
        got = await wait_line(
            center,
            lambda e: (
                e.get("type") == "alarm" and e["result"] == "accepted" and e["gw"] == third.gw
            ),
        )
        assert got["id"] == done["ids"][0] and got["code"] == "120"
        assert got["registry"]["school"] == third.school.school
        assert got["registry"]["phone"] == third.school.phone
        assert got["location_mismatch"] is False
        assert got["location"]["address"] == third.school.address
        await wait_until(lambda: not third.pending and third.acked_ids >= 1, what="alarm acked")

        await fleet.execute(["test", third.site])
        await fleet.execute(["trouble", "4", "link"])
        await fleet.execute(["restore", "4", "link"])
        for kind in ("test", "trouble", "restore"):
            await wait_line(
                center, lambda e, k=kind: e.get("type") == k and e["result"] == "accepted"
            )
        await wait_until(lambda: not any(g.pending for g in fleet.gateways), what="all acked")

        fifth = fleet.gateways[4]
        await fleet.execute(["stop-heartbeats", fifth.gw])
        await wait_line(center, status(fifth.gw, "stale"))
        await fleet.execute(["resume", "5"])
        await wait_line(
            center, lambda e: status(fifth.gw, "online")(e) and e["reason"] == "heartbeat"
        )

        await fleet.execute(["offline", "6"])
        await wait_line(center, status(fleet.gateways[5].gw, "offline"))
        await fleet.execute(["online", "6"])
        await wait_line(
            center, lambda e: status(fleet.gateways[5].gw, "online")(e) and e["session"] == 2
        )
        seventh = fleet.gateways[6]
        await fleet.execute(["drop", "7"])  # no DISCONNECT: the broker publishes the will
        await wait_line(center, lambda e: status(seventh.gw, "online")(e) and e["session"] == 2)
        await wait_until(lambda: will_seen(seen, seventh.gw), what="the will of session 1")
        stats = fleet.stats()
        assert stats["connected"] == COUNT and stats["acked_events"] >= 4
        await fleet.stop()
        await wait_until(lambda: sum(b'"offline"' in p for _, p in seen) >= COUNT + 1)

    assert not center.matching(lambda e: e.get("result") == "rejected")
    kinds: dict[str, int] = {}
    for name, payload in seen:
        envelope = json.loads(payload)
        if name.endswith("/ack"):
            continue  # the center's
        assert errors(envelope["type"], envelope) == [], (name, envelope)
        kinds[envelope["type"]] = kinds.get(envelope["type"], 0) + 1
    assert {"state", "heartbeat", "alarm", "test", "trouble", "restore"} <= set(kinds)


@pytest.mark.slow
async def test_unacked_alarm_is_sent_again_until_the_center_acks(
    tmp_path: Path, broker: Mosquitto
) -> None:
    schools = make_schools(3, SEED)
    toml = write_registry(tmp_path, schools, host="127.0.0.1", port=broker.port, heartbeat_s=30)
    fleet = Fleet(
        schools, host="127.0.0.1", port=broker.port, center_pub=tmp_path / "keys" / "center.pub"
    )
    center: Proc | None = None
    try:
        await fleet.start()
        await wait_until(lambda: all(g.connected.is_set() for g in fleet.gateways))
        done = await fleet.execute(["alarm", "2", "122"])  # no center yet: nobody acks
        center = Proc(alarmgw_cmd("center", "--config", str(toml), "--json"), name="center")
        got = await wait_line(center, lambda e: e.get("type") == "alarm", timeout=60)
        assert got["id"] == done["ids"][0] and got["result"] == "accepted"
        await wait_until(lambda: not fleet.gateways[1].pending, timeout=60, what="acked")
        assert fleet.gateways[1].pending == {}
    finally:
        await fleet.stop()
        if center is not None:
            center.stop()


@pytest.mark.slow
def test_demo_with_a_fleet_runs_to_the_end() -> None:
    done = subprocess.run(
        [str(BIN / "alarmgw-sim"), "demo", "--fleet", "5"],
        capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "5 simulated schools online" in done.stdout
    assert "Demo complete" in done.stdout
    assert ("Center console: http://127.0.0.1:" in done.stdout) == console_available()


def test_cli_commands_answer_and_refuse_in_one_line(tmp_path: Path, broker: Mosquitto) -> None:
    done = subprocess.run(
        [str(BIN / "alarmgw-sim"), "fleet", "--gateways", "3", "--out", str(tmp_path),
         "--port", str(broker.port), "--json", "--script", "alarm 9; trouble 1 flood; stats; quit"],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    errors_ = [line for line in lines if line.startswith("error ")]
    assert len(errors_) == 2 and "no gateway '9'" in errors_[0] and "flood" in errors_[1]
    stats = [json.loads(line) for line in lines if '"stats"' in line]
    assert stats and stats[-1]["gateways"] == 3
