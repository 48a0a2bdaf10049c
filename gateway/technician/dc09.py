"""The DC-09 path as a technician sees it: its verdict, its ``/status`` section, its lines in
``alarmgw status`` and its ``/metrics`` families, from the transmitter's snapshot
(gateway/delivery/dc09/snapshot.py) and what the outbox file says is still owed to the
receiver (``read_owed`` in gateway/technician/status.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway import checks
from gateway.delivery.dc09.snapshot import Dc09Snapshot
from gateway.technician.metrics import Family

CHECK = "dc09"
# A clock this far from the receiver's is worth fixing, although frames are re-stamped with
# the receiver's time after its NAK.
OFFSET_WARN_S = 10.0
# What to do, by why the last attempt failed.
FIXES = {
    "connect": "is the receiver up and listening? check [dc09] host and port (and "
    "secondary_host) and the firewall",
    "timeout": "no answer: is the receiver up (over UDP a receiver that is down is silent)? "
    "check [dc09] host, port, transport, account and key_file with its operator",
    "closed": "the receiver closed the connection: check [dc09] account and key_file with "
    "its operator",
    "nak": "the receiver refuses our frames even stamped with its own time: check [dc09] "
    "key_file and account with its operator",
    "duh": "the receiver does not understand our frames: check [dc09] account, receiver, "
    "line and key_file against its settings",
}


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    return f"{s} s" if s < 120 else f"{s // 60} min" if s < 7200 else f"{s // 3600} h"


def verdict(snap: Dc09Snapshot) -> checks.Verdict:
    """ok while the receiver acknowledges; warning while it has failed for less than
    ``trouble_after_s`` (the transmitter retries) or our clock is far from the receiver's;
    failing once trouble 350 is due, at once on ``DUH``."""
    where = f"DC-09 receiver {snap.target}"
    if snap.state == "starting":
        return checks.ok(CHECK, f"{where}: not tested yet (a NULL within {snap.supervision_s:g} s)")
    if snap.state == "down":
        failing_for = snap.failing_for_s or 0.0
        found = f"{where} not acknowledging for {_ago(failing_for)}: {snap.last_error}"
        fix = FIXES.get(snap.error_kind or "", "alarmgw diag")
        due = failing_for >= snap.trouble_after_s or snap.trouble_open
        if due or snap.error_kind == "duh":
            return checks.failing(CHECK, found, fix)
        return checks.warning(CHECK, found, fix)
    if abs(snap.offset_s) > OFFSET_WARN_S:
        side = "behind" if snap.offset_s > 0 else "ahead of"
        found = (
            f"{where} acknowledges, but our clock is {abs(snap.offset_s):.0f} s {side} its "
            "time (frames are re-stamped with its time)"
        )
        return checks.warning(CHECK, found, checks.NTP_FIX)
    return checks.ok(CHECK, f"{where} acknowledges (last ACK {_ago(snap.last_ack_age_s)} ago)")


def section(snap: Dc09Snapshot, owed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``/status`` ``dc09`` section; ``owed``: ``read_owed``'s ``by_path["dc09"]``."""
    v = verdict(snap)
    owed = owed or {}
    return {
        "ok": v.ok,
        "state": snap.state,
        "receiver": snap.target,
        "receivers": list(snap.receivers),
        "transport": snap.transport,
        "encrypted": snap.encrypted,
        "account": snap.account,
        "connected": snap.connected,
        "last_ack_age_s": snap.last_ack_age_s,
        "failing_for_s": snap.failing_for_s,
        "last_error": snap.last_error,
        "error_kind": snap.error_kind,
        "offset_s": snap.offset_s,
        "owed": owed.get("pending"),
        "oldest_owed_age_s": owed.get("oldest_age_s"),
        "trouble_open": snap.trouble_open,
        "counters": {
            "frames_sent": snap.frames_sent,
            "acks": snap.acks,
            "naks": snap.naks,
            "duhs": snap.duhs,
            "failures": snap.failures,
            "resyncs": snap.resyncs,
        },
        "verdict": {"check": v.check, "level": v.level, "found": v.found, "fix": v.fix},
    }


def status_lines(sec: Mapping[str, Any], ago: Callable[[float | None], str]) -> list[str]:
    """``alarmgw status``'s lines for a ``/status`` ``dc09`` section (label column 12;
    ``ago`` formats seconds). The reason and the fix are in the verdict, under Health."""
    state = {"up": "up", "down": "DOWN", "starting": "not tested yet"}.get(
        str(sec["state"]), str(sec["state"])
    )
    how = f"{str(sec['transport']).upper()}, {'AES' if sec['encrypted'] else 'plain'}"
    head = f"DC-09       {state} {sec['receiver']} ({how})"
    acked = sec.get("last_ack_age_s")
    facts = f"last ACK {ago(acked)} ago" if acked is not None else "no ACK yet"
    if sec["state"] == "down" and sec.get("failing_for_s") is not None:
        facts = f"down for {ago(sec['failing_for_s'])}, {facts}"
    owed = sec.get("owed")
    if owed:
        facts += f", {owed} owed, oldest {ago(sec.get('oldest_owed_age_s'))}"
    elif owed == 0:
        facts += ", nothing owed"
    lines = [head, f"            {facts}"]
    if sec["state"] == "down" and sec.get("last_error"):
        lines.append(f"            last error: {sec['last_error']}")
    c = sec["counters"]
    lines.append(
        f"            NAK {c['naks']}, DUH {c['duhs']}, "
        f"clock offset {float(sec['offset_s']):+.0f} s"
    )
    return lines


def families(snap: Dc09Snapshot, owed: Mapping[str, Any] | None = None) -> list[Family]:
    """``/metrics`` for the DC-09 path. A figure not known yet (no ACK since the start) is
    left out, not zero."""
    owed = owed or {}
    fams = [
        Family(
            "alarmgw_dc09_info", "gauge", "The DC-09 receiver the next frame goes to (always 1)."
        ).add(
            1,
            {
                "receiver": snap.target,
                "transport": snap.transport,
                "encrypted": "true" if snap.encrypted else "false",
            },
        ),
        Family("alarmgw_dc09_up", "gauge", "1 when the receiver acknowledged the last frame.").add(
            1 if snap.state == "up" else 0
        ),
        Family(
            "alarmgw_dc09_connected",
            "gauge",
            "1 while a connection (a UDP endpoint) to the receiver is open.",
        ).add(1 if snap.connected else 0),
    ]
    if snap.last_ack_age_s is not None:
        fams.append(
            Family(
                "alarmgw_dc09_last_ack_age_seconds",
                "gauge",
                "Seconds since the receiver last acknowledged a frame (NULLs included).",
            ).add(snap.last_ack_age_s)
        )
    if "pending" in owed:
        fams.append(
            Family(
                "alarmgw_dc09_queue_owed",
                "gauge",
                "Events waiting for the DC-09 receiver's ACK.",
            ).add(owed["pending"])
        )
        fams.append(
            Family(
                "alarmgw_dc09_queue_oldest_age_seconds",
                "gauge",
                "Age of the oldest event waiting for the DC-09 receiver's ACK.",
            ).add(owed.get("oldest_age_s") or 0)
        )
    answers = Family("alarmgw_dc09_answers_total", "counter", "Receiver answers, by kind.")
    for kind, n in (("ACK", snap.acks), ("NAK", snap.naks), ("DUH", snap.duhs)):
        answers.add(n, {"answer": kind})
    fams += [
        Family(
            "alarmgw_dc09_frames_sent_total", "counter", "DC-09 frames sent (re-sends included)."
        ).add(snap.frames_sent),
        answers,
        Family(
            "alarmgw_dc09_failures_total",
            "counter",
            "Attempts without a usable answer (no connection, no answer, NAK twice, DUH).",
        ).add(snap.failures),
        Family(
            "alarmgw_dc09_resyncs_total",
            "counter",
            "Clock re-synchronisations from the receiver's NAK.",
        ).add(snap.resyncs),
        Family(
            "alarmgw_dc09_clock_offset_seconds",
            "gauge",
            "The receiver's clock minus ours, learnt from its NAK.",
        ).add(snap.offset_s),
        Family("alarmgw_dc09_trouble_open", "gauge", "1 while trouble 350 (DC-09) is open.").add(
            1 if snap.trouble_open else 0
        ),
    ]
    return fams
