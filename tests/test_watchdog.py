"""The systemd watchdog (gateway/watchdog.py) and the daemon's sd_notify messages.

In process: a ping only while every watched loop ticks, withheld (with one STATUS= line per
change) while one is silent or has not started, resumed when it ticks again. As a real
subprocess under a fake systemd (a datagram socket as ``$NOTIFY_SOCKET``): READY=1, STATUS=,
WATCHDOG=1 pings that go on while the broker is down (an outage is not a dead alarm path, so
it must not cause a restart loop), and STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.watchdog import STALE_S, Watchdog, alarm_path_problem, interval_from_env
from tests.gpio_helpers import socket_dir
from tests.harness import Site


def test_interval_from_env() -> None:
    assert interval_from_env({}) is None
    assert interval_from_env({"WATCHDOG_USEC": "30000000"}) == 30.0
    mine = str(os.getpid())
    assert interval_from_env({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": mine}) == 2.0
    assert interval_from_env({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert interval_from_env({"WATCHDOG_USEC": "0"}) is None
    assert interval_from_env({"WATCHDOG_USEC": "soon"}) is None


def test_alarm_path_problem() -> None:
    now = 1000.0
    fresh = {"uplink": lambda: now - 1.0, "outbox pump": lambda: now - 0.5}
    assert alarm_path_problem(fresh, now) is None
    silent = {**fresh, "outbox pump": lambda: now - STALE_S - 1}
    assert (
        str(alarm_path_problem(silent, now)) == f"outbox pump loop silent for {STALE_S + 1:.0f} s"
    )
    unstarted = {**fresh, "uplink": lambda: 0.0}
    assert str(alarm_path_problem(unstarted, now)) == "uplink loop has not started"


async def test_pings_only_while_every_loop_ticks() -> None:
    loop = asyncio.get_running_loop()
    sent: list[str] = []
    pump_tick = [loop.time()]
    dog = Watchdog(
        {"uplink": loop.time, "outbox pump": lambda: pump_tick[0]},
        interval_s=10.0,
        stale_s=5.0,
        send=sent.append,
    )
    assert dog.check() is None and sent == ["WATCHDOG=1"]
    pump_tick[0] = loop.time() - 6.0  # the pump has been silent for 6 s
    assert str(dog.check()) == "outbox pump loop silent for 6 s"
    pump_tick[0] = loop.time() - 7.0
    dog.check()  # still silent: withheld again, but no second STATUS line for the same cause
    assert sent == ["WATCHDOG=1", "STATUS=watchdog ping withheld: outbox pump loop silent for 6 s"]
    assert (dog.beats, dog.withheld) == (1, 2)
    pump_tick[0] = loop.time()
    assert dog.check() is None
    assert sent[-2:] == ["WATCHDOG=1", "STATUS=running"]
    assert dog.beats == 2


async def test_run_loop_pings_and_withholds() -> None:
    loop = asyncio.get_running_loop()
    sent: list[str] = []
    alive = Watchdog({"uplink": loop.time}, interval_s=0.02, send=sent.append)
    dead = Watchdog({"uplink": lambda: 0.0}, interval_s=0.02, send=sent.append)
    tasks = [asyncio.create_task(alive.run()), asyncio.create_task(dead.run())]
    try:
        async with asyncio.timeout(10):
            while alive.beats < 3 or dead.withheld < 3:
                await asyncio.sleep(0.01)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert dead.beats == 0 and str(dead.problem) == "uplink loop has not started"
    assert sent.count("STATUS=watchdog ping withheld: uplink loop has not started") == 1


class FakeSystemd:
    """Receives sd_notify datagrams on a unix socket, as systemd's notify socket does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._new = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            with self._new:
                self.messages.extend(data.decode().splitlines())
                self._new.notify_all()

    def wait_count(self, message: str, count: int = 1, timeout: float = 30.0) -> None:
        self.wait_for(lambda: self.messages.count(message) >= count, f"{message!r} x{count}")

    def wait_for(self, pred: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        with self._new:
            ok = self._new.wait_for(pred, timeout)
        assert ok, f"{what} not received; got {self.messages[-10:]}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    with socket_dir() as where:
        fake = FakeSystemd(where / "notify")
        try:
            yield fake
        finally:
            fake.close()


@pytest.mark.slow
def test_daemon_notifies_systemd(site: Site, systemd: FakeSystemd) -> None:
    site.write_configs()
    site.start_center()
    # WATCHDOG_PID is the daemon's own PID under systemd; unknown before the start here, so
    # left out (interval_from_env then accepts the variable for this process).
    gateway = site.start_gateway({"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "1000000"})
    systemd.wait_count("READY=1")
    systemd.wait_for(
        lambda: any(m.startswith("STATUS=running") for m in systemd.messages), "STATUS=running"
    )
    gateway.wait_for(lambda e: e["event"] == "systemd watchdog on" and e["timeout_s"] == 1.0)
    systemd.wait_count("WATCHDOG=1", 3)
    # The broker goes away: the uplink keeps ticking while it reconnects, so the pings go on.
    site.broker.stop()
    gateway.wait_for(lambda e: e["event"] == "broker connection lost")
    pinged = systemd.messages.count("WATCHDOG=1")
    systemd.wait_count("WATCHDOG=1", pinged + 3)
    assert gateway.proc.poll() is None
    assert gateway.stop() == 0
    systemd.wait_count("STOPPING=1")
    assert systemd.messages.index("READY=1") < systemd.messages.index("STOPPING=1")
    assert not any(m.startswith("STATUS=watchdog ping withheld") for m in systemd.messages)
