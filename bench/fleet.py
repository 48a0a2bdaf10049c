#!/usr/bin/env python3
"""What ``alarmgw-sim fleet`` costs: resident memory and CPU of the one fleet process with N
gateways (default 1,000) at 30 s heartbeats, against a real broker and ``alarmgw center``,
measured from outside (/proc) over a window (default 60 s) once every gateway is online.

Floor: the same process with one gateway, over the same window, in the same run. The
figures per gateway are (N - floor) / (N - 1). Random troubles and test alarms at their
defaults (0.5 per gateway per hour, 1 per day) run too. Prints figures for a person, then
one JSON object as the last line (OPERATOR.md "Benchmarks").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware_sim.broker import Mosquitto
from firmware_sim.fleet import raise_fd_limit

BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Lines:
    """A child's stdout JSON lines, collected by a thread."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.items: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                item = json.loads(raw)
            except ValueError:
                continue
            with self.cond:
                self.items.append(item)
                self.cond.notify_all()

    def wait(self, pred: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        with self.cond:
            while True:
                for item in self.items[seen:]:
                    if pred(item):
                        return item
                seen = len(self.items)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"timed out; last lines: {self.items[-3:]}")
                self.cond.wait(min(left, 1.0))


def measure(root: Path, port: int, count: int, window: float) -> dict[str, Any]:
    out = root / f"fleet-{count}"
    fleet_cmd = [str(BIN / "alarmgw-sim"), "fleet", "--gateways", str(count), "--out",
                 str(out), "--port", str(port), "--heartbeat", "30", "--json", "--stay",
                 "--stats", "5"]  # fmt: skip
    subprocess.run([*fleet_cmd, "--registry-only"], check=True, capture_output=True)
    center = subprocess.Popen(
        [str(BIN / "alarmgw"), "center", "--config", str(out / "center.toml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    fleet = subprocess.Popen(fleet_cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    lines = Lines(fleet)
    try:
        began = time.monotonic()
        lines.wait(lambda e: e.get("event") == "stats" and e["connected"] == count, 300)
        connect_s = time.monotonic() - began
        first = lines.wait(lambda e: e.get("event") == "stats", 30)
        cpu0, t0, center0 = cpu_s(fleet.pid), time.monotonic(), cpu_s(center.pid)
        time.sleep(window)  # the measuring window itself, not a wait for a condition
        cpu1, t1, center1 = cpu_s(fleet.pid), time.monotonic(), cpu_s(center.pid)
        rss = rss_mb(fleet.pid)
        with lines.cond:
            last = [e for e in lines.items if e.get("event") == "stats"][-1]
        return {
            "gateways": count,
            "connect_s": round(connect_s, 1),
            "rss_mb": round(rss, 1),
            "cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
            "center_cpu_pct": round(100 * (center1 - center0) / (t1 - t0), 2),
            "published_per_s": round(
                (last["published"] - first["published"]) / max(t1 - t0, 1e-6), 1
            ),
            "connected_at_end": last["connected"],
        }
    finally:
        fleet.send_signal(signal.SIGTERM)
        try:
            fleet.wait(30)
        except subprocess.TimeoutExpired:
            fleet.kill()
            fleet.wait()
        center.terminate()
        center.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--gateways", type=int, default=1000)
    parser.add_argument("--window", type=float, default=60.0, metavar="S")
    args = parser.parse_args()
    raise_fd_limit(args.gateways * 2 + 512)  # Mosquitto inherits it: a socket per gateway
    with tempfile.TemporaryDirectory(prefix="alarmgw-bench-fleet-") as tmp:
        root = Path(tmp)
        broker = Mosquitto(root / "broker").start()
        try:
            floor = measure(root, broker.port, 1, args.window)
            full = measure(root, broker.port, args.gateways, args.window)
        finally:
            broker.stop()
    per = max(args.gateways - 1, 1)
    result = {
        "gateways": args.gateways,
        "window_s": args.window,
        "rss_mb": full["rss_mb"],
        "cpu_pct": full["cpu_pct"],
        "connect_s": full["connect_s"],
        "published_per_s": full["published_per_s"],
        "center_cpu_pct": full["center_cpu_pct"],
        "floor_rss_mb": floor["rss_mb"],
        "floor_cpu_pct": floor["cpu_pct"],
        "rss_kb_per_gateway": round((full["rss_mb"] - floor["rss_mb"]) * 1024 / per, 1),
        "cpu_pct_per_100_gateways": round((full["cpu_pct"] - floor["cpu_pct"]) * 100 / per, 3),
        "connected_at_end": full["connected_at_end"],
    }
    print(f"fleet of {args.gateways} gateways, 30 s heartbeats, {args.window:.0f} s window:")
    print(f"  fleet process  RSS {full['rss_mb']} MB, CPU {full['cpu_pct']} % of one core")
    print(f"  floor (1 gw)   RSS {floor['rss_mb']} MB, CPU {floor['cpu_pct']} % of one core")
    print(f"  per gateway    {result['rss_kb_per_gateway']} KB; "
          f"{result['cpu_pct_per_100_gateways']} % CPU per 100 gateways")  # fmt: skip
    print(f"  all connected in {full['connect_s']} s; {full['published_per_s']} messages/s; "
          f"center CPU {full['center_cpu_pct']} %")  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
