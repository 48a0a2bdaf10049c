#!/usr/bin/env python3
"""Idle footprint of a gateway: one button box, a bollard and an NVR (simulators), a
heartbeat every 30 s, nothing pressed, for ``--minutes`` (default 10).

Measured on the ``alarmgw run`` process from /proc: its RSS (the largest of samples every
5 s), its CPU time over the idle window as a share of one core, the bytes it wrote to disk
(``write_bytes`` of /proc/PID/io) per hour, and the time from its start to ``READY=1`` on a
``NOTIFY_SOCKET`` datagram socket of this bench's own. Targets: RSS <= 45 MB, CPU <= 1 %,
disk <= 5 MB/h, ready <= 1 s. The reference center runs too, as at a real site.

Prints figures for a person, then one JSON object as the last line (OPERATOR.md).
``--breakdown`` also prints where the RSS is at the end, from /proc/PID/smaps: the
anonymous memory (Python's heap) and each shared library that holds more than 0.5 MB.
Usage: bench/idle.py [--minutes 10] [--breakdown]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware_sim.bollard import BollardSimulator
from firmware_sim.box import BoxSimulator
from firmware_sim.broker import Mosquitto
from firmware_sim.nvr import NvrSimulator
from tests.harness import Site

TARGETS = {"rss_mb": 45.0, "cpu_pct": 1.0, "disk_mb_per_h": 5.0, "ready_s": 1.0}
SAMPLE_S = 5.0
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_by_mapping(pid: int) -> dict[str, float]:
    """RSS in MB per mapped file (anonymous mappings and the heap as ``[anon]``)."""
    out: dict[str, float] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            path = head[5] if len(head) > 5 else ""
            name = Path(path).name if path.startswith("/") else "[anon]"
        elif head and head[0] == "Rss:":
            out[name] = out.get(name, 0.0) + int(head[1]) / 1024
    return out


def written(pid: int) -> int:
    """Bytes ``pid`` caused to be written to storage (/proc/PID/io ``write_bytes``)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def wait_ready(sock: socket.socket, started: float, timeout_s: float = 30.0) -> float:
    """Seconds from ``started`` to the first datagram carrying ``READY=1``."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SystemExit("the gateway never sent READY=1")
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except TimeoutError:
            raise SystemExit("the gateway never sent READY=1 (see its output)") from None
        if b"READY=1" in data.split(b"\n"):
            return time.monotonic() - started


async def measure(root: Path, minutes: float, breakdown: bool = False) -> dict[str, float]:
    with Mosquitto(root / "broker") as broker:
        site = Site(root=root, broker=broker, heartbeat_s=30.0)
        async with (
            NvrSimulator() as nvr,
            BollardSimulator(http=("127.0.0.1", 0)) as bollard,
            BoxSimulator(box_id="SN-IDLE") as box,
        ):
            site.boxes = [{"name": "box-gate-main", "port": box.path}]
            site.tables["camera"] = {"url": nvr.url}
            site.tables["bollard"] = {"status_url": bollard.url}
            site.write_configs()
            site.start_center()
            notify_path = root / "notify.sock"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(notify_path))
            try:
                started = time.monotonic()
                gateway = site.start_gateway({"NOTIFY_SOCKET": str(notify_path)})
                ready_s = await asyncio.to_thread(wait_ready, sock, started)
                pid = gateway.proc.pid
                # The first poll of each monitor and the first heartbeat are start-up work.
                await asyncio.sleep(SAMPLE_S)
                t0, cpu0, io0 = time.monotonic(), cpu_s(pid), written(pid)
                peak = rss_mb(pid)
                end = t0 + minutes * 60
                while time.monotonic() < end:
                    await asyncio.sleep(min(SAMPLE_S, max(0.0, end - time.monotonic())))
                    peak = max(peak, rss_mb(pid))
                wall = time.monotonic() - t0
                cpu = cpu_s(pid) - cpu0
                disk = written(pid) - io0
                if breakdown:
                    parts = sorted(rss_by_mapping(pid).items(), key=lambda kv: -kv[1])
                    print("RSS by mapping at the end (MB):")
                    for what, mb in parts:
                        if mb > 0.5:
                            print(f"  {mb:6.1f}  {what}")
                    print(f"  {sum(mb for _, mb in parts if mb <= 0.5):6.1f}  (the rest)")
            finally:
                sock.close()
                site.close()
    return {
        "minutes": round(wall / 60, 2),
        "ready_s": round(ready_s, 3),
        "rss_mb": round(peak, 1),
        "cpu_pct": round(100 * cpu / wall, 3),
        "disk_mb_per_h": round(disk / wall * 3600 / 2**20, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="idle time (default 10)")
    parser.add_argument(
        "--breakdown", action="store_true", help="print the RSS per mapping at the end"
    )
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    with tempfile.TemporaryDirectory(prefix="agw-idle-", dir="/tmp") as tmp:
        got = asyncio.run(measure(Path(tmp), args.minutes, args.breakdown))
    print(f"idle {got['minutes']} min, heartbeat every 30 s, box + bollard + NVR simulated")
    for key, target in TARGETS.items():
        verdict = "ok" if got[key] <= target else "OVER"
        print(f"  {key:<14} {got[key]:>10}   target <= {target:g}   {verdict}")
    print(json.dumps({"bench": "idle", **got, "targets": TARGETS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
