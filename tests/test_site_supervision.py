"""Site supervision end to end: the gateway and the center as subprocesses on a real
Mosquitto, the bollard on mock GPIO pins (through the GPIO simulator socket) or behind a real
HTTP server on loopback, the recorder behind a real HTTP server, a button box on a real pty.

Intervals are short and waits generous: a test waits for an event, it never times one."""

from __future__ import annotations

import asyncio
import itertools
import signal
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.bollard import BollardSimulator
from firmware_sim.box import BoxSimulator, SimEvent
from firmware_sim.nvr import NvrSimulator
from gateway.contract.envelope import parse_ts
from tests.gpio_helpers import socket_dir
from tests.harness import Proc, Site

pytestmark = pytest.mark.slow

MARGIN_S = 15.0  # generous: the test machine is shared and noisy
HEARTBEAT_FIELDS = {"uptime_s", "session", "queue", "inputs", "bollard", "camera", "clock", "disk"}


def wait_since(proc: Proc, pred: Callable[[Any], bool], since: int, timeout: float) -> Any:
    """The first stdout line from index ``since`` on that satisfies ``pred``."""
    deadline = time.monotonic() + timeout
    while True:
        for item in proc.lines[since:]:
            try:
                if pred(item):
                    return item
            except (KeyError, TypeError, AttributeError):
                pass
        if time.monotonic() > deadline or proc.proc.poll() is not None:
            raise AssertionError(f"{proc.name}: no matching line in {timeout} s: {proc.lines[-8:]}")
        time.sleep(0.05)


async def expect(
    proc: Proc, pred: Callable[[Any], bool], since: int = 0, timeout: float = MARGIN_S
) -> Any:
    return await asyncio.to_thread(wait_since, proc, pred, since, timeout)


def event(kind: str, device: str, code: str, text: str = "") -> Callable[[Any], bool]:
    """An accepted trouble/restore of (device, code) whose detail contains ``text``."""
    return lambda e: (
        e.get("result") == "accepted"
        and e.get("type") == kind
        and e.get("device") == device
        and e.get("code") == code
        and text in e.get("detail", "")
    )


def heartbeat_with(pred: Callable[[dict[str, Any]], bool]) -> Callable[[Any], bool]:
    return lambda e: (
        e.get("type") == "heartbeat" and e.get("result") == "accepted" and pred(e["heartbeat"])
    )


async def gateway_with_gpio_sim(site: Site, sock: Path) -> tuple[Proc, Proc]:
    center = site.start_center()
    gateway = site.start_gateway({"GPIOZERO_PIN_FACTORY": "mock", "ALARMGW_GPIO_SIM": str(sock)})
    await expect(gateway, lambda e: e["event"] == "GPIO simulator listening")
    await expect(gateway, lambda e: e["event"] == "bollard switches claimed")
    return center, gateway


# -- bollard -----------------------------------------------------------------------------

# Down is a trouble only inside the protection hours: make every hour one.
ALWAYS_PROTECTED = {"timezone": "UTC", "protect": ["Mon-Sun 00:00-24:00"]}


async def test_bollard_on_gpio_down_fault_stuck_and_restores(site: Site) -> None:
    site.heartbeat_s = 1.0
    site.tables["bollard"] = {
        "up_pin": 5,
        "down_pin": 6,
        "fault_pin": 13,
        "moving_timeout_s": 3,
        **ALWAYS_PROTECTED,
    }
    site.write_configs()
    with socket_dir() as tmp:
        sock = tmp / "gpio.sock"
        center, _gateway = await gateway_with_gpio_sim(site, sock)
        async with BollardSimulator(gpio_socket=sock, up_pin=5, down_pin=6, fault_pin=13) as sim:
            await expect(center, heartbeat_with(lambda b: b["bollard"]["state"] == "up"))
            cases: list[tuple[Callable[[], Any], Callable[[], Any], str]] = [
                (
                    lambda: sim.set_position("down"),
                    lambda: sim.set_position("up"),
                    "protection hours",
                ),
                (lambda: sim.set_fault(True), lambda: sim.set_fault(False), "fault input"),
                (lambda: sim.set_position("moving"), lambda: sim.set_position("up"), "moving for"),
            ]
            for break_it, fix_it, text in cases:
                mark = len(center.lines)
                await break_it()
                got = await expect(center, event("trouble", "bollard", "380", text), mark)
                mark = len(center.lines)
                await fix_it()
                await expect(center, event("restore", "bollard", "380"), mark)
                assert got["site"] == "sz-futian-xmh-014"
            hb = await expect(
                center, heartbeat_with(lambda b: b["bollard"]["state"] == "up"), len(center.lines)
            )
            parse_ts(hb["heartbeat"]["bollard"]["since"])


async def test_bollard_over_http_down_fault_unreachable_and_restores(site: Site) -> None:
    async with BollardSimulator(http=("127.0.0.1", 0)) as sim:
        site.tables["bollard"] = {
            "status_url": sim.url,
            "poll_s": 0.3,
            "timeout_s": 0.5,
            **ALWAYS_PROTECTED,
        }
        site.write_configs()
        center = site.start_center()
        site.start_gateway()
        assert sim.http is not None
        cases: list[tuple[Callable[[], Any], Callable[[], Any], str]] = [
            (lambda: sim.set_position("down"), lambda: sim.set_position("up"), "protection hours"),
            (lambda: sim.set_fault(True), lambda: sim.set_fault(False), "controller reports"),
            (lambda: sim.command(["down-http"]), lambda: sim.command(["up-http"]), "unreachable"),
            (lambda: sim.command(["garbage"]), lambda: sim.command(["ok"]), "bad-response"),
            (lambda: sim.command(["hang"]), lambda: sim.command(["ok"]), "timeout"),
        ]
        await expect(center, lambda e: e.get("type") == "state" and e.get("status") == "online")
        for break_it, fix_it, text in cases:
            mark = len(center.lines)
            await break_it()
            await expect(center, event("trouble", "bollard", "380", text), mark)
            mark = len(center.lines)
            await fix_it()
            await expect(center, event("restore", "bollard", "380"), mark)


# -- recorder ----------------------------------------------------------------------------


async def test_nvr_retention_recording_unreachable_garbage_hang_and_restores(site: Site) -> None:
    poll_s = 0.5
    async with NvrSimulator(retention_days=34) as nvr:
        site.tables["camera"] = {"url": nvr.url, "poll_s": poll_s, "timeout_s": 0.4}
        site.write_configs()
        center = site.start_center()
        site.start_gateway()
        await expect(center, lambda e: e.get("type") == "state" and e.get("status") == "online")
        # Within one poll interval plus the request timeout plus a generous margin.
        within = poll_s + 0.4 + MARGIN_S
        cases: list[tuple[Callable[[], Any], Callable[[], Any], str]] = [
            (
                lambda: nvr.command(["retention", "12"]),
                lambda: nvr.command(["retention", "31"]),
                "retention 12 days, policy 30",
            ),
            (
                lambda: nvr.command(["recording", "off"]),
                lambda: nvr.command(["recording", "on"]),
                "not recording",
            ),
            (nvr.stop, nvr.start, "unreachable"),
            (lambda: nvr.command(["garbage"]), lambda: nvr.command(["ok"]), "bad-response"),
            (lambda: nvr.command(["error", "503"]), lambda: nvr.command(["ok"]), "HTTP 503"),
            (lambda: nvr.command(["hang"]), lambda: nvr.command(["ok"]), "timeout"),
        ]
        for break_it, fix_it, text in cases:
            mark = len(center.lines)
            await break_it()
            await expect(center, event("trouble", "camera", "393", text), mark, within)
            mark = len(center.lines)
            await fix_it()
            await expect(center, event("restore", "camera", "393"), mark, within)


# -- button box --------------------------------------------------------------------------


async def test_box_silent_350_and_tamper_power_fault_with_restores(site: Site) -> None:
    hb = 0.5
    async with BoxSimulator(box_id="SN-77", heartbeat_s=hb) as box:
        site.boxes = [{"name": "box-gate-main", "port": box.path, "heartbeat_s": hb}]
        site.write_configs()
        center = site.start_center()
        site.start_gateway()
        await box.wait_linked(MARGIN_S)
        dev = "serial:box-gate-main"
        mark = len(center.lines)
        box.silent(True)
        # 350 after 3 x heartbeat without a valid frame (SERIAL.md), plus a margin.
        got = await expect(center, event("trouble", dev, "350"), mark, 3 * hb + MARGIN_S)
        assert "no valid frame" in got["detail"]
        mark = len(center.lines)
        box.silent(False)
        await expect(center, event("restore", dev, "350"), mark)
        for act, code, undo in [
            (lambda: box.tamper("open"), "137", lambda: box.tamper("closed")),
            (lambda: box.power("battery"), "301", lambda: box.power("mains")),
            (lambda: box.power("low"), "302", lambda: box.power("mains")),
            (lambda: box.fault("7"), "330", lambda: box.fault("0")),
        ]:
            mark = len(center.lines)
            act()
            await expect(center, event("trouble", dev, code), mark)
            mark = len(center.lines)
            undo()
            await expect(center, event("restore", dev, code), mark)


async def test_box_tamper_flapping_1000_times_is_bounded_and_counted(site: Site) -> None:
    events: list[SimEvent] = []
    async with BoxSimulator(box_id="SN-78", on_event=events.append) as box:
        site.boxes = [{"name": "box-gate-main", "port": box.path}]
        site.tables["trouble"] = {"flap_summary_s": 1.0}
        site.write_configs()
        center = site.start_center()
        gateway = site.start_gateway()
        await box.wait_linked(MARGIN_S)
        for i in range(1000):
            seq = box.tamper("open" if i % 2 == 0 else "closed")
            if i % 20 == 19:  # let the gateway keep up: nothing is dropped on the way
                await box.wait_ack(seq, MARGIN_S)
        assert not [e for e in events if e.kind == "dropped"]
        dev = "serial:box-gate-main"

        def tamper_events() -> list[dict[str, Any]]:
            return [
                e
                for e in center.lines
                if isinstance(e, dict)
                and e.get("result") == "accepted"
                and e.get("device") == dev
                and e.get("code") == "137"
            ]

        def all_counted() -> bool:
            return sum(e.get("count") or 1 for e in tamper_events()) >= 1000

        await asyncio.to_thread(wait_since, center, lambda _e: all_counted(), 0, 60.0)
        got = tamper_events()
        assert sum(e.get("count") or 1 for e in got) == 1000  # none lost silently
        assert len([e for e in got if e.get("count") is None]) == 20  # then summarised
        assert len(got) <= 60, len(got)  # bounded: not 1,000 envelopes
        assert got[-1]["type"] == "restore"  # it ended closed
        assert gateway.matching(
            lambda e: e["event"] == "device flapping: its changes are now summarised"
        )


# -- heartbeats and liveness -------------------------------------------------------------


async def test_heartbeats_every_field_at_interval_then_stale_and_will(site: Site) -> None:
    site.heartbeat_s = 1.0
    async with (
        NvrSimulator() as nvr,
        BollardSimulator(http=("127.0.0.1", 0)) as bollard,
        BoxSimulator(box_id="SN-79") as box,
    ):
        site.boxes = [{"name": "box-gate-main", "port": box.path}]
        site.tables["camera"] = {"url": nvr.url, "poll_s": 0.5}
        site.tables["bollard"] = {"status_url": bollard.url, "poll_s": 0.5}
        site.write_configs()
        center = site.start_center()
        gateway = site.start_gateway()
        await box.wait_linked(MARGIN_S)
        await expect(
            center, lambda e: e.get("type") == "gateway-status" and e["status"] == "online"
        )

        def heartbeats() -> list[dict[str, Any]]:
            return [e for e in center.lines if isinstance(e, dict) and e.get("type") == "heartbeat"]

        await asyncio.to_thread(wait_since, center, lambda _e: len(heartbeats()) >= 6, 0, 60.0)
        beats = heartbeats()
        for beat in beats:
            body = beat["heartbeat"]
            assert set(body) >= HEARTBEAT_FIELDS, body
            assert set(body["queue"]) >= {"pending", "oldest_s"}
            # retention_days only once the recorder answered (the first beat may come first).
            assert set(body["camera"]) >= {"recording", "required_days", "ok"}
            assert set(body["bollard"]) >= {"state"}
        for beat in beats[-3:]:
            body = beat["heartbeat"]
            assert set(body["camera"]) >= {"recording", "retention_days", "required_days", "ok"}
            assert set(body["bollard"]) >= {"state", "since"}
            assert isinstance(body["clock"]["synced"], bool)
            assert body["disk"]["free_bytes"] > 0
        last = beats[-1]["heartbeat"]
        assert last["inputs"] == {"serial:box-gate-main": "ok"}
        assert last["camera"]["ok"] is True and last["bollard"]["state"] == "up"
        # The gateway's own stamps: one snapshot per configured interval.
        stamps = [parse_ts(b["ts"]).timestamp() for b in beats]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert 0.8 <= statistics.median(gaps) <= 1.2, gaps

        # A hung gateway: no heartbeat for 2.5 x the interval makes it stale; then the broker
        # notices the dead session and publishes its will: offline.
        mark = len(center.lines)
        gateway.proc.send_signal(signal.SIGSTOP)
        try:
            stale = await expect(
                center, lambda e: e.get("type") == "gateway-status" and e["status"] == "stale", mark
            )
            assert stale["reason"] == "no-heartbeat"
            will = await expect(
                center,
                lambda e: e.get("type") == "gateway-status" and e["status"] == "offline",
                mark,
                30.0,
            )
            assert will["reason"] == "offline-state"
        finally:
            gateway.proc.send_signal(signal.SIGCONT)
        mark = len(center.lines)
        await expect(
            center,
            lambda e: e.get("type") == "gateway-status" and e["status"] == "online",
            mark,
            40,
        )
