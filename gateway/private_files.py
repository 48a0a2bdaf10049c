"""Secrets and state only their owner may read: files 0600, directories 0700, whatever the
umask (outside systemd it is usually 022). An existing file or directory open to group or
others is used as it is, with one warning line: an operator may have had a reason."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import structlog

log = structlog.get_logger("alarmgw.files")

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def loose_mode(path: Path, what: str) -> str | None:
    """One line when ``path`` is open to group or others, else None."""
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return None
    wanted = PRIVATE_DIR if stat.S_ISDIR(st.st_mode) else PRIVATE_FILE
    return f"{path}: {what} has mode {mode:04o}, should be {wanted:04o} (chmod {wanted:o} {path})"


def warn_if_loose(path: Path, what: str) -> None:
    problem = loose_mode(path, what)
    if problem:
        log.warning("loose file permissions", problem=problem)


def private_dir(path: Path, what: str) -> None:
    """Create ``path`` (and missing parents) 0700, or warn when an existing one is looser."""
    if path.is_dir():
        warn_if_loose(path, what)
        return
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)


def private_file(path: Path, what: str) -> None:
    """Create ``path`` empty and 0600 before anything else does (SQLite keeps that mode and
    gives it to its -wal and -shm files), or warn when an existing one is looser."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        warn_if_loose(path, what)
        return
    os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write ``path`` whole with mode 0600, also when it exists with another mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), PRIVATE_FILE)
        fh.write(data)
