"""The gateway's own health, device ``gateway``.

The checks themselves are gateway/checks.py, shared with ``alarmgw diag`` and ``/status``;
here each round's verdicts become conditions, with codes from PROTOCOL.md's list (its
bodies name no code per check; the choice is ours):

- ``330`` peripheral trouble: free space under ``state_dir`` below ``min_free_mb``. The
  outbox lives there; a full disk threatens durability, the gateway's core promise.
- ``626`` time inaccurate: the kernel says the clock is not synchronised (``adjtimex``,
  what ``timedatectl``'s "System clock synchronized" reads). Envelopes carry ``ts``; a Pi has
  no RTC and boots with a stale clock until NTP syncs.
- ``393`` maintenance: something a technician must renew or fix before it breaks: a TLS
  certificate (``[mqtt] cert_file``/``ca_file``) expiring within ``cert_warn_days`` (or
  expired), a private key file readable by group or others (``[gateway] key_file``,
  ``[mqtt] key_file``).

Any verdict other than ``ok`` opens its code's condition. The measurements are blocking
file-system calls, so they run in a worker thread.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from gateway import checks
from gateway.checks import Verdict, kernel_clock_synced
from gateway.monitors.reporter import TroubleReporter
from gateway.snapshots import SelfCheckSnapshot

log = structlog.get_logger("alarmgw.selfcheck")

__all__ = ["DEVICE", "Findings", "SelfCheck", "kernel_clock_synced"]

DEVICE = "gateway"
# (code, reason in the trouble envelope) per check of gateway/checks.py.
CODES: dict[str, tuple[str, str]] = {
    "disk": ("330", "disk"),
    "clock": ("626", "unsynced"),
    "certs": ("393", "cert"),
    "key": ("393", "key-mode"),
}


@dataclass(frozen=True, slots=True)
class Findings:
    """One round of measurements and their verdicts."""

    free_bytes: int | None
    clock_synced: bool | None
    verdicts: tuple[Verdict, ...]
    cert_days: tuple[tuple[str, float], ...] = ()

    def snapshot(self) -> SelfCheckSnapshot:
        return SelfCheckSnapshot(self.clock_synced, self.free_bytes, self.verdicts, self.cert_days)


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
        clock_probe: Callable[[], bool | None] = checks.clock_synced,
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
        free = self.disk_free_bytes()
        synced = self.clock_synced()
        now = checks.now_utc(self._wall())
        verdicts = [
            checks.disk(free, self.state_dir, min_free_bytes=self.min_free_bytes),
            checks.clock(synced, enabled=self.check_clock),
        ]
        verdicts += [
            checks.certificate_file("TLS certificate", p, now=now, warn_days=self.cert_warn_days)
            for p in self.cert_files
        ]
        verdicts += [checks.key_mode(p) for p in self.key_files]
        days: list[tuple[str, float]] = []
        for p in self.cert_files:
            try:
                left = checks.certificate_expiry(p) - now
            except (OSError, ValueError):
                continue  # its verdict above says why
            days.append((str(p), round(left.total_seconds() / 86400, 1)))
        return Findings(free, synced, tuple(verdicts), tuple(days))

    def snapshot(self) -> SelfCheckSnapshot:
        """The last round's findings; before the first round, the disk now and the clock
        unknown (its probe may run ``chronyc``: not on the event loop)."""
        if self.last is not None:
            return self.last.snapshot()
        return SelfCheckSnapshot(None, self.disk_free_bytes(), ())

    def apply(self, findings: Findings) -> None:
        """Report each code's condition from one round of findings."""
        self.last = findings
        for code in self.CODES:
            bad = [
                (CODES[v.check][1], v.found)
                for v in findings.verdicts
                if not v.ok and CODES[v.check][0] == code
            ]
            if bad:
                self._reporter.set(
                    DEVICE,
                    code,
                    True,
                    reason="+".join(sorted({reason for reason, _ in bad})),
                    detail="; ".join(found for _, found in bad),
                )
            else:
                self._reporter.set(DEVICE, code, False, detail="self-check passed")

    async def run(self) -> None:
        """Check every ``interval_s``, for ever."""
        while True:
            self.apply(await asyncio.to_thread(self.measure))
            await asyncio.sleep(self.interval_s)
