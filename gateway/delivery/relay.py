"""The alarm path: raise → sign → commit → publish → center ack → presser feedback.

``Relay`` is the ``AlarmSink`` the inputs call (gateway/feedback.py). It owns the order of
shared/spec/PROTOCOL.md "Delivery semantics": an alarm is signed and committed to the outbox
before the presser hears "registered" (LED ``blink``); it is published and re-published with
backoff (same bytes: same id, seq, sig) until a center ack signed by a trusted kid names its
id; then it is forgotten and the LED goes ``solid``. No ack within ``ack_timeout_s`` turns
the LED ``fast``; re-sending goes on regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway import __version__, logs
from gateway.contract.envelope import Envelope, build, format_ts, parse_and_verify, resign
from gateway.contract.signing import SigningKey, VerifyKey
from gateway.contract.topics import topic
from gateway.delivery.outbox import PRIORITY, Outbox, Pending
from gateway.delivery.resend import ResendTimer
from gateway.delivery.seq import SeqCounter
from gateway.delivery.uplink import NotConnected, PublishRefused, Session, Uplink
from gateway.errors import EnvelopeError, OutboxError
from gateway.feedback import Feedback, Raised

log = structlog.get_logger("alarmgw.relay")

MAX_INFLIGHT = 20  # Mosquitto's default receive maximum (FIELD-NOTES)
# Events sent and waiting for the center's ack before the pump stops taking new ones from
# the backlog: keeps memory bounded while a center does not answer (1,000,000 queued), and
# keeps a batching center busy: the reference center checks up to two bursts of 1,024 while
# the next one forms, and at 2,000 the drain stalled on every ack (~15 % slower,
# bench/drain.py). The re-send timer follows how long acks take (gateway/delivery/resend.py), so a
# center that is merely slow is not sent the whole window twice.
MAX_UNACKED = 6_000
SEQ_WINDOW = 65_536  # PROTOCOL.md: the center's anti-replay window per signer
SEQ_MARGIN = 4_096  # re-sign this far before an event would leave that window


def _send_order(p: Pending) -> tuple[int, float, int]:
    """The outbox's send order: alarms, then tests, then the rest; oldest first."""
    return (PRIORITY[p.type], p.created, p.seq)


def _gateway_trouble(detail: str) -> dict[str, str]:
    """A ``330`` (peripheral trouble) body for the gateway itself."""
    return {"code": "330", "device": "gateway", "detail": detail[:120]}


@dataclass(slots=True)
class _Tracked:
    """In-memory bookkeeping for one queued event during this run."""

    registered_at: float  # loop time when committed (or recovered at start)
    attempts: int = 0
    next_due: float = 0.0
    first_sent_at: float | None = None
    path: str = ""  # which broker path carried the last attempt: primary or secondary
    input: str = ""  # the input that raised it (alarms and tests), for the summary line
    feedback: list[Feedback] = field(default_factory=list)
    overdue: asyncio.TimerHandle | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    site: str
    gw: str
    prefix: str


class Relay:
    """Implements ``AlarmSink`` and drives the outbox over an ``Uplink``."""

    def __init__(
        self,
        *,
        ident: Identity,
        key: SigningKey,
        seq: SeqCounter,
        outbox: Outbox,
        center_keys: Mapping[str, VerifyKey],
        location: Mapping[str, Any],
        contact: Mapping[str, Any],
        ack_timeout_s: float = 15.0,
        resend_initial_s: float = 2.0,
        resend_max_s: float = 60.0,
    ) -> None:
        self.ident = ident
        self._key = key
        self._seq = seq
        self.outbox = outbox
        self._center_keys = dict(center_keys)
        self._location = dict(location)
        self._contact = dict(contact)
        self._ack_timeout_s = ack_timeout_s
        self._resend = ResendTimer(resend_initial_s, resend_max_s)
        self._uplink: Uplink | None = None
        self._secondary: Uplink | None = None
        self._failover_after_s = 30.0
        self._primary_down_since: float | None = None  # loop time; None while it is up
        self._disk_trouble: str | None = None  # the open "outbox not writable" trouble
        self._memory_dedupe: dict[str, str] = {}  # dedupe keys of memory-only alarms
        # Scheduling (issue 5 "drain"): re-sends come from a heap of (due, id); first sends
        # walk the outbox in send order from a cursor, so a 100,000-event backlog costs
        # O(log n) per publish, not a scan.
        self._retry: list[tuple[float, str]] = []
        self._cursor: tuple[int, float, int] | None = None
        self._next_housekeeping = 0.0
        self._tracked: dict[str, _Tracked] = {}
        self._inflight: dict[str, asyncio.Future[int]] = {}
        # Envelopes that could not be committed (disk full, I/O error): still sent live.
        self._memory: dict[str, Pending] = {}
        self._wake = asyncio.Event()
        self._will: tuple[str, bytes] | None = None
        self.session = 0
        self.pump_tick = 0.0  # loop time of the pump's last round (watched for stalls)
        self.sent_by_path: Counter[str] = Counter()  # publish attempts per broker path
        self.stats: dict[str, int] = {
            "alarms_raised": 0,
            "events_sent": 0,
            "events_acked": 0,
            "publish_refused": 0,
            "acks_rejected": 0,
        }
        self.last_alarm: dict[str, Any] | None = None
        # (input_ref, type) -> alarms/tests raised (repeats excluded): presses per input.
        self.raised_by: Counter[tuple[str, str]] = Counter()
        # Told (event id, seconds from commit to ack or None) on the loop thread after each
        # ack, for status and metrics (gateway/technician/health.py). A listener must not block.
        self.ack_listeners: list[Callable[[str, float | None], None]] = []

    def attach(
        self, uplink: Uplink, secondary: Uplink | None = None, *, failover_after_s: float = 30.0
    ) -> None:
        """The primary broker path and, optionally, a second one (issue 5 "Second broker
        path"): while the primary is down, alarms and tests go out on the secondary at once,
        other events once the primary has been down ``failover_after_s``."""
        self._uplink = uplink
        self._secondary = secondary
        self._failover_after_s = failover_after_s

    def route(self, kind: str) -> Uplink | None:
        """The session an envelope of ``kind`` would take now (None: it would wait)."""
        path = self._path(kind, asyncio.get_running_loop().time())
        return None if path is None else path[1]

    def _path(self, kind: str, now: float) -> tuple[str, Uplink] | None:
        """Which session carries an envelope of ``kind`` right now (None: hold it)."""
        if self._uplink is not None and self._uplink.connected:
            return "primary", self._uplink
        if self._primary_down_since is None:  # it never came up: down since we first asked
            self._primary_down_since = now
        second = self._secondary
        if second is None or not second.connected:
            return None
        down_for = now - self._primary_down_since
        if PRIORITY.get(kind, 9) <= 1 or down_for >= self._failover_after_s:
            return "secondary", second
        return None

    def _topic(self, kind: str) -> str:
        return topic(self.ident.prefix, self.ident.site, self.ident.gw, kind)  # type: ignore[arg-type]

    def _build(self, kind: str, body: Mapping[str, Any], ts: str | None = None) -> Envelope:
        return build(
            type=kind,
            site=self.ident.site,
            gw=self.ident.gw,
            seq=self._seq.next(),
            body=body,
            key=self._key,
            ts=ts,
        )

    # -- AlarmSink ------------------------------------------------------------------

    def raise_alarm(
        self,
        *,
        input_ref: str,
        feedback: Feedback | None,
        code: str = "120",
        kind: str = "panic",
        test: bool = False,
        dedupe_key: str | None = None,
        dedupe_window_s: float = 30.0,
    ) -> Raised:
        if dedupe_key is not None:
            earlier = self._memory_dedupe.get(dedupe_key) or self.outbox.dedupe_lookup(
                dedupe_key, window_s=dedupe_window_s
            )
            if earlier is not None:
                self._feedback_for_repeat(earlier, feedback)
                return Raised(earlier, False)
        location = {**self._location}
        body = {
            "code": code,
            "kind": kind,
            "input": input_ref,
            "test": test,
            "location": location,
            "contact": self._contact,
        }
        env = self._build("test" if test else "alarm", body)
        payload = self._commit(env, dedupe_key)
        if dedupe_key is not None and env.id in self._memory:
            # Not on disk: remember the press here so the box's re-sends stay one alarm.
            self._memory_dedupe[dedupe_key] = env.id
        self.stats["alarms_raised"] += 1
        self.raised_by[(input_ref, env.type)] += 1
        self.last_alarm = {
            "id": env.id,
            "type": env.type,
            "input": input_ref,
            "ts": env.ts,
            "acked_at": None,
        }
        tracked = self._tracked[env.id]
        tracked.input = input_ref
        # Straight onto the wire when we can (alarms go first anyway): no wait for the pump.
        loop = asyncio.get_running_loop()
        if len(self._inflight) < MAX_INFLIGHT and self._path(env.type, loop.time()):
            self._send(Pending(env.id, env.type, env.seq, payload, time.time(), 0, None))
        if feedback is not None:
            tracked.feedback.append(feedback)
            if env.id not in self._memory:  # "blink" means durable: not for a memory-only alarm
                # Next loop turn: after the caller's own reply (a box's ACK goes out first, so
                # "registered" is never shown to a box that was not told), and off the path to
                # the wire (a gpiozero blink starts a thread).
                loop.call_soon(feedback.led, "blink")
        tracked.overdue = loop.call_later(self._ack_timeout_s, self._ack_overdue, env.id)
        log.info("alarm registered", id=env.id, seq=env.seq, input=input_ref, test=test)
        return Raised(env.id, True)

    def forget_dedupe(self, prefix: str) -> None:
        for key in [k for k in self._memory_dedupe if k.startswith(prefix)]:
            del self._memory_dedupe[key]
        self.outbox.forget_dedupe(prefix)

    def raise_event(self, kind: str, body: Mapping[str, Any], ts: str | None = None) -> str:
        """Queue a durable ``trouble``/``restore`` (or ``test``) envelope; returns its id."""
        if PRIORITY.get(kind) is None:
            raise ValueError(f"{kind} is not a queued event type")
        env = self._build(kind, body, ts)
        self._commit(env, None)
        return env.id

    def _commit(self, env: Envelope, dedupe_key: str | None) -> bytes:
        """Commit ``env`` durably (or, failing that, keep it in memory); returns the payload."""
        loop = asyncio.get_running_loop()
        payload = env.to_bytes()
        created = time.time()
        key = (PRIORITY[env.type], created, env.seq)
        if self._cursor is not None and key <= self._cursor:
            self._cursor = None  # it sorts before where the pump has got to: look again
        try:
            self.outbox.add(env, payload=payload, dedupe_key=dedupe_key, now=created)
        except OutboxError as err:
            # Never lose it: keep it in memory and send it live; say so loudly (issue 5
            # "Disk full"); the pump commits it once the disk takes writes again.
            log.critical("event NOT durable, sending from memory", id=env.id, error=str(err))
            self._memory[env.id] = Pending(env.id, env.type, env.seq, payload, created, 0, str(err))
            self._tracked[env.id] = _Tracked(registered_at=loop.time())
            if self._disk_trouble is None:
                self._disk_trouble = str(err)
                self.raise_event("trouble", _gateway_trouble(f"outbox not writable: {err}"))
        else:
            self._tracked[env.id] = _Tracked(registered_at=loop.time())
        self._wake.set()
        return payload

    def _feedback_for_repeat(self, event_id: str, feedback: Feedback | None) -> None:
        tracked = self._tracked.get(event_id)
        queued = tracked is not None or self.outbox.get(event_id) is not None
        if feedback is None:
            return
        if not queued:
            feedback.led("solid")  # the center acknowledged it already
            return
        if tracked is None:  # queued before a restart: track it again
            tracked = self._tracked.setdefault(
                event_id, _Tracked(registered_at=asyncio.get_running_loop().time())
            )
        if feedback not in tracked.feedback:
            tracked.feedback.append(feedback)
        asyncio.get_running_loop().call_soon(feedback.led, "blink")

    def _ack_overdue(self, event_id: str) -> None:
        tracked = self._tracked.get(event_id)
        if tracked is None:
            return
        tracked.overdue = None
        log.warning(
            "no ack from the center yet; still re-sending",
            id=event_id,
            waited_s=self._ack_timeout_s,
            attempts=tracked.attempts,
        )
        for fb in tracked.feedback:
            fb.led("fast")

    # -- MQTT session -----------------------------------------------------------------

    def prepare_session(self) -> Session:
        """Before each connect: bump the persisted session, sign birth and will."""
        self.session = self.outbox.incr("session")
        state = {"session": self.session, "version": __version__}
        birth = self._build("state", {"status": "online", **state})
        will = self._build("state", {"status": "offline", **state})
        self._seq.mark_sent(will.seq)  # both leave with the connection (the will any time)
        self._will = (self._topic("state"), will.to_bytes())
        return Session(
            will_topic=self._will[0],
            will_payload=self._will[1],
            birth_topic=self._topic("state"),
            birth_payload=birth.to_bytes(),
        )

    @property
    def will(self) -> tuple[str, bytes] | None:
        """The signed ``offline`` state of the current session (published on clean stop)."""
        return self._will

    def on_link(self, up: bool, path: str = "primary") -> None:
        now = asyncio.get_running_loop().time()
        if path == "primary":
            self._primary_down_since = None if up else (self._primary_down_since or now)
        if up:
            # A new session: whatever waited for a center ack is worth sending again now.
            for event_id, tracked in self._tracked.items():
                if tracked.attempts:
                    self._schedule(event_id, tracked, 0.0)
        self._wake.set()

    def on_message(self, name: str, payload: bytes) -> None:
        if name != self._topic("ack"):
            return
        try:
            env = parse_and_verify(payload, self._center_keys)
        except EnvelopeError as err:
            # PROTOCOL.md: the gateway ignores an ack it cannot verify.
            self._ignore_ack(err.reason, err.detail)
            return
        if env.type != "ack" or (env.site, env.gw) != (self.ident.site, self.ident.gw):
            self._ignore_ack("wrong-target", f"{env.type} for {env.site}/{env.gw}")
            return
        self._acked(list(env.body["ids"]))

    def _ignore_ack(self, reason: str, detail: str) -> None:
        self.stats["acks_rejected"] += 1
        log.warning("ignored ack", reason=reason, detail=detail)

    def _acked(self, ids: list[str]) -> None:
        removed = set(self.outbox.remove(ids))
        loop_now = asyncio.get_running_loop().time()
        for event_id in ids:
            in_memory = self._memory.pop(event_id, None) is not None
            tracked = self._tracked.pop(event_id, None)
            if not (event_id in removed or in_memory or tracked):
                continue  # an ack for something long forgotten (a duplicate ack)
            self.stats["events_acked"] += 1
            if tracked is not None:
                if tracked.attempts == 1 and tracked.first_sent_at is not None:
                    self._resend.sample(loop_now - tracked.first_sent_at)  # Karn's rule
                if tracked.overdue is not None:
                    tracked.overdue.cancel()
                for fb in tracked.feedback:
                    fb.led("solid")
            if tracked is not None and logs.enabled(logging.INFO):
                # The alarm's one summary line (DESIGN.md "canonical log lines"): loop times
                # shown as wall-clock times; latency from durable to acknowledged.
                wall = time.time() - loop_now
                sent = tracked.first_sent_at
                log.info(
                    "acknowledged by the center",
                    id=event_id,
                    input=tracked.input or None,
                    attempts=tracked.attempts,
                    durable_at=format_ts(tracked.registered_at + wall),
                    sent_at=None if sent is None else format_ts(sent + wall),
                    acked_at=format_ts(loop_now + wall),
                    latency_ms=round((loop_now - tracked.registered_at) * 1000, 1),
                )
            if self.last_alarm and self.last_alarm["id"] == event_id:
                self.last_alarm["acked_at"] = time.time()
            latency = None if tracked is None else loop_now - tracked.registered_at
            for listener in self.ack_listeners:
                try:
                    listener(event_id, latency)
                except Exception:  # status bookkeeping must never break the ack path
                    log.exception("ack listener failed", id=event_id)
        self._wake.set()

    # -- the pump -------------------------------------------------------------------

    def _schedule(self, event_id: str, tracked: _Tracked, due: float) -> None:
        tracked.next_due = due
        heapq.heappush(self._retry, (due, event_id))

    def _due(self, now: float, free: int) -> list[Pending]:
        """Up to ``free`` envelopes to send now, alarms first, then oldest first: events held
        in memory, re-sends whose backoff ran out, then never-sent rows after the cursor
        (while fewer than ``MAX_UNACKED`` wait for the center)."""
        out: list[Pending] = []
        for p in sorted(self._memory.values(), key=_send_order):
            t = self._tracked.get(p.id)
            if p.id not in self._inflight and (t is None or t.next_due <= now):
                out.append(p)
        while self._retry and self._retry[0][0] <= now and len(out) < free:
            due, event_id = heapq.heappop(self._retry)
            t = self._tracked.get(event_id)
            if t is None or t.next_due != due or event_id in self._inflight:
                continue  # stale heap entry
            if event_id in self._memory:
                continue
            row = self.outbox.get(event_id)
            if row is None:  # acknowledged meanwhile, or evicted
                self._tracked.pop(event_id, None)
                continue
            out.append(row)
        room = free - len(out)
        if room > 0 and len(self._tracked) < MAX_UNACKED:
            for row in self.outbox.after(self._cursor, room):
                self._cursor = _send_order(row)
                t = self._tracked.get(row.id)
                if row.id in self._inflight or (t is not None and t.attempts):
                    continue  # sent this run already: the heap has it
                out.append(row)
        out.sort(key=_send_order)
        return out

    async def pump(self) -> None:
        """Publish what is due whenever a path is up; returns only when cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            now = self.pump_tick = loop.time()
            self._wake.clear()
            if now >= self._next_housekeeping:
                self._next_housekeeping = now + 2.0
                self._housekeeping()
            free = MAX_INFLIGHT - len(self._inflight)
            if free > 0 and self._path("alarm", now) is not None:
                for p in self._resign_aging(self._due(now, free)):
                    if not self._send(p, flush=False):
                        # No path for this type yet (secondary, before failover): look at
                        # the backlog again from the start next time.
                        self._cursor = None
                        tracked = self._tracked.get(p.id)
                        if tracked is not None and tracked.attempts:
                            self._schedule(p.id, tracked, now + 1.0)
            timeout = 1.0  # at least once a second: the supervisor watches this tick
            if self._retry:
                timeout = min(timeout, max(0.0, self._retry[0][0] - now))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # races with the event (the task then never stops).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _send(self, p: Pending, *, flush: bool = True) -> bool:
        """Publish ``p`` on the path its type may take now; False when there is none."""
        loop = asyncio.get_running_loop()
        route = self._path(p.type, loop.time())
        if route is None:
            return False
        path, uplink = route
        tracked = self._tracked.setdefault(p.id, _Tracked(registered_at=loop.time()))
        tracked.attempts += 1
        tracked.path = path
        if tracked.first_sent_at is None:
            tracked.first_sent_at = loop.time()
        self._seq.mark_sent(p.seq)
        fut = uplink.publish(self._topic("event"), p.payload, flush=flush)
        self._inflight[p.id] = fut
        self.stats["events_sent"] += 1
        self.sent_by_path[path] += 1
        if self.last_alarm is not None and self.last_alarm["id"] == p.id:
            self.last_alarm["path"] = path
        fut.add_done_callback(functools.partial(self._sent, p.id))
        return True

    def _sent(self, event_id: str, fut: asyncio.Future[int]) -> None:
        self._inflight.pop(event_id, None)
        tracked = self._tracked.get(event_id)
        self._wake.set()
        if tracked is None:
            return  # acked while the publish was in flight
        now = asyncio.get_running_loop().time()
        err = fut.exception()
        if err is None:
            # PUBACK only ends this attempt; the center's ack ends the event (PROTOCOL.md).
            self._schedule(event_id, tracked, now + self._resend.backoff(tracked.attempts))
            return
        if isinstance(err, NotConnected):
            self._schedule(event_id, tracked, 0.0)  # re-send as soon as a session is back
            return
        if isinstance(err, PublishRefused):
            self.stats["publish_refused"] += 1
        self._schedule(event_id, tracked, now + self._resend.backoff(tracked.attempts))
        try:
            self.outbox.note_attempt(event_id, str(err))
        except OutboxError as db_err:
            log.error("cannot record publish error", id=event_id, error=str(db_err))

    # -- housekeeping (every ~2 s, from the pump) ------------------------------------

    def _housekeeping(self) -> None:
        self._persist_memory()
        if len(self._retry) > 4 * len(self._tracked) + 1024:  # mostly acked (stale) entries
            self._retry = [(t.next_due, i) for i, t in self._tracked.items() if t.attempts]
            heapq.heapify(self._retry)

    def _persist_memory(self) -> None:
        """Commit events held in memory once the disk takes writes again."""
        for p in sorted(self._memory.values(), key=lambda p: (PRIORITY[p.type], p.created)):
            try:
                self.outbox.add_raw(p)
            except OutboxError:
                return  # still refused: try again next round
            self._memory.pop(p.id, None)
        if self._disk_trouble is not None and not self._memory:
            log.warning("outbox writable again; events held in memory are now on disk")
            self._disk_trouble = None
            self.raise_event("restore", _gateway_trouble("outbox writable again"))

    def _resign_aging(self, batch: list[Pending]) -> list[Pending]:
        """Keep what is sent inside the center's anti-replay window (PROTOCOL.md: a gateway
        never lets its backlog span more than 65,536 seqs): an event about to be sent whose
        seq is about to age out is re-signed first with a fresh seq, in one transaction for
        the whole batch. Same id, body and ts, so the center can tell it is the same event;
        the only case where the bytes of a re-send change.

        The window slides with the highest seq the center has seen from us, which is at most
        the highest we ever sent (``SeqCounter.sent_high``): a backlog drained in order while
        nothing newer went out needs no re-signing, however long it is. A re-send (no ack
        came) is measured against the newest seq issued instead: if a first send was refused
        as too old after all, its next attempt is re-signed."""
        margin = SEQ_WINDOW - SEQ_MARGIN
        first_limit = self._seq.sent_high - margin
        resend_limit = self._seq.peek - margin

        def is_aging(p: Pending) -> bool:
            if p.id in self._memory:
                return False
            tracked = self._tracked.get(p.id)
            resend = tracked is not None and tracked.attempts > 0
            return p.seq < (resend_limit if resend else first_limit)

        aging = [p for p in batch if is_aging(p)]
        if not aging:
            return batch
        fresh: dict[str, Pending] = {}
        for p in aging:
            try:
                seq, payload = resign(p.payload, seq=self._seq.next(), key=self._key)
            except ValueError as err:  # a damaged row: send it as it is, the center decides
                log.error("cannot re-sign a queued event", id=p.id, error=str(err))
                continue
            fresh[p.id] = Pending(p.id, p.type, seq, payload, p.created, p.attempts, p.last_error)
        if not fresh:
            return batch
        try:
            self.outbox.replace_payloads(fresh.values())
        except OutboxError as err:
            log.error("cannot re-sign aging events", count=len(fresh), error=str(err))
            return [p for p in batch if p.id not in fresh]
        log.warning(
            "re-signed events about to leave the replay window",
            count=len(fresh),
            oldest_was=min(p.seq for p in aging),
        )
        return [fresh.get(p.id, p) for p in batch]

    # -- status ---------------------------------------------------------------------

    def pending_count(self) -> int:
        return self.outbox.count() + len(self._memory)

    def memory_only_count(self) -> int:
        """Events held only in memory because the outbox could not commit them."""
        return len(self._memory)
