"""The per-signer ``seq`` counter of PROTOCOL.md: +1 per envelope, never reused,
survives restarts and power loss without a disk write per envelope.

Persisted in reserved blocks: the file records the top of the block in use and whether the
last stop was clean. While running, the file says "unclean, reserved up to R"; every number
handed out is below R. After a clean stop the file holds the exact next value; after a crash
(kill -9, power loss) the next start jumps to R + one block, past anything that might have
been used: the extra block covers numbers handed out while the disk refused the reservation
(disk full: an alarm still gets a seq), at most one block of them.

The file also bounds the highest seq that may have left the gateway (``sent``, reserved
the same way in blocks of ``SENT_BLOCK``): the center's anti-replay window slides with the
highest seq it has seen from us, so that bound, not the counter, says which queued envelopes
have fallen out of it (gateway/delivery/relay.py re-signs only those). A file without it (older
versions) counts everything issued before the start as sent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import structlog

from gateway.errors import OutboxError

log = structlog.get_logger("alarmgw.seq")


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically and durably (write temp, fsync, rename, fsync the dir)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


SENT_BLOCK = 4096


class SeqCounter:
    """Hands out increasing seqs; one durable write per ``block`` numbers."""

    def __init__(self, path: str | Path, *, block: int = 1000) -> None:
        self._path = Path(path)
        self._block = block
        state = self._read()
        sent = 0
        if state is None:
            start = 1
        elif state["clean"]:
            start = int(state["next"])
            sent = int(state.get("sent", start - 1))
        else:
            start = int(state["reserved"]) + block
            sent = int(state.get("sent", start - 1)) + SENT_BLOCK  # as the counter's margin
        self._next = start
        self._reserved = start  # nothing reserved yet: the first next() writes a block
        self._sent = min(sent, start - 1)  # no seq at or above ``start`` was ever issued
        self._sent_reserved = self._sent
        self._closed = False

    def _read(self) -> dict[str, int | bool] | None:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise OutboxError(f"{self._path}: cannot read seq counter: {err.strerror}") from err
        try:
            state = json.loads(raw)
        except ValueError:
            state = None
        if not (
            isinstance(state, dict)
            and isinstance(state.get("next"), int)
            and isinstance(state.get("reserved"), int)
            and isinstance(state.get("clean"), bool)
            and isinstance(state.get("sent", 0), int)
            and state["next"] >= 1
            and state["reserved"] >= state["next"]
        ):
            # A corrupt counter must not make us reuse numbers: refuse to guess.
            raise OutboxError(
                f"{self._path}: seq counter is corrupt; restore it from a backup or "
                "set it above the highest seq the center has seen"
            )
        return state

    @property
    def peek(self) -> int:
        """The seq the next call to ``next`` returns."""
        return self._next

    def next(self) -> int:
        if self._closed:
            raise OutboxError("seq counter is closed")
        if self._next >= self._reserved:
            try:
                self._write(clean=False, reserved=self._next + self._block)
            except OSError as err:
                # Never refuse a seq to an alarm: go on unreserved (the restart margin covers
                # one block) and try again at the next number.
                if self._next % 100 == 0 or self._next == self._reserved:
                    log.critical("seq block not persisted", error=str(err), next=self._next)
            else:
                self._reserved = self._next + self._block
        value = self._next
        self._next += 1
        return value

    def advance(self, to: int) -> bool:
        """Move the counter up to ``to``, never back (a center's ``resync``, PROTOCOL.md);
        True when it moved. The new position is reserved durably at once."""
        if self._closed:
            raise OutboxError("seq counter is closed")
        if to <= self._next:
            return False
        self._next = to
        try:
            self._write(clean=False, reserved=to + self._block)
        except OSError as err:  # next() tries again at the block boundary
            log.critical("seq block not persisted", error=str(err), next=to)
            self._reserved = to
        else:
            self._reserved = to + self._block
        return True

    @property
    def sent_high(self) -> int:
        """No seq above this has left the gateway (0: none has): what the center may have
        seen from this signer at most."""
        return self._sent

    def mark_sent(self, seq: int) -> None:
        """Call before an envelope with ``seq`` is handed to the network (publish, will)."""
        if seq <= self._sent:
            return
        self._sent = seq
        if seq > self._sent_reserved:
            top = seq + SENT_BLOCK
            try:
                self._write(clean=False, sent=top)
            except OSError as err:  # never hold an alarm back; the restart margin covers it
                log.critical("sent seq bound not persisted", error=str(err), seq=seq)
            else:
                self._sent_reserved = top

    def _write(self, *, clean: bool, reserved: int | None = None, sent: int | None = None) -> None:
        top = self._reserved if reserved is None else reserved
        state = {
            "next": self._next,
            "reserved": top,
            "clean": clean,
            "sent": self._sent_reserved if sent is None else sent,
        }
        write_durably(self._path, json.dumps(state).encode())

    def close(self) -> None:
        """Clean stop: record the exact next value so no numbers are skipped."""
        if not self._closed:
            self._closed = True
            self._reserved = max(self._reserved, self._next)
            self._sent_reserved = self._sent  # exact at a clean stop
            try:
                self._write(clean=True)
            except OSError as err:  # the file still says "unclean": the next start jumps
                log.error("seq counter not saved at stop", error=str(err))
