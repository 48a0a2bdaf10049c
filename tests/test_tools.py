"""The technician's commands end to end: ``alarmgw status``, ``diag``, ``test-alarm`` and
``queue`` as subprocesses against a subprocess daemon, a real Mosquitto, the reference
center, a button box on a real pty and GPIO on gpiozero's mock factory; ``/metrics`` and
``/healthz`` over real HTTP on loopback. Every process a test starts, the test stops."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from firmware_sim.box import BoxSimulator
from firmware_sim.broker import free_port
from tests.harness import Proc, Site, alarmgw_cmd
from tests.http_helpers import (
    assert_fits,
    assert_one_line_error,
    cli,
    healthz_is,
    poll,
    request,
    wait_addr,
)

pytestmark = pytest.mark.slow

BOX = "box-gate-main"


def state_dir(site: Site) -> Path:
    return site.root / "state" / "gateway"


async def run(*args: str) -> Any:
    # In a thread: the box simulator lives on this event loop and must keep answering.
    return await asyncio.to_thread(cli, *args)


async def started(site: Site, box: BoxSimulator | None = None) -> tuple[Proc, str]:
    """The daemon, once it is connected and its endpoint answers (and the box is linked)."""
    gateway = site.start_gateway()
    addr = await asyncio.to_thread(wait_addr, state_dir(site))
    await asyncio.to_thread(poll, healthz_is(addr, 200))
    if box is not None:
        await box.wait_linked(30)
    return gateway, addr


def start_human_center(site: Site) -> Proc:
    """The reference center printing its readable lines (what a dispatcher sees)."""
    proc = Proc(alarmgw_cmd("center", "--config", str(site.center_toml)), name="center")
    site.procs.append(proc)
    proc.wait_for(lambda e: e["event"] == "subscribed", stderr=True)
    return proc


def entries(text: str) -> list[str]:
    """diag's output, one string per check (its wrapped continuation lines joined)."""
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith(("PASS", "WARN", "FAIL", "diag:")) or not out:
            out.append(line)
        else:
            out[-1] += line.strip() if not line.strip().startswith("->") else " " + line.strip()
    return out


def metric(families: dict[str, Any], name: str, **labels: str) -> float:
    for sample in families[name].samples:
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    raise AssertionError(f"no sample of {name} with {labels}")


async def test_status_queue_and_metrics_of_a_running_daemon(site: Site) -> None:
    async with BoxSimulator(box_id="B-1234") as box:
        site.boxes = [{"name": BOX, "port": box.path, "heartbeat_s": 2.0}]
        site.buttons = [{"name": "gate-main", "pin": 17, "led_pin": 27}]
        site.write_configs()
        site.start_center()
        _, addr = await started(site, box)
        seq = box.press()
        await box.wait_led("solid", 30)
        assert seq in box.acks
        box.garbage(3)  # dropped and counted per reason
        await asyncio.to_thread(
            poll,
            lambda: (
                sum(request(addr, "GET", "/status")[1]["inputs"][1]["frame_errors"].values()) >= 3
            ),
        )
        cfg = str(site.gateway_toml)

        proc = await run("status", "--config", cfg)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert_fits(proc.stdout)
        assert "OK, the alarm path is alive" in proc.stdout
        assert f"serial:{BOX}" in proc.stdout and "B-1234" in proc.stdout
        assert "Bollard     not configured" in proc.stdout

        proc = await run("status", "--config", cfg, "--json")
        st = json.loads(proc.stdout)
        assert st["health"]["ok"] and st["uplink"]["connected"]
        assert st["last_alarm"]["input"] == f"serial:{BOX}"
        assert st["last_alarm"]["acked_at"] is not None and st["last_alarm"]["ack_ms"] > 0
        refs = {i["ref"]: i for i in st["inputs"]}
        assert refs["gpio:gate-main"]["started"] and refs[f"serial:{BOX}"]["alarms"] == 1
        assert st["gateway"]["versions"]["alarmgw"]

        proc = await run("queue", "--config", cfg)
        assert proc.returncode == 0, proc.stdout
        assert "from the running daemon" in proc.stdout and "empty" in proc.stdout

        code, text = await asyncio.to_thread(request, addr, "GET", "/metrics")
        assert code == 200
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert metric(fams, "alarmgw_presses", input=f"serial:{BOX}") == 1
        assert metric(fams, "alarmgw_alarms_raised", type="alarm") == 1
        assert metric(fams, "alarmgw_events_acked") >= 1
        assert metric(fams, "alarmgw_ack_latency_seconds", le="+Inf") >= 1
        assert metric(fams, "alarmgw_queue_pending", type="alarm") == 0
        assert metric(fams, "alarmgw_mqtt_connected") == 1
        assert metric(fams, "alarmgw_mqtt_reconnects") == 0
        assert metric(fams, "alarmgw_publish_refused") == 0
        errors = [s for s in fams["alarmgw_serial_frame_errors"].samples if s.value > 0]
        assert sum(s.value for s in errors) >= 3
        assert all(s.labels["input"] == f"serial:{BOX}" and s.labels["reason"] for s in errors)


async def test_test_alarm_round_trip_shows_as_a_test_at_the_center(site: Site) -> None:
    site.buttons = [{"name": "gate-main", "pin": 17, "led_pin": 27}]
    site.write_configs()
    center = start_human_center(site)
    await started(site)
    proc = await run("test-alarm", "--config", str(site.gateway_toml), "--timeout", "60")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_fits(proc.stdout)
    assert "ACKED by the center" in proc.stdout and "round trip" in proc.stdout
    event_id = proc.stdout.split("registered ", 1)[1].split(";", 1)[0]
    assert event_id
    line = await asyncio.to_thread(center.wait_for, lambda e: isinstance(e, str) and "TEST" in e)
    assert "TEST (not dispatched)" in line and "(601)" in line and "gpio:gate-main" in line
    assert not center.matching(lambda e: isinstance(e, str) and " ALARM " in e)

    proc = await run(
        "test-alarm", "--config", str(site.gateway_toml), "--json", "--input", "gpio:gate-main"
    )
    result = json.loads(proc.stdout)
    assert proc.returncode == 0 and result["acked"] and result["rtt_ms"] > 0

    proc = await run("test-alarm", "--config", str(site.gateway_toml), "--input", "gpio:nope")
    assert_one_line_error(proc, "unknown input 'gpio:nope'")


async def test_test_alarm_without_center_times_out_and_stays_queued(site: Site) -> None:
    site.buttons = [{"name": "gate-main", "pin": 17}]
    site.write_configs()
    gateway, _ = await started(site)  # no center: nobody will ack
    cfg = str(site.gateway_toml)
    proc = await run("test-alarm", "--config", cfg, "--timeout", "3", "--json")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["acked"] is False and result["id"]

    proc = await run("queue", "--config", cfg, "--json")
    q = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert q["source"] == "from the running daemon" and q["by_type"]["test"]["pending"] == 1

    gateway.stop()
    proc = await run("queue", "--config", cfg)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "from the outbox file" in proc.stdout and "test" in proc.stdout
    assert_fits(proc.stdout)

    # With the daemon stopped, every command that needs it says so in one line.
    for args in (("status",), ("test-alarm",), ("status", "--json")):
        proc = await run(*args, "--config", cfg)
        assert_one_line_error(proc, "daemon not running")
    assert json.loads(proc.stdout) == {"running": False, "error": proc.stderr.strip()[9:]}


async def test_diag_with_the_daemon_running_asks_it(site: Site) -> None:
    async with BoxSimulator(box_id="B-77") as box:
        site.boxes = [{"name": BOX, "port": box.path, "heartbeat_s": 2.0}]
        site.buttons = [{"name": "gate-main", "pin": 17, "led_pin": 27}]
        site.write_configs()
        site.start_center()
        await started(site, box)
        pings_before = box.pings
        proc = await run("diag", "--config", str(site.gateway_toml), "--json")
        report = json.loads(proc.stdout)
        by = {c["name"]: c for c in report["checks"]}
        for name in ("config", "daemon", "key", "center-key", "gpio", "broker", "outbox"):
            assert by[name]["status"] == "PASS", by[name]
        assert "via the daemon" in by["serial"]["found"] and by["serial"]["status"] == "PASS"
        assert "claimed by the running daemon" in by["gpio"]["found"]
        assert box.pings > pings_before
        worst = max({"PASS": 0, "WARN": 1, "FAIL": 2}[c["status"]] for c in report["checks"])
        assert proc.returncode == worst == report["exit"]

        proc = await run("diag", "--config", str(site.gateway_toml))
        assert_fits(proc.stdout)
        assert proc.stdout.splitlines()[-1].startswith("diag: ")


async def test_diag_with_the_daemon_stopped_finds_a_broken_setup(site: Site) -> None:
    site.boxes = [{"name": BOX, "port": "/dev/ttyALARMGW-missing"}]
    site.write_configs()
    toml = site.gateway_toml
    text = toml.read_text().replace(f"port = {site.broker.port}", f"port = {free_port()}", 1)
    toml.write_text(text)
    os.chmod(site.root / "keys" / "gateway.key", 0o644)

    proc = await run("diag", "--config", str(toml))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert_fits(proc.stdout)
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = entries(proc.stdout)
    assert any(line.startswith("FAIL  key") and "0644" in line for line in lines), lines
    assert any(line.startswith("FAIL  serial") and "ttyALARMGW-missing" in line for line in lines)
    assert any(line.startswith("FAIL  broker") and "unreachable" in line for line in lines)
    assert any("-> chmod 600" in line for line in lines)
    assert any(line.startswith("WARN  daemon") for line in lines)

    report = json.loads((await run("diag", "--config", str(toml), "--json")).stdout)
    fails = {c["name"] for c in report["checks"] if c["status"] == "FAIL"}
    assert {"key", "serial", "broker"} <= fails
    assert all(c["action"] for c in report["checks"] if c["status"] != "PASS")
    assert report["exit"] == 2


async def test_diag_with_the_daemon_stopped_pings_the_box_itself(site: Site) -> None:
    async with BoxSimulator(box_id="B-9") as box:
        site.boxes = [{"name": BOX, "port": box.path, "heartbeat_s": 2.0}]
        site.write_configs()
        report = json.loads(
            (await run("diag", "--config", str(site.gateway_toml), "--json")).stdout
        )
        by = {c["name"]: c for c in report["checks"]}
        assert by["serial"]["status"] == "PASS", by["serial"]
        assert "answered PING" in by["serial"]["found"] and box.pings >= 1
        assert by["broker"]["status"] == "PASS", by["broker"]
        assert by["daemon"]["status"] == "WARN"


async def test_healthz_503_while_the_broker_is_down_and_frozen(site: Site) -> None:
    site.write_configs()
    _, addr = await started(site)
    broker = site.broker
    broker.stop()
    body = await asyncio.to_thread(poll, healthz_is(addr, 503, "not connected to broker"))
    assert body["ok"] is False
    proc = await run("status", "--config", str(site.gateway_toml))
    assert proc.returncode == 2 and "FAILING" in proc.stdout and "not connected" in proc.stdout
    broker.start()
    await asyncio.to_thread(poll, healthz_is(addr, 200))

    # A frozen broker keeps the TCP connection open and answers nothing (no RST): the
    # uplink notices by keepalive and the endpoint turns 503 until the broker thaws.
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        await asyncio.to_thread(poll, healthz_is(addr, 503, "not connected to broker"))
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    await asyncio.to_thread(poll, healthz_is(addr, 200))


async def test_events_wait_must_be_a_finite_number(site: Site) -> None:
    # wait=nan once made the handler spin a core until the event was acked.
    site.write_configs()
    _, addr = await started(site)
    for bad in ("nan", "inf", "-inf", "soon"):
        status, body = await asyncio.to_thread(request, addr, "GET", f"/events/x?wait={bad}")
        assert status == 400 and "wait must be a number" in body["error"], (bad, body)
    status, _ = await asyncio.to_thread(request, addr, "GET", "/events/x?wait=0.1")
    assert status == 404


def test_help_texts_fit_one_screen() -> None:
    for command in ("status", "diag", "test-alarm", "queue"):
        proc = cli(command, "--help")
        assert proc.returncode == 0
        assert_fits(proc.stdout)
        assert len(proc.stdout.splitlines()) <= 24, proc.stdout
        assert "exit status" in proc.stdout
    top = cli("--help").stdout
    assert all(c in top for c in ("status", "diag", "test-alarm", "queue"))
