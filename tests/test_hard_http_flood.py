"""1,100 idle and half-sent connections to the daemon's local endpoint, the daemon started
with the common 1,024-descriptor soft limit: ``/healthz`` still answers, and after a broker
restart during the flood a pressed alarm still reaches the center."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
from collections.abc import Iterator

import pytest

from firmware_sim.box import BoxSimulator
from tests.harness import Proc, Site, alarmgw_cmd, is_event
from tests.helpers import poll, wait_line
from tests.http_helpers import request, wait_addr

pytestmark = pytest.mark.slow

IDLE, HALF_SENT = 700, 450


@contextlib.contextmanager
def many_descriptors(n: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < n:
        pytest.skip(f"needs {n} descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, n), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def flood(addr: str) -> list[socket.socket]:
    """Open the connections; those the daemon cuts off are simply kept as they are."""
    host, _, port = addr.rpartition(":")
    socks: list[socket.socket] = []
    for n in range(IDLE + HALF_SENT):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect((host, int(port)))
            if n >= IDLE:  # a request line and a header, never the blank line after them
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


def healthz_answers(addr: str) -> object:
    try:
        code, body = request(addr, "GET", "/healthz")
    except OSError:
        return None  # this connection was refused or cut: ask again
    return body if code in (200, 503) else None


async def test_connection_flood_leaves_healthz_and_the_alarm_path_working(site: Site) -> None:
    async with BoxSimulator(box_id="box-gate-main") as box:
        site.boxes = [{"name": "box-gate-main", "port": box.path, "heartbeat_s": 2.0}]
        site.write_configs()
        center = site.start_center()
        run = alarmgw_cmd("run", "--config", str(site.gateway_toml))
        gateway = Proc(
            ["sh", "-c", 'ulimit -Sn 1024 && exec "$0" "$@"', *run], name="gateway"
        )  # the common default soft limit
        site.procs.append(gateway)
        await box.wait_linked(30)
        addr = wait_addr(site.root / "state" / "gateway")
        with many_descriptors(4096):
            socks = await asyncio.to_thread(flood, addr)
            try:
                assert len(socks) > 1000
                await asyncio.to_thread(poll, lambda: healthz_answers(addr), 60)
                site.broker.stop()
                seq = box.press()
                await box.wait_ack(seq, 20)
                line = await wait_line(gateway, lambda e: e["event"] == "alarm registered")
                site.broker.start()
                await wait_line(
                    center, lambda e: is_event("accepted")(e) and e["id"] == line["id"], 90
                )
                await asyncio.to_thread(poll, lambda: healthz_answers(addr), 60)
            finally:
                for s in socks:
                    s.close()
