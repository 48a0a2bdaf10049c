"""One set of checks for the gateway's own conditions, shared by ``alarmgw diag``, the
self-checks (trouble envelopes), ``/status``, ``/healthz`` and ``alarmgw status``.

Each check takes what was measured and returns a ``Verdict``: ``ok``, ``warning`` or
``failing``, what was found, and for anything but ``ok`` what a technician should do. The
measuring (a clock probe, reading a certificate, statvfs) is separate and small, so the
same condition gives the same verdict wherever it is looked at.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

Level = Literal["ok", "warning", "failing"]
RANK: dict[Level, int] = {"ok": 0, "warning": 1, "failing": 2}

# Below this much free space an alarm commit can no longer be counted on (one committed alarm
# writes some KB of WAL, and SQLite needs room for its journal).
DISK_CRITICAL_BYTES = 4 * 1024 * 1024
TIME_ERROR = 5  # adjtimex(2) return value: clock not synchronised
STA_UNSYNC = 0x0040  # adjtimex(2) status bit: clock not synchronised
NTP_FIX = "check NTP (timedatectl timesync-status, chronyc tracking); the center needs it"


@dataclass(frozen=True, slots=True)
class Verdict:
    """``level`` of one condition, what was ``found``, and the ``fix`` (empty when ok)."""

    check: str
    level: Level
    found: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.level == "ok"


def ok(check: str, found: str) -> Verdict:
    return Verdict(check, "ok", found)


def warning(check: str, found: str, fix: str) -> Verdict:
    return Verdict(check, "warning", found, fix)


def failing(check: str, found: str, fix: str) -> Verdict:
    return Verdict(check, "failing", found, fix)


def worst(verdicts: Iterable[Verdict]) -> Level:
    """The most severe level among ``verdicts`` (``ok`` for none)."""
    return max((v.level for v in verdicts), key=RANK.__getitem__, default="ok")


# --- clock ----------------------------------------------------------------------------------


class _Timex(ctypes.Structure):
    # struct timex up to ``status`` (adjtimex(2)); the kernel fills the rest of the buffer.
    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("rest", ctypes.c_byte * 256),  # room for every layout of the remaining fields
    )


def kernel_clock_synced() -> bool | None:
    """True when the kernel's clock discipline says "synchronised" (what NTP, chrony and
    timesyncd set, and what ``timedatectl`` shows), False when not, None where the kernel
    cannot be asked (not Linux)."""
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


TIMESYNC_DIR = Path("/run/systemd/timesync")
CHRONY_LEAP_FIELD = 13  # ``chronyc -c tracking``: the 14th CSV field is the leap status


def chrony_synced(chronyc: str | None, *, timeout_s: float = 2.0) -> bool | None:
    """chronyd's view (``chronyc -c tracking``: leap status ``Normal`` when synchronised);
    None without chronyc or when chronyd does not answer."""
    if chronyc is None:
        return None
    try:
        done = subprocess.run(
            [chronyc, "-c", "tracking"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    fields = done.stdout.strip().split(",")
    if done.returncode != 0 or len(fields) <= CHRONY_LEAP_FIELD:
        return None
    return fields[CHRONY_LEAP_FIELD].strip() == "Normal"


def clock_synced(
    *,
    timesync_dir: Path = TIMESYNC_DIR,
    chronyc: str | None = None,
    adjtimex: Callable[[], bool | None] = kernel_clock_synced,
) -> bool | None:
    """Whether the system clock is synchronised, from a source the daemon's sandbox allows
    (``ProtectClock=yes`` makes adjtimex fail): systemd-timesyncd's ``synchronized`` flag
    file, chronyd through ``chronyc`` (found on PATH unless given), then the kernel. None
    when none of them can tell."""
    if (timesync_dir / "synchronized").exists():
        return True
    chrony = chrony_synced(chronyc if chronyc is not None else shutil.which("chronyc"))
    if chrony is not None:
        return chrony
    kernel = adjtimex()
    if kernel is not None:
        return kernel
    if timesync_dir.is_dir():  # timesyncd runs and has not synchronised since boot
        return False
    return None


def clock(synced: bool | None, *, enabled: bool = True) -> Verdict:
    """The system clock (``[selfcheck] clock`` turns the check off)."""
    if not enabled:
        return ok("clock", "not checked ([selfcheck] clock = false)")
    if synced is None:
        return warning("clock", "unknown: neither timesyncd, chrony nor the kernel told", NTP_FIX)
    if not synced:
        return failing("clock", "system clock NOT synchronised (NTP)", NTP_FIX)
    return ok("clock", "synchronised")


# --- certificates and keys ------------------------------------------------------------------


def certificate_expiry(path: Path) -> datetime:
    """When the first certificate in a PEM file (a bundle allowed) expires.
    OSError or ValueError when it cannot be read."""
    from cryptography import x509  # noqa: PLC0415 - cryptography only when TLS is used

    certs = x509.load_pem_x509_certificates(path.read_bytes())
    return min(c.not_valid_after_utc for c in certs)


def certificate(what: str, not_after: datetime, *, now: datetime, warn_days: int) -> Verdict:
    """A certificate expiring within ``warn_days`` (``[selfcheck] cert_warn_days``)."""
    days = (not_after - now).total_seconds() / 86400
    if days < 0:
        return failing("certs", f"{what} expired on {not_after:%Y-%m-%d}", "renew it now")
    if days < warn_days:
        return warning(
            "certs",
            f"{what} expires in {days:.0f} days ({not_after:%Y-%m-%d})",
            "renew it soon",
        )
    return ok("certs", f"{what}: valid for {days:.0f} more days")


def certificate_file(what: str, path: Path, *, now: datetime, warn_days: int) -> Verdict:
    """``certificate`` for a PEM file; an unreadable file fails."""
    try:
        not_after = certificate_expiry(path)
    except (OSError, ValueError) as err:
        return failing("certs", f"{what} {path}: unreadable: {err}"[:160], "install a valid PEM")
    return certificate(f"{what} {path.name}", not_after, now=now, warn_days=warn_days)


def key_mode(path: Path) -> Verdict:
    """A private key file must be readable by its owner only."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as err:
        return failing("key", f"{path}: {err.strerror or err}", "restore the key file")
    if mode & 0o077:
        return failing("key", f"{path}: private key has mode {mode:04o}", f"chmod 600 {path}")
    return ok("key", f"{path}: mode {mode:04o}")


def now_utc(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, UTC)


# --- disk -----------------------------------------------------------------------------------


def disk_free_bytes(path: Path) -> int | None:
    """Free bytes for an unprivileged writer on the file system of ``path`` (or of its
    nearest existing parent: the state dir is created at first start); None if unknown."""
    where = path
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        return int(shutil.disk_usage(where).free)
    except OSError:
        return None


def disk(free: int | None, where: Path, *, min_free_bytes: int) -> Verdict:
    """Free space for the outbox: failing below what an alarm commit needs, a warning below
    ``[selfcheck] min_free_mb``."""
    if free is None:
        return failing("disk", f"cannot measure free space in {where}", f"check {where} exists")
    found = f"{free // 2**20:,} MB free in {where}"
    if free < DISK_CRITICAL_BYTES:
        return failing("disk", f"disk nearly full: {found}", "free space NOW: alarms need it")
    if free < min_free_bytes:
        return warning(
            "disk",
            f"disk almost full: {found}, minimum {min_free_bytes // 2**20} MB",
            "free some space (old logs, journalctl --vacuum-size)",
        )
    return ok("disk", found)


def outbox_writable(path: Path) -> Verdict:
    """The outbox file and its directory must be writable by the daemon."""
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        return failing("outbox", f"outbox not writable: {path}", "check its owner and mode")
    return ok("outbox", f"{path}: writable")


# --- center key ---------------------------------------------------------------------------

CENTER_KEY_FIX = "install the center's current public key and list it in [mqtt] center_keys"


def center_key(
    refused: Iterable[tuple[str, int, int, str | None]], trusted: Collection[str]
) -> Verdict:
    """The center's acks, from those ignored per ``(reason, count, since_ack, last_kid)``:
    acks refused for their key or signature since the last one that verified fail (every
    alarm stays unacknowledged: a wrong or rotated center key); acks for another gateway
    warn; refusals followed by a good ack are history."""
    trust = ", ".join(sorted(trusted)) or "no key"
    total = 0
    for reason, count, since_ack, kid in refused:
        total += count
        if not since_ack:
            continue
        if reason == "unknown-kid":
            return failing(
                "center-key",
                f"{since_ack} ack(s) refused: the center signs with kid {kid}; "
                f"this gateway trusts {trust}",
                CENTER_KEY_FIX,
            )
        if reason == "bad-signature":
            return failing(
                "center-key",
                f"{since_ack} ack(s) refused: signatures of kid {kid} do not verify with "
                "the key trusted under that kid",
                "replace that center key file with the center's current public key",
            )
        if reason == "wrong-target":
            return warning(
                "center-key",
                f"{since_ack} ack(s) for another gateway ignored",
                "check [gateway] site and id against the center's registration",
            )
        return warning("center-key", f"{since_ack} ack(s) ignored ({reason})", "see alarmgw diag")
    earlier = f"; {total} ignored before the last good ack" if total else ""
    return ok("center-key", f"acks verify (trusted: {trust}){earlier}")


# --- devices --------------------------------------------------------------------------------

BOLLARD_FAILING = frozenset({"fault", "stuck", "unreachable", "gpio"})


def bollard(state: str, reasons: Collection[str], detail: str) -> Verdict:
    """The bollard from its state and its monitor's trouble (``reasons``, e.g. ``fault``,
    ``stuck``, ``down``, ``unreachable``; ``detail`` their words): a fault, a stuck bollard
    or one that cannot be read fails; down for too long (the school's vehicle protection
    not in place) is a warning."""
    if not reasons:
        return ok("bollard", f"bollard {state}")
    if set(reasons) & BOLLARD_FAILING:
        return failing("bollard", detail, "check the bollard controller, its switches and wiring")
    return warning("bollard", detail, "raise the bollard, or tell the school it is down")


CAMERA_WARNING = frozenset({"retention"})


def camera(reasons: Collection[str], detail: str, *, polled: bool, facts: str = "") -> Verdict:
    """The recorder from its monitor's trouble (``reasons``, e.g. ``retention``,
    ``not-recording``, ``unreachable``; ``detail`` their words): retention below
    ``required_days`` alone is a warning; not recording, not answering or anything else the
    monitor finds fails. Before the first answer (``polled`` false) it is a warning."""
    if reasons:
        if set(reasons) - CAMERA_WARNING:
            return failing("camera", detail, "check the recorder, its disks and its URL")
        return warning("camera", detail, "give the recorder more storage or lower its quality")
    if not polled:
        return warning("camera", "recorder not asked yet", "wait for the first poll")
    return ok("camera", facts or "recording")


GPIO_FIX = (
    "check the [[button]] pin (BCM number), that nothing else holds it (gpioinfo), "
    "and the GPIO driver (alarmgw diag)"
)


def gpio_button(name: str, pin: int, *, started: bool, problem: str | None, fix: str) -> Verdict:
    """A GPIO button whose pins cannot be claimed cannot raise an alarm: that fails."""
    if problem is not None:
        return failing("button", problem, fix or GPIO_FIX)
    if not started:
        return warning("button", f"{name}: GPIO{pin} not claimed yet", "wait, or see the journal")
    return ok("button", f"{name}: GPIO{pin} claimed")


def serial_link(
    name: str,
    *,
    connected: bool,
    stale: bool,
    last_frame_age_s: float | None,
    limit_s: float,
) -> Verdict:
    """A button box: an unplugged port or a silent box fails (its presses cannot arrive);
    waiting for the first frame after start is a warning."""
    if not connected:
        return failing("serial", f"{name}: serial port not open", "check the cable and adapter")
    if stale:
        age = (
            "no valid frame yet" if last_frame_age_s is None else f"silent {last_frame_age_s:.0f} s"
        )
        return failing(
            "serial", f"{name}: {age} (limit {limit_s:g} s)", "check the box's power and wiring"
        )
    if last_frame_age_s is None:
        return warning("serial", f"{name}: no frame from the box yet", "wait, or check the box")
    return ok("serial", f"{name}: last frame {last_frame_age_s:.0f} s ago")
