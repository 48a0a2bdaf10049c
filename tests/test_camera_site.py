"""A vendor recorder end to end: the gateway and the center as subprocesses on a real
Mosquitto, an ONVIF recorder simulator on loopback. A channel's retention dropping reaches the
center as trouble 393 naming the channel, and its restore; the heartbeat carries the
per-channel counts (schema-valid); a recorder that hangs delays neither heartbeats nor an
alarm. Waits are for events, never fixed sleeps."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator

from firmware_sim.box import BoxSimulator
from firmware_sim.nvr_base import Recorder
from firmware_sim.nvr_onvif import OnvifSimulator
from tests.harness import Proc, Site, is_event

pytestmark = pytest.mark.slow

MARGIN_S = 30.0
PASSWORD = "site-Pa55"
SCHEMA = Path(__file__).resolve().parent.parent / "docs/schemas/body/heartbeat.schema.json"


def wait_since(proc: Proc, pred: Any, since: int, timeout: float) -> Any:
    """The first stdout line from index ``since`` on that satisfies ``pred``."""
    deadline = time.monotonic() + timeout
    while True:
        for item in proc.lines[since:]:
            try:
                if isinstance(item, dict) and pred(item):
                    return item
            except (KeyError, TypeError, AttributeError):
                pass
        if time.monotonic() > deadline or proc.proc.poll() is not None:
            raise AssertionError(f"{proc.name}: no matching line in {timeout} s: {proc.lines[-8:]}")
        time.sleep(0.05)


async def expect(proc: Proc, pred: Any, since: int = 0, timeout: float = MARGIN_S) -> Any:
    return await asyncio.to_thread(wait_since, proc, pred, since, timeout)


def heartbeats(center: Proc) -> list[dict[str, Any]]:
    return [
        e["heartbeat"] for e in center.lines if isinstance(e, dict) and e.get("type") == "heartbeat"
    ]


def camera_table(sim: OnvifSimulator, tmp_path: Path, poll_s: float) -> dict[str, Any]:
    pw = tmp_path / "nvr.password"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    return {
        "adapter": "onvif",
        "url": sim.url,
        "username": "admin",
        "password_file": str(pw),
        "poll_s": poll_s,
        "timeout_s": poll_s,
    }


async def test_onvif_channel_retention_trouble_restore_and_heartbeat(
    site: Site, tmp_path: Path
) -> None:
    site.heartbeat_s = 1.0
    recorder = Recorder.with_channels(16, 40, user="admin", password=PASSWORD)
    async with OnvifSimulator(recorder) as sim:
        site.tables["camera"] = camera_table(sim, tmp_path, 1.0)
        site.write_configs()
        center = site.start_center()
        site.start_gateway()
        await expect(center, lambda e: e.get("type") == "state" and e.get("status") == "online")
        await expect(
            center,
            lambda e: e.get("type") == "heartbeat" and "channels" in e["heartbeat"]["camera"],
        )

        mark = len(center.lines)
        await sim.command(["retention", "9", "7"])
        got = await expect(
            center,
            lambda e: (
                e.get("result") == "accepted"
                and e.get("type") == "trouble"
                and e.get("device") == "camera"
                and e.get("code") == "393"
            ),
            mark,
        )
        assert got["detail"] == 'retention 9 of 30 days on channel "Camera 7"'
        beat = await expect(
            center,
            lambda e: (
                e.get("type") == "heartbeat" and e["heartbeat"]["camera"]["below_policy"] == 1
            ),
            mark,
        )
        camera = beat["heartbeat"]["camera"]
        assert camera["worst_channel"] == "Camera 7" and camera["channels"] == 16
        assert camera["ok"] is False and camera["retention_days"] == 9

        mark = len(center.lines)
        await sim.command(["retention", "40", "7"])
        await expect(
            center,
            lambda e: (
                e.get("result") == "accepted"
                and e.get("type") == "restore"
                and e.get("device") == "camera"
            ),
            mark,
        )
    validator = Draft7Validator(json.loads(SCHEMA.read_text()))
    beats = heartbeats(center)
    assert any("below_policy" in b["camera"] for b in beats)
    for body in beats:
        assert not list(validator.iter_errors(body)), body


async def test_a_hanging_recorder_delays_neither_heartbeats_nor_an_alarm(
    site: Site, tmp_path: Path
) -> None:
    site.heartbeat_s = 1.0
    recorder = Recorder.with_channels(4, 40, user="admin", password=PASSWORD)
    async with OnvifSimulator(recorder) as sim, BoxSimulator(box_id="SN-7") as box:
        await sim.command(["hang"])
        site.boxes = [{"name": "box-gate-main", "port": box.path}]
        site.tables["camera"] = camera_table(sim, tmp_path, 2.0)
        site.write_configs()
        center = site.start_center()
        gateway = site.start_gateway()
        await box.wait_linked(MARGIN_S)
        await expect(center, lambda e: e.get("type") == "state" and e.get("status") == "online")
        await asyncio.to_thread(
            lambda: gateway.wait_for(lambda e: e["event"] == "recorder status failed", MARGIN_S)
        )
        # While the recorder keeps every request open: heartbeats keep coming...
        mark = len(heartbeats(center))
        await asyncio.to_thread(
            lambda: center.wait_for(lambda _e: len(heartbeats(center)) >= mark + 3, MARGIN_S)
        )
        # ...and an alarm goes through.
        seq = box.press()
        await box.wait_ack(seq, MARGIN_S)
        line = await asyncio.to_thread(
            lambda: gateway.wait_for(lambda e: e["event"] == "alarm registered", MARGIN_S)
        )
        await expect(center, lambda e: is_event("accepted")(e) and e["id"] == line["id"])
        assert sim.http.mode == "hang"
        await sim.command(["ok"])
