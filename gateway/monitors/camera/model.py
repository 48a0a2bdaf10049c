"""What a recorder says about itself, whichever adapter read it, and what is wrong with that.

``CameraStatus`` is the whole recorder: ``recording`` and ``retention_days`` (for a recorder
read per channel: every channel recording, and the worst channel's retention), plus the
``channels`` and ``disks`` a vendor adapter could read. ``problems`` turns a status and the
policy into the troubles a technician acts on, each a (reason, detail) pair.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

DEVICE, CODE = "camera", "393"


def _check_days(days: float | None) -> None:
    if days is not None and not (math.isfinite(days) and days >= 0):
        raise ValueError(f"retention_days must be >= 0, got {days!r}")


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    """One camera channel (ONVIF: one recording). ``retention_days`` is None when the
    recorder holds nothing for it."""

    name: str
    recording: bool
    retention_days: float | None

    def __post_init__(self) -> None:
        _check_days(self.retention_days)


@dataclass(frozen=True, slots=True)
class DiskStatus:
    """One recorder disk: ``ok`` false when it failed or is full; ``state`` as the recorder
    says it; sizes in MB when known."""

    name: str
    ok: bool
    state: str
    free_mb: float | None = None
    capacity_mb: float | None = None


@dataclass(frozen=True, slots=True)
class CameraStatus:
    """What a recorder says about itself."""

    recording: bool
    retention_days: float
    channels: tuple[ChannelStatus, ...] = ()
    disks: tuple[DiskStatus, ...] = ()

    def __post_init__(self) -> None:
        _check_days(self.retention_days)

    @classmethod
    def of(
        cls, channels: Iterable[ChannelStatus], disks: Iterable[DiskStatus] = ()
    ) -> CameraStatus:
        """The recorder as a whole from its channels: recording when every channel is, and
        the worst channel's retention (0 when a channel holds nothing)."""
        chans = tuple(channels)
        days = [c.retention_days or 0.0 for c in chans]
        return cls(all(c.recording for c in chans), min(days, default=0.0), chans, tuple(disks))


class NvrAdapter(Protocol):
    """One recorder make: ask it for its status. Raise ``StatusError`` on any failure."""

    async def fetch(self, session: aiohttp.ClientSession, *, timeout_s: float) -> CameraStatus:
        """The recorder's status now."""
        ...


def fmt_days(days: float) -> str:
    """``12.0`` → ``"12"``, ``12.46`` → ``"12.5"``."""
    return f"{round(days, 1):g}"


def channel_label(name: str) -> str:
    """``3`` → ``channel 3``; ``Gate north`` → ``channel "Gate north"``."""
    return f"channel {name}" if name.isdigit() else f'channel "{name}"'


def _channels_text(names: list[str], limit: int = 4) -> str:
    if len(names) == 1:
        return channel_label(names[0])
    shown = ", ".join(n if n.isdigit() else f'"{n}"' for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"channel{'s' if len(names) > 1 else ''} {shown}{more}"


def problems(status: CameraStatus, required_days: int) -> list[tuple[str, str]]:
    """The troubles in ``status`` as (reason, detail): the reason names the channels or disks
    (a new channel going wrong is news), the detail says what to fix."""
    if not status.channels:
        found = []
        if not status.recording:
            found.append(("not-recording", "recorder is not recording"))
        if status.retention_days < required_days:
            found.append(
                (
                    "retention",
                    f"retention {status.retention_days:g} days, policy {required_days}",
                )
            )
        found += _disk_problems(status.disks)
        return found
    found = []
    stopped = [c.name for c in status.channels if not c.recording]
    if stopped:
        found.append(
            (
                f"not-recording:{','.join(stopped)}",
                f"recording stopped on {_channels_text(stopped)}",
            )
        )
    short = sorted(
        (c for c in status.channels if (c.retention_days or 0.0) < required_days),
        key=lambda c: c.retention_days or 0.0,
    )
    if len(short) == 1:
        c = short[0]
        found.append(
            (
                f"retention:{c.name}",
                f"retention {fmt_days(c.retention_days or 0.0)} of {required_days} days "
                f"on {channel_label(c.name)}",
            )
        )
    elif short:
        worst = short[0]
        found.append(
            (
                f"retention:{','.join(sorted(c.name for c in short))}",
                f"retention below {required_days} days on {len(short)} channels, worst "
                f"{fmt_days(worst.retention_days or 0.0)} days on {channel_label(worst.name)}",
            )
        )
    found += _disk_problems(status.disks)
    return found


def _disk_problems(disks: tuple[DiskStatus, ...]) -> list[tuple[str, str]]:
    bad = [d for d in disks if not d.ok]
    return [
        (
            f"disk:{d.name}",
            f"disk {d.name} full"
            if d.state.lower() == "full"
            else f"disk {d.name} failed ({d.state})",
        )
        for d in bad
    ]


def clean_name(text: object, limit: int = 32) -> str:
    """A channel or disk name from a recorder, printable and short (it is untrusted text)."""
    name = "".join(ch if ch.isprintable() else "?" for ch in str(text)).strip()
    return name[:limit] or "?"
