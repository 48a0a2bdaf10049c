"""The recorder's password, from ``[camera] password_file``.

The file must be a regular file owned by the daemon's user and readable by nobody else (mode
0600 or 0400), like the private key files; anything looser is refused with a line saying how
to fix it, and the recorder is not asked with a password others could read. The password is
the first line of the file (a trailing newline is not part of it) and is never put in a
message.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gateway.monitors.http import StatusError

MAX_BYTES = 4096


def read_password(path: Path) -> str:
    """The password in ``path``; StatusError ``password-file`` on any problem."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        raise StatusError("password-file", f"{path}: cannot open: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        problem = mode_problem(path, st)
        if problem:
            raise StatusError("password-file", problem)
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise StatusError("password-file", f"{path}: longer than {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise StatusError("password-file", f"{path}: not UTF-8 text") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise StatusError("password-file", f"{path}: empty")
    return password


def mode_problem(path: Path, st: os.stat_result) -> str | None:
    """A one-line problem when ``st`` is not a private regular file of this user."""
    if not stat.S_ISREG(st.st_mode):
        return f"{path}: not a regular file"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return f"{path}: mode {mode:04o}, others may read it; chmod 600 it"
    if st.st_uid != os.geteuid():
        return f"{path}: owned by uid {st.st_uid}, not the daemon's user (chown it)"
    return None


class Login:
    """``username`` and the password file, with a memory of refusals: after the recorder
    refused a password it is not offered again until the file changes or ``retry_s`` passed,
    so polling does not get the account locked (recorders lock it after a few failures)."""

    def __init__(self, username: str, password_file: Path | None, *, retry_s: float = 900.0):
        self.username = username
        self.password_file = password_file
        self.retry_s = retry_s
        self._refused: tuple[str, float] | None = None  # (password, monotonic time)

    def password(self, now: float) -> str:
        """The password to offer now; StatusError ``password-file`` or ``auth``."""
        if self.password_file is None:
            raise StatusError("password-file", "no password_file configured")
        password = read_password(self.password_file)
        if self._refused is not None:
            refused, at = self._refused
            if refused == password and now - at < self.retry_s:
                raise self.refusal()
            self._refused = None
        return password

    def refused(self, password: str, now: float) -> StatusError:
        """Remember that ``password`` was refused; the StatusError to report."""
        self._refused = (password, now)
        return self.refusal()

    def refusal(self) -> StatusError:
        return StatusError(
            "auth",
            f"recorder refused user {self.username!r}: wrong username or password "
            f"(check {self.password_file}; retried when it changes or after "
            f"{self.retry_s / 60:g} min)",
        )
