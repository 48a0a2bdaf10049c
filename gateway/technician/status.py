"""What the running gateway knows about itself, as JSON: the ``/status`` document and the
``/healthz`` problems, both rendered from snapshots (gateway/snapshots.py), and the queue as
stored in the outbox.

Two threads read state. The full snapshot is taken on the daemon's event loop. ``/healthz``
judges a ``Liveness`` snapshot taken on the HTTP thread (single attributes, atomic under the
GIL), so it can still answer — 503, "uplink loop stuck" — while the event loop is blocked.
Queue figures come from a separate read-only SQLite connection, so a large backlog never
makes the alarm loop wait for a ``GROUP BY``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sqlite3
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from gateway import __version__, checks
from gateway.errors import OutboxError
from gateway.snapshots import (
    BollardSnapshot,
    CameraSnapshot,
    DeliverySnapshot,
    GatewaySnapshot,
    GpioInput,
    InputSnapshot,
    LinkSnapshot,
    Liveness,
    MonitorsSnapshot,
    QueueRow,
    QueueSnapshot,
    input_state,
)
from gateway.technician.metrics import Histogram

# The uplink's misc loop ticks about once a second; this much silence means the event loop
# (or that task) is stuck, and with it the MQTT keepalive and every alarm.
STALL_S = 5.0
RECENT_ACKS = 512  # ack times kept for GET /events/{id}
EVENTS_LISTED = 20  # queued events listed one by one (oldest first) by /status and queue
VERSIONED = ("paho-mqtt", "aiohttp", "pyserial", "gpiozero", "cryptography", "pydantic")


class AckLog:
    """Recent acks (id → wall time, latency) and the ack latency histogram.

    ``record`` is a relay ack listener (event-loop thread); the HTTP thread reads. A lock
    keeps the two consistent; ``on_record`` (set by the HTTP server, held weakly so the
    relay that holds this log does not keep the server alive) wakes its waiters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, tuple[float, float | None]] = OrderedDict()
        self.latency = Histogram()
        self.on_record: weakref.WeakMethod[Callable[[], None]] | None = None

    def record(self, event_id: str, latency_s: float | None) -> None:
        with self._lock:
            self._recent[event_id] = (time.time(), latency_s)
            if len(self._recent) > RECENT_ACKS:
                self._recent.popitem(last=False)
            if latency_s is not None:
                self.latency.observe(latency_s)
        wake = self.on_record() if self.on_record is not None else None
        if wake is not None:
            wake()

    def get(self, event_id: str) -> tuple[float, float | None] | None:
        """(acked at, latency) of a recently acknowledged event."""
        with self._lock:
            return self._recent.get(event_id)

    def histogram(self) -> dict[str, Any]:
        with self._lock:
            return self.latency.snapshot()


def versions() -> tuple[tuple[str, str], ...]:
    """alarmgw, Python and the libraries on the alarm path (for status)."""
    out = [("alarmgw", __version__), ("python", platform.python_version())]
    for dist in VERSIONED:
        try:
            out.append((dist, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            out.append((dist, "missing"))
    return tuple(out)


# --- /status from a snapshot ----------------------------------------------------------------


def verdict_json(v: checks.Verdict) -> dict[str, str]:
    return {"check": v.check, "level": v.level, "found": v.found, "fix": v.fix}


def _input(i: InputSnapshot, monitors: MonitorsSnapshot | None) -> dict[str, Any]:
    state = input_state(i, monitors)
    if isinstance(i, GpioInput):
        return {
            "ref": i.ref,
            "kind": "gpio",
            "name": i.name,
            "state": state,
            "pin": i.pin,
            "led_pin": i.led_pin,
            "started": i.started,
            "pressed": i.pressed,
            "presses": i.presses,
            "bounces_ignored": i.bounces_ignored,
            "short_presses": i.short_presses,
            "led": i.led,
            "alarms": i.alarms,
            **({} if i.verdict is None else {"verdict": verdict_json(i.verdict)}),
        }
    return {
        "ref": i.ref,
        "kind": "serial",
        "name": i.name,
        "state": state,
        "port": i.port,
        "baud": i.baud,
        "connected": i.connected,
        "stale": i.stale,
        "box_id": i.box_id,
        "fw": i.fw,
        "frames_ok": i.frames_ok,
        "frame_errors": dict(i.frame_errors),
        "last_frame_age_s": i.last_frame_age_s,
        "alarms": i.alarms,
        "verdict": verdict_json(i.link),
    }


def _link(link: LinkSnapshot) -> dict[str, Any]:
    takeover = {} if link.takeover is None else {"verdict": verdict_json(link.takeover)}
    return {
        **takeover,
        "broker": link.broker,
        "tls": link.tls,
        "protocol": link.protocol,
        "connected": link.connected,
        "reconnects": link.reconnects,
        "last_error": link.last_error,
        "loop_age_s": link.loop_age_s,
    }


def queue_json(q: QueueSnapshot) -> dict[str, Any]:
    """``{"pending", "oldest_age_s", "by_type", "memory_only"}`` (pending: stored events)."""
    return {
        "pending": q.stored,
        "oldest_age_s": q.oldest_age_s,
        "by_type": {
            r.type: {
                "pending": r.pending,
                "oldest_age_s": r.oldest_age_s,
                "failed_attempts": r.failed_attempts,
                "last_error": r.last_error,
            }
            for r in q.rows
        },
        "memory_only": q.memory_only,
    }


def _bollard(b: BollardSnapshot | None, started: bool) -> dict[str, Any]:
    if b is None:
        return {"status": "not configured" if started else "not monitored yet", "ok": None}
    out: dict[str, Any] = {"state": b.state}
    if b.since is not None:
        out["since"] = b.since
    return {**out, "ok": b.verdict.ok, "verdict": verdict_json(b.verdict)}


def _camera(c: CameraSnapshot | None, started: bool) -> dict[str, Any]:
    if c is None:
        return {"status": "not configured" if started else "not monitored yet", "ok": None}
    out: dict[str, Any] = {"recording": c.recording, "required_days": c.required_days}
    if c.retention_days is not None:
        days = c.retention_days
        out["retention_days"] = int(days) if float(days).is_integer() else days
    return {**out, "ok": c.ok, "error": c.error, "verdict": verdict_json(c.verdict)}


def _supervision(m: MonitorsSnapshot) -> dict[str, Any]:
    troubles = [
        {"device": t.device, "code": t.code, "reason": t.reason, "detail": t.detail}
        for t in m.troubles
    ]
    summary = ", ".join(f"{t.device} {t.code} ({t.reason})" for t in m.troubles)
    hb = m.heartbeat
    return {
        "ok": not troubles,
        "status": f"open troubles: {summary}" if troubles else "no open troubles",
        "troubles": troubles,
        "flapping": list(m.flapping),
        "heartbeat": {
            "interval_s": hb.interval_s,
            "taken": hb.taken,
            "sent": hb.sent,
            "replaced": hb.replaced,
            "failed": hb.failed,
            "waiting": hb.waiting,
        },
    }


def _selfcheck(m: MonitorsSnapshot) -> dict[str, Any]:
    verdicts = m.selfcheck.verdicts
    bad = [v for v in verdicts if not v.ok]
    return {
        "ok": not bad,
        "status": "; ".join(v.found for v in bad) if bad else "all self-checks pass",
        "checks": [verdict_json(v) for v in verdicts],
    }


def _acks(d: DeliverySnapshot) -> dict[str, Any]:
    """The center's acks: those ignored by reason and the ``center-key`` verdict."""
    v = checks.center_key(
        [(r.reason, r.count, r.since_ack, r.last_kid) for r in d.refused_acks], d.center_kids
    )
    return {
        "status": v.found if v.ok else f"TROUBLE: {v.found}",
        "ok": v.ok,
        "trusted": list(d.center_kids),
        "refused": {
            r.reason: {"count": r.count, "since_ack": r.since_ack, "last_kid": r.last_kid}
            for r in d.refused_acks
        },
        "verdict": verdict_json(v),
    }


def to_json(
    snap: GatewaySnapshot,
    *,
    queue: QueueSnapshot | None = None,
    problems: list[str] | None = None,
    acks: AckLog | None = None,
    owed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``/status`` document of one snapshot (``queue``: read from the outbox file;
    ``owed``: ``read_owed`` of it)."""
    p, d, m = snap.process, snap.delivery, snap.monitors
    last: dict[str, Any] | None = None
    if d.last_alarm is not None:
        a = d.last_alarm
        last = {"id": a.id, "type": a.type, "input": a.input, "ts": a.ts, "acked_at": a.acked_at}
        acked = acks.get(a.id) if acks is not None else None
        last["ack_ms"] = round(acked[1] * 1000, 1) if acked and acked[1] is not None else None
    q = queue if queue is not None else QueueSnapshot(rows=(), memory_only=d.memory_only)
    problems = problems or []
    status: dict[str, Any] = {
        "gateway": {
            "site": p.site,
            "id": p.id,
            "kid": p.kid,
            "version": p.version,
            "versions": dict(p.versions),
            "pid": p.pid,
            "uptime_s": p.uptime_s,
            "config": p.config,
            "state_dir": p.state_dir,
        },
        "health": {"ok": not problems, "problems": problems},
        "inputs": [_input(i, m) for i in snap.inputs],
        "uplink": {**_link(d.primary), "session": d.session},
        "secondary": _link(d.secondary) if d.secondary is not None else None,
        "sent_by_path": dict(d.sent_by_path),
        "loops": {
            loop.name: {"restarts": loop.restarts, "last_failure": loop.last_failure}
            for loop in snap.supervisor.loops
        },
        "queue": {**queue_json(q), **(owed or {}), "memory_only": d.memory_only},
        "last_alarm": last,
        "counters": {
            "alarms_raised": d.counters.alarms_raised,
            "events_sent": d.counters.events_sent,
            "events_acked": d.counters.events_acked,
            "publish_refused": d.counters.publish_refused,
            "acks_rejected": d.counters.acks_rejected,
        },
        "raised": [{"input": r.input, "type": r.type, "count": r.count} for r in d.raised],
        "ack_latency": acks.histogram() if acks is not None else Histogram().snapshot(),
        "bollard": _bollard(m.bollard if m else None, m is not None),
        "camera": _camera(m.camera if m else None, m is not None),
    }
    status["acks"] = _acks(d)
    if m is not None:
        status["supervision"] = _supervision(m)
        status["selfcheck"] = _selfcheck(m)
    return status


# --- /healthz -------------------------------------------------------------------------------


def health_problems(live: Liveness) -> list[str]:
    """Why the alarm path is not alive (empty: alive)."""
    problems: list[str] = []
    for loop in live.loops:
        if not loop.running:
            problems.append(f"{loop.name} loop is not running")
        elif loop.tick_age_s is not None and loop.tick_age_s > STALL_S:
            problems.append(f"{loop.name} loop stuck: no tick for {loop.tick_age_s:.1f} s")
    if not live.connected:
        err = live.last_error
        problems.append(f"not connected to broker {live.broker}" + (f": {err}" if err else ""))
    if live.memory_only:
        problems.append(f"{live.memory_only} event(s) held in memory: the outbox cannot be written")
    path = Path(live.outbox)
    writable = checks.outbox_writable(path)
    if not writable.ok:
        problems.append(writable.found)
    else:
        disk = checks.disk(
            checks.disk_free_bytes(path.parent), path.parent, min_free_bytes=live.min_free_bytes
        )
        if disk.level == "failing":
            problems.append(disk.found)
    return problems


# --- the outbox, read-only ---------------------------------------------------------------


@contextlib.contextmanager
def readonly_outbox(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the outbox file (the daemon may be running or not).

    In WAL mode even a reader may have to create ``-wal``/``-shm`` beside the file; a
    technician running this as root must not leave root-owned ones behind that the daemon's
    user then cannot open, so any it created are handed to the outbox file's owner."""
    if not path.is_file():
        raise OutboxError(f"{path}: no outbox yet (the daemon creates it at its first start)")
    sidecars = [path.with_name(path.name + s) for s in ("-wal", "-shm")]
    existed = {p for p in sidecars if p.exists()}
    # No -wal: the daemon stopped cleanly and checkpointed everything into the file, which
    # can then be read as immutable (no sidecar files at all).
    query = "mode=ro" if sidecars[0] in existed else "mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?{query}", uri=True, timeout=5.0)
    except sqlite3.Error as err:
        raise OutboxError(f"{path}: cannot open read-only: {err}") from err
    try:
        yield conn
    except sqlite3.Error as err:
        raise OutboxError(f"{path}: cannot read: {err}") from err
    finally:
        conn.close()
        owner = path.stat()
        for p in sidecars:
            if p not in existed and p.exists() and os.geteuid() == 0:
                with contextlib.suppress(OSError):
                    os.chown(p, owner.st_uid, owner.st_gid)


def _owed_by(conn: sqlite3.Connection) -> tuple[str, str]:
    """SQL expressions, per row: owed to the center (MQTT), owed to the DC-09 receiver. An
    outbox written before the paths were tracked has neither column: every row is owed to
    the center only."""
    cols = {str(r[1]) for r in conn.execute("PRAGMA table_info(outbox)")}
    mqtt = "mqtt_done = 0" if "mqtt_done" in cols else "1"
    dc09 = "dc09 = 1" if "dc09" in cols else "0"
    return mqtt, dc09


def read_queue(conn: sqlite3.Connection, now: float | None = None) -> QueueSnapshot:
    """Per type, of the events waiting for the center's ack: pending, oldest age, failed
    attempts (most of any one event: the outbox counts failed publishes) and the newest
    last error. Events only the DC-09 receiver still owes an ack are in ``read_owed``."""
    at = time.time() if now is None else now
    mqtt, _ = _owed_by(conn)
    rows = []
    found = conn.execute(
        f"SELECT type, COUNT(*), MIN(created), MAX(attempts) FROM outbox WHERE {mqtt} "  # noqa: S608 - fixed expressions
        "GROUP BY type"
    ).fetchall()
    for kind, n, oldest, attempts in found:
        err = conn.execute(
            f"SELECT last_error FROM outbox WHERE type = ? AND {mqtt} "  # noqa: S608 - fixed expressions
            "AND last_error IS NOT NULL ORDER BY created DESC LIMIT 1",
            (kind,),
        ).fetchone()
        rows.append(
            QueueRow(
                type=str(kind),
                pending=int(n),
                oldest_age_s=round(max(0.0, at - float(oldest)), 1),
                failed_attempts=int(attempts),
                last_error=err[0] if err else None,
            )
        )
    return QueueSnapshot(rows=tuple(rows))


def read_owed(
    conn: sqlite3.Connection,
    now: float | None = None,
    *,
    dc09: bool = False,
    limit: int = EVENTS_LISTED,
) -> dict[str, Any]:
    """Which paths still owe an ack: per path (``mqtt``, the center; ``dc09``, the receiver,
    only when ``dc09``) how many events and the oldest's age, and the oldest ``limit``
    queued events one by one with the paths that owe them (``events_more``: the rest)."""
    at = time.time() if now is None else now
    mqtt, owes_dc09 = _owed_by(conn)
    paths = {"mqtt": mqtt, **({"dc09": owes_dc09} if dc09 else {})}
    by_path: dict[str, Any] = {}
    for name, cond in paths.items():
        n, oldest = conn.execute(
            f"SELECT COUNT(*), MIN(created) FROM outbox WHERE {cond}"  # noqa: S608 - fixed expressions
        ).fetchone()
        age = None if oldest is None else round(max(0.0, at - float(oldest)), 1)
        by_path[name] = {"pending": int(n), "oldest_age_s": age}
    owed = " OR ".join(f"({c})" for c in paths.values())
    found = conn.execute(
        f"SELECT id, type, created, attempts, last_error, {mqtt}, {owes_dc09} FROM outbox "  # noqa: S608 - fixed expressions
        f"WHERE {owed} ORDER BY created, seq LIMIT ?",
        (limit,),
    ).fetchall()
    events = [
        {
            "id": str(event_id),
            "type": str(kind),
            "age_s": round(max(0.0, at - float(created)), 1),
            "owed_by": [p for p, owes in (("mqtt", to_mqtt), ("dc09", to_dc09 and dc09)) if owes],
            "failed_attempts": int(attempts),
            "last_error": last_error,
        }
        for event_id, kind, created, attempts, last_error, to_mqtt, to_dc09 in found
    ]
    (total,) = conn.execute(f"SELECT COUNT(*) FROM outbox WHERE {owed}").fetchone()  # noqa: S608 - fixed expressions
    return {"by_path": by_path, "events": events, "events_more": max(0, int(total) - len(events))}


def queue_summary(
    conn: sqlite3.Connection, now: float | None = None, *, dc09: bool = False
) -> dict[str, Any]:
    """``{"pending": total, "oldest_age_s": ..., "by_type": {...}}`` of the outbox file, and
    who owes what (``read_owed``)."""
    out = queue_json(read_queue(conn, now))
    del out["memory_only"]
    return {**out, **read_owed(conn, now, dc09=dc09)}


def integrity_check(conn: sqlite3.Connection) -> list[str]:
    """SQLite's own ``PRAGMA integrity_check``: ``["ok"]`` when the file is sound."""
    return [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
