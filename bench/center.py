#!/usr/bin/env python3
"""The command center's ingest, each figure beside a floor measured in the same run.

Envelopes verified + committed + acknowledged per second by the real ``alarmgw center``
process(es), for N alarms (default 20,000) from G simulated gateways (default 10; paho
clients publishing pre-signed alarms, QoS 1, and re-sending what is not acked 5 s after it
was sent once no ack came for 1 s), the clock from the first publish until every alarm's
ack arrived; beside it the CPU the center process(es) and their checker processes used
per alarm, how many alarms were re-sent and the longest wait between two acks:
1. one instance on SQLite;
2. one instance on PostgreSQL (a throwaway server on loopback);
3. two instances on one MQTT 5 shared subscription and that PostgreSQL;
4. failover: two instances, one killed with SIGKILL; then K alarms (default 200) are
   published, and the time from the kill until the other instance acknowledged all of them.
Floor: the same N messages published by the same clients to a plain subscriber through the
same broker (publish -> receive, no center). Prints figures for a person, then one JSON
object as the last line (OPERATOR.md "Benchmarks").
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

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.broker import Mosquitto, free_port
from gateway.contract.envelope import build
from gateway.contract.signing import SigningKey, write_keypair
from tests.pg import Postgres

SITE, PREFIX = "bench-school", "schoolalarm/v1"
BIN = Path(sys.executable).parent
BODY = {
    "code": "120",
    "kind": "panic",
    "input": "gpio:gate",
    "test": False,
    "location": {"name": "Gate", "address": "Road 1", "lat": 22.5431, "lon": 114.0287},
    "contact": {"phone": "+86-755-0000-0000"},
}


class Gateways:
    """G paho clients; each publishes its alarms and collects the center's acks."""

    def __init__(self, port: int, gws: list[str], *, tag: str) -> None:
        self.acked: set[str] = set()
        self.resent = 0  # publishes of alarms not acked within the re-send interval
        self.gap = 0.0  # the longest wait between two acks, seconds
        self.got = 0
        self.lock = threading.Lock()
        self.clients: dict[str, mqtt.Client] = {}
        self.names, self.port = gws, port
        self.others: dict[str, int] = {}  # broker and database pids, for their CPU
        ready = threading.Semaphore(0)
        for gw in gws:
            c = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=f"{tag}-{gw}", protocol=mqtt.MQTTv5
            )
            c.max_queued_messages_set(0)
            c.max_inflight_messages_set(1000)
            c.on_connect = lambda c, u, f, rc, p, gw=gw: c.subscribe(
                [(f"{PREFIX}/{SITE}/{gw}/ack", 1), (f"floor/{gw}", 1)]
            )
            c.on_subscribe = lambda *a: ready.release()
            c.on_message = self._message
            c.connect("127.0.0.1", port)
            c.loop_start()
            self.clients[gw] = c
        for _ in gws:
            assert ready.acquire(timeout=30)

    def _message(self, _c: Any, _u: Any, msg: Any) -> None:
        if msg.topic.startswith("floor/"):
            with self.lock:
                self.got += 1
            return
        body = json.loads(msg.payload)["body"]
        if "ids" in body and "status" not in body:
            with self.lock:
                self.acked.update(body["ids"])

    def publish(self, gw: str, topic: str, payload: bytes) -> None:
        self.clients[gw].publish(topic, payload, qos=1)

    def close(self) -> None:
        for c in self.clients.values():
            c.loop_stop()
            c.disconnect()


def signed(key: SigningKey, gws: list[str], n: int, base: int) -> list[tuple[str, str, bytes]]:
    out = []
    for i in range(n):
        gw = gws[i % len(gws)]
        env = build(type="alarm", site=SITE, gw=gw, seq=base + i + 1, body=BODY, key=key)
        out.append((gw, env.id, env.to_bytes()))
    return out


RESEND_S = 5.0  # an alarm not acked this long after it was sent is due for a re-send ...
QUIET_S = 1.0  # ... once no ack came for this long (the center stopped acknowledging)


def drive(gws: Gateways, alarms: list[tuple[str, str, bytes]], timeout: float = 600) -> float:
    """Publish all; seconds until every one is acked. Like a gateway's adaptive re-send
    timer, re-send what is due (``RESEND_S``) only while the acks have stopped
    (``QUIET_S``): re-sending while they flow would only give the center each alarm twice."""
    t0 = last_sent = time.perf_counter()
    for gw, _id, payload in alarms:
        gws.publish(gw, f"{PREFIX}/{SITE}/{gw}/event", payload)
    ids = {i for _, i, _ in alarms}
    acked, last_ack = 0, t0
    while True:
        with gws.lock:
            left = ids - gws.acked
        now = time.perf_counter()
        if not left:
            return now - t0
        if now - t0 > timeout:
            raise SystemExit(f"{len(left)} alarms not acked within {timeout} s")
        if len(left) != len(ids) - acked:
            if acked:  # between acks: not the wait for the first, which includes publishing
                gws.gap = max(gws.gap, now - last_ack)
            if os.environ.get("BENCH_DEBUG"):
                print(f"    {now - t0:6.2f}s acked {len(ids) - len(left)}", flush=True)
            acked, last_ack = len(ids) - len(left), now
        if now - last_sent > RESEND_S and now - last_ack > QUIET_S:
            last_sent = now
            for gw, i, payload in alarms:
                if i in left:
                    gws.publish(gw, f"{PREFIX}/{SITE}/{gw}/event", payload)
                    gws.resent += 1
        time.sleep(0.005)


def floor(gws: Gateways, n: int, size: int) -> float:
    names = list(gws.clients)
    with gws.lock:
        gws.got = 0
    payload = b"x" * size
    t0 = time.perf_counter()
    for i in range(n):
        gw = names[i % len(names)]
        gws.publish(gw, f"floor/{gw}", payload)
    while True:
        with gws.lock:
            if gws.got >= n:
                return time.perf_counter() - t0
        time.sleep(0.002)


TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by ``pid`` (its threads included) and by its
    live children (the checker process)."""
    own = kids = 0.0
    for stat in [Path(f"/proc/{pid}/stat"), *Path("/proc").glob("[0-9]*/stat")]:
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        used = (int(fields[11]) + int(fields[12])) / TICK
        if stat.parent.name == str(pid):
            own = used
        elif int(fields[1]) == pid:
            kids += used
    return own, kids


def cpu_of(procs: list[subprocess.Popen[str]]) -> tuple[float, float]:
    """``cpu_s`` summed over the center processes."""
    used = [cpu_s(p.pid) for p in procs]
    return sum(u[0] for u in used), sum(u[1] for u in used)


def center_config(root: Path, name: str, port: int, gws: list[str], store: str) -> Path:
    regs = "".join(
        f'[[gateways]]\nid = "{gw}"\nsite = "{SITE}"\npublic_keys = ["keys/gateway.pub"]\n\n'
        for gw in gws
    )
    path = root / f"{name}.toml"
    path.write_text(
        f'[center]\nkey_file = "keys/center.key"\nstate_dir = "state-{name}"\n{store}\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nprefix = "{PREFIX}"\n'
        f'share_group = "bench"\n\n[health]\nlisten = "127.0.0.1:{free_port()}"\n\n{regs}'
    )
    return path


def start_center(config: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [str(BIN / "alarmgw"), "center", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if '"subscribed"' in line:
            break
    else:
        raise SystemExit(f"center did not start: exit {proc.wait()}")
    logs = os.environ.get("BENCH_CENTER_LOGS")  # a directory: keep each center's log lines
    if logs:
        out = (Path(logs) / f"{config.stem}.log").open("a")
        threading.Thread(target=lambda: out.writelines(proc.stderr), daemon=True).start()
    else:
        threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alarms", type=int, default=20_000)
    parser.add_argument("--gateways", type=int, default=10)
    parser.add_argument("--failover", type=int, default=200)
    parser.add_argument(
        "--only",
        action="append",
        choices=["sqlite_1", "postgresql_1", "postgresql_2_shared", "failover"],
        help="run only this case (repeatable; default: all)",
    )
    parser.add_argument(
        "--pause",
        action="store_true",
        help="print each center's pid and wait for Enter before driving it (to attach a "
        "profiler such as py-spy)",
    )
    args = parser.parse_args()
    cases = set(args.only or ["sqlite_1", "postgresql_1", "postgresql_2_shared", "failover"])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    gws = [f"gw-{i}" for i in range(args.gateways)]
    result: dict[str, Any] = {"alarms": args.alarms, "gateways": args.gateways}
    with tempfile.TemporaryDirectory(prefix="alarmgw-bench-center-") as d:
        root = Path(d)
        key, _, _ = write_keypair(root / "keys", "gateway")
        write_keypair(root / "keys", "center")
        pg = Postgres()
        try:
            extra = "max_queued_messages 1000000\nmax_inflight_messages 0\n"
            with Mosquitto(root / "broker", extra=extra) as broker:
                clients = Gateways(broker.port, gws, tag="bench")
                size = len(signed(key, gws, 1, 0)[0][2])
                base = 0
                pg_pid = int((pg.data / "postmaster.pid").read_text().split()[0])
                clients.others = {
                    "broker": broker.proc.pid if broker.proc else 0,
                    "database": pg_pid,
                }
                runs = [("sqlite_1", 1, None), ("postgresql_1", 1, pg.new_database())]
                runs.append(("postgresql_2_shared", 2, pg.new_database()))
                for name, count, dsn in runs:
                    if name not in cases:
                        continue
                    fl = floor(clients, args.alarms, size)
                    got = run_case(
                        root, clients, name, count=count, dsn=dsn, key=key, base=base, args=args
                    )
                    base += args.alarms
                    result.update({f"{name}_{k}": v for k, v in got.items()})
                    rate, floor_rate = got["per_s"], args.alarms / fl
                    result[f"{name}_floor_per_s"] = round(floor_rate, 1)
                    cpu = got["cpu_us_per_alarm"]
                    print(
                        f"{name}: {rate:.0f} alarms/s verified+committed+acked "
                        f"(floor {floor_rate:.0f}/s, ratio {rate / floor_rate:.3f}); CPU µs per "
                        f"alarm: {', '.join(f'{k} {v:.0f}' for k, v in cpu.items())}; "
                        f"{got['resent']} re-sent; longest wait between acks {got['gap_s']:.2f} s"
                        + (
                            f"; {got['db_commits']} commits, {got['db_rollbacks']} rollbacks"
                            if dsn
                            else ""
                        ),
                        flush=True,
                    )
                if "failover" in cases:
                    result.update(failover(root, clients, broker.port, gws, key, pg, base, args))
                clients.close()
        finally:
            pg.close()
    print(json.dumps(result))
    return 0


def run_case(
    root: Path,
    clients: Gateways,
    name: str,
    *,
    count: int,
    dsn: str | None,
    key: SigningKey,
    base: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One case: ``count`` instances on SQLite (dsn None) or on PostgreSQL ``dsn``; the
    broker's and the database's CPU (``clients.others``: their pids) is measured too."""
    port, others = clients.port, clients.others
    store = f'store = "postgresql"\ndsn = "{dsn}"\n' if dsn else ""
    procs = [
        start_center(center_config(root, f"{name}-{i}", port, clients.names, store))
        for i in range(count)
    ]
    if args.pause:
        print(f"{name}: center pids {[p.pid for p in procs]}; Enter to go", flush=True)
        sys.stdin.readline()
    clients.resent, clients.gap = 0, 0.0
    tx0 = transactions(dsn)
    before = {"center": cpu_of(procs)[0], "checker": cpu_of(procs)[1]}
    before.update({k: sum(cpu_s(pid)) for k, pid in others.items()})
    try:
        took = drive(clients, signed(key, clients.names, args.alarms, base))
        after = {"center": cpu_of(procs)[0], "checker": cpu_of(procs)[1]}
        after.update({k: sum(cpu_s(pid)) for k, pid in others.items()})
    finally:
        stop(procs)
    return {
        "per_s": round(args.alarms / took, 1),
        "cpu_us_per_alarm": {
            k: round((after[k] - before[k]) / args.alarms * 1e6, 1)
            for k in after
            if dsn or k != "database"
        },
        "resent": clients.resent,
        "gap_s": round(clients.gap, 3),
        "db_commits": transactions(dsn)[0] - tx0[0],
        "db_rollbacks": transactions(dsn)[1] - tx0[1],
    }


def transactions(dsn: str | None) -> tuple[int, int]:
    """Transactions committed and rolled back so far in database ``dsn`` (a rollback: a
    deadlock between instances, a failed burst); zeros without one."""
    if not dsn:
        return 0, 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def failover(
    root: Path,
    clients: Gateways,
    port: int,
    gws: list[str],
    key: SigningKey,
    pg: Postgres,
    base: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Two instances, one killed with SIGKILL, then K alarms: seconds until all are acked."""
    store = f'store = "postgresql"\ndsn = "{pg.new_database()}"\n'
    procs = [start_center(center_config(root, f"failover-{i}", port, gws, store)) for i in range(2)]
    try:
        drive(clients, signed(key, gws, 100, base))  # both warm
        batch = signed(key, gws, args.failover, base + 100)
        t0 = time.perf_counter()
        procs[0].send_signal(signal.SIGKILL)
        drive(clients, batch)
        took = time.perf_counter() - t0
    finally:
        stop(procs)
    print(
        f"failover: {args.failover} alarms acked by the surviving instance "
        f"{took:.2f} s after the other was killed (SIGKILL)",
        flush=True,
    )
    return {"failover_all_acked_s": round(took, 3)}


if __name__ == "__main__":
    sys.exit(main())
