"""``alarmgw-sim fleet``: many simulated schools' gateways in one process, to drive the
command center.

Each gateway has its own key and identity (firmware_sim/fleet_sites.py), its own MQTT
connection (a broker ACL lets a gateway write only under its own topics) and its own seq
counter and session number, and speaks the real contract: a signed ``online`` birth
(retained) and ``offline`` will per connection, heartbeats at its interval with jitter,
troubles and restores at random, occasional test alarms (601), alarms on command; it
verifies the center's signed acks and re-sends what is not acknowledged yet.

All connections are driven by one event loop in one thread, through paho's external-loop
API (``on_socket_open``/``on_socket_register_write`` callbacks, ``loop_read``,
``loop_write``, ``loop_misc``): no thread per client.

Commands (``--script "a; b"`` first, then stdin, one per line), where ``GW`` is a fleet
number (1..N), a site id, a gateway id or ``all``: ``alarm GW [CODE]``, ``test GW``,
``trouble GW KIND``, ``restore GW KIND`` (KIND: bollard, camera, link, mains, tamper),
``stop-heartbeats GW``, ``resume GW``, ``offline GW`` (clean stop), ``online GW``, ``drop GW``
(connection broken: the broker sends the will; it reconnects), ``stats``, ``wait S``, ``quit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential, wait_random

from firmware_sim.fleet_gateway import TROUBLES, FileCounter, MemoryCounter, Pending, SimGateway
from firmware_sim.fleet_sites import PREFIX, School
from gateway.contract.signing import load_verify_key
from gateway.delivery.seq import write_durably

KEEPALIVE_S = 10
ACK_TIMEOUT_S = 10.0  # an event not acknowledged within this is sent again
RESEND_MAX_S = 30.0
CONNECT_BATCH = 25  # connections opened per loop turn at start (their CONNACKs interleave)
TICK_S = 1.0


class NotAcked(Exception):
    """An event is still waiting for its ack (tenacity tries again)."""


class Fleet:
    """The gateways of ``schools`` on one broker, in this thread's event loop."""

    def __init__(
        self,
        schools: list[School],
        *,
        host: str,
        port: int,
        center_pub: Path,
        heartbeat_s: float = 30.0,
        state_dir: Path | None = None,
        prefix: str = PREFIX,
        trouble_per_h: float = 0.0,
        test_per_day: float = 0.0,
        restore_after_s: float = 300.0,
        seed: int = 0,
        say: Callable[[dict[str, Any]], None] = lambda _e: None,
    ) -> None:
        self.host, self.port = host, port
        self.heartbeat_s = heartbeat_s
        self.trouble_per_h, self.test_per_day = trouble_per_h, test_per_day
        self.restore_after_s = restore_after_s
        self.rng = random.Random(seed)
        self.say = say
        self.state_dir = state_dir
        self._sessions_path = state_dir / "sessions.json" if state_dir else None
        self.sessions: dict[str, int] = self._load_sessions()
        self._sessions_dirty = False
        center_key = load_verify_key(center_pub)
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.gateways: list[SimGateway] = []
        self.open_sockets = 0
        self._all_closed = asyncio.Event()
        self.all_online = asyncio.Event()  # every gateway has been online at least once
        self._seen_online: set[str] = set()
        for school in schools:
            counter: MemoryCounter | FileCounter = (
                FileCounter(state_dir / f"{school.gw}.seq.json") if state_dir else MemoryCounter()
            )
            gateway = SimGateway(
                school,
                prefix=prefix,
                center_key=center_key,
                heartbeat_s=heartbeat_s,
                counter=counter,
                session=self.sessions.get(school.gw, 0),
                say=say,
            )
            gateway.on_lost = self._lost
            gateway.on_online = self._online
            self._wire(gateway.client, gateway)
            self.gateways.append(gateway)
        self._by_name = {g.site: g for g in self.gateways} | {g.gw: g for g in self.gateways}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reconnecting: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.stopping = False
        self.cpu0 = (time.monotonic(), time.process_time())

    # -- paho's external loop, on asyncio ------------------------------------------------

    def _wire(self, client: mqtt.Client, gateway: SimGateway) -> None:
        loop = asyncio.get_running_loop()

        def opened(c: mqtt.Client, _ud: Any, sock: Any) -> None:
            gateway.nodelay(sock)
            loop.add_reader(sock, c.loop_read)
            self.open_sockets += 1

        def closed(_c: mqtt.Client, _ud: Any, sock: Any) -> None:
            loop.remove_reader(sock)
            loop.remove_writer(sock)
            self.open_sockets -= 1
            if self.open_sockets == 0:
                self._all_closed.set()

        client.on_socket_open = opened
        client.on_socket_close = closed

        def want_write(c: mqtt.Client, _ud: Any, sock: Any) -> None:
            loop.add_writer(sock, c.loop_write)

        def written(_c: mqtt.Client, _ud: Any, sock: Any) -> None:
            loop.remove_writer(sock)

        client.on_socket_register_write = want_write
        client.on_socket_unregister_write = written

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- sessions (+1 on every connect, persisted) -------------------------------------

    def _load_sessions(self) -> dict[str, int]:
        if self._sessions_path is None or not self._sessions_path.exists():
            return {}
        try:
            data = json.loads(self._sessions_path.read_text())
        except ValueError:
            raise ValueError(f"{self._sessions_path}: not JSON; delete it to start over") from None
        return {k: v for k, v in data.items() if isinstance(v, int)}

    def _save_sessions(self) -> None:
        if self._sessions_path is not None and self._sessions_dirty:
            self._sessions_dirty = False
            write_durably(self._sessions_path, json.dumps(self.sessions).encode())

    # -- connections -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect every gateway (a few per loop turn), then beat and misbehave."""
        for n, gateway in enumerate(self.gateways):
            gateway.wanted = True
            self._spawn(self._connect(gateway))
            if n % CONNECT_BATCH == CONNECT_BATCH - 1:
                await asyncio.sleep(0)
        self._spawn(self._tick())
        if self.trouble_per_h > 0:
            self._spawn(self._random_troubles())
        if self.test_per_day > 0:
            self._spawn(self._random_tests())

    async def _connect(self, gateway: SimGateway) -> None:
        """Connect (again), with backoff while the broker cannot be reached."""
        if gateway.gw in self._reconnecting:
            return
        self._reconnecting.add(gateway.gw)
        try:
            async for attempt in AsyncRetrying(
                wait=wait_exponential(multiplier=0.5, max=30.0) + wait_random(0, 1),
                retry=retry_if_exception_type(OSError),
            ):
                with attempt:
                    if not gateway.wanted or self.stopping:
                        return
                    self._open(gateway)
        finally:
            self._reconnecting.discard(gateway.gw)

    def _open(self, gateway: SimGateway) -> None:
        session = self.sessions.get(gateway.gw, 0) + 1
        self.sessions[gateway.gw] = session
        self._sessions_dirty = True
        gateway.prepare(session)
        if not gateway.opened:  # paho: connect once (host, port), reconnect after that
            gateway.opened = True
            gateway.client.connect(self.host, self.port, keepalive=KEEPALIVE_S)
        else:
            gateway.client.reconnect()
        self._schedule_beat(gateway, first=True)

    def _online(self, gateway: SimGateway) -> None:
        self._seen_online.add(gateway.gw)
        if len(self._seen_online) == len(self.gateways):
            self.all_online.set()

    def _lost(self, gateway: SimGateway) -> None:
        if gateway.wanted and not self.stopping:
            self.say({"event": "disconnected", "gw": gateway.gw, "site": gateway.site})
            self._spawn(self._connect(gateway))

    async def _tick(self) -> None:
        """paho's housekeeping (keepalive pings, timeouts) for every client; sessions saved."""
        while True:
            await asyncio.sleep(TICK_S)
            for gateway in self.gateways:
                if gateway.client.socket() is not None:
                    gateway.client.loop_misc()
            self._save_sessions()

    # -- heartbeats ------------------------------------------------------------------------

    def _schedule_beat(self, gateway: SimGateway, *, first: bool = False) -> None:
        old = self._timers.pop(gateway.gw, None)
        if old is not None:
            old.cancel()
        # The first beat at a random phase spreads the fleet's beats over the interval.
        after = self.heartbeat_s * (self.rng.uniform(0.05, 1.0) if first else 1.0)
        after *= self.rng.uniform(0.95, 1.05)
        loop = asyncio.get_running_loop()
        self._timers[gateway.gw] = loop.call_later(after, self._beat, gateway)

    def _beat(self, gateway: SimGateway) -> None:
        if gateway.beating:
            gateway.heartbeat()
        if gateway.wanted and not self.stopping:
            self._schedule_beat(gateway)

    # -- events ----------------------------------------------------------------------------

    def raise_event(self, gateway: SimGateway, kind: str, body: dict[str, Any]) -> Pending:
        item = gateway.event(kind, body)
        self._spawn(self._deliver(gateway, item))
        return item

    async def _deliver(self, gateway: SimGateway, item: Pending) -> None:
        """Send until the center's ack names it (for ever, as a gateway does for an alarm)."""
        async for attempt in AsyncRetrying(
            wait=wait_exponential(multiplier=1.0, max=RESEND_MAX_S) + wait_random(0, 1),
            retry=retry_if_exception_type(NotAcked),
        ):
            with attempt:
                if self.stopping:
                    return
                if not gateway.send(item):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(gateway.connected.wait(), ACK_TIMEOUT_S)
                    raise NotAcked
                try:
                    await asyncio.wait_for(item.acked.wait(), ACK_TIMEOUT_S)
                except TimeoutError:
                    raise NotAcked from None

    def trouble(self, gateway: SimGateway, kind: str, *, restore: bool) -> str | None:
        change = gateway.trouble(kind, restore=restore)
        if change is None:
            return None
        item = self.raise_event(gateway, *change)
        if not restore and self.restore_after_s > 0:
            after = self.rng.expovariate(1 / self.restore_after_s)
            asyncio.get_running_loop().call_later(after, self._restore, gateway, kind)
        return item.id

    def _restore(self, gateway: SimGateway, kind: str) -> None:
        if not self.stopping:
            self.trouble(gateway, kind, restore=True)

    async def _random_troubles(self) -> None:
        rate = len(self.gateways) * self.trouble_per_h / 3600
        while True:
            await asyncio.sleep(self.rng.expovariate(rate))
            gateway = self.rng.choice(self.gateways)
            if gateway.connected.is_set():
                self.trouble(gateway, self.rng.choice(list(TROUBLES)), restore=False)

    async def _random_tests(self) -> None:
        rate = len(self.gateways) * self.test_per_day / 86_400
        while True:
            await asyncio.sleep(self.rng.expovariate(rate))
            gateway = self.rng.choice(self.gateways)
            if gateway.connected.is_set():
                self.raise_event(gateway, "test", gateway.alarm_body(test=True))

    # -- commands --------------------------------------------------------------------------

    def targets(self, word: str) -> list[SimGateway]:
        if word == "all":
            return list(self.gateways)
        if word.isdigit() and 1 <= int(word) <= len(self.gateways):
            return [self.gateways[int(word) - 1]]
        found = self._by_name.get(word)
        if found is None:
            raise ValueError(f"no gateway {word!r} (a number 1..{len(self.gateways)}, an id, all)")
        return [found]

    async def execute(self, words: list[str]) -> dict[str, Any]:
        """One command; what it did, or ValueError."""
        verb, args = words[0], words[1:]
        if verb == "stats" and not args:
            return self.stats()
        if not args:
            raise ValueError(f"{verb}: which gateway?")
        gateways = self.targets(args[0])
        done: list[str] = []
        for gateway in gateways:
            if verb in ("alarm", "test") and len(args) <= (2 if verb == "alarm" else 1):
                code = args[1] if len(args) == 2 else "120"
                if code not in ("120", "121", "122", "123"):
                    raise ValueError(f"alarm code {code!r}: one of 120 121 122 123")
                body = gateway.alarm_body(test=verb == "test", code=code)
                done.append(self.raise_event(gateway, verb, body).id)
            elif verb in ("trouble", "restore") and len(args) == 2:
                if (
                    event_id := self.trouble(gateway, args[1], restore=verb == "restore")
                ) is not None:
                    done.append(event_id)
            elif verb == "stop-heartbeats" and len(args) == 1:
                gateway.beating = False
            elif verb == "resume" and len(args) == 1:
                gateway.beating = True
                gateway.heartbeat()
            elif verb == "offline" and len(args) == 1:
                gateway.wanted = False
                gateway.say_offline()
                gateway.client.disconnect()
            elif verb == "online" and len(args) == 1:
                gateway.wanted = True
                self._spawn(self._connect(gateway))
            elif verb == "drop" and len(args) == 1:
                sock = gateway.client.socket()
                if isinstance(sock, socket.socket):
                    sock.shutdown(socket.SHUT_RDWR)  # no DISCONNECT: the broker sends the will
            else:
                raise ValueError(f"unknown command {' '.join(words)!r}")
        return {"event": "done", "command": verb, "gws": [g.gw for g in gateways], "ids": done}

    def stats(self) -> dict[str, Any]:
        wall0, cpu0 = self.cpu0
        wall, cpu = time.monotonic(), time.process_time()
        self.cpu0 = (wall, cpu)
        gws = self.gateways
        return {
            "event": "stats",
            "gateways": len(gws),
            "connected": sum(g.connected.is_set() for g in gws),
            "published": sum(g.published for g in gws),
            "acks": sum(g.acks for g in gws),
            "acked_events": sum(g.acked_ids for g in gws),
            "pending": sum(len(g.pending) for g in gws),
            "resyncs": sum(g.resyncs for g in gws),
            "ignored": sum(g.refused for g in gws),
            "rss_mb": round(rss_bytes() / 2**20, 1),
            "cpu_s": round(cpu, 2),
            "cpu_pct": round(100 * (cpu - cpu0) / max(wall - wall0, 1e-6), 1),
        }

    async def stop(self) -> None:
        """Clean stop: each gateway says ``offline`` (signed) and disconnects."""
        self.stopping = True
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for gateway in self.gateways:
            if gateway.connected.is_set():
                gateway.say_offline()
                gateway.client.disconnect()
        if self.open_sockets:
            self._all_closed.clear()
            with contextlib.suppress(TimeoutError):  # paho closes each after its DISCONNECT
                await asyncio.wait_for(self._all_closed.wait(), 5.0)
        for gateway in self.gateways:
            if gateway.client.socket() is not None:
                gateway.client.disconnect()
            gateway.seq.close()
        self._sessions_dirty = True
        self._save_sessions()


def rss_bytes() -> int:
    """This process's resident set size now (Linux), else its peak."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def raise_fd_limit(wanted: int) -> None:
    """One socket per gateway: lift the soft open-files limit towards the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
