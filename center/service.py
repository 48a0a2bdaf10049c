"""The reference command-center receiver (shared/spec/PROTOCOL.md, OPERATOR.md ``center``).

Subscribes to every gateway under the prefix, verifies each envelope against its registry
(which kids may sign for which gateway), applies the de-duplicate/anti-replay rules with its
state in SQLite (so they survive a restart), acknowledges accepted events with a signed
``ack``, prints one readable line per envelope (or one JSON object with ``--json``) and logs
every rejection with its reason. A garbage payload is a rejection, never a crash.

It also watches each registered gateway's liveness (center/liveness.py): heartbeats and
troubles are shown as they arrive, and a line says when a gateway goes ``stale`` (no heartbeat
within 2.5 x its ``heartbeat_s``), ``offline`` (its will or clean stop; a will from an older
session is ignored) or ``online`` again.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import structlog

from center.check import TOPIC_TYPES, Verdict, precheck, remote_init, remote_precheck
from center.liveness import GatewayStatus, Liveness
from center.state import WINDOW, CenterState
from gateway.contract.envelope import EVENT_TYPES, Envelope, build, parse_ts
from gateway.contract.signing import (
    SigningKey,
    VerifyKey,
    key_mode_problem,
    load_signing_key,
    load_verify_key,
)
from gateway.contract.topics import topic
from gateway.delivery.seq import SeqCounter
from gateway.delivery.uplink import MqttSettings, Uplink
from gateway.private_files import private_dir

log = structlog.get_logger("alarmgw.center")

ACK_IDS_MAX = 200  # ids per ack envelope (keeps an ack far below the envelope size limit)
INLINE_MAX = 2  # a burst this small, with none ahead of it, is checked without a thread hop
# Bursts at the checker at once: one being checked and one waiting, so it never idles; what
# arrives meanwhile waits here and goes as one bigger burst (fewer hand-offs, syncs, acks).
CHECKING_MAX = 2
BURST_MAX = 1024  # envelopes per burst at most


@dataclass(slots=True)
class Registry:
    """Which kids may sign for which gateway (site, gw)."""

    keys: dict[tuple[str, str], dict[str, VerifyKey]] = field(default_factory=dict)
    heartbeat_s: dict[tuple[str, str], float] = field(default_factory=dict)

    def add(self, site: str, gw: str, key: VerifyKey, heartbeat_s: float = 30.0) -> None:
        self.keys.setdefault((site, gw), {})[key.kid] = key
        self.heartbeat_s[(site, gw)] = heartbeat_s


Received = tuple[str, bytes, "Uplink | None", float]  # topic, payload, session, arrival time


class Center:
    """Verifies, de-duplicates, acknowledges and reports. Pure decisions in ``receive``;
    the MQTT session is attached with ``attach``."""

    def __init__(
        self,
        *,
        prefix: str,
        key: SigningKey,
        seq: SeqCounter,
        state: CenterState,
        registry: Registry,
        workers: str = "thread",
    ) -> None:
        """``workers``: where bursts are checked: ``thread`` (a thread of this process) or
        ``process`` (a process of its own, beside the GIL; ``alarmgw center`` uses that)."""
        self.prefix = prefix
        self._key = key
        self._seq = seq
        self.state = state
        self.registry = registry
        self._uplink: Uplink | None = None
        self.listeners: list[Callable[[Verdict], None]] = []
        # Received, not yet decided: (topic, payload, session, arrival time).
        self._incoming: list[Received] = []
        self._dispatching = False  # a _dispatch is scheduled on the loop
        # Bursts whose signatures a worker thread is checking, decided in arrival order.
        self._checking: deque[tuple[list[Received], asyncio.Future[list[Verdict | Envelope]]]]
        self._checking = deque()
        self._pool: Executor | None = None
        self._closed = False
        self.workers = workers
        self.liveness = Liveness(registry.heartbeat_s)
        self.status_listeners: list[Callable[[GatewayStatus], None]] = []
        self.burst_listeners: list[Callable[[], None]] = []  # after each burst's listeners

    def attach(self, uplink: Uplink) -> None:
        self._uplink = uplink

    @property
    def kid(self) -> str:
        return self._key.kid

    def subscriptions(self) -> list[str]:
        return [f"{self.prefix}/+/+/{kind}" for kind in TOPIC_TYPES]

    def on_message(self, name: str, payload: bytes, via: Uplink | None = None) -> None:
        """One payload from the broker session ``via`` (default: the primary).

        Everything received in one loop turn is a burst, and so is everything received
        while the checker already holds ``CHECKING_MAX`` bursts (up to ``BURST_MAX``). A
        burst's signatures are checked by the worker while the loop goes on reading, unless
        it is a lone envelope with nothing ahead of it: that one is checked at once, without
        a hop. Bursts are decided in the order they arrived, each in one transaction (group
        commit); after its single sync the center acknowledges them, one ``ack`` per gateway
        naming all their ids, on the session each came in on."""
        self._incoming.append((name, payload, via or self._uplink, time.time()))
        self._want_dispatch()

    def _want_dispatch(self) -> None:
        if self._incoming and not self._dispatching and len(self._checking) < CHECKING_MAX:
            self._dispatching = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatching = False
        if self._closed:
            self._incoming.clear()
            return  # stopping: not acknowledged, the gateways send it again
        if len(self._checking) >= CHECKING_MAX:
            return  # _checked dispatches when the checker has room
        burst = self._incoming[:BURST_MAX]
        del self._incoming[:BURST_MAX]
        self._dispatch_burst(burst)
        self._want_dispatch()

    def _dispatch_burst(self, burst: list[Received]) -> None:
        if len(burst) <= INLINE_MAX and not self._checking:
            self._decide(burst, self._precheck_all(burst))
            return
        try:
            fut = self._submit(burst)
        except (BrokenExecutor, RuntimeError) as err:  # the worker died, or was shut down
            log.error("burst checker unavailable; checking here", error=repr(err))
            self._drop_pool()
            if self._checking:  # keep the order: after what is still being checked
                done: asyncio.Future[list[Verdict | Envelope]]
                done = asyncio.get_running_loop().create_future()
                done.set_result(self._precheck_all(burst))
                self._checking.append((burst, done))
                return
            self._decide(burst, self._precheck_all(burst))
            return
        self._checking.append((burst, fut))
        fut.add_done_callback(self._checked)

    def start_checker(self) -> None:
        """Start the checker now, not with the first burst: a checker process takes a few
        hundred milliseconds to start (a fresh interpreter), which the first alarms after
        a center start should not wait for."""
        pool = self._checker()
        if isinstance(pool, ProcessPoolExecutor):
            pool.submit(remote_precheck, [])  # spawns it; should it fail, bursts notice

    def _checker(self) -> Executor:
        if self._pool is None:
            if self.workers == "process":
                raw = {
                    sg: [k.public_raw for k in ks.values()] for sg, ks in self.registry.keys.items()
                }
                self._pool = ProcessPoolExecutor(
                    1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=remote_init,
                    initargs=(self.prefix, raw, os.getpid()),
                )
            else:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="center-verify")
        return self._pool

    def _submit(self, burst: list[Received]) -> asyncio.Future[list[Verdict | Envelope]]:
        loop = asyncio.get_running_loop()
        pool = self._checker()
        if isinstance(pool, ProcessPoolExecutor):
            pairs = [(name, payload) for name, payload, _, _ in burst]
            return loop.run_in_executor(pool, remote_precheck, pairs)
        return loop.run_in_executor(pool, self._precheck_all, burst)

    def _precheck_all(self, burst: list[Received]) -> list[Verdict | Envelope]:
        return [self._precheck(name, payload) for name, payload, _, _ in burst]

    def _checked(self, _fut: asyncio.Future[list[Verdict | Envelope]]) -> None:
        if self._closed:
            self._checking.clear()
            return
        while self._checking and self._checking[0][1].done():
            burst, fut = self._checking.popleft()
            if fut.cancelled():
                continue  # the center is stopping: not acked, the gateways re-send
            if (err := fut.exception()) is not None:
                # The checker died (killed, out of memory): check the burst here, so no
                # alarm waits for a re-send; a new checker starts with the next burst.
                log.error("burst checker failed; checking here", count=len(burst), error=repr(err))
                self._drop_pool()
                self._decide(burst, self._precheck_all(burst))
                continue
            self._decide(burst, fut.result())
        self._want_dispatch()

    def close(self) -> None:
        """Stop the checker at once (bursts still being checked are dropped, not acked:
        the gateways re-send them to whoever runs next)."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            workers = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in workers:  # a process pool only; no need to wait for its turn
                proc.terminate()

    def _drop_pool(self) -> None:
        """Let a broken checker go (what it still holds fails and is checked here); the
        next burst starts a new one."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def _decide(self, burst: list[Received], checked: list[Verdict | Envelope]) -> None:
        batch: list[tuple[Verdict, Uplink | None]] = []
        try:
            self.state.begin_batch()
            for (name, _, via, received), pre in zip(burst, checked, strict=True):
                batch.append((self._judge(name, pre, received), via))
            self.state.commit_batch()
        except sqlite3.Error as err:
            # Nothing of the burst is kept or acknowledged: the gateways send it again.
            self.state.abort_batch()
            log.error("cannot record a burst; not acknowledged", count=len(burst), error=str(err))
            return
        acks: dict[tuple[str, str, int], tuple[Uplink | None, list[str]]] = {}
        for verdict, via in batch:
            env = verdict.env
            if verdict.result != "rejected" and env is not None and env.type in EVENT_TYPES:
                acks.setdefault((env.site, env.gw, id(via)), (via, []))[1].append(env.id)
        for (site, gw, _), (via, ids) in acks.items():
            for start in range(0, len(ids), ACK_IDS_MAX):
                self._ack(site, gw, ids[start : start + ACK_IDS_MAX], via)
        for verdict, _via in batch:
            if verdict.result == "rejected":
                log.warning(
                    "rejected envelope",
                    topic=verdict.topic,
                    reason=verdict.reason,
                    detail=verdict.detail,
                )
            for listener in self.listeners:
                listener(verdict)
            change = self.observe(verdict)
            if change is not None:
                self._status_changed(change)
        for after in self.burst_listeners:
            after()

    def observe(self, v: Verdict) -> GatewayStatus | None:
        """Feed an accepted heartbeat or state to the liveness view; the change, if any."""
        env = v.env
        if v.result != "accepted" or env is None:
            return None  # a duplicate is an old envelope again: no sign of life now
        if env.type == "heartbeat":
            session = int(env.body["session"])
            current = session >= self.state.session(env.site, env.gw)
            return self.liveness.heartbeat(env.site, env.gw, session, current=current)
        if env.type == "state" and not v.stale:
            status, session = str(env.body["status"]), int(env.body["session"])
            return self.liveness.state(env.site, env.gw, status, session)
        return None

    def check_stale(self) -> list[GatewayStatus]:
        """Mark gateways without a heartbeat for 2.5 x their interval stale; the changes."""
        changes = self.liveness.check()
        for change in changes:
            self._status_changed(change)
        return changes

    def _status_changed(self, change: GatewayStatus) -> None:
        log_fn = log.info if change.status == "online" else log.warning
        log_fn("gateway " + change.status, site=change.site, gw=change.gw, reason=change.reason)
        for listener in self.status_listeners:
            listener(change)

    async def watch(self) -> None:
        """``check_stale`` a few times per heartbeat interval, for ever."""
        while True:
            await asyncio.sleep(self.liveness.period())
            self.check_stale()

    def receive(self, name: str, payload: bytes) -> Verdict:
        """Decide about one payload received on topic ``name``; never raises."""
        received = time.time()
        return self._judge(name, self._precheck(name, payload), received)

    def _precheck(self, name: str, payload: bytes) -> Verdict | Envelope:
        return precheck(self.prefix, self.registry.keys, name, payload)

    def _judge(self, name: str, pre: Verdict | Envelope, received: float) -> Verdict:
        """The stateful half, on the loop thread: anti-replay, de-duplication, acceptance."""
        if isinstance(pre, Verdict):
            return pre
        env = pre
        site, gw = env.site, env.gw
        latency = round((received - parse_ts(env.ts).timestamp()) * 1000, 1)
        earlier, id_seen = self.state.lookup(env.kid, env.seq, env.id)
        if earlier is not None:
            if earlier == env.id:
                return Verdict("duplicate", name, env=env, latency_ms=latency)
            return Verdict(
                "rejected",
                name,
                "replayed-seq",
                f"seq {env.seq} of kid {env.kid} was accepted with another id",
                env,
            )
        if env.seq <= self.state.high(env.kid) - WINDOW:
            return Verdict("rejected", name, "seq-below-window", f"seq {env.seq} is too old", env)
        if id_seen:
            # The same event re-signed under a new seq (a gateway keeps its backlog inside the
            # window that way; PROTOCOL.md: the id is the dedupe key): acked, not dispatched.
            return Verdict("duplicate", name, env=env, latency_ms=latency)
        verified_at = time.perf_counter()
        self.state.accept(env)
        stale = False
        if env.type == "state":
            # PROTOCOL.md: a state with a lower session than the latest seen is stale (a late
            # will must not mark a live gateway offline).
            session = int(env.body["session"])
            stale = session < self.state.session(site, gw)
            if not stale:
                self.state.set_state(site, gw, session, str(env.body["status"]))
        return Verdict(
            "accepted", name, env=env, latency_ms=latency, stale=stale, verified_at=verified_at
        )

    def _ack(self, site: str, gw: str, ids: list[str], via: Uplink | None) -> None:
        if via is None or not via.connected:
            return  # the gateway re-sends; we will ack the duplicate then
        ack = build(
            type="ack",
            site=site,
            gw=gw,
            seq=self._seq.next(),
            body={"ids": ids},
            key=self._key,
        )
        fut = via.publish(topic(self.prefix, site, gw, "ack"), ack.to_bytes())
        fut.add_done_callback(_ignore_failure)


def _ignore_failure(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("ack not delivered to the broker", error=str(fut.exception()))


# -- presentation ----------------------------------------------------------------------


def human_line(v: Verdict) -> str:
    """One line a dispatcher can read."""
    env = v.env
    when = time.strftime("%H:%M:%S")
    if v.result == "rejected":
        who = f"{env.site}/{env.gw} seq {env.seq}" if env else v.topic
        return f"{when}  REJECTED   {who}: {v.reason}" + (f" ({v.detail})" if v.detail else "")
    assert env is not None
    who = f"{env.site}/{env.gw}"
    lat = f"{v.latency_ms:.0f} ms" if v.latency_ms is not None else "?"
    if v.result == "duplicate":
        return f"{when}  duplicate  {who} {env.type} {env.id} (re-acked, not dispatched again)"
    body = env.body
    if env.type in ("alarm", "test"):
        loc = body["location"]
        label = "TEST (not dispatched)" if env.type == "test" else "ALARM"
        return (
            f"{when}  {label:<9} {who}  {body['kind']} ({body['code']}) at {loc['name']}, "
            f"{loc['address']}  input {body['input']}  phone {body['contact']['phone']}  "
            f"[verified {env.kid}, seq {env.seq}, {lat}]"
        )
    if env.type in ("trouble", "restore"):
        count = f" ({body['count']} changes)" if "count" in body else ""
        return (
            f"{when}  {env.type.upper():<9} {who}  {body['code']} {body['device']}: "
            f"{body['detail']}{count}  [{lat}]"
        )
    if env.type == "heartbeat":
        return f"{when}  heartbeat {who}  {heartbeat_summary(body)}"
    if env.type == "state":
        stale = "  (stale session, ignored)" if v.stale else ""
        return f"{when}  {body['status']:<9} {who}  session {body['session']}{stale}"
    return f"{when}  {env.type:<9} {who}  seq {env.seq}"


def heartbeat_summary(body: Mapping[str, Any]) -> str:
    """A heartbeat body in one line."""
    queue, inputs = body.get("queue", {}), body.get("inputs", {})
    parts = [
        f"session {body.get('session')}",
        f"up {body.get('uptime_s')} s",
        f"queue {queue.get('pending')} (oldest {queue.get('oldest_s')} s)",
        "inputs " + (", ".join(f"{k} {v}" for k, v in sorted(inputs.items())) or "none"),
    ]
    if "bollard" in body:
        parts.append(f"bollard {body['bollard'].get('state')}")
    if "camera" in body:
        cam = body["camera"]
        days = cam.get("retention_days", "?")
        parts.append(
            f"camera {'ok' if cam.get('ok') else 'NOT ok'} "
            f"({'recording' if cam.get('recording') else 'not recording'}, {days} days)"
        )
    clock = body.get("clock", {}).get("synced")
    parts.append("clock synced" if clock else "clock NOT synced")
    free = body.get("disk", {}).get("free_bytes")
    if isinstance(free, int):
        parts.append(f"disk {free // 2**20} MB free")
    return ", ".join(parts)


def _open_center(config_path: str) -> tuple[Center, SeqCounter, Any]:
    """Load the config, keys and state (blocking file I/O, before the loop matters)."""
    from center.config import load_center_config  # noqa: PLC0415 - keeps import light for tests

    cfg = load_center_config(config_path)
    key = load_signing_key(cfg.center.key_file)
    problem = key_mode_problem(Path(cfg.center.key_file))
    if problem:
        log.warning("key file permissions", problem=problem)
    registry = Registry()
    for entry in cfg.gateways:
        for pub in entry.public_keys:
            registry.add(entry.site, entry.id, load_verify_key(pub), entry.heartbeat_s)
    state_dir = Path(cfg.center.state_dir)
    private_dir(state_dir, "state_dir")
    seq = SeqCounter(state_dir / "seq.json")
    center = Center(
        prefix=cfg.mqtt.prefix,
        key=key,
        seq=seq,
        state=CenterState(state_dir / "center.sqlite"),
        registry=registry,
        workers="process",
    )
    return center, seq, cfg


def console(center: Center, out: TextIO, *, as_json: bool) -> None:
    """Print each verdict and status change on ``out``, in order, one write per burst: the
    lines are joined here, so that holds whatever ``out``'s own buffering is (with
    PYTHONUNBUFFERED, as under many service managers, every line was a system call)."""
    lines: list[str] = []

    def show(v: Verdict) -> None:
        lines.append((json.dumps(v.to_json()) if as_json else human_line(v)) + "\n")

    def write_out() -> None:
        if lines:
            out.write("".join(lines))
            lines.clear()
        out.flush()

    def show_status(change: GatewayStatus) -> None:
        # At once (a stale gateway is noticed by a timer, outside any burst), after the
        # lines of the burst so far.
        lines.append((json.dumps(change.to_json()) if as_json else change.human()) + "\n")
        write_out()

    center.listeners.append(show)
    center.burst_listeners.append(write_out)
    center.status_listeners.append(show_status)


async def run_center(config_path: str, *, as_json: bool, out: TextIO = sys.stdout) -> None:
    """``alarmgw center --config FILE``: run until cancelled."""
    center, seq, cfg = _open_center(config_path)
    console(center, out, as_json=as_json)
    settings = MqttSettings.from_config(cfg.mqtt, client_id=f"alarmgw-center-{center.kid}")
    uplink = Uplink(settings, subscriptions=center.subscriptions(), on_message=center.on_message)
    center.attach(uplink)
    center.start_checker()
    jobs = [uplink.run()]
    if cfg.mqtt_secondary is not None:  # issue 5: listen (and ack) on the second path too
        second = Uplink(
            MqttSettings.from_config(cfg.mqtt_secondary, client_id=settings.client_id),
            subscriptions=center.subscriptions(),
            on_message=lambda name, payload: center.on_message(name, payload, via=second),
        )
        jobs.append(second.run())
    log.info("center starting", kid=center.kid, gateways=len(cfg.gateways))
    watcher = asyncio.create_task(center.watch(), name="liveness")
    try:
        await asyncio.gather(*jobs)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        center.close()
        seq.close()
        center.state.close()
