#!/usr/bin/env python3
"""Drain and backlog figures, each beside a floor measured in the same run.

1. Drain: N queued alarms (default 100,000) go from the outbox to the reference center
   (``alarmgw center`` in its own process) and are acknowledged back; the clock runs from
   the first publish until the outbox is empty. Floor: a raw paho QoS 1 burst of N messages
   of the same size from a publisher process to a subscriber process (stock paho-mqtt),
   through the same broker, once before and once after the drain (the mean is the floor).
   ``--rounds`` drains (default 3), each with its own fresh outbox and center, between
   floors; the median round's ratio is the figure (this shared machine's speed drifts by
   a third between runs). Target: drain rate >= 50 % of the floor. CPU µs per event of
   each process (gateway, center, its checker, broker) and per message of the floor's
   publisher, subscriber and broker show where the time goes.
2. Backlog: M queued alarms (default 1,000,000) in the outbox: the enqueue rate through the
   real path (sign + FULL commit per event, measured over the first ``--enqueue-sample``
   events; the rest are bulk-copied with fresh ids and seqs to save time), the file size,
   and the RSS of a gateway process that opens that outbox and sends from it for 20 s
   while nobody acknowledges. Target: RSS <= 60 MB.

Prints figures for a person, then one JSON object as the last line (OPERATOR.md).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from firmware_sim.broker import Mosquitto
from gateway import logs
from gateway.contract.envelope import build, uuid7
from gateway.contract.signing import SigningKey, load_signing_key, write_keypair
from gateway.contract.topics import topic
from gateway.delivery.outbox import Outbox
from gateway.delivery.relay import Identity, Relay
from gateway.delivery.seq import SeqCounter
from gateway.delivery.uplink import MqttSettings, Uplink

SITE, GW, PREFIX = "bench-school", "gw-bench", "schoolalarm/v1"
BODY = {
    "code": "120",
    "kind": "panic",
    "input": "serial:box-bench",
    "test": False,
    "location": {"name": "Gate", "address": "Road 1", "lat": 22.5431, "lon": 114.0287},
    "contact": {"phone": "+86-755-0000-0000"},
}
BIN = Path(sys.executable).parent

SUBSCRIBER = textwrap.dedent("""
    import sys, threading, paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    n, port = int(sys.argv[1]), int(sys.argv[2])
    done, count = threading.Event(), [0]
    def on_message(c, u, m):
        count[0] += 1
        if count[0] >= n:
            done.set()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="floor-sub", protocol=mqtt.MQTTv5)
    c.on_message = on_message
    c.on_connect = lambda c, u, f, rc, p: c.subscribe("floor/#", qos=1)
    c.on_subscribe = lambda c, u, mid, rcs, p: print("ready", flush=True)  # after SUBACK
    c.connect("127.0.0.1", port)
    c.loop_start()
    done.wait(300)
    print("done" if done.is_set() else "short", count[0], flush=True)
""")


def enqueue(outbox: Outbox, key: SigningKey, seq: SeqCounter, n: int) -> float:
    """Through the real path: build + sign + FULL commit per event. Returns events/s."""
    t0 = time.perf_counter()
    for _ in range(n):
        env = build(type="alarm", site=SITE, gw=GW, seq=seq.next(), body=BODY, key=key)
        outbox.add(env)
    return n / (time.perf_counter() - t0)


def bulk_copy(path: Path, seq: SeqCounter, total: int) -> None:
    """Fill the outbox up to ``total`` rows by copying payloads under new ids and seqs (for
    the RSS and size figures only: nobody acknowledges these, so they need not verify)."""
    db = sqlite3.connect(path, isolation_level=None)
    rows = db.execute("SELECT type, prio, payload FROM outbox LIMIT 1000").fetchall()
    have = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    db.execute("BEGIN")
    now = time.time()
    for i in range(total - have):
        kind, prio, payload = rows[i % len(rows)]
        db.execute(
            "INSERT INTO outbox (id, type, prio, seq, payload, created) VALUES (?,?,?,?,?,?)",
            (uuid7(), kind, prio, seq.next(), payload, now + i * 1e-6),
        )
    db.execute("COMMIT")
    db.close()


def bulk_signed(path: Path, key: SigningKey, seq: SeqCounter, n: int) -> None:
    """Queue n real signed alarms in one transaction (set-up only: the per-event enqueue
    rate through the real path is measured in the backlog part)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    now = time.time()
    for i in range(n):
        env = build(type="alarm", site=SITE, gw=GW, seq=seq.next(), body=BODY, key=key)
        db.execute(
            "INSERT INTO outbox (id, type, prio, seq, payload, created) VALUES (?,?,?,?,?,?)",
            (env.id, env.type, 0, env.seq, env.to_bytes(), now + i * 1e-6),
        )
    db.execute("COMMIT")
    db.close()


PUBLISHER = textwrap.dedent("""
    import sys, threading, paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    n, port, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="floor-pub", protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(20)
    pub.max_queued_messages_set(0)
    # paho numbers messages with 16-bit ids and a queued message is overwritten when the
    # id wraps: keep at most 2,000 un-PUBACKed in paho's queue. On the wire both this and
    # the gateway keep 20 in flight (Mosquitto's receive maximum).
    window = threading.Semaphore(2000)
    pub.on_publish = lambda c, u, mid, rc, p: window.release()
    connected = threading.Event()
    pub.on_connect = lambda c, u, f, rc, p: connected.set()
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    connected.wait(10)
    print("ready", flush=True)
    sys.stdin.readline()
    payload = b"x" * size
    for i in range(n):
        window.acquire()
        pub.publish(f"floor/{i % 8}", payload, qos=1)
    sys.stdin.readline()
    pub.loop_stop()
    pub.disconnect()
""")


TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far, its threads included."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def family(pid: int) -> list[int]:
    """pid and its live children (the center's checker process)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return [pid, *kids]


def is_checker(pid: int) -> bool:
    """The center's checker process (a multiprocessing spawn), not its resource tracker."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class CpuMeter:
    """CPU µs per message of each named group of processes between creation and stop().
    A group is a callable giving its pids, asked again at stop(): a process started in
    between (a center's checker started again after it died) counts from zero."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self.t0 = {pid: cpu_s(pid) for pids in groups.values() for pid in pids()}

    def stop(self, n: int) -> dict[str, float]:
        return {
            name: round(sum(cpu_s(p) - self.t0.get(p, 0.0) for p in pids()) / n * 1e6, 1)
            for name, pids in self.groups.items()
        }


def sched_s(pid: int) -> tuple[float, float]:
    """Seconds the main thread of ``pid`` has run, and waited runnable for a CPU."""
    try:
        run_ns, wait_ns, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(run_ns) / 1e9, int(wait_ns) / 1e9


class SchedMeter:
    """Per group, what its main threads did between creation and stop(), in % of the wall
    time: ran, waited for a CPU (runnable), slept (nothing to do, or blocked). A pipeline
    stall shows as sleep in every process at once; a machine shared with other jobs shows
    as waiting."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self.t0 = {pid: sched_s(pid) for pids in groups.values() for pid in pids()}
        self.wall0 = time.perf_counter()

    def stop(self) -> dict[str, dict[str, float]]:
        wall = time.perf_counter() - self.wall0
        out = {}
        for name, pids in self.groups.items():
            run = wait = 0.0
            for pid in pids():
                now, before = sched_s(pid), self.t0.get(pid, (0.0, 0.0))
                run, wait = run + now[0] - before[0], wait + now[1] - before[1]
            out[name] = {
                "run": round(100 * run / wall, 1),
                "wait": round(100 * wait / wall, 1),
                "sleep": round(max(0.0, 100 - 100 * (run + wait) / wall), 1),
            }
        return out


@dataclasses.dataclass
class Round:
    drain_per_s: float
    floor_per_s: float  # mean of the floors measured just before and just after
    ratio: float
    publishes: int
    cpu_us_per_event: dict[str, float]
    main_thread_pct: dict[str, dict[str, float]]  # run / wait (for a CPU) / sleep


def floor_burst(port: int, n: int, size: int, broker_pid: int) -> tuple[float, dict[str, float]]:
    """Raw paho QoS 1: messages/s from a publisher process to a subscriber process (both
    stock paho-mqtt, not importing alarmgw)."""
    sub = subprocess.Popen(
        [sys.executable, "-c", SUBSCRIBER, str(n), str(port)], stdout=subprocess.PIPE, text=True
    )
    pub = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(n), str(port), str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sub.stdout is not None and pub.stdin is not None and pub.stdout is not None
    try:
        sub.stdout.readline()  # subscribed
        pub.stdout.readline()  # connected
        meter = CpuMeter(
            {
                "publisher": lambda: [pub.pid],
                "subscriber": lambda: [sub.pid],
                "broker": lambda: [broker_pid],
            }
        )
        t0 = time.perf_counter()
        pub.stdin.write("go\n")
        pub.stdin.flush()
        line = sub.stdout.readline()
        rate = n / (time.perf_counter() - t0)
        cpu = meter.stop(n)
        pub.stdin.write("stop\n")
        pub.stdin.flush()
        pub.wait(10)
        sub.wait(10)
    finally:
        for proc in (pub, sub):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if not line.startswith("done"):
        raise RuntimeError(f"floor subscriber: {line!r}")
    return rate, cpu


def write_center_config(root: Path, port: int, protocol: str = "5") -> Path:
    write_keypair(root / "keys", "center", force=True)
    cfg = root / "center.toml"
    cfg.write_text(
        f'[center]\nkey_file = "keys/center.key"\nstate_dir = "state-center"\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nprefix = "{PREFIX}"\n'
        f'protocol = "{protocol}"\n\n'
        f'[[gateways]]\nid = "{GW}"\nsite = "{SITE}"\npublic_keys = ["keys/gateway.pub"]\n'
    )
    return cfg


async def drain(
    root: Path, port: int, n: int, broker_pid: int, protocol: str = "5"
) -> tuple[float, int, dict[str, float]]:
    """Queue n alarms, start the relay, time until the center acked them all. ``root`` is
    this round's own directory (its outbox, seq file and center state start empty)."""
    gw_key = load_signing_key(root / "keys" / "gateway.key")
    c_pub = root / "keys" / "center.pub"
    from gateway.contract.signing import load_verify_key  # noqa: PLC0415

    c_key = load_verify_key(c_pub)
    seq = SeqCounter(root / "drain-seq.json")
    outbox = Outbox(root / "drain.sqlite")
    print(f"  queueing {n} signed alarms ...", flush=True)
    outbox.close()
    bulk_signed(root / "drain.sqlite", gw_key, seq, n)
    outbox = Outbox(root / "drain.sqlite")
    argv = [str(BIN / "alarmgw"), "center", "--config", str(root / "center.toml")]
    if os.environ.get("BENCH_PROFILE_CENTER"):
        argv = [sys.executable, os.environ["BENCH_PROFILE_CENTER"], str(root / "center.toml")]
    center = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL if not os.environ.get("BENCH_PROFILE_CENTER") else None,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert center.stderr is not None
    for line in center.stderr:  # publishes before it subscribed would wait for a re-send
        if '"subscribed"' in line:
            break
    threading.Thread(target=center.stderr.read, daemon=True).start()  # keep the pipe open
    relay = Relay(
        ident=Identity(SITE, GW, PREFIX),
        key=gw_key,
        seq=seq,
        outbox=outbox,
        center_keys={c_key.kid: c_key},
        location=BODY["location"],  # type: ignore[arg-type]
        contact=BODY["contact"],  # type: ignore[arg-type]
        resend_initial_s=30.0,
        resend_max_s=60.0,
    )
    up = Uplink(
        MqttSettings("127.0.0.1", port, 30, "drain-gw", protocol=protocol),
        subscriptions=[topic(PREFIX, SITE, GW, "ack")],
        on_message=relay.on_message,
        prepare=relay.prepare_session,
        on_state=relay.on_link,
    )
    relay.attach(up)
    acks = [0]
    if os.environ.get("BENCH_DEBUG"):  # count the center's acks (one per burst it decided)

        def counting(name: str, payload: bytes, inner=up._on_message) -> None:  # type: ignore[no-untyped-def]
            acks[0] += 1
            inner(name, payload)

        up._on_message = counting
    await asyncio.sleep(0.3)  # its SUBSCRIBE follows the CONNACK
    tasks = [asyncio.create_task(up.run())]
    while not up.connected:
        await asyncio.sleep(0.01)
    meter = CpuMeter(
        {
            "gateway": lambda: [os.getpid()],
            "center": lambda: [center.pid],
            "checker": lambda: family(center.pid)[1:],
            "broker": lambda: [broker_pid],
        }
    )
    sched = SchedMeter(
        {
            "gateway": lambda: [os.getpid()],
            "center": lambda: [center.pid],
            "checker": lambda: [p for p in family(center.pid)[1:] if is_checker(p)],
            "broker": lambda: [broker_pid],
        }
    )
    t0 = time.perf_counter()
    tasks.append(asyncio.create_task(relay.pump()))
    last = n
    # Done once the relay counted n acks and the outbox is empty. The count is a scan of
    # the outbox table (~20 ms at 30,000 rows, on the gateway's loop): asked once at the
    # end, not every half second, so the bench neither stalls nor bills the gateway for it.
    debug = bool(os.environ.get("BENCH_DEBUG"))
    while (left := n - relay.stats["events_acked"]) > 0 or outbox.count() > 0:
        await asyncio.sleep(0.5 if debug else 0.02)
        if time.perf_counter() - t0 > 600:
            raise RuntimeError(f"drain stalled: {left} of {n} still queued")
        if debug and left != last:
            st = relay.stats
            print(
                f"    {time.perf_counter() - t0:6.2f}s {left} left, sent {st['events_sent']}"
                f" acked {st['events_acked']} rejected {st['acks_rejected']}"
                f" held {len(relay.core)} inflight {relay.core.inflight} acks {acks[0]}",
                flush=True,
            )
            last = left
    elapsed = time.perf_counter() - t0
    cpu = meter.stop(n)
    threads = sched.stop()
    sent = relay.stats["events_sent"]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    center.terminate()
    center.wait(10)
    outbox.close()
    return n / elapsed, sent, cpu, threads


RSS_PROBE = textwrap.dedent("""
    import asyncio, resource, sys, time
    sys.path.insert(0, sys.argv[3])
    from gateway.delivery.outbox import Outbox
    from gateway.delivery.relay import Identity, Relay
    from gateway.delivery.seq import SeqCounter
    from gateway.contract.signing import SigningKey
    from gateway.delivery.uplink import MqttSettings, Uplink
    from gateway import logs
    import os
    logs.configure(open(os.devnull, "w"), json=True, level="error")
    root, port = sys.argv[1], int(sys.argv[2])
    async def main():
        relay = Relay(ident=Identity("bench-school", "gw-bench", "schoolalarm/v1"),
                      key=SigningKey.generate(), seq=SeqCounter(root + "/big-seq.json"),
                      outbox=Outbox(root + "/big.sqlite"), center_keys={},
                      location={"name": "G", "address": "R", "lat": 1.0, "lon": 2.0},
                      contact={"phone": "1"})
        up = Uplink(MqttSettings("127.0.0.1", port, 30, "rss-gw"), subscriptions=[],
                    on_message=relay.on_message, prepare=relay.prepare_session,
                    on_state=relay.on_link)
        relay.attach(up)
        tasks = [asyncio.create_task(up.run()), asyncio.create_task(relay.pump())]
        await asyncio.sleep(20)
        print(relay.stats["events_sent"], relay.pending_count(),
              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    asyncio.run(main())
""")


def backlog(root: Path, port: int, m: int, sample: int) -> dict[str, float]:
    key = SigningKey.generate()
    seq = SeqCounter(root / "big-seq.json")
    outbox = Outbox(root / "big.sqlite")
    rate = enqueue(outbox, key, seq, min(sample, m))
    outbox.close()
    if m > sample:
        bulk_copy(root / "big.sqlite", seq, m)
    seq.close()
    size = sum(p.stat().st_size for p in root.glob("big.sqlite*"))
    probe = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(root), str(port), str(Path.cwd())],
        capture_output=True,
        text=True,
        check=True,
    )
    sent, pending, maxrss_kb = (int(x) for x in probe.stdout.split())
    return {
        "enqueue_per_s": round(rate, 1),
        "disk_bytes": size,
        "rss_mb": round(maxrss_kb / 1024, 1),
        "sent_in_20s": sent,
        "pending": pending,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drain", type=int, default=100_000)
    parser.add_argument("--queue", type=int, default=1_000_000)
    parser.add_argument("--enqueue-sample", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="drains, each between floors")
    parser.add_argument(
        "--protocol",
        choices=("5", "3.1.1"),
        default="5",
        help="MQTT version of the gateway and the center (the floor stays MQTT 5)",
    )
    args = parser.parse_args()
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the broker we started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logs.configure(open(os.devnull, "w"), json=True, level="error")  # noqa: SIM115
    with tempfile.TemporaryDirectory(prefix="alarmgw-drain-") as d:
        root = Path(d)
        # Unbounded per-client queues: with Mosquitto's default (1,000) a subscriber that
        # falls behind in a burst silently loses QoS 1 messages.
        with Mosquitto(
            root / "broker", extra="max_queued_messages 1000000\nmax_inflight_messages 0\n"
        ) as broker:
            assert broker.proc is not None
            bpid = broker.proc.pid
            size = len(
                build(
                    type="alarm", site=SITE, gw=GW, seq=1, body=BODY, key=SigningKey.generate()
                ).to_bytes()
            )
            # floor, drain, floor, drain, ..., floor: each drain is compared with the mean
            # of the floors either side of it (this shared machine's speed drifts).
            print(f"floor: raw paho QoS 1 burst of {args.drain} x {size} B ...", flush=True)
            floors = [floor_burst(broker.port, args.drain, size, bpid)]
            rounds = []
            for i in range(args.rounds):
                rdir = root / f"round-{i + 1}"
                write_keypair(rdir / "keys", "gateway")
                write_center_config(rdir, broker.port, args.protocol)
                print(
                    f"drain {i + 1}/{args.rounds}: {args.drain} queued alarms to the center, "
                    "with acks; then the floor again ...",
                    flush=True,
                )
                rate, sent, cpu, threads = asyncio.run(
                    drain(rdir, broker.port, args.drain, bpid, args.protocol)
                )
                floors.append(floor_burst(broker.port, args.drain, size, bpid))
                floor = (floors[i][0] + floors[i + 1][0]) / 2
                rounds.append(
                    Round(
                        round(rate, 1), round(floor, 1), round(rate / floor, 3), sent, cpu, threads
                    )
                )
                print(f"  round {i + 1}: {rate:.0f}/s vs {floor:.0f}/s, ratio {rate / floor:.3f}")
                print(
                    "    main threads, % of the drain's wall time run/wait for CPU/sleep: "
                    + ", ".join(
                        f"{k} {v['run']:.0f}/{v['wait']:.0f}/{v['sleep']:.0f}"
                        for k, v in threads.items()
                    )
                )
            print(f"backlog: {args.queue} queued alarms ...", flush=True)
            big = backlog(root, broker.port, args.queue, args.enqueue_sample)
    ratios = sorted(r.ratio for r in rounds)
    mid = next(r for r in rounds if r.ratio == ratios[len(ratios) // 2])
    floor_cpu, drain_cpu = floors[0][1], mid.cpu_us_per_event
    rate, floor = mid.drain_per_s, mid.floor_per_s
    result = {
        "drain_events": args.drain,
        "protocol": args.protocol,
        "drain_per_s": rate,
        "floor_burst_per_s": floor,
        "drain_ratio": mid.ratio,
        "drain_ratio_min_max": [ratios[0], ratios[-1]],
        "rounds": [dataclasses.asdict(r) for r in rounds],
        "floor_cpu_us_per_msg": floor_cpu,
        "queued": args.queue,
        **big,
        "self_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(
        f"  drain   {rate:9.1f} events/s acked   floor {floor:9.1f} msg/s   "
        f"ratio {mid.ratio:.3f} (target >= 0.50; median of {args.rounds} rounds, "
        f"{ratios[0]:.3f} to {ratios[-1]:.3f})"
    )
    print(
        "  CPU µs per event (that round): "
        + ", ".join(f"{k} {v:.0f}" for k, v in drain_cpu.items())
        + f" (sum {sum(drain_cpu.values()):.0f}); floor per message: "
        + ", ".join(f"{k} {v:.0f}" for k, v in floor_cpu.items())
        + f" (sum {sum(floor_cpu.values()):.0f})"
    )
    print(
        f"  backlog {args.queue} queued: {big['disk_bytes'] / 1e6:.1f} MB on disk, "
        f"RSS {big['rss_mb']} MB (target <= 60) while sending, "
        f"enqueue {big['enqueue_per_s']:.0f}/s (sign + FULL commit each)"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
