"""What the running gateway knows about itself: the ``/status`` snapshot, the ``/healthz``
verdict, the queue as stored in the outbox, and a registry for status providers.

Two threads read this state. ``collect`` runs on the daemon's event loop (it iterates dicts
the loop mutates). ``health_problems`` runs on the HTTP thread and only reads single
attributes (atomic under the GIL), so ``/healthz`` can still answer — 503, "uplink loop
stuck" — while the event loop is blocked. Queue figures come from a separate read-only SQLite
connection, so a large backlog never makes the alarm loop wait for a ``GROUP BY``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from gateway import __version__
from gateway.errors import OutboxError
from gateway.technician.metrics import Family, Histogram

if TYPE_CHECKING:
    from gateway.daemon import Gateway

log = structlog.get_logger("alarmgw.status")

# The uplink's misc loop ticks about once a second; this much silence means the event loop
# (or that task) is stuck, and with it the MQTT keepalive and every alarm.
STALL_S = 5.0
# Below this much free space in state_dir an alarm commit can no longer be counted on
# (one committed alarm writes ~9 KB of WAL, FIELD-NOTES "SQLite outbox").
MIN_FREE_BYTES = 4 * 1024 * 1024
RECENT_ACKS = 512  # ack times kept for GET /events/{id}
VERSIONED = ("paho-mqtt", "aiohttp", "pyserial", "gpiozero", "cryptography", "pydantic")

StatusFn = Callable[[], Mapping[str, Any]]
MetricsFn = Callable[[], Iterable[Family]]


@dataclass(frozen=True, slots=True)
class Provider:
    """One section of ``/status`` (and optionally metric families), called on the loop."""

    status: StatusFn
    metrics: MetricsFn | None = None


class Providers:
    """Named status sections beyond the alarm path (bollard, camera, ...).

    A monitor registers itself with ``add("bollard", monitor.status)``; ``bollard`` and
    ``camera`` start as placeholders saying whether the config has them. A provider returns
    a JSON-able mapping; ``"ok": False`` in it makes ``alarmgw status`` warn."""

    def __init__(self) -> None:
        self._items: dict[str, Provider] = {}

    def add(self, name: str, status: StatusFn, metrics: MetricsFn | None = None) -> None:
        """Register (or replace) the provider of section ``name``."""
        self._items[name] = Provider(status, metrics)

    def names(self) -> list[str]:
        return list(self._items)

    def placeholders(self, configured: Mapping[str, bool]) -> None:
        """Sections whose monitor is not running in this process."""
        for name, present in configured.items():
            text = "configured, not monitored by this version" if present else "not configured"
            self.add(name, _fixed({"status": text, "ok": None}))

    def collect(self) -> dict[str, Any]:
        """Every section; a provider that raises shows its error instead of breaking status."""
        out: dict[str, Any] = {}
        for name, p in self._items.items():
            try:
                out[name] = dict(p.status())
            except Exception as err:
                out[name] = {"status": "error", "ok": False, "error": repr(err)}
        return out

    def families(self) -> list[Family]:
        fams: list[Family] = []
        for name, p in self._items.items():
            if p.metrics is None:
                continue
            try:
                fams.extend(p.metrics())
            except Exception as err:
                log.warning("status provider metrics failed", provider=name, error=repr(err))
        return fams


def _fixed(value: Mapping[str, Any]) -> StatusFn:
    return lambda: value


class AckLog:
    """Recent acks (id → wall time, latency) and the ack latency histogram.

    ``record`` is a relay ack listener (event-loop thread); the HTTP thread reads. A lock
    keeps the two consistent; ``on_record`` (set by the HTTP server) wakes its waiters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, tuple[float, float | None]] = OrderedDict()
        self.latency = Histogram()
        self.on_record: Callable[[], None] | None = None

    def record(self, event_id: str, latency_s: float | None) -> None:
        with self._lock:
            self._recent[event_id] = (time.time(), latency_s)
            if len(self._recent) > RECENT_ACKS:
                self._recent.popitem(last=False)
            if latency_s is not None:
                self.latency.observe(latency_s)
        wake = self.on_record
        if wake is not None:
            wake()

    def get(self, event_id: str) -> tuple[float, float | None] | None:
        """(acked at, latency) of a recently acknowledged event."""
        with self._lock:
            return self._recent.get(event_id)

    def histogram(self) -> dict[str, Any]:
        with self._lock:
            return self.latency.snapshot()


def versions() -> dict[str, str]:
    """alarmgw, Python and the libraries on the alarm path (for status)."""
    out = {"alarmgw": __version__, "python": platform.python_version()}
    for dist in VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def _age(now: float, then: float | None) -> float | None:
    return None if then is None else round(max(0.0, now - then), 3)


def _gpio(b: Any, raised: Mapping[tuple[str, str], int]) -> dict[str, Any]:
    started = bool(b.started)
    return {
        "ref": b.input_ref,
        "kind": "gpio",
        "name": b.name,
        "state": "ok" if started else "trouble",
        "pin": b.cfg.pin,
        "led_pin": b.cfg.led_pin,
        "started": started,
        "pressed": bool(b.is_pressed),
        "presses": b.presses,
        "bounces_ignored": b.bounces_ignored,
        "short_presses": b.short_presses,
        "led": b.feedback.mode if b.feedback is not None else None,
        "alarms": raised.get((b.input_ref, "alarm"), 0),
    }


def _serial(box: Any, raised: Mapping[tuple[str, str], int], now: float) -> dict[str, Any]:
    ref = f"serial:{box.name}"
    age = _age(now, box.last_valid_frame_at)
    state = "ok" if age is not None else "unknown"
    if not box.connected or box.stale:
        state = "trouble"
    return {
        "ref": ref,
        "kind": "serial",
        "name": box.name,
        "state": state,
        "port": box.port,
        "baud": box.baud,
        "connected": bool(box.connected),
        "stale": bool(box.stale),
        "box_id": box.box_id,
        "fw": box.box_fw,
        "frames_ok": box.frames_ok,
        "frame_errors": dict(box.frame_errors),
        "last_frame_age_s": age,
        "alarms": raised.get((ref, "alarm"), 0),
    }


def _uplink(up: Any, now: float) -> dict[str, Any]:
    s = up.settings
    return {
        "broker": f"{s.host}:{s.port}",
        "tls": s.tls,
        "protocol": s.protocol,
        "connected": up.connected,
        "reconnects": up.reconnects,
        "last_error": up.last_error,
        "loop_age_s": _age(now, up.loop_heartbeat or None),
    }


def collect(
    gw: Gateway, providers: Providers, acks: AckLog, vers: Mapping[str, str]
) -> dict[str, Any]:
    """The ``/status`` snapshot, minus ``queue.by_type`` (read from SQLite elsewhere).
    Runs on the event loop: it reads state only that thread may iterate."""
    now = time.monotonic()
    relay, up, cfg = gw.relay, gw.uplink, gw.cfg
    raised = dict(relay.raised_by)
    last = dict(relay.last_alarm) if relay.last_alarm else None
    if last is not None:
        acked = acks.get(last["id"])
        last["ack_ms"] = round(acked[1] * 1000, 1) if acked and acked[1] is not None else None
    status: dict[str, Any] = {
        "gateway": {
            "site": cfg.gateway.site,
            "id": cfg.gateway.id,
            "kid": gw.key.kid,
            "version": __version__,
            "versions": dict(vers),
            "pid": os.getpid(),
            "uptime_s": round(now - gw.started_mono, 1),
            "config": str(cfg.path),
            "state_dir": str(cfg.gateway.state_dir),
        },
        "health": {"ok": True, "problems": []},
        "inputs": [_gpio(b, raised) for b in gw.buttons]
        + [_serial(b, raised, now) for b in gw.boxes],
        "uplink": {**_uplink(up, now), "session": relay.session},
        "secondary": _uplink(gw.secondary, now) if gw.secondary is not None else None,
        "sent_by_path": dict(relay.sent_by_path),
        "loops": {
            name: {"restarts": n, "last_failure": gw.supervisor.last_failure.get(name)}
            for name, n in gw.supervisor.restarts.items()
        },
        "queue": {"memory_only": relay.memory_only_count()},
        "last_alarm": last,
        "counters": dict(relay.stats),
        "raised": [{"input": i, "type": t, "count": n} for (i, t), n in sorted(raised.items())],
        "ack_latency": acks.histogram(),
    }
    status.update(providers.collect())
    return status


def health_problems(gw: Gateway) -> list[str]:
    """Why the alarm path is not alive (empty: alive). Safe from any thread: it only reads
    single attributes and the file system, never iterates loop-owned containers."""
    problems: list[str] = []
    now = time.monotonic()
    running = gw.supervisor.running
    for name, tick in (("uplink", gw.uplink.loop_heartbeat), ("outbox-pump", gw.relay.pump_tick)):
        task = running.get(name)
        if task is None or task.done():
            problems.append(f"{name} loop is not running")
        elif tick and now - tick > STALL_S:
            problems.append(f"{name} loop stuck: no tick for {now - tick:.1f} s")
    second = gw.secondary
    if not gw.uplink.connected and not (second is not None and second.connected):
        s, err = gw.uplink.settings, gw.uplink.last_error
        problems.append(f"not connected to broker {s.host}:{s.port}" + (f": {err}" if err else ""))
    memory = gw.relay.memory_only_count()
    if memory:
        problems.append(f"{memory} event(s) held in memory: the outbox cannot be written")
    path = gw.outbox.path
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        problems.append(f"outbox not writable: {path}")
    else:
        st = os.statvfs(path.parent)
        free = st.f_bavail * st.f_frsize
        if free < MIN_FREE_BYTES:
            problems.append(f"disk nearly full: {free // 1024} KiB free in {path.parent}")
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


def queue_by_type(conn: sqlite3.Connection, now: float | None = None) -> dict[str, Any]:
    """Per type: pending, oldest_age_s, failed_attempts (most of any one event: the outbox
    counts failed publishes), last_error."""
    at = time.time() if now is None else now
    out: dict[str, Any] = {}
    rows = conn.execute(
        "SELECT type, COUNT(*), MIN(created), MAX(attempts) FROM outbox GROUP BY type"
    ).fetchall()
    for kind, n, oldest, attempts in rows:
        err = conn.execute(
            "SELECT last_error FROM outbox WHERE type = ? AND last_error IS NOT NULL "
            "ORDER BY created DESC LIMIT 1",
            (kind,),
        ).fetchone()
        out[kind] = {
            "pending": int(n),
            "oldest_age_s": round(max(0.0, at - float(oldest)), 1),
            "failed_attempts": int(attempts),
            "last_error": err[0] if err else None,
        }
    return out


def queue_summary(conn: sqlite3.Connection, now: float | None = None) -> dict[str, Any]:
    """``{"pending": total, "oldest_age_s": ..., "by_type": queue_by_type(...)}``."""
    by_type = queue_by_type(conn, now)
    ages = [row["oldest_age_s"] for row in by_type.values()]
    return {
        "pending": sum(row["pending"] for row in by_type.values()),
        "oldest_age_s": max(ages) if ages else None,
        "by_type": by_type,
    }


def integrity_check(conn: sqlite3.Connection) -> list[str]:
    """SQLite's own ``PRAGMA integrity_check``: ``["ok"]`` when the file is sound."""
    return [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
