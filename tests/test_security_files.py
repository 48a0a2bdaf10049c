"""Secrets and state are for their owner only, whatever the umask: another local user must
not read the outbox (every queued alarm), the trouble state, the center's state or key.

Each test runs with the usual interactive umask 022, under which a plain ``open`` or
``mkdir`` makes 0644 files and 0755 directories.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from center.service import _open_center
from firmware_sim.broker import Mosquitto
from gateway.contract import envelope as E
from gateway.contract.signing import SigningKey
from gateway.delivery.outbox import Outbox
from gateway.monitors.reporter import TroubleReporter
from tests.harness import Site

KEY = SigningKey.generate()


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def loose_warnings(logs: list[dict[str, Any]]) -> list[str]:
    return [e["problem"] for e in logs if e["event"] == "loose file permissions"]


class Sink:
    def raise_event(self, kind: str, body: Mapping[str, Any], ts: str | None = None) -> str:
        env = E.build(type=kind, site="s", gw="g", seq=1, body=body, key=KEY, ts=ts)
        return env.id


def test_the_outbox_and_its_wal_are_0600(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.sqlite"
    outbox = Outbox(path)
    try:
        env = E.build(
            type="alarm",
            site="s",
            gw="g",
            seq=1,
            body={
                "code": "120",
                "input": "gpio:gate",
                "kind": "panic",
                "test": False,
                "location": {"name": "n", "address": "a", "lat": 1.0, "lon": 2.0},
                "contact": {"phone": "110"},
            },
            key=KEY,
        )
        outbox.add(env)
        files = [path, path.with_name("outbox.sqlite-wal"), path.with_name("outbox.sqlite-shm")]
        assert {p.name: oct(mode(p)) for p in files} == {p.name: oct(0o600) for p in files}
    finally:
        outbox.close()


def test_an_existing_loose_outbox_is_used_with_one_warning(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    Outbox(path).close()
    path.chmod(0o644)
    with capture_logs() as logs:
        Outbox(path).close()
    (problem,) = loose_warnings(logs)
    assert "0644" in problem and "chmod 600" in problem


def test_the_trouble_state_is_0600(tmp_path: Path) -> None:
    state = tmp_path / "troubles.json"
    (tmp_path / "troubles.json.tmp").write_text("left over, 0644")
    reporter = TroubleReporter(Sink(), state_file=state)
    reporter.set("serial:box", "350", True, reason="silent", detail="no answer")
    assert state.exists() and mode(state) == 0o600


def test_the_center_state_dir_is_0700_and_loose_ones_warn(tmp_path: Path) -> None:
    site = Site(root=tmp_path, broker=Mosquitto(tmp_path / "unused-broker", port=1))
    site.write_configs()
    state_dir = tmp_path / "state" / "center"

    def open_center() -> list[dict[str, Any]]:
        with capture_logs() as logs:
            center, seq, _cfg = _open_center(str(site.center_toml))
            center.close()
            seq.close()
            center.state.close()
        return logs

    logs = open_center()
    assert mode(state_dir) == 0o700
    # The store holds every alarm's body and the anti-replay state: 0600 with its WAL.
    for name in ("center.sqlite", "center.sqlite-wal"):
        if (state_dir / name).exists():
            assert mode(state_dir / name) == 0o600, name
    assert (state_dir / "center.sqlite").exists()
    warnings = ("key file permissions", "loose file permissions")
    assert [e for e in logs if e["event"] in warnings] == []

    # A key and a state dir someone loosened: used as they are, one warning line each.
    key_file = tmp_path / "keys" / "center.key"
    key_file.chmod(0o644)
    state_dir.chmod(0o755)
    logs = open_center()
    key_warnings = [e["problem"] for e in logs if e["event"] == "key file permissions"]
    assert len(key_warnings) == 1 and "0644" in key_warnings[0]
    (dir_warning,) = loose_warnings(logs)
    assert str(state_dir) in dir_warning and "chmod 700" in dir_warning


def test_the_gateway_warns_about_a_loose_state_dir_and_keeps_its_files_private(
    site: Site,
) -> None:
    site.write_configs()
    state_dir = site.root / "state" / "gateway"
    state_dir.mkdir(parents=True, mode=0o755)
    gateway = site.start_gateway()
    gateway.wait_for(lambda e: e["event"] == "connected to broker", 30.0)
    warned = gateway.matching(lambda e: e["event"] == "loose file permissions")
    assert len(warned) == 1 and str(state_dir) in warned[0]["problem"], warned
    assert mode(state_dir / "outbox.sqlite") == 0o600
