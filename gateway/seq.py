"""The per-signer ``seq`` counter of shared/spec/PROTOCOL.md: +1 per envelope, never reused,
survives restarts and power loss without a disk write per envelope.

Persisted in reserved blocks: the file records the top of the block in use and whether the
last stop was clean. While running, the file says "unclean, reserved up to R"; every number
handed out is below R. After a clean stop the file holds the exact next value; after a crash
(kill -9, power loss) the next start jumps to R, past anything that might have been used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gateway.errors import OutboxError


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


class SeqCounter:
    """Hands out increasing seqs; one durable write per ``block`` numbers."""

    def __init__(self, path: str | Path, *, block: int = 1000) -> None:
        self._path = Path(path)
        self._block = block
        state = self._read()
        if state is None:
            start = 1
        elif state["clean"]:
            start = int(state["next"])
        else:
            start = int(state["reserved"])
        self._next = start
        self._reserved = start  # nothing reserved yet: the first next() writes a block
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
            self._reserved = self._next + self._block
            self._write(clean=False)
        value = self._next
        self._next += 1
        return value

    def _write(self, *, clean: bool) -> None:
        state = {"next": self._next, "reserved": self._reserved, "clean": clean}
        write_durably(self._path, json.dumps(state).encode())

    def close(self) -> None:
        """Clean stop: record the exact next value so no numbers are skipped."""
        if not self._closed:
            self._reserved = max(self._reserved, self._next)
            self._write(clean=True)
            self._closed = True
