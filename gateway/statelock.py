"""One daemon per state directory: an exclusive ``flock`` on ``STATE_DIR/daemon.lock``.

Two daemons on one state directory (``alarmgw run`` by hand while systemd runs it, a second
unit pointing at the same path) would share the outbox and the seq counter, sign different
envelopes with the same seq, and knock each other off the broker under the same client id.
The lock is held for the life of the process and released by the kernel when it ends, even
after kill -9, so a stale lock file never blocks a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from gateway.errors import AlarmgwError

LOCK_NAME = "daemon.lock"


class StateDirLocked(AlarmgwError):
    """Another process holds the state directory."""


class StateLock:
    """``StateLock(state_dir).acquire()`` or raise ``StateDirLocked`` naming the holder."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise AlarmgwError(f"{self.path}: cannot open the lock file: {err.strerror}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise StateDirLocked(
                f"{self.path.parent}: already in use by {who} (another alarmgw run on this "
                "state_dir?); stop it first, e.g. 'systemctl stop alarmgw'"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
