"""The gateway's own health (issue 3 "Gateway self-checks"), device ``gateway``.

Codes, from PROTOCOL.md's list (its bodies name no code per check; the choice is ours):

- ``330`` peripheral trouble: free space under ``state_dir`` below ``min_free_mb``. The
  outbox lives there; a full disk threatens durability, the gateway's core promise.
- ``626`` time inaccurate: the kernel says the clock is not synchronised (``adjtimex``,
  what ``timedatectl``'s "System clock synchronized" reads). Envelopes carry ``ts``; a Pi has
  no RTC and boots with a stale clock until NTP syncs.
- ``393`` maintenance: something a technician must renew or fix before it breaks: a TLS
  certificate (``[mqtt] cert_file``/``ca_file``) expiring within ``cert_warn_days`` (or
  expired), a private key file readable by group or others (``[gateway] key_file``,
  ``[mqtt] key_file``).

The measurements are blocking file-system calls, so they run in a worker thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog
from cryptography import x509

from gateway.contract.signing import key_mode_problem
from gateway.monitors.reporter import TroubleReporter

log = structlog.get_logger("alarmgw.selfcheck")

DEVICE = "gateway"
TIME_ERROR = 5  # adjtimex(2) return value: clock not synchronised
STA_UNSYNC = 0x0040  # adjtimex(2) status bit: clock not synchronised


class _Timex(ctypes.Structure):
    # struct timex up to ``status`` (adjtimex(2)); the kernel fills the rest of the buffer.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("rest", ctypes.c_byte * 256),  # room for every layout of the remaining fields
    ]


def kernel_clock_synced() -> bool | None:
    """True when the kernel's clock discipline says "synchronised" (NTP/chrony/timesyncd),
    False when not, None where it cannot be asked (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        tx = _Timex()  # modes = 0: read only, needs no privilege
        rc = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if rc < 0:
        return None
    return rc != TIME_ERROR and not tx.status & STA_UNSYNC


def cert_expiry(paths: Sequence[Path]) -> tuple[Path, datetime] | None:
    """The certificate that expires first among the PEM files (bundles allowed)."""
    first: tuple[Path, datetime] | None = None
    for path in paths:
        for cert in x509.load_pem_x509_certificates(path.read_bytes()):
            end = cert.not_valid_after_utc
            if first is None or end < first[1]:
                first = (path, end)
    return first


@dataclass(frozen=True, slots=True)
class Findings:
    """One round of measurements; ``problems`` maps a code to (reason, detail) pairs."""

    free_bytes: int | None
    clock_synced: bool | None
    problems: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


class SelfCheck:
    """Measures every ``interval_s`` and reports conditions (gateway, 330/626/393)."""

    CODES = ("330", "626", "393")

    def __init__(
        self,
        reporter: TroubleReporter,
        *,
        state_dir: Path,
        interval_s: float = 60.0,
        min_free_mb: int = 100,
        check_clock: bool = True,
        cert_warn_days: int = 30,
        cert_files: Sequence[Path] = (),
        key_files: Sequence[Path] = (),
        clock_probe: Callable[[], bool | None] = kernel_clock_synced,
        disk_free: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._reporter = reporter
        self.state_dir = state_dir
        self.interval_s = interval_s
        self.min_free_bytes = min_free_mb * 1024 * 1024
        self.check_clock = check_clock
        self.cert_warn_days = cert_warn_days
        self.cert_files = list(cert_files)
        self.key_files = list(key_files)
        self._clock_probe = clock_probe
        self._disk_free = disk_free
        self._wall = wall
        self.last: Findings | None = None

    def disk_free_bytes(self) -> int | None:
        """Free bytes under ``state_dir`` now (None when it cannot be measured)."""
        try:
            return int(self._disk_free(self.state_dir))
        except OSError:
            return None

    def clock_synced(self) -> bool | None:
        return self._clock_probe()

    def measure(self) -> Findings:
        """One round of checks (blocking: call it in a thread)."""
        problems: dict[str, list[tuple[str, str]]] = {code: [] for code in self.CODES}
        free = self.disk_free_bytes()
        if free is None:
            problems["330"].append(("disk", f"cannot measure free space in {self.state_dir}"))
        elif free < self.min_free_bytes:
            problems["330"].append(
                (
                    "disk",
                    f"disk almost full: {free // 2**20} MB free in {self.state_dir}, "
                    f"minimum {self.min_free_bytes // 2**20} MB",
                )
            )
        synced = self.clock_synced()
        if self.check_clock and synced is False:
            problems["626"].append(("unsynced", "system clock not synchronised (NTP)"))
        problems["393"] += self._certificate_problems() + self._key_problems()
        return Findings(free, synced, problems)

    def _certificate_problems(self) -> list[tuple[str, str]]:
        if not self.cert_files:
            return []
        try:
            first = cert_expiry(self.cert_files)
        except (OSError, ValueError) as err:
            return [("cert", f"TLS certificate unreadable: {err}"[:120])]
        if first is None:
            return []
        path, end = first
        days = (end - datetime.fromtimestamp(self._wall(), UTC)).total_seconds() / 86400
        if days < 0:
            return [("cert", f"TLS certificate {path.name} expired on {end:%Y-%m-%d}")]
        if days < self.cert_warn_days:
            return [
                ("cert", f"TLS certificate {path.name} expires in {days:.0f} days ({end:%Y-%m-%d})")
            ]
        return []

    def _key_problems(self) -> list[tuple[str, str]]:
        found = []
        for path in self.key_files:
            try:
                problem = key_mode_problem(path)
            except OSError as err:
                problem = f"{path}: {err.strerror or err}"
            if problem:
                found.append(("key-mode", problem))
        return found

    def apply(self, findings: Findings) -> None:
        """Report each code's condition from one round of findings."""
        self.last = findings
        for code in self.CODES:
            problems = findings.problems.get(code, [])
            if problems:
                self._reporter.set(
                    DEVICE,
                    code,
                    True,
                    reason="+".join(sorted({reason for reason, _ in problems})),
                    detail="; ".join(detail for _, detail in problems),
                )
            else:
                self._reporter.set(DEVICE, code, False, detail="self-check passed")

    async def run(self) -> None:
        """Check every ``interval_s``, for ever."""
        while True:
            self.apply(await asyncio.to_thread(self.measure))
            await asyncio.sleep(self.interval_s)
