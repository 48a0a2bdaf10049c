"""``alarmgw diag`` for the recorder: read it once and say what a technician needs to know.

``recorder_report(cfg)`` returns (verdict, found, action) lines: first the recorder as a whole
(reachable, authenticated, channels, disks), then one line per channel (recording, retention)
and per disk. PASS, WARN or FAIL as in the rest of diag; an action for every non-PASS line.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from gateway.config import CameraSection
from gateway.monitors.camera.model import CameraStatus, channel_label, fmt_days
from gateway.monitors.camera.monitor import make_adapter
from gateway.monitors.http import StatusError, new_session

Verdict = Literal["PASS", "WARN", "FAIL"]
Line = tuple[Verdict, str, str]

FIXES = {
    "auth": "set the recorder's user in [camera] username and its password in password_file",
    "password-file": "fix password_file as the line says (chmod 600, owned by the daemon's user)",
    "unreachable": "check the recorder's power and network, and [camera] url",
    "timeout": "check the recorder's load and network; raise [camera] timeout_s if it is slow",
    "http-status": "check [camera] url (and that the recorder's API is enabled)",
    "bad-response": "check that [camera] adapter matches the recorder and url points at its API",
    "unsupported": "enable ONVIF Profile G on the recorder, or use its vendor adapter",
    "no-recordings": "check the recorder's recording schedule and disks",
}


def recorder_report(cfg: CameraSection) -> list[Line]:
    """Read the recorder once (blocking; at most ``cfg.timeout_s``)."""
    return asyncio.run(_report(cfg))


async def _report(cfg: CameraSection) -> list[Line]:
    adapter = make_adapter(cfg)
    try:
        async with new_session() as session, asyncio.timeout(cfg.timeout_s):
            status = await adapter.fetch(session, timeout_s=cfg.timeout_s)
    except StatusError as err:
        return [("FAIL", f"{cfg.url}: {err.reason}: {err.detail}", FIXES.get(err.reason, ""))]
    except TimeoutError:
        return [("FAIL", f"{cfg.url}: no answer within {cfg.timeout_s:g} s", FIXES["timeout"])]
    return describe(cfg, status)


def describe(cfg: CameraSection, status: CameraStatus) -> list[Line]:
    """The lines for a recorder that answered."""
    who = f", authenticated as {cfg.username!r}" if cfg.adapter != "json" else ""
    parts = [f"{len(status.channels)} channels"] if status.channels else []
    parts += [f"{len(status.disks)} disks"] if status.disks else []
    lines: list[Line] = [
        ("PASS", f"{cfg.url} ({cfg.adapter}): reachable{who}; {', '.join(parts) or 'answered'}", "")
    ]
    need = cfg.required_days
    fix_days = f"free space or add disks on the recorder, or lower its bitrate (policy {need} d)"
    if not status.channels:
        ok = status.recording and status.retention_days >= need
        found = (
            f"{'recording' if status.recording else 'NOT recording'}, retention "
            f"{fmt_days(status.retention_days)} of {need} days"
        )
        lines.append(("PASS" if ok else "FAIL", found, "" if ok else fix_days))
    for ch in status.channels:
        days = ch.retention_days
        held = "nothing held" if days is None else f"retention {fmt_days(days)} of {need} days"
        found = (
            f"{channel_label(ch.name)}: {'recording' if ch.recording else 'NOT recording'}, {held}"
        )
        if not ch.recording:
            lines.append(("FAIL", found, "check the camera, its cable and its recording schedule"))
        elif (days or 0.0) < need:
            lines.append(("FAIL", found, fix_days))
        else:
            lines.append(("PASS", found, ""))
    for disk in status.disks:
        size = ""
        if disk.free_mb is not None and disk.capacity_mb:
            size = f", {disk.free_mb / 1024:,.0f} of {disk.capacity_mb / 1024:,.0f} GB free"
        found = f"disk {disk.name}: {disk.state}{size}"
        lines.append(("PASS", found, "") if disk.ok else ("FAIL", found, "replace or reformat it"))
    return lines
