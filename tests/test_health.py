"""The local endpoint (gateway/technician/health.py) in-process, on a real Mosquitto and real
HTTP on
loopback: ``/healthz`` turns 503 while the daemon's event loop is stalled and recovers after;
the POST guard; and the pieces (Prometheus text, loopback test, status verdicts) on their own.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.technician.health import connect_address, is_loopback
from gateway.technician.metrics import Family, Histogram, histogram_family, render
from gateway.technician.tools import (
    format_queue,
    format_status,
    queue_verdict,
    section_summary,
    status_verdict,
    wrap,
)
from tests.harness import Site
from tests.http_helpers import auth, healthz_is, poll, request, wait_addr


async def _start(site: Site) -> tuple[Gateway, asyncio.Task[None], str]:
    site.write_configs()
    gw = Gateway(load_config(site.gateway_toml))
    task = asyncio.create_task(gw.run())
    addr = await asyncio.to_thread(wait_addr, Path(gw.cfg.gateway.state_dir))
    await asyncio.to_thread(poll, healthz_is(addr, 200))
    return gw, task, addr


async def _stop(gw: Gateway, task: asyncio.Task[None]) -> None:
    gw.stop()
    await asyncio.wait_for(task, 30)


@pytest.mark.slow
async def test_healthz_turns_503_while_the_event_loop_is_stalled(site: Site) -> None:
    gw, task, addr = await _start(site)
    try:
        seen: dict[str, Any] = {}
        released = threading.Event()

        def watch() -> None:
            # A plain thread: it keeps asking while the daemon's loop is blocked.
            try:
                seen["healthz"] = poll(healthz_is(addr, 503, "uplink loop stuck"), 60)
                seen["status"] = request(addr, "GET", "/status")
            finally:
                released.set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        # The stall: a blocking call on the event loop (what a hung disk write or a slow
        # library call would do). It lasts until the endpoint has reported it, not a set time.
        released.wait(90)
        watcher.join()
        problems = seen["healthz"]["problems"]
        assert any("uplink loop stuck" in p for p in problems), problems
        code, body = seen["status"]
        assert code == 503
        assert "event loop not responding" in body["problems"][0]
        # Unblocked, the loop ticks again and the endpoint says so.
        await asyncio.to_thread(poll, healthz_is(addr, 200))
    finally:
        await _stop(gw, task)
    assert not (Path(gw.cfg.gateway.state_dir) / "http.addr").exists()


@pytest.mark.slow
async def test_posts_need_json_and_metrics_parse(site: Site) -> None:
    gw, task, addr = await _start(site)
    try:
        code, body = await asyncio.to_thread(
            request, addr, "POST", "/test-alarm", None, {"Content-Type": "text/plain"}
        )
        assert code == 415, body
        code, body = await asyncio.to_thread(request, addr, "POST", "/test-alarm", {})
        assert code == 401, body  # not authenticated
        headers = auth(Path(gw.cfg.gateway.state_dir), "POST", "/test-alarm")
        code, body = await asyncio.to_thread(request, addr, "POST", "/test-alarm", {}, headers)
        assert code == 409  # no inputs configured: nothing to test
        code, body = await asyncio.to_thread(request, addr, "GET", "/events/nope")
        assert (code, body["state"]) == (404, "unknown")
        code, text = await asyncio.to_thread(request, addr, "GET", "/metrics")
        assert code == 200
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"alarmgw_info", "alarmgw_ack_latency_seconds", "alarmgw_queue_pending"} <= names
    finally:
        await _stop(gw, task)


def test_loopback_and_connect_address() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("127.3.2.1")
    assert is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.5")
    assert not is_loopback("::ffff:192.168.1.2")
    assert not is_loopback(None)
    assert not is_loopback("garbage")
    assert connect_address("0.0.0.0", 80) == "127.0.0.1:80"
    assert connect_address("::", 80) == "[::1]:80"
    assert connect_address("::1", 8787) == "[::1]:8787"


def test_prometheus_text_round_trips_through_the_reference_parser() -> None:
    hist = Histogram([0.1, 1.0])
    for v in (0.05, 0.5, 0.5, 3.0):
        hist.observe(v)
    fams = [
        Family("x_total", "counter", 'help with "quotes"\nand a newline').add(
            3, {"input": 'serial:a"b\\c'}
        ),
        histogram_family("lat_seconds", "latency", hist.snapshot()),
    ]
    parsed = {f.name: f for f in text_string_to_metric_families(render(fams))}
    counter = parsed["x"]
    assert counter.samples[0].labels == {"input": 'serial:a"b\\c'}
    assert counter.samples[0].value == 3
    buckets = {s.labels["le"]: s.value for s in parsed["lat_seconds"].samples if "le" in s.labels}
    assert buckets == {"0.1": 1, "1": 3, "+Inf": 4}


def _snapshot(**over: Any) -> dict[str, Any]:
    st: dict[str, Any] = {
        "gateway": {
            "site": "s",
            "id": "g",
            "kid": "k" * 16,
            "version": "0",
            "pid": 1,
            "uptime_s": 7384,
            "config": "/etc/alarmgw/gateway.toml",
        },
        "health": {"ok": True, "problems": []},
        "inputs": [
            {
                "ref": "serial:box-with-a-rather-long-name",
                "kind": "serial",
                "state": "trouble",
                "port": "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0",
                "connected": False,
            }
        ],
        "uplink": {
            "broker": "broker.example.invalid:8883",
            "tls": True,
            "protocol": "5",
            "connected": True,
            "session": 4,
            "reconnects": 0,
        },
        "queue": {"pending": 0, "oldest_age_s": None, "by_type": {}, "memory_only": 0},
        "last_alarm": None,
        "bollard": {"state": "up", "since": "2026-01-01T00:00:00Z", "ok": True},
        "supervision": {"ok": False, "troubles": [{"detail": "clock not synchronised"}]},
    }
    st.update(over)
    return st


def test_status_text_fits_80_columns_and_names_warnings() -> None:
    lines = format_status(_snapshot())
    assert all(len(line) <= 80 for line in lines), lines
    text = "\n".join(lines)
    assert "OK, with warnings" in text
    assert "supervision: clock not synchronised" in text
    assert "Bollard     ok, state up" in text
    failing = format_status(
        _snapshot(health={"ok": False, "problems": ["not connected to broker x:1"]})
    )
    assert "FAILING" in failing[1]


def test_provider_summary_and_queue_verdicts() -> None:
    assert section_summary({"status": "not configured", "ok": None}) == "not configured"
    assert section_summary({"ok": False, "recording": False}) == "TROUBLE, recording false"
    q = {
        "pending": 2,
        "oldest_age_s": 40.0,
        "by_type": {
            "alarm": {
                "pending": 1,
                "oldest_age_s": 40.0,
                "failed_attempts": 3,
                "last_error": "x" * 200,
            },
            "trouble": {
                "pending": 1,
                "oldest_age_s": 5.0,
                "failed_attempts": 0,
                "last_error": None,
            },
        },
    }
    assert queue_verdict(q, ack_timeout_s=15.0) == 2  # the presser's LED is already "fast"
    assert queue_verdict(q, ack_timeout_s=60.0) == 1
    assert queue_verdict({"pending": 0, "by_type": {}}, ack_timeout_s=15.0) == 0
    code, why = status_verdict(_snapshot(queue={**q, "memory_only": 0}), ack_timeout_s=15.0)
    assert code == 2 and "an alarm has waited 40 s" in why[0]
    assert all(len(line) <= 80 for line in format_queue(q, "from the running daemon"))
    assert wrap("a " * 60, 4)[1].startswith("    a")
