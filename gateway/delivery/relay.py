"""The alarm path's asyncio driver: raise → sign → commit → publish → center ack → presser feedback.

``Relay`` is the ``AlarmSink`` the inputs call (gateway/feedback.py). It owns the outbox, the
seq counter and the signing key, and carries out what the delivery rules
(``DeliveryCore``, gateway/delivery/core.py, no I/O) decide: an alarm is signed and committed
to the outbox before the presser hears "registered" (LED ``blink``); it is published and
re-published with backoff (same bytes: same id, seq, sig) over a ``Transport`` until a
center ack signed by a trusted kid names its id; then it is forgotten and the LED goes
``solid``. No ack within ``ack_timeout_s`` turns the LED ``fast``; re-sending goes on
regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from gateway import __version__, logs
from gateway.contract.envelope import Envelope, build, format_ts, resign
from gateway.contract.signing import SigningKey, VerifyKey
from gateway.contract.topics import topic
from gateway.delivery import core as C
from gateway.delivery import events as ev
from gateway.delivery.outbox import PRIORITY, Outbox, Pending
from gateway.delivery.seq import SeqCounter
from gateway.delivery.transport import Transport, outcome
from gateway.delivery.uplink import Session
from gateway.errors import OutboxError
from gateway.feedback import Feedback, LedMode, Raised

log = structlog.get_logger("alarmgw.relay")

MAX_INFLIGHT = C.MAX_INFLIGHT
MAX_UNACKED = C.MAX_UNACKED
ACK_REFUSAL_LOG_S = 60.0  # at most one "ignored ack" summary line per reason this often


class RefusalLog:
    """Logs refused acks without letting a flood of forgeries flood the log: the first
    refusal of a reason is logged at once, with its detail; further refusals of that reason
    within ``interval_s`` are only counted, and logged as one line with the count when the
    interval is over (at the next refusal after it, or by a timer on the running loop)."""

    def __init__(self, interval_s: float = ACK_REFUSAL_LOG_S) -> None:
        self.interval_s = interval_s
        # reason -> [window start, refusals counted since the logged one, last detail]
        self._windows: dict[str, list[Any]] = {}

    def refused(self, reason: str, detail: str, now: float) -> None:
        window = self._windows.get(reason)
        if window is not None and now - window[0] < self.interval_s:
            window[1] += 1
            window[2] = detail
            return
        if window is not None:
            self._summarise(reason, window)
        log.warning("ignored ack", reason=reason, detail=detail)
        self._windows[reason] = [now, 0, detail]
        with contextlib.suppress(RuntimeError):  # no running loop: the next refusal flushes
            loop = asyncio.get_running_loop()
            loop.call_later(self.interval_s, self.flush)

    def flush(self, now: float | None = None) -> None:
        """Log the counts of the intervals that are over."""
        now = time.monotonic() if now is None else now
        for reason, window in list(self._windows.items()):
            if now - window[0] >= self.interval_s:
                del self._windows[reason]
                self._summarise(reason, window)

    def _summarise(self, reason: str, window: list[Any]) -> None:
        if window[1]:
            log.warning(
                "ignored acks",
                reason=reason,
                count=window[1],
                interval_s=self.interval_s,
                last_detail=window[2],
            )


def _gateway_trouble(detail: str) -> dict[str, str]:
    """A ``330`` (peripheral trouble) body for the gateway itself."""
    return {"code": "330", "device": "gateway", "detail": detail[:120]}


def _row(p: Pending) -> ev.Row:
    return ev.Row(p.id, p.type, p.seq, p.payload, p.created)


@dataclass(frozen=True, slots=True)
class Identity:
    site: str
    gw: str
    prefix: str


class Relay:
    """Implements ``AlarmSink``; drives the outbox and the broker paths for ``DeliveryCore``."""

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
        show_dispatch: bool = True,
    ) -> None:
        self.ident = ident
        self._key = key
        self._seq = seq
        self.outbox = outbox
        self._location = dict(location)
        self._contact = dict(contact)
        self.core = C.DeliveryCore(
            site=ident.site,
            gw=ident.gw,
            prefix=ident.prefix,
            center_keys=center_keys,
            kid=key.kid,
            show_dispatch=show_dispatch,
            ack_timeout_s=ack_timeout_s,
            resend_initial_s=resend_initial_s,
            resend_max_s=resend_max_s,
        )
        self._paths: dict[str, Transport] = {}
        self._disk_trouble: str | None = None  # the open "outbox not writable" trouble
        self._memory_dedupe: dict[str, str] = {}  # dedupe keys of memory-only alarms
        # Envelopes that could not be committed (disk full, I/O error): still sent live.
        self._memory: dict[str, Pending] = {}
        self._feedback: dict[str, list[Feedback]] = {}  # who waits for LED feedback, by id
        self._next_housekeeping = 0.0
        self._wake = asyncio.Event()
        self._will: tuple[str, bytes] | None = None
        self.session = 0
        self.pump_tick = 0.0  # loop time of the pump's last round (watched for stalls)
        self._raised = 0
        self._acked = 0
        self.last_alarm: dict[str, Any] | None = None
        # (input_ref, type) -> alarms/tests raised (repeats excluded): presses per input.
        self.raised_by: Counter[tuple[str, str]] = Counter()
        # Told (event id, seconds from commit to ack or None) on the loop thread after each
        # ack, for status and metrics (gateway/technician/health.py). A listener must not block.
        self.ack_listeners: list[Callable[[str, float | None], None]] = []
        self.refusals = RefusalLog()  # the log lines of ignored acks, counted per interval

    @property
    def stats(self) -> dict[str, int]:
        """Counters for status, metrics and tests."""
        return {
            "alarms_raised": self._raised,
            "events_sent": self.core.sent,
            "events_acked": self._acked,
            "publish_refused": self.core.publish_refused,
            "acks_rejected": sum(self.core.acks_refused.values()),
        }

    @property
    def sent_by_path(self) -> Counter[str]:
        """Publish attempts per broker path (primary, secondary)."""
        return self.core.sent_by_path

    @property
    def acks_rejected_by(self) -> Counter[str]:
        """Ignored acks by reason (``unknown-kid``, ``bad-signature``, ``wrong-target``...)."""
        return self.core.acks_refused

    @property
    def acks_refused_kid(self) -> Mapping[str, str]:
        """The kid named by the last ignored ack, by reason."""
        return self.core.acks_refused_kid

    @property
    def acks_refused_since_ack(self) -> Mapping[str, int]:
        """Ignored acks by reason since the last ack that verified."""
        return self.core.acks_refused_since_ack

    @property
    def center_kids(self) -> tuple[str, ...]:
        """The center keys this gateway trusts."""
        return self.core.center_kids

    def attach(
        self,
        uplink: Transport,
        secondary: Transport | None = None,
        *,
        failover_after_s: float = 30.0,
    ) -> None:
        """The primary broker path and, optionally, a second one: while the primary is down,
        alarms and tests go out on the secondary at once, other events once the primary has
        been down ``failover_after_s``."""
        self._paths = {C.PRIMARY: uplink}
        if secondary is not None:
            self._paths[C.SECONDARY] = secondary
        self.core.failover_after_s = failover_after_s
        for path, transport in self._paths.items():
            self.core.link(path, transport.connected, self._now())

    def route(self, kind: str) -> Transport | None:
        """The path an envelope of ``kind`` would take now (None: it would wait)."""
        self._sync_links()
        path = self.core.route(kind, self._now())
        return None if path is None else self._paths[path]

    @staticmethod
    def _now() -> float:
        # asyncio's default loop clock is time.monotonic(): the same instants as loop.time(),
        # also before the loop runs (a gateway is built, and its links attached, before it).
        return time.monotonic()

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
        body = {
            "code": code,
            "kind": kind,
            "input": input_ref,
            "test": test,
            "location": {**self._location},
            "contact": self._contact,
        }
        env = self._build("test" if test else "alarm", body)
        self.last_alarm = {
            "id": env.id,
            "type": env.type,
            "input": input_ref,
            "ts": env.ts,
            "acked_at": None,
        }
        if feedback is not None:
            self._feedback[env.id] = [feedback]
        self._commit(env, dedupe_key, live=True, presser=feedback is not None, input_ref=input_ref)
        if dedupe_key is not None and env.id in self._memory:
            # Not on disk: remember the press here so the box's re-sends stay one alarm.
            self._memory_dedupe[dedupe_key] = env.id
        self._raised += 1
        self.raised_by[(input_ref, env.type)] += 1
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

    def _commit(
        self,
        env: Envelope,
        dedupe_key: str | None,
        *,
        live: bool = False,
        presser: bool = False,
        input_ref: str = "",
    ) -> None:
        """Commit ``env`` durably (or, failing that, keep it in memory) and tell the core."""
        payload = env.to_bytes()
        created = time.time()
        row = ev.Row(env.id, env.type, env.seq, payload, created)
        durable = True
        try:
            self.outbox.add(env, payload=payload, dedupe_key=dedupe_key, now=created)
        except OutboxError as err:
            # Never lose it: keep it in memory and send it live; say so loudly. The pump
            # commits it once the disk takes writes again.
            log.critical("event NOT durable, sending from memory", id=env.id, error=str(err))
            self._memory[env.id] = Pending(env.id, env.type, env.seq, payload, created, 0, str(err))
            durable = False
        now = self._now()
        self._sync_links()
        self._run(
            self.core.committed(
                row, now, durable=durable, live=live, presser=presser, input_ref=input_ref
            )
        )
        if not durable and self._disk_trouble is None:
            self._disk_trouble = str(self._memory[env.id].last_error)
            self.raise_event(
                "trouble", _gateway_trouble(f"outbox not writable: {self._disk_trouble}")
            )
        self._wake.set()

    def _feedback_for_repeat(self, event_id: str, feedback: Feedback | None) -> None:
        if feedback is None:
            return
        now = self._now()
        if self.core.holds(event_id):
            actions = self.core.repeat(event_id, now)
        else:
            row = self.outbox.get(event_id)
            if row is None:
                feedback.led("solid")  # the center acknowledged it already
                return
            # Queued before a restart and not yet loaded: track it again, at once.
            actions = self.core.committed(_row(row), now, live=True, presser=True)
        fbs = self._feedback.setdefault(event_id, [])
        if feedback not in fbs:
            fbs.append(feedback)
        self._run(actions)
        self._wake.set()

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

    def on_link(self, up: bool, path: str = C.PRIMARY) -> None:
        self.core.link(path, up, self._now())
        self._wake.set()

    def on_message(self, name: str, payload: bytes) -> None:
        self._run(self.core.message(name, payload, self._now()))

    def _sync_links(self) -> None:
        """Tell the core of a path whose state changed without a callback yet."""
        now = None
        for path, transport in self._paths.items():
            up = transport.connected
            if self.core.link_up(path) != up:
                now = self._now() if now is None else now
                self.core.link(path, up, now)

    # -- carrying out the core's actions ------------------------------------------------

    def _run(self, actions: list[ev.Action]) -> None:
        if not actions:
            return
        todo = deque(actions)
        while todo:
            a = todo.popleft()
            if isinstance(a, ev.Publish):
                todo.extend(self._publish(a))
            elif isinstance(a, ev.Feedback):
                self._led(a.id, a.mode)
            elif isinstance(a, ev.Forget):
                self._forget(a)
            elif isinstance(a, ev.Release):
                for event_id in a.ids:
                    self._feedback.pop(event_id, None)
            elif isinstance(a, ev.Resign):
                todo.extend(self._resign(a))
            elif isinstance(a, ev.Overdue):
                log.warning(
                    "no ack from the center yet; still re-sending",
                    id=a.id,
                    waited_s=a.waited_s,
                    attempts=a.attempts,
                )
            elif isinstance(a, ev.AckRefused):
                # PROTOCOL.md: the gateway ignores an ack it cannot verify.
                self.refusals.refused(a.reason, a.detail, self._now())
            elif isinstance(a, ev.Note):
                try:
                    self.outbox.note_attempt(a.id, a.error)
                except OutboxError as db_err:
                    log.error("cannot record publish error", id=a.id, error=str(db_err))
            elif isinstance(a, ev.Resync):
                self._resync(a)

    def _led(self, event_id: str, mode: LedMode) -> None:
        loop = asyncio.get_running_loop()
        for fb in self._feedback.get(event_id, ()):
            if mode == "blink":
                # Next loop turn: after the caller's own reply (a box's ACK goes out first, so
                # "registered" is never shown to a box that was not told), and off the path to
                # the wire (a gpiozero blink starts a thread).
                loop.call_soon(fb.led, mode)
            else:
                fb.led(mode)

    def _publish(self, a: ev.Publish) -> list[ev.Action]:
        payload, seq = a.payload, a.seq
        if not payload:  # a re-send: the stored bytes
            row = self.outbox.get(a.id)
            if row is None:  # acknowledged meanwhile, or evicted
                return self.core.published(a.id, ev.Outcome.MISSING, self._now())
            payload, seq = row.payload, row.seq
        self._seq.mark_sent(seq)
        fut = self._paths[a.path].publish(a.topic, payload, flush=a.flush)
        if self.last_alarm is not None and self.last_alarm["id"] == a.id:
            self.last_alarm["path"] = a.path
        fut.add_done_callback(functools.partial(self._sent, a.id))
        return []

    def _sent(self, event_id: str, fut: asyncio.Future[int]) -> None:
        result, error = outcome(fut)
        self._run(self.core.published(event_id, result, self._now(), error))
        self._wake.set()

    def _forget(self, a: ev.Forget) -> None:
        try:
            removed = set(self.outbox.remove(a.ids))
        except OutboxError as err:  # still queued: re-sent later, acked again as a duplicate
            log.error("cannot forget acknowledged events", count=len(a.ids), error=str(err))
            removed = set()
        now = self._now()
        by_id = {d.id: d for d in a.delivered}
        for event_id in a.ids:
            in_memory = self._memory.pop(event_id, None) is not None
            d = by_id.get(event_id)
            if not (event_id in removed or in_memory or d):
                continue  # an ack for something long forgotten (a duplicate ack)
            self._acked += 1
            if d is not None and logs.enabled(logging.INFO):
                # The alarm's one summary line (DESIGN.md "canonical log lines"): loop times
                # shown as wall-clock times; latency from durable to acknowledged.
                wall = time.time() - now
                sent = d.first_sent_at
                log.info(
                    "acknowledged by the center",
                    id=event_id,
                    input=d.input or None,
                    attempts=d.attempts,
                    durable_at=format_ts(d.registered_at + wall),
                    sent_at=None if sent is None else format_ts(sent + wall),
                    acked_at=format_ts(d.acked_at + wall),
                    latency_ms=round((d.acked_at - d.registered_at) * 1000, 1),
                )
            if self.last_alarm and self.last_alarm["id"] == event_id:
                self.last_alarm["acked_at"] = time.time()
            latency = None if d is None else d.acked_at - d.registered_at
            for listener in self.ack_listeners:
                try:
                    listener(event_id, latency)
                except Exception:  # status bookkeeping must never break the ack path
                    log.exception("ack listener failed", id=event_id)
        self._wake.set()

    def _resign(self, a: ev.Resign) -> list[ev.Action]:
        """Fresh seqs for queued events about to leave the center's anti-replay window, in
        one transaction for the batch. Same id, body and ts, so the center can tell it is
        the same event; the only case where the bytes of a re-send change."""
        fresh: dict[str, tuple[int, bytes]] = {}
        as_is: list[str] = []
        rows: list[Pending] = []
        for item in a.items:
            stored = item.payload
            if not stored:
                row = self.outbox.get(item.id)
                if row is None:  # acknowledged meanwhile, or evicted: the publish finds out
                    as_is.append(item.id)
                    continue
                stored = row.payload
            try:
                seq, payload = resign(stored, seq=self._seq.next(), key=self._key)
            except ValueError as err:  # a damaged row: send it as it is, the center decides
                log.error("cannot re-sign a queued event", id=item.id, error=str(err))
                as_is.append(item.id)
                continue
            fresh[item.id] = (seq, payload)
            rows.append(Pending(item.id, item.type, seq, payload, item.created, 0, None))
        now = self._now()
        if rows:
            try:
                self.outbox.replace_payloads(rows)
            except OutboxError as err:
                log.error("cannot re-sign aging events", count=len(rows), error=str(err))
                return self.core.resigned(now, fresh={}, as_is=as_is, failed=list(fresh))
            log.warning("re-signed events about to leave the replay window", count=len(rows))
        return self.core.resigned(now, fresh=fresh, as_is=as_is)

    def _resync(self, a: ev.Resync) -> None:
        was = self._seq.peek
        try:
            moved = self._seq.advance(a.next_seq)
        except OutboxError as err:  # stopping: the next start reads the counter afresh
            log.error("cannot move the seq counter", error=str(err))
            return
        # The center refused an envelope for its seq (PROTOCOL.md "resync"): usually this
        # gateway lost its counter but kept its key. What is still queued below next_seq
        # is re-signed before it is sent again.
        log.warning("center asked for a resync", next_seq=a.next_seq, was=was, moved=moved)
        self._wake.set()

    # -- the pump -------------------------------------------------------------------

    async def pump(self) -> None:
        """Publish what is due whenever a path is up; returns only when cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            now = self.pump_tick = loop.time()
            self._wake.clear()
            if now >= self._next_housekeeping:
                self._next_housekeeping = now + 2.0
                self._persist_memory()
            self._sync_links()
            need = self.core.need()
            if need is not None:
                try:
                    rows = self.outbox.after(need.after, need.limit)
                except OutboxError as err:
                    log.error("cannot read the outbox", error=str(err))
                else:
                    self.core.loaded([_row(p) for p in rows], need, now)
            self._run(self.core.tick(now, seq_next=self._seq.peek, seq_sent=self._seq.sent_high))
            timeout = 1.0  # at least once a second: the supervisor watches this tick
            deadline = self.core.next_deadline()
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - loop.time()))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # races with the event (the task then never stops).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _persist_memory(self) -> None:
        """Commit events held in memory once the disk takes writes again."""
        for p in sorted(self._memory.values(), key=lambda p: (PRIORITY[p.type], p.created)):
            try:
                self.outbox.add_raw(p)
            except OutboxError:
                return  # still refused: try again next round
            self._memory.pop(p.id, None)
            self.core.stored(p.id)
        if self._disk_trouble is not None and not self._memory:
            log.warning("outbox writable again; events held in memory are now on disk")
            self._disk_trouble = None
            self.raise_event("restore", _gateway_trouble("outbox writable again"))

    # -- status ---------------------------------------------------------------------

    def pending_count(self) -> int:
        return self.outbox.count() + len(self._memory)

    def memory_only_count(self) -> int:
        """Events held only in memory because the outbox could not commit them."""
        return len(self._memory)
