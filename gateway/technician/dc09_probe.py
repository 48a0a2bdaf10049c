"""``alarmgw diag``'s DC-09 checks: for each configured receiver, connect (TCP), send one
``NULL`` (a link test; it raises nothing at the receiver) and wait for its ``ACK``, then
tell the clock offset (from the receiver's time in a ``NAK``, or in an encrypted ``ACK``;
a plain ``ACK`` carries none). With the daemon running and the probes passing, the daemon's
own view of the path (its ``/status`` verdict) is added when it is not ok. A receiver takes
more than one connection per account, so probing beside the running daemon is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway import checks
from gateway.config import GatewayConfig
from gateway.delivery.dc09.frame import (
    Answer,
    ProtocolError,
    Splitter,
    build_null,
    parse_answer,
)
from gateway.delivery.dc09.transmitter import Dc09Settings, settings_from_config
from gateway.errors import AlarmgwError
from gateway.technician.dc09 import FIXES, OFFSET_WARN_S
from gateway.technician.diag import FAIL, PASS, WARN, Check, judged_json

NAME = "dc09"
TIMEOUT_S = 5.0


class _NoAnswer(Exception):
    """The receiver gave no usable answer (the message says what happened)."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass
class _Exchange:
    """One connection (TCP) or endpoint (UDP) to a receiver: send a frame, read answers."""

    settings: Dc09Settings
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    udp: asyncio.DatagramTransport | None = None
    datagrams: asyncio.Queue[bytes] | None = None

    async def open(self, host: str, port: int) -> None:
        if self.settings.transport == "udp":
            queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)
            self.datagrams = queue

            class Proto(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Any) -> None:
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.put_nowait(data)

            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(Proto, remote_addr=(host, port))
            self.udp = transport
        else:
            self.reader, self.writer = await asyncio.open_connection(host, port)

    async def ask(self, frame: bytes, seq: int) -> Answer:
        """Send ``frame`` and wait for the answer to ``seq`` (a NAK answers any)."""
        s = self.settings
        split = Splitter()
        if self.udp is not None:
            self.udp.sendto(frame)
        elif self.writer is not None:
            self.writer.write(frame)
            await self.writer.drain()
        unreadable = ""
        try:
            async with asyncio.timeout(TIMEOUT_S):
                while True:
                    for raw in split.feed(await self._read()):
                        try:
                            answer = parse_answer(raw, s.key)
                        except ProtocolError as err:
                            unreadable = f"; an unreadable answer: {err}"
                            continue
                        if answer.kind == "NAK" or answer.seq == seq:
                            return answer
        except TimeoutError:
            raise _NoAnswer(f"no answer within {TIMEOUT_S:g} s{unreadable}", "timeout") from None

    async def _read(self) -> bytes:
        if self.datagrams is not None:
            return await self.datagrams.get()
        assert self.reader is not None
        data = await self.reader.read(4096)
        if not data:
            raise _NoAnswer("the receiver closed the connection without answering", "closed")
        return data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.udp is not None:
            self.udp.close()


def dc09_checks(
    cfg: GatewayConfig, status: dict[str, Any] | None, clock: Callable[[], float] = time.time
) -> list[Check]:
    """The DC-09 lines of ``alarmgw diag`` (none without ``[dc09]``); ``status``: the running
    daemon's ``/status``, if any; ``clock``: the wall clock the NULL is stamped with."""
    if cfg.dc09 is None:
        return []
    try:
        settings = settings_from_config(cfg.dc09, [])
    except AlarmgwError as err:
        if isinstance(err.__cause__, PermissionError):
            return [WARN(NAME, f"{err}: cannot read as this user", "run diag as root")]
        return [FAIL(NAME, str(err), "the key file holds 32, 48 or 64 hex digits")]
    out: list[Check] = []
    roles = ("primary", "secondary")
    for (host, port), role in zip(settings.receivers, roles, strict=False):
        out += asyncio.run(probe(settings, host, port, role, clock))
    daemon = (status or {}).get("dc09")
    if isinstance(daemon, dict) and all(c.status != "FAIL" for c in out):
        # The probes pass, yet the daemon may see more (a DUH, a NAK, a long outage).
        seen = judged_json(NAME, daemon.get("verdict"), " (the daemon's)")
        if seen is not None and seen.status != "PASS":
            out.append(seen)
    return out


async def probe(
    s: Dc09Settings, host: str, port: int, role: str, clock: Callable[[], float] = time.time
) -> list[Check]:
    """Connect, NULL and its ACK, the time offset: one line each (fewer when one fails)."""
    where = f"{role} {host}:{port}"
    link = _Exchange(s)
    started = time.monotonic()
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await link.open(host, port)
    except (OSError, TimeoutError) as err:
        link.close()
        why = "timed out" if isinstance(err, TimeoutError) else _why(err)
        return [FAIL(NAME, f"{where}: cannot connect: {why}", FIXES["connect"])]
    out: list[Check] = []
    if s.transport == "tcp":
        ms = (time.monotonic() - started) * 1000
        out.append(PASS(NAME, f"{where}: connected in {ms:.0f} ms (TCP)"))
    try:
        out += await _null(link, s, where, clock)
    finally:
        link.close()
    return out


async def _null(
    link: _Exchange, s: Dc09Settings, where: str, clock: Callable[[], float]
) -> list[Check]:
    seq = os.getpid() % 9999 + 1
    mode = "AES" if s.key is not None else "plain"
    offset: float | None = None
    started = time.monotonic()
    try:
        answer = await link.ask(_frame(s, seq, clock()), seq)
        if answer.kind == "NAK" and answer.time is not None:
            # Our time is outside the receiver's window: its NAK says what its time is.
            offset = answer.time.timestamp() - clock()
            answer = await link.ask(_frame(s, seq, clock() + offset), seq)
    except _NoAnswer as err:
        hint = " (a receiver drops a frame it cannot decrypt)" if s.key is not None else ""
        return [FAIL(NAME, f"{where}: NULL ({mode}): {err}{hint}", FIXES[err.kind])]
    except OSError as err:
        return [FAIL(NAME, f"{where}: NULL ({mode}): {_why(err)}", FIXES["closed"])]
    ms = (time.monotonic() - started) * 1000
    if answer.kind == "NAK":
        found = f"{where}: NULL ({mode}) refused (NAK) even stamped with the receiver's time"
        return [FAIL(NAME, found, FIXES["nak"])]
    if answer.kind == "DUH":
        return [FAIL(NAME, f"{where}: NULL ({mode}) not understood (DUH)", FIXES["duh"])]
    out = [PASS(NAME, f"{where}: NULL ({mode}) acknowledged ({answer.kind}) in {ms:.0f} ms")]
    return [*out, _offset(where, answer, offset, clock)]


def _why(err: OSError) -> str:
    """The OS's words (asyncio wraps a refused connection in longer text)."""
    return os.strerror(err.errno) if err.errno else str(err)


def _frame(s: Dc09Settings, seq: int, when: float) -> bytes:
    return build_null(s.header, seq, when=datetime.fromtimestamp(when, UTC), key=s.key)


def _offset(
    where: str, answer: Answer, nak_offset: float | None, clock: Callable[[], float]
) -> Check:
    """The clock line: the receiver's time minus ours (its timestamps have 1 s steps)."""
    if nak_offset is not None:
        found = (
            f"{where}: time offset {nak_offset:+.0f} s (from its NAK): our clock is outside "
            "its window; the daemon re-stamps frames with its time"
        )
        return WARN(NAME, found, checks.NTP_FIX)
    if answer.time is None:
        return PASS(NAME, f"{where}: time within its window (a plain ACK carries no time)")
    offset = answer.time.timestamp() - clock()
    found = f"{where}: time offset {offset:+.0f} s (±1 s, from its ACK)"
    if abs(offset) > OFFSET_WARN_S:
        return WARN(NAME, found, checks.NTP_FIX)
    return PASS(NAME, found)
