"""The DC-09 transmitter: the outbox's rows owed to a SIA DC-09 receiver, one frame at a time.

One frame is in flight per connection: each waits for its answer (a receiver handles one
frame per read). ``ACK`` → the row is marked delivered over DC-09. No answer → the same
message again (same sequence number, fresh timestamp) with backoff, alternating between the
primary and the secondary receiver. ``NAK`` carries the receiver's time: the clock offset is
re-synchronised and the frame sent again at once; a second ``NAK`` counts as a failure
(a wrong key or account). ``DUH`` is a configuration problem. Idle, a ``NULL`` supervision
message goes every ``supervision_s``. A failure lasting ``trouble_after_s`` raises trouble
``350`` (device ``gateway``, detail ``DC-09 ...``) through the event sink (the MQTT path);
the next ``ACK`` restores it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential, wait_random

from gateway.config import Dc09Section
from gateway.delivery.dc09 import cid
from gateway.delivery.dc09.frame import (
    MAX_SEQ,
    Answer,
    Header,
    ProtocolError,
    Splitter,
    build_cid,
    build_null,
    parse_answer,
    parse_key,
)
from gateway.delivery.dc09.snapshot import Dc09Snapshot, FailureKind, PathState
from gateway.delivery.outbox import Outbox, Pending
from gateway.errors import AlarmgwError, OutboxError

log = structlog.get_logger("alarmgw.dc09")

TROUBLE_CODE = "350"  # communication trouble
# PROTOCOL.md "Bodies" lists the devices a trouble may name; the DC-09 path is part of the
# gateway, so its troubles name the gateway and say "DC-09" in the detail.
DEVICE = "gateway"
TROUBLE_KEY = "dc09_trouble_open"


class EventSink(Protocol):
    def raise_event(self, kind: str, body: Mapping[str, Any], ts: str | None = None) -> str: ...


class Unanswered(Exception):
    """An attempt that got no usable answer (the reason is the message, ``kind`` its
    class)."""

    def __init__(self, reason: str, kind: FailureKind = "closed") -> None:
        super().__init__(reason)
        self.kind: FailureKind = kind


@dataclass(frozen=True, slots=True)
class Dc09Settings:
    receivers: tuple[tuple[str, int], ...]  # primary first, then the optional secondary
    header: Header
    key: bytes | None = None
    transport: Literal["tcp", "udp"] = "tcp"
    supervision_s: float = 60.0
    partition: int = 1
    zones: Mapping[str, int] = field(default_factory=dict)
    answer_timeout_s: float = 10.0
    retry_initial_s: float = 1.0
    retry_max_s: float = 30.0
    trouble_after_s: float = 30.0


def settings_from_config(section: Dc09Section, inputs: list[str]) -> Dc09Settings:
    """``[dc09]`` → settings; ``inputs``: the input refs in config order (zone numbering).
    AlarmgwError (one line) if the key file cannot be read."""
    key = None
    if section.key_file:
        try:
            key = parse_key(Path(section.key_file).read_text(encoding="ascii"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise AlarmgwError(f"[dc09] key_file {section.key_file}: {err}") from err
    receivers = [(section.host, section.port)]
    if section.secondary_host is not None:
        receivers.append((section.secondary_host, section.secondary_port))
    return Dc09Settings(
        receivers=tuple(receivers),
        header=Header(section.account, section.receiver, section.line),
        key=key,
        transport=section.transport,
        supervision_s=section.supervision_s,
        partition=section.partition,
        zones=cid.zone_map(inputs, section.zones),
        answer_timeout_s=section.answer_timeout_s,
        trouble_after_s=section.trouble_after_s,
    )


class _Link(Protocol):
    async def send(self, frame: bytes) -> None: ...
    async def receive(self) -> bytes: ...
    def close(self) -> None: ...


class _TcpLink:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._split = Splitter()
        self._ready: list[bytes] = []

    async def send(self, frame: bytes) -> None:
        self._ready.clear()  # answers to earlier frames, too late to matter
        self._writer.write(frame)
        await self._writer.drain()

    async def receive(self) -> bytes:
        while not self._ready:
            data = await self._reader.read(4096)
            if not data:
                raise Unanswered("receiver closed the connection")
            self._ready = self._split.feed(data)
        return self._ready.pop(0)

    def close(self) -> None:
        self._writer.close()


class _UdpLink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=64)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(data)

    async def send(self, frame: bytes) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
        if self.transport is None:
            raise Unanswered("UDP endpoint closed")
        self.transport.sendto(frame)

    async def receive(self) -> bytes:
        return await self._queue.get()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Dc09Transmitter:
    """Sends ``outbox.pending_dc09()`` rows as ADM-CID frames; ``run()`` until cancelled."""

    def __init__(
        self,
        settings: Dc09Settings,
        outbox: Outbox,
        events: EventSink,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.receivers:
            raise ValueError("a DC-09 transmitter needs a receiver address")
        self.settings = settings
        self.outbox = outbox
        self._events = events
        self._clock = clock
        self.offset_s = 0.0  # the receiver's clock minus ours, learnt from NAK
        self._seq = 0
        self._wake = asyncio.Event()
        outbox.listeners.append(self._wake.set)
        self._link: _Link | None = None
        self._target = 0  # index into settings.receivers
        self._failing_since: float | None = None  # loop time of the first failure in a row
        # Whether the center was told of a DC-09 trouble not yet restored: kept in the outbox
        # so that a restart still sends the restore.
        self.trouble_open = outbox.get_counter(TROUBLE_KEY) == 1
        self.stats: Counter[str] = Counter()
        # Called with (event id, wall-clock time) when the receiver acknowledges an event.
        self.ack_listeners: list[Callable[[str, float], None]] = []
        self.last_ack: float | None = None  # loop time (a NULL is due supervision_s after it)
        # For status and metrics: the state of the last attempt, the loop time of the last
        # real ACK, and why the last failed attempt failed.
        self.state: PathState = "starting"
        self.acked_at: float | None = None
        self.last_error: str | None = None
        self.error_kind: FailureKind | None = None

    # -- for status and metrics ------------------------------------------------------

    def snapshot(self) -> Dc09Snapshot:
        """The path's state now (on the event loop: plain attribute reads)."""
        s = self.settings
        now = asyncio.get_running_loop().time()

        def age(then: float | None) -> float | None:
            return None if then is None else round(max(0.0, now - then), 3)

        host, port = s.receivers[self._target]
        return Dc09Snapshot(
            receivers=tuple(f"{h}:{p}" for h, p in s.receivers),
            target=f"{host}:{port}",
            transport=s.transport,
            encrypted=s.key is not None,
            account=s.header.account,
            state=self.state,
            connected=self._link is not None,
            last_ack_age_s=age(self.acked_at),
            failing_for_s=age(self._failing_since),
            last_error=self.last_error,
            error_kind=self.error_kind,
            offset_s=round(self.offset_s, 3),
            frames_sent=self.stats["frames_sent"],
            acks=self.stats["acks"],
            naks=self.stats["naks"],
            duhs=self.stats["duhs"],
            failures=self.stats["failures"],
            resyncs=self.stats["resyncs"],
            trouble_open=self.trouble_open,
            supervision_s=s.supervision_s,
            trouble_after_s=s.trouble_after_s,
        )

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.last_ack is None:
            # A trouble left open by an earlier run: test the link now, to restore it soon.
            wait = 0.0 if self.trouble_open else self.settings.supervision_s
            self.last_ack = loop.time() - self.settings.supervision_s + wait
        try:
            while True:
                self._wake.clear()
                if not self.outbox.pending_dc09(1):
                    due = self.last_ack + self.settings.supervision_s
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), max(0.0, due - loop.time()))
                        continue  # something was queued: send it
                await self._deliver_next()
        finally:
            self._drop_link()

    async def _deliver_next(self) -> None:
        """Deliver the head of the queue (or a NULL when it is empty), retrying until ACK.
        Each attempt looks at the queue again: an alarm queued meanwhile goes first."""
        s = self.settings
        # (row id, or None for a NULL; its sequence number): a re-send keeps the number.
        current: tuple[str | None, int] = ("", 0)
        retrying = AsyncRetrying(
            wait=wait_exponential(multiplier=s.retry_initial_s, max=s.retry_max_s)
            + wait_random(0, s.retry_initial_s),
            retry=retry_if_exception_type(Unanswered),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                head = self.outbox.pending_dc09(1)
                row = head[0] if head else None
                row_id = None if row is None else row.id
                if current[0] != row_id or not current[1]:
                    current = (row_id, self._next_seq())
                await self._attempt(row, current[1])

    def _next_seq(self) -> int:
        self._seq = self._seq % MAX_SEQ + 1
        return self._seq

    # -- one attempt ------------------------------------------------------------------

    def _frame(self, row: Pending | None, seq: int) -> bytes:
        s = self.settings
        when = datetime.fromtimestamp(self._clock() + self.offset_s, UTC)
        if row is None:
            return build_null(s.header, seq, when=when, key=s.key)
        event = cid.from_payload(row.payload, s.zones) or cid.CidEvent(1, cid.FALLBACK_CODE, 0)
        return build_cid(
            s.header,
            seq,
            qualifier=event.qualifier,
            code=event.code,
            partition=s.partition,
            zone=event.zone,
            when=when,
            key=s.key,
        )

    async def _attempt(self, row: Pending | None, seq: int) -> None:
        what = "NULL" if row is None else f"{row.type} {row.id}"
        try:
            self._judge(await self._answer(row, seq))
        except Unanswered as err:
            self._failed(what, str(err), err.kind)
            raise
        self._acked(row, what)

    async def _answer(self, row: Pending | None, seq: int) -> Answer:
        """The receiver's answer to the frame; after a NAK, to the frame re-stamped with the
        receiver's time."""
        answer = await self._exchange(self._frame(row, seq), seq)
        if answer.kind != "NAK":
            return answer
        self._resync(answer)
        return await self._exchange(self._frame(row, seq), seq)

    def _judge(self, answer: Answer) -> None:
        """Raise Unanswered unless ``answer`` accepts the frame (ACK, or RSP)."""
        if answer.kind == "NAK":
            raise Unanswered(
                "receiver refused the frame (NAK) with our clock re-synchronised: "
                "wrong key or account?",
                "nak",
            )
        if answer.kind == "DUH":
            log.error(
                "DC-09 receiver does not understand our frames (DUH): check account, "
                "receiver, line and key"
            )
            if not self.trouble_open:
                self._tell("trouble", "DC-09 receiver answers DUH: configuration problem")
            raise Unanswered("receiver answered DUH (configuration problem)", "duh")

    async def _exchange(self, frame: bytes, seq: int) -> Answer:
        """Send one frame and wait for its answer (an ACK/DUH for another sequence number is
        a late answer to an earlier attempt and skipped)."""
        s = self.settings
        link = await self._connect()
        self.stats["frames_sent"] += 1
        try:
            async with asyncio.timeout(s.answer_timeout_s):
                await link.send(frame)
                while True:
                    raw = await link.receive()
                    try:
                        answer = parse_answer(raw, s.key)
                    except ProtocolError as err:
                        log.warning("unreadable DC-09 answer ignored", error=str(err))
                        continue
                    if answer.kind == "NAK" or answer.seq == seq:
                        if answer.kind in ("NAK", "DUH"):
                            self.stats[answer.kind.lower() + "s"] += 1
                        return answer
        except TimeoutError:
            self._drop_link()
            raise Unanswered(f"no answer within {s.answer_timeout_s:g} s", "timeout") from None
        except Unanswered:
            self._drop_link()
            raise
        except OSError as err:
            self._drop_link()
            raise Unanswered(str(err) or type(err).__name__) from None

    async def _connect(self) -> _Link:
        if self._link is not None:
            return self._link
        s = self.settings
        host, port = s.receivers[self._target]
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(s.answer_timeout_s):
                if s.transport == "udp":
                    _, udp = await loop.create_datagram_endpoint(_UdpLink, remote_addr=(host, port))
                    self._link = udp
                else:
                    reader, writer = await asyncio.open_connection(host, port)
                    self._link = _TcpLink(reader, writer)
        except TimeoutError:
            self._switch_receiver()
            raise Unanswered(f"cannot connect to {host}:{port}: timed out", "connect") from None
        except OSError as err:
            self._switch_receiver()
            why = os.strerror(err.errno) if err.errno else str(err)  # not asyncio's wording
            reason = f"cannot connect to {host}:{port}: {why}"
            raise Unanswered(reason, "connect") from None
        return self._link

    def _drop_link(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None
            self._switch_receiver()

    def _switch_receiver(self) -> None:
        """After a failure the next attempt goes to the other receiver, if there is one."""
        self._target = (self._target + 1) % len(self.settings.receivers)

    def _resync(self, answer: Answer) -> None:
        if answer.time is None:  # parse_answer never returns a NAK without one
            return
        before = self.offset_s
        self.offset_s = answer.time.timestamp() - self._clock()
        self.stats["resyncs"] += 1
        log.warning(
            "DC-09 receiver refused our timestamp (NAK): clock offset re-synchronised",
            offset_s=round(self.offset_s, 1),
            was_s=round(before, 1),
        )

    # -- outcome ----------------------------------------------------------------------

    def _acked(self, row: Pending | None, what: str) -> None:
        loop = asyncio.get_running_loop()
        self.last_ack = self.acked_at = loop.time()
        self._failing_since = None
        self.state = "up"
        self.stats["acks"] += 1
        if row is not None:
            try:
                self.outbox.mark_dc09_delivered(row.id)
            except OutboxError as err:
                # Not marked: it goes again, and a receiver takes a repeat as a repeat.
                log.error("cannot mark DC-09 delivery", id=row.id, error=str(err))
            log.info("acknowledged by the DC-09 receiver", what=what)
            for listener in self.ack_listeners:
                try:
                    listener(row.id, time.time())
                except Exception:  # status bookkeeping must never break the delivery path
                    log.exception("DC-09 ack listener failed", id=row.id)
        if self.trouble_open:
            self._tell("restore", "DC-09 receiver acknowledges again")

    def _failed(self, what: str, reason: str, kind: FailureKind) -> None:
        now = asyncio.get_running_loop().time()
        self.stats["failures"] += 1
        self.state, self.last_error, self.error_kind = "down", reason, kind
        if self._failing_since is None:
            self._failing_since = now
        log.warning("DC-09 frame not acknowledged, will retry", what=what, reason=reason)
        if not self.trouble_open and now - self._failing_since >= self.settings.trouble_after_s:
            self._tell("trouble", f"DC-09 receiver not acknowledging: {reason}")

    def _tell(self, kind: str, detail: str) -> None:
        try:
            self._events.raise_event(
                kind, {"code": TROUBLE_CODE, "device": DEVICE, "detail": detail[:160]}
            )
        except Exception as err:  # the next failure or ACK tries again
            log.error(f"DC-09 {kind} not queued", error=repr(err))
            return
        self.trouble_open = kind == "trouble"
        try:
            self.outbox.set_counter(TROUBLE_KEY, int(self.trouble_open))
        except OutboxError as err:
            log.error("cannot remember the DC-09 trouble state", error=str(err))
