"""The delivery rules with no I/O: events in, actions out.

``DeliveryCore`` decides what to send, when, on which broker path, when to re-sign, what an
ack from the center means and what the presser sees; it never touches a disk, a socket, a
clock or asyncio. The driver (``gateway/delivery/relay.py``) feeds it events, each with the
current time ``now`` (monotonic seconds), and carries out the actions it returns:

    committed / loaded / repeat   an envelope is durable (or held in memory), or recovered
    published(id, outcome)        one publish attempt ended (PUBACK, refused, no session)
    message(topic, payload)       an ack, dispatch or resync from the center: verified here
    link(path, up)                a broker path came up or went down
    tick(now, ...)                time passed: re-sends, first sends, overdue acks

    Publish  Feedback  Release  Resign  Forget  Overdue  AckRefused  Note  Resync

An event's lifecycle is ``TRANSITIONS`` in gateway/delivery/lifecycle.py; ``Stage`` and
``Trigger`` name its states and edges (PROTOCOL.md "Delivery semantics").
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping, Sequence

from gateway.contract.envelope import parse, verify
from gateway.contract.signing import VerifyKey
from gateway.contract.topics import topic
from gateway.delivery.events import (
    AckRefused,
    Action,
    Delivered,
    Feedback,
    Forget,
    Need,
    Note,
    OrderKey,
    Outcome,
    Overdue,
    Publish,
    Release,
    Resign,
    ResignItem,
    Resync,
    Row,
    send_order,
)
from gateway.delivery.lifecycle import (
    TRANSITIONS,
    Entry,
    ProtocolViolation,
    Stage,
    Trigger,
)
from gateway.delivery.outbox import PRIORITY
from gateway.delivery.resend import ResendTimer
from gateway.errors import EnvelopeError
from gateway.feedback import LedMode

MAX_INFLIGHT = 20  # Mosquitto's default receive maximum
# Events sent and waiting for the center's ack before no more are taken from the backlog:
# keeps memory bounded while a center does not answer (1,000,000 queued), and keeps a
# batching center busy (it checks the next burst while the previous one is acknowledged).
MAX_UNACKED = 6_000
SEQ_WINDOW = 65_536  # PROTOCOL.md: the center's anti-replay window per signer
SEQ_MARGIN = 4_096  # re-sign this far before an event would leave that window
MAX_WATCHED = 256  # acknowledged alarms whose presser still follows the center's dispatch
PRIMARY, SECONDARY = "primary", "secondary"


class DeliveryCore:
    """The gateway's delivery rules (sans-I/O)."""

    def __init__(
        self,
        *,
        site: str,
        gw: str,
        prefix: str,
        center_keys: Mapping[str, VerifyKey],
        kid: str = "",
        show_dispatch: bool = True,
        ack_timeout_s: float = 15.0,
        resend_initial_s: float = 2.0,
        resend_max_s: float = 60.0,
        failover_after_s: float = 30.0,
        max_inflight: int = MAX_INFLIGHT,
        max_unacked: int = MAX_UNACKED,
    ) -> None:
        self.site, self.gw = site, gw
        self.event_topic = topic(prefix, site, gw, "event")
        self.ack_topic = topic(prefix, site, gw, "ack")
        self._center_keys = dict(center_keys)
        self.kid = kid  # the gateway's own signer (a resync names it)
        self.show_dispatch = show_dispatch
        self.ack_timeout_s = ack_timeout_s
        self.resend = ResendTimer(resend_initial_s, resend_max_s)
        self.failover_after_s = failover_after_s
        self.max_inflight = max_inflight
        self.max_unacked = max_unacked
        self._entries: dict[str, Entry] = {}
        self._alarms: set[str] = set()  # the alarms among them: few, and they go first
        self._inflight: set[str] = set()
        # Send queues with lazy deletion (an entry whose stage or due time no longer matches
        # is skipped): never-sent entries in send order, re-sends by due time.
        self._fresh: list[tuple[OrderKey, str]] = []
        self._retry: list[tuple[float, str]] = []
        self._overdue: list[tuple[float, str]] = []
        # Committed live but after rows not yet loaded from the outbox: they wait for the
        # loading to pass them, so the backlog keeps its order.
        self._parked: dict[str, Entry] = {}
        self._frontier: OrderKey | None = None  # send-order key of the last row loaded
        self._exhausted = False  # every outbox row after the frontier is held here
        self._paths: dict[str, bool] = {}  # attached broker paths: up or down
        self._primary_down_since: float | None = None
        self._watched: dict[str, None] = {}  # acknowledged alarms shown the dispatch, oldest first
        self._resign_below = 0  # a resync: every queued event with a lower seq is re-signed
        self.sent = 0
        self.sent_by_path: Counter[str] = Counter()
        self.publish_refused = 0
        self.acks_refused: Counter[str] = Counter()  # ignored acks by reason
        # Per reason: the kid the last refused envelope named, and how many were refused
        # since the last ack that verified (a rotated center key shows here, not in counts).
        self.acks_refused_kid: dict[str, str] = {}
        self.acks_refused_since_ack: Counter[str] = Counter()

    # -- queries ----------------------------------------------------------------------

    def holds(self, event_id: str) -> bool:
        return event_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def link_up(self, path: str) -> bool | None:
        """Whether ``path`` is up (None: not attached)."""
        return self._paths.get(path)

    def stage(self, event_id: str) -> Stage | None:
        e = self._entries.get(event_id)
        return None if e is None else e.stage

    def route(self, kind: str, now: float) -> str | None:
        """The path an envelope of ``kind`` takes now (None: it waits). While the primary is
        down, alarms and tests go on the secondary at once, other events once the primary
        has been down ``failover_after_s``."""
        if self._paths.get(PRIMARY):
            return PRIMARY
        if self._primary_down_since is None:  # never came up: down since first asked
            self._primary_down_since = now
        if not self._paths.get(SECONDARY):
            return None
        down_for = now - self._primary_down_since
        if PRIORITY.get(kind, 9) <= 1 or down_for >= self.failover_after_s:
            return SECONDARY
        return None

    def need(self) -> Need | None:
        """How many rows to load from the outbox before the next ``tick`` (None: none)."""
        if self._exhausted or len(self._entries) >= self.max_unacked:
            return None
        room = self.max_inflight - len(self._inflight) - len(self._fresh)
        return Need(self._frontier, room) if room > 0 else None

    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do by the clock alone (None: nothing)."""
        times = [q[0][0] for q in (self._retry, self._overdue) if q]
        return min(times) if times else None

    # -- events -----------------------------------------------------------------------

    def committed(
        self,
        row: Row,
        now: float,
        *,
        durable: bool = True,
        live: bool = False,
        presser: bool = False,
        input_ref: str = "",
    ) -> list[Action]:
        """``row`` was just committed (``durable``) or is held in memory. ``live``: a press
        (alarm or test) that goes out at once, ahead of the backlog; ``presser``: someone
        waits for LED feedback on it, and for ``fast`` if no ack comes in time."""
        if row.id in self._entries:
            return self.repeat(row.id, now) if presser else []
        e = Entry(row, now, durable=durable)
        e.input = input_ref
        e.presser = presser
        self._add(e)
        led = self._move(e, Trigger.COMMIT if durable else Trigger.HOLD)
        out: list[Action] = []
        if presser and led is not None:
            out.append(Feedback(e.id, led))
        if live or not durable or self._exhausted or self._behind_frontier(e):
            if live and len(self._inflight) < self.max_inflight:
                path = self.route(e.type, now)
                if path is not None:
                    out.append(self._publish(e, path, now, flush=True))
            if e.stage is Stage.QUEUED:
                heapq.heappush(self._fresh, (e.key, e.id))
        else:
            self._parked[e.id] = e
        if live or presser:
            e.overdue_at = now + self.ack_timeout_s
            heapq.heappush(self._overdue, (e.overdue_at, e.id))
        return out

    def repeat(self, event_id: str, now: float) -> list[Action]:
        """The same press again (a dedupe key matched) for an event held here: the presser
        sees "registered" again and gets the ack's ``solid``."""
        e = self._entries.get(event_id)
        if e is None:
            return []
        e.presser = True
        return [Feedback(event_id, "blink")] if e.durable else []

    def stored(self, event_id: str) -> None:
        """An event held in memory is now committed to the outbox."""
        e = self._entries.get(event_id)
        if e is not None:
            e.durable = True

    def loaded(self, rows: Sequence[Row], need: Need, now: float) -> None:
        """``rows`` are what the outbox returned for ``need`` (in send order)."""
        for row in rows:
            key = send_order(row.type, row.created, row.seq)
            self._frontier = key
            parked = self._parked.pop(row.id, None)
            if parked is not None:
                heapq.heappush(self._fresh, (parked.key, parked.id))
            if parked is not None or row.id in self._entries:
                continue
            e = Entry(row, now, durable=True, key=key)
            self._add(e)
            self._move(e, Trigger.COMMIT)
            heapq.heappush(self._fresh, (e.key, e.id))
        if len(rows) < need.limit:
            self._exhausted = True
            for e in self._parked.values():
                heapq.heappush(self._fresh, (e.key, e.id))
            self._parked.clear()

    def link(self, path: str, up: bool, now: float) -> None:
        """A broker path came up or went down (also call it once when attaching a path)."""
        self._paths[path] = up
        if path == PRIMARY:
            self._primary_down_since = None if up else (self._primary_down_since or now)
        if up:
            for e in self._entries.values():
                if e.stage is Stage.WAITING:
                    self._move(e, Trigger.LINK_UP)
                    self._schedule(e, now)

    def published(
        self, event_id: str, outcome: Outcome, now: float, error: str = ""
    ) -> list[Action]:
        """One publish attempt of ``event_id`` ended."""
        self._inflight.discard(event_id)
        e = self._entries.get(event_id)
        if e is None or e.stage is not Stage.INFLIGHT:
            return []  # acknowledged while the publish was in flight
        if outcome is Outcome.OK:
            self._move(e, Trigger.PUBACK)
            self._schedule(e, now + self.resend.backoff(e.attempts))
            return []
        if outcome is Outcome.NOT_CONNECTED:
            self._move(e, Trigger.NO_SESSION)
            self._schedule(e, now)  # as soon as a session is back
            return []
        if outcome is Outcome.MISSING:
            self._move(e, Trigger.MISSING)
            self._drop(e)
            return []
        if outcome is Outcome.REFUSED:
            self.publish_refused += 1
        self._move(e, Trigger.REFUSED)
        self._schedule(e, now + self.resend.backoff(e.attempts))
        return [Note(event_id, error)] if e.durable else []

    def resigned(
        self,
        now: float,
        *,
        fresh: Mapping[str, tuple[int, bytes]],
        as_is: Sequence[str] = (),
        failed: Sequence[str] = (),
    ) -> list[Action]:
        """The outcome of a ``Resign``: ``fresh`` ids were re-signed (new seq, payload) and
        stored; ``as_is`` could not be re-signed (a damaged row: sent as it is, the center
        decides); ``failed`` could not be stored (tried again on a later tick)."""
        out: list[Action] = []
        for event_id, (seq, payload) in fresh.items():
            e = self._entries.get(event_id)
            if e is None:
                continue
            self._move(e, Trigger.RESIGN)
            e.seq, e.payload = seq, payload
            e.key = send_order(e.type, e.created, seq)
        for event_id in as_is:
            e = self._entries.get(event_id)
            if e is not None:
                e.as_is = True
        for event_id in (*fresh, *as_is, *failed):
            e = self._entries.get(event_id)
            if e is None or not e.resigning:
                continue
            e.resigning = False
            path = self.route(e.type, now)
            if event_id not in failed and path and len(self._inflight) < self.max_inflight:
                out.append(self._publish(e, path, now))
            elif e.stage is Stage.QUEUED:
                heapq.heappush(self._fresh, (e.key, e.id))
            else:
                self._schedule(e, now + (1.0 if event_id in failed else 0.0))
        return out

    def message(self, name: str, payload: bytes, now: float) -> list[Action]:
        """A message on one of the gateway's subscribed topics."""
        if name != self.ack_topic:
            return []
        try:
            env = parse(payload)
        except EnvelopeError as err:
            return [self._refuse(err.reason, err.detail)]
        try:
            verify(env, self._center_keys)
        except EnvelopeError as err:
            return [self._refuse(err.reason, err.detail, kid=env.kid)]
        if (env.site, env.gw) != (self.site, self.gw):
            return [self._refuse("wrong-target", f"{env.type} for {env.site}/{env.gw}", env.kid)]
        if env.type == "ack":
            self.acks_refused_since_ack.clear()
            return self._acked([str(i) for i in env.body["ids"]], now)
        if env.type == "dispatch":
            return self._dispatched([str(i) for i in env.body["ids"]], env.body["status"])
        if env.type == "resync":
            return self._resync(str(env.body["kid"]), int(env.body["next_seq"]), now)
        return [self._refuse("wrong-type", env.type)]

    def tick(self, now: float, *, seq_next: int, seq_sent: int) -> list[Action]:
        """Time passed: overdue acks, then what is due to be sent. ``seq_next`` is the seq
        the counter issues next; ``seq_sent`` the highest that left the gateway."""
        out: list[Action] = []
        while self._overdue and self._overdue[0][0] <= now:
            due, event_id = heapq.heappop(self._overdue)
            e = self._entries.get(event_id)
            if e is None or e.overdue_at != due:
                continue
            e.overdue_at = None
            out.append(Overdue(event_id, e.attempts, self.ack_timeout_s))
            led = self._move(e, Trigger.OVERDUE)
            if e.presser and led is not None and e.dispatch is None:
                out.append(Feedback(event_id, led))
        free = self.max_inflight - len(self._inflight)
        if free <= 0 or self.route("alarm", now) is None:
            return out
        batch = self._due(now, free)
        aging = self._aging(batch, seq_next=seq_next, seq_sent=seq_sent)
        if aging:
            for e in aging:
                e.resigning = True
            items = tuple(ResignItem(e.id, e.type, e.payload, e.created) for e in aging)
            out.append(Resign(items))
        for e in batch:
            if e.resigning:
                continue
            path = self.route(e.type, now)
            if path is None:  # the secondary, before failover: later
                self._schedule(e, now + 1.0)
                continue
            out.append(self._publish(e, path, now))
        return out

    # -- internals --------------------------------------------------------------------

    def _move(self, e: Entry, trigger: Trigger) -> LedMode | None:
        try:
            e.stage, led = TRANSITIONS[(e.stage, trigger)]
        except KeyError:
            raise ProtocolViolation(f"{e.id}: {trigger.value} while {e.stage.value}") from None
        return led

    def _behind_frontier(self, e: Entry) -> bool:
        return self._frontier is not None and e.key <= self._frontier

    def _schedule(self, e: Entry, due: float) -> None:
        e.next_due = due
        heapq.heappush(self._retry, (due, e.id))

    def _add(self, e: Entry) -> None:
        self._entries[e.id] = e
        if e.type == "alarm":
            self._alarms.add(e.id)

    def _drop(self, e: Entry) -> None:
        self._entries.pop(e.id, None)
        self._parked.pop(e.id, None)
        self._alarms.discard(e.id)

    def _due(self, now: float, free: int) -> list[Entry]:
        """Up to ``free`` entries to send now: re-sends whose backoff ran out, then never-sent
        ones in send order; the whole batch in send order."""
        out: dict[str, Entry] = {}
        while self._retry and self._retry[0][0] <= now and len(out) < free:
            due, event_id = heapq.heappop(self._retry)
            e = self._entries.get(event_id)
            if e is None or e.stage is not Stage.WAITING or e.next_due != due or e.resigning:
                continue  # stale: acknowledged, in flight, or rescheduled
            out[event_id] = e  # once, if it was scheduled twice for the same time
        self._alarms_first(out, now)
        while self._fresh and len(out) < free:
            key, event_id = self._fresh[0]
            e = self._entries.get(event_id)
            if e is None or e.stage is not Stage.QUEUED or e.key != key or e.resigning:
                heapq.heappop(self._fresh)
                continue
            if self.route(e.type, now) is None:
                break  # the rest sort after it and cannot go either
            heapq.heappop(self._fresh)
            out[event_id] = e
        batch = sorted(out.values(), key=lambda e: e.key)
        if len(self._retry) > 4 * len(self._entries) + 1024:  # mostly stale entries
            self._retry = [(e.next_due, i) for i, e in self._entries.items() if e.attempts]
            heapq.heapify(self._retry)
        return batch

    def _alarms_first(self, out: dict[str, Entry], now: float) -> None:
        """A re-send never overtakes an alarm that has waited for its ack at least as long
        (PROTOCOL.md "Order": alarms before everything else): such alarms join the batch,
        which is sent in send order. Without this, two re-send timers (a lost burst, a
        center that came back after the gateway) could let a test reach the center first."""
        since = min((e.last_sent_at for e in out.values() if e.type != "alarm"), default=None)
        if since is None:
            return
        for event_id in self._alarms:
            e = self._entries[event_id]
            if e.stage is Stage.WAITING and not e.resigning and e.last_sent_at <= since:
                out[event_id] = e  # its own heap item goes stale once it is sent

    def _aging(self, batch: list[Entry], *, seq_next: int, seq_sent: int) -> list[Entry]:
        """Entries about to leave the center's anti-replay window (PROTOCOL.md: a gateway
        never lets its backlog span more than 65,536 seqs). The window slides with the
        highest seq the center has seen from us, at most ``seq_sent``: a backlog drained in
        order while nothing newer went out needs no re-signing. A re-send (no ack came) is
        measured against ``seq_next`` instead: if a first send was refused as too old after
        all, its next attempt is re-signed."""
        margin = SEQ_WINDOW - SEQ_MARGIN
        first_limit, resend_limit = seq_sent - margin, seq_next - margin
        out = []
        for e in batch:
            if not e.durable or e.as_is:
                continue
            if e.seq < max(resend_limit if e.attempts else first_limit, self._resign_below):
                out.append(e)
        return out

    def _publish(self, e: Entry, path: str, now: float, *, flush: bool = False) -> Publish:
        self._move(e, Trigger.PUBLISH)
        e.attempts += 1
        e.path = path
        e.as_is = False
        if e.first_sent_at is None:
            e.first_sent_at = now
        e.last_sent_at = now
        self._inflight.add(e.id)
        self.sent += 1
        self.sent_by_path[path] += 1
        out = Publish(path, self.event_topic, e.payload, e.id, e.seq, e.attempts, e.durable, flush)
        if e.durable:
            e.payload = b""  # the outbox has it: a re-send reads it from there
        return out

    @property
    def center_kids(self) -> tuple[str, ...]:
        """The center keys trusted for acks."""
        return tuple(sorted(self._center_keys))

    def _refuse(self, reason: str, detail: str, kid: str = "") -> AckRefused:
        self.acks_refused[reason] += 1
        self.acks_refused_since_ack[reason] += 1
        if kid:
            self.acks_refused_kid[reason] = kid
        return AckRefused(reason, detail)

    def _acked(self, ids: list[str], now: float) -> list[Action]:
        out: list[Action] = []
        delivered: list[Delivered] = []
        released: list[str] = []
        for event_id in ids:
            e = self._entries.get(event_id)
            if e is None:
                continue  # not held: a duplicate ack, or a row not loaded in this run
            led = self._move(e, Trigger.ACK)
            self._drop(e)
            if e.attempts == 1 and e.first_sent_at is not None:
                self.resend.sample(now - e.first_sent_at)  # Karn: re-sent events say nothing
            if e.presser:
                if led is not None and e.dispatch is None:
                    out.append(Feedback(event_id, led))
                if self.show_dispatch and e.dispatch != "off":
                    released.extend(self._watch(event_id))
                else:
                    released.append(event_id)
            delivered.append(
                Delivered(
                    event_id, e.type, e.input, e.attempts, e.registered_at, e.first_sent_at, now
                )
            )
        out.append(Forget(tuple(ids), tuple(delivered)))
        if released:
            out.append(Release(tuple(released)))
        return out

    def _watch(self, event_id: str) -> list[str]:
        """Follow the dispatch of an acknowledged alarm; returns the ids no longer followed."""
        self._watched[event_id] = None
        dropped = []
        while len(self._watched) > MAX_WATCHED:
            oldest = next(iter(self._watched))
            del self._watched[oldest]
            dropped.append(oldest)
        return dropped

    def _dispatched(self, ids: list[str], status: str) -> list[Action]:
        """PROTOCOL.md ``dispatch``: ``acknowledged`` pulses the presser's LED, ``resolved``
        turns it off (unless the site turned that off)."""
        if not self.show_dispatch:
            return []
        mode: LedMode = "pulse" if status == "acknowledged" else "off"
        out: list[Action] = []
        released: list[str] = []
        for event_id in ids:
            e = self._entries.get(event_id)
            if e is not None:  # its ack has not arrived yet
                if e.presser:
                    e.dispatch = mode
                    out.append(Feedback(event_id, mode))
            elif event_id in self._watched:
                out.append(Feedback(event_id, mode))
                if mode == "off":
                    del self._watched[event_id]
                    released.append(event_id)
        if released:
            out.append(Release(tuple(released)))
        return out

    def _resync(self, kid: str, next_seq: int, now: float) -> list[Action]:
        """PROTOCOL.md ``resync``: the counter moves to at least ``next_seq`` and every queued
        event with a lower seq is re-signed before it is sent again (same id, ts, body)."""
        if self.kid and kid != self.kid:
            return [self._refuse("wrong-target", f"resync for signer {kid}")]
        self._resign_below = max(self._resign_below, next_seq)
        for e in self._entries.values():
            if e.stage is Stage.WAITING and e.seq < next_seq:
                self._schedule(e, now)  # refused for its seq: no use waiting for an ack
        return [Resync(next_seq)]
