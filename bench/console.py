#!/usr/bin/env python3
"""The web console under load, on loopback, in headless Chromium.

1. A store seeded directly (SQLite) with 1,000 registered gateways (a heartbeat each) and
   100,000 alarms of history (50 open): the server's render time of the fleet board, the
   alarm board and a history search (median of 20 requests each), and the time until the
   fleet board is usable in Chromium (navigation start → load event, median of 5).
2. Press → visible on the board: the console server inserts an alarm into the store and
   tells its pages (as the running center does when an alarm is accepted); the clock, in
   the browser, runs from the request until a MutationObserver sees the new row; median and
   p99 over 100 presses. Floor: one fetch of the board fragment from the same page.
   The gateway and MQTT path before the store is in bench/latency.py.
3. 20 SSE clients connected while 100 alarms arrive (each client re-fetches the board as a
   page does): the server process's CPU time and resident memory.

The server runs in a child process. Prints figures for a person, then one JSON object.
Usage: bench/console.py [--gateways 1000] [--alarms 100000] [--presses 100] [--clients 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiohttp import web

from center.console.app import Console, build_app
from center.console.auth import hash_password
from center.store import open_store
from firmware_sim.broker import free_port
from gateway.contract import envelope as E
from gateway.contract.signing import SigningKey
from tests.console.browser import chrome

PASSWORD = "bench password"


def seed(state_dir: Path, gateways: int, alarms: int) -> None:

    store = open_store("sqlite", state_dir=state_dir, dsn=None)
    store.add_console_user("bench", "supervisor", hash_password(PASSWORD), now=1.0)  # type: ignore[attr-defined]
    store.close()
    db = sqlite3.connect(state_dir / "center.sqlite")
    now = time.time()
    beat = {
        "uptime_s": 100,
        "session": 1,
        "queue": {"pending": 0, "oldest_s": 0},
        "inputs": {},
        "bollard": {"state": "up", "since": "2026-01-01T00:00:00Z"},
        "camera": {"recording": True, "retention_days": 30, "required_days": 30, "ok": True},
        "clock": {"synced": True},
        "disk": {"free_bytes": 1},
    }
    db.executemany(
        "INSERT INTO heartbeats VALUES (?, ?, ?, 1, '2026-01-01T00:00:00Z', ?, ?)",
        [
            (f"site-{i:04d}", "gw-a", str(uuid.uuid4()), now - i % 30, json.dumps(beat))
            for i in range(gateways)
        ],
    )
    rows = []
    for n in range(alarms):
        site = f"site-{n % gateways:04d}"
        body = {
            "code": "120",
            "kind": "panic",
            "input": "serial:box",
            "test": False,
            "location": {
                "name": f"School {n % gateways}",
                "address": "Road 1",
                "lat": 22.5,
                "lon": 114.0,
            },
            "contact": {"phone": "110"},
        }
        is_open = n >= alarms - 50
        rows.append(
            (
                str(uuid.uuid4()),
                site,
                "gw-a",
                "alarm",
                "120",
                "panic",
                "serial:box",
                "2026-01-01T00:00:00Z",
                now - (alarms - n) * 60,
                "primary",
                1,
                json.dumps(body),
                "new" if is_open else "resolved",
                None if is_open else "false",
            )
        )
    db.executemany(
        "INSERT INTO alarms (id, site, gw, type, code, kind, input, ts, received_at, path, "
        "fresh, body, status, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    db.commit()
    db.close()


def serve(state_dir: str, port: int, gateways: int) -> None:
    """The child: the console on the seeded store, plus /bench/press."""
    store = open_store("sqlite", state_dir=Path(state_dir), dsn=None)
    con = Console(
        store=store,
        sites={},
        registry={(f"site-{i:04d}", "gw-a"): 30.0 for i in range(gateways)},
        live=lambda _s, _g: "online",
    )
    key = SigningKey.generate()
    seq = iter(range(1, 10**9))
    body = {
        "code": "120",
        "kind": "panic",
        "input": "serial:box",
        "test": False,
        "location": {"name": "Bench School", "address": "Road 1", "lat": 22.5, "lon": 114.0},
        "contact": {"phone": "110"},
    }

    async def press(_req: web.Request) -> web.Response:
        env = E.build(type="alarm", site="site-0000", gw="gw-a", seq=next(seq), body=body, key=key)
        store.admit(env, received=time.time())
        con.hub.notify("alarms")
        return web.json_response({"id": env.id})

    async def main() -> None:
        con.hub.bind(asyncio.get_running_loop())
        app = build_app(con)
        app.router.add_post("/bench/press", press)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    asyncio.run(main())


def proc_usage(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and resident bytes of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = next(
        int(line.split()[1]) * 1024
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return cpu, rss


async def login(session: aiohttp.ClientSession, base: str) -> str:
    """Sign in; the page's CSRF token."""
    async with session.post(f"{base}/login", data={"name": "bench", "password": PASSWORD}) as r:
        assert r.status == 200, r.status
        page = await r.text()
    return page.split('data-csrf="', 1)[1].split('"', 1)[0]


async def render_times(base: str) -> dict[str, float]:
    out = {}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        await login(s, base)
        for name, path in (
            ("fleet", "/fleet"),
            ("board", "/"),
            ("history", "/history?school=site-0001"),
        ):
            took = []
            for _ in range(20):
                t0 = time.perf_counter()
                async with s.get(base + path) as r:
                    await r.read()
                    assert r.status == 200
                took.append((time.perf_counter() - t0) * 1000)
            out[f"{name}_render_ms"] = round(statistics.median(took), 1)
    return out


async def sse_load(base: str, pid: int, clients: int, alarms: int) -> dict[str, float]:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as s:
        csrf = await login(s, base)
        got = [0] * clients

        async def client(i: int) -> None:
            async with s.get(base + "/events") as r:
                async for line in r.content:
                    if line.startswith(b"event: alarms"):
                        got[i] += 1
                        async with s.get(base + "/?fragment=1") as f:
                            await f.read()

        tasks = [asyncio.create_task(client(i)) for i in range(clients)]
        await asyncio.sleep(1.0)
        cpu0, _ = proc_usage(pid)
        t0 = time.perf_counter()
        for _ in range(alarms):
            async with s.post(base + "/bench/press", headers={"X-CSRF-Token": csrf}) as r:
                assert r.status == 200, r.status
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        wall = time.perf_counter() - t0
        cpu1, rss = proc_usage(pid)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "sse_clients": clients,
        "sse_alarms": alarms,
        "sse_events_received_min": min(got),
        "sse_cpu_percent": round(100 * (cpu1 - cpu0) / wall, 1),
        "sse_rss_mib": round(rss / 2**20, 1),
    }


def browser(base: str, presses: int) -> dict[str, float]:
    driver = chrome()
    try:
        driver.get(base + "/login")
        driver.find_element("id", "name").send_keys("bench")
        driver.find_element("id", "password").send_keys(PASSWORD)
        driver.find_element("id", "signin").click()
        loads = []
        for _ in range(5):
            driver.get(base + "/fleet")
            loads.append(
                driver.execute_script(
                    "const t = performance.getEntriesByType('navigation')[0];"
                    "return t.loadEventEnd - t.startTime;"
                )
            )
        driver.get(base + "/")
        time.sleep(1.0)
        script = """
const done = arguments[arguments.length - 1];
const csrf = document.body.dataset.csrf;
const t0 = performance.now();
let id = null, seen = null;
const obs = new MutationObserver(() => {
  if (id && document.querySelector('tr.alarm[data-id="' + id + '"]')) {
    obs.disconnect(); done(performance.now() - t0);
  }
});
obs.observe(document.getElementById('board-body'), {childList: true, subtree: true});
fetch('/bench/press', {method: 'POST', headers: {'X-CSRF-Token': csrf}})
  .then(r => r.json()).then(j => {
    id = j.id;
    if (document.querySelector('tr.alarm[data-id="' + id + '"]')) {
      obs.disconnect(); done(performance.now() - t0);
    }
  });
"""
        floor_script = """
const done = arguments[arguments.length - 1];
const t0 = performance.now();
fetch('/?fragment=1').then(r => r.text()).then(() => done(performance.now() - t0));
"""
        driver.set_script_timeout(30)
        took, floor = [], []
        for _ in range(presses):
            took.append(driver.execute_async_script(script))
            floor.append(driver.execute_async_script(floor_script))
        took.sort()
        return {
            "fleet_usable_ms": round(statistics.median(loads), 1),
            "press_visible_p50_ms": round(statistics.median(took), 1),
            "press_visible_p99_ms": round(took[min(len(took) - 1, int(len(took) * 0.99))], 1),
            "floor_fragment_p50_ms": round(statistics.median(floor), 1),
        }
    finally:
        driver.quit()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateways", type=int, default=1000)
    ap.add_argument("--alarms", type=int, default=100_000)
    ap.add_argument("--presses", type=int, default=100)
    ap.add_argument("--clients", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        seed(Path(tmp), args.gateways, args.alarms)
        print(
            f"seeded {args.gateways} gateways, {args.alarms} alarms "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        port = free_port()
        child = multiprocessing.get_context("spawn").Process(
            target=serve, args=(tmp, port, args.gateways), daemon=True
        )
        child.start()
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(base + "/login", timeout=1).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            figures: dict[str, Any] = {"gateways": args.gateways, "alarms": args.alarms}
            figures.update(asyncio.run(render_times(base)))
            figures.update(browser(base, args.presses))
            figures.update(asyncio.run(sse_load(base, child.pid or 0, args.clients, 100)))
        finally:
            child.terminate()
            child.join(10)
    for k, v in figures.items():
        print(f"{k:>28}: {v}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
