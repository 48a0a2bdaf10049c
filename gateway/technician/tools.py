"""The technician's commands ``alarmgw status``, ``queue`` and ``test-alarm``
(OPERATOR.md): readable in an 80-column terminal, ``--json`` for scripts, exit
0 all good, 1 warnings, 2 failures or errors. ``alarmgw diag`` lives in gateway/technician/diag.py.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.config import GatewayConfig, load_config
from gateway.errors import OutboxError
from gateway.technician import dc09 as dc09_view
from gateway.technician.client import DaemonClient, DaemonUnavailable
from gateway.technician.status import queue_summary, readonly_outbox

WIDTH = 80
OK, WARN, FAIL = 0, 1, 2
QUEUE_WARN_S = 60.0  # an event unacknowledged for this long is worth a technician's look
EVENT_TYPES = ("alarm", "test", "trouble", "restore")
EVENTS_SHOWN = 10  # queued events listed one by one by ``alarmgw queue`` (--json: more)
PATH_NAMES = {"mqtt": "center", "dc09": "DC-09"}
# C0, DEL, C1, and the Unicode line/paragraph separators and bidirectional controls.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def escape(line: str) -> str:
    """``line`` with every control character shown as ``\\xNN`` / ``\\uNNNN``: what a daemon
    or a receiver says cannot move the cursor, clear the screen or forge a line."""
    return _CONTROL.sub(_escape_one, line)


def _escape_one(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def columns() -> int:
    """The terminal's width (``COLUMNS``, else the terminal's, else 80), at least 40: a phone
    over SSH has about 50 columns."""
    return max(40, shutil.get_terminal_size((WIDTH, 24)).columns)


def local_time(ts: str | float, tz: str = "") -> str:
    """An RFC 3339 time or a Unix time as ``YYYY-MM-DD HH:MM:SS TZ`` in the site's time zone
    (``tz``, an IANA name), else in this machine's local time; ``ts`` as is if unreadable."""
    try:
        when = (
            datetime.fromtimestamp(ts, UTC)
            if isinstance(ts, int | float)
            else datetime.fromisoformat(ts.replace("Z", "+00:00"))
        )
        local = when.astimezone(ZoneInfo(tz)) if tz else when.astimezone()
    except (ValueError, OverflowError, OSError, ZoneInfoNotFoundError):
        return str(ts)
    return local.strftime("%Y-%m-%d %H:%M:%S %Z")


def fit(line: str, width: int | None = None) -> str:
    """``line`` cut to ``width`` columns (default: the terminal's; ``...`` when cut)."""
    width = width or columns()
    return line if len(line) <= width else line[: width - 3] + "..."


def wrap(line: str, indent: int, width: int | None = None) -> list[str]:
    """``line`` folded to ``width`` columns, continuations indented by ``indent``. Breaks
    at the last space past the label columns (the first ``indent``); a longer word (a
    path) is cut where the line ends, so no line holds nothing but its label."""
    width = width or columns()
    out: list[str] = []
    while len(line) > width:
        cut = line.rfind(" ", indent + 1, width + 1)
        if cut <= indent:
            cut = width
        out.append(line[:cut].rstrip())
        line = " " * indent + line[cut:].lstrip()
    out.append(line)
    return out


def ago(seconds: float | None) -> str:
    """``42 s``, ``3m 05s``, ``2h 03m``, ``4d 01h``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _load(path: str) -> GatewayConfig:
    # Key files need not be readable to ask the daemon how it is doing.
    return load_config(path, check_files=False)


def _unavailable(err: DaemonUnavailable, as_json: bool, out: TextIO) -> int:
    print(f"alarmgw: {err}", file=sys.stderr)
    if as_json:
        print(json.dumps({"running": False, "error": str(err)}), file=out)
    return FAIL


# --- status -------------------------------------------------------------------------------


def status_verdict(
    st: dict[str, Any], ack_timeout_s: float = QUEUE_WARN_S
) -> tuple[int, list[str]]:
    """(exit code, problems or warnings) for a ``/status`` document. An alarm unacknowledged
    past ``ack_timeout_s`` (the presser's LED shows ``fast``) fails like a dead uplink; so does
    any check the daemon judged ``failing`` (gateway/checks.py, the verdicts ``alarmgw diag``
    gives for the same conditions); a ``warning`` verdict warns."""
    if not st["health"]["ok"]:
        return FAIL, list(st["health"]["problems"])
    alarm = st["queue"].get("by_type", {}).get("alarm")
    if alarm and alarm["oldest_age_s"] > ack_timeout_s:
        return FAIL, [f"an alarm has waited {ago(alarm['oldest_age_s'])} for the center's ack"]
    failing: list[str] = []
    warnings: list[str] = []
    by_level = {"failing": failing, "warning": warnings}
    for name, verdict in _verdicts(st):
        if verdict.get("level") in by_level:
            fix = f" -> {verdict['fix']}" if verdict.get("fix") else ""
            found = str(verdict["found"])
            # A box's verdict names the box already ("box-1: serial port not open").
            label = "" if found.startswith(name.split(":", 1)[-1] + ":") else f"{name}: "
            by_level[verdict["level"]].append(f"{label}{found}{fix}")
    judged = {name for name, _ in _verdicts(st)}
    for i in st["inputs"]:
        if i["state"] == "ok" or i["ref"] in judged:
            continue  # a box's link is judged above, its other troubles are listed below
        if i["kind"] == "gpio" and i["state"] == "trouble":
            failing.append(f"{i['ref']}: GPIO{i['pin']} not claimed -> see the journal")
        else:
            warnings.append(f"{i['ref']}: {i['state']}")
    if not st["uplink"]["connected"]:
        warnings.append("primary broker down; events go out on the secondary")
    oldest = st["queue"].get("oldest_age_s")
    if oldest is not None and oldest > QUEUE_WARN_S:
        warnings.append(f"oldest queued event waits for {ago(oldest)}")
    for name, section in _sections(st):
        if section.get("ok") is not False or name in judged or name == "selfcheck":
            continue
        details = [
            str(t["detail"])
            for t in _items(section)
            if t.get("detail") and not _judged_trouble(t, judged)
        ]
        if name == "supervision" and _items(section) and not details:
            continue  # every open trouble is a verdict above
        warnings += [f"{name}: {d}" for d in details] or [f"{name}: trouble"]
    if failing:
        return FAIL, failing + warnings
    return (WARN if warnings else OK), warnings


def _verdicts(st: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, verdict) of every check the daemon judged: serial links, the bollard, the
    camera and the self-checks (device ``gateway``)."""
    out = [(i["ref"], i["verdict"]) for i in st["inputs"] if isinstance(i.get("verdict"), dict)]
    for name in ("uplink", "secondary", "bollard", "camera", "acks", "dc09"):
        section = st.get(name)
        if isinstance(section, dict) and isinstance(section.get("verdict"), dict):
            out.append((name, section["verdict"]))
    selfcheck = st.get("selfcheck")
    if isinstance(selfcheck, dict):
        out += [("gateway", v) for v in selfcheck.get("checks", []) if isinstance(v, dict)]
    return out


def _judged_trouble(trouble: dict[str, Any], judged: set[str]) -> bool:
    """True for an open trouble a verdict already reports: the bollard's, the camera's, the
    self-checks' and a box's silence (350); a box's tamper or power trouble is not."""
    device = trouble.get("device")
    if device == "button":  # 380: each dead button's verdict says which and why
        return any(name.startswith("gpio:") for name in judged)
    if device in judged and str(device).startswith("serial:"):
        return trouble.get("code") == "350"
    return device in judged


def _items(section: dict[str, Any]) -> list[dict[str, Any]]:
    """The items listed in a section (e.g. its open troubles)."""
    return [
        item
        for value in section.values()
        if isinstance(value, list)
        for item in value
        if isinstance(item, dict)
    ]


def _sections(st: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The provider sections of a snapshot (bollard, camera, ...; gateway/technician/status.py)."""
    return [(k, v) for k, v in sorted(st.items()) if k not in _CORE_KEYS and isinstance(v, dict)]


def section_summary(section: dict[str, Any]) -> str:
    """One line for a provider section: its ``status`` text, else ok/TROUBLE and its
    scalar facts (``state up``, ``retention_days 34``, ...)."""
    if isinstance(section.get("status"), str):
        return str(section["status"])
    ok = section.get("ok")
    head = ["ok"] if ok is True else ["TROUBLE"] if ok is False else []
    facts = [
        f"{k} {str(v).lower() if isinstance(v, bool) else v}"
        for k, v in section.items()
        if k != "ok" and isinstance(v, str | int | float) and v != ""
    ]
    return ", ".join(head + facts) or "-"


def _input_line(i: dict[str, Any]) -> str:
    if i["kind"] == "gpio":
        led = f", LED {i['led']}" if i.get("led") else ""
        what = f"GPIO{i['pin']}{led}, {i['alarms']} alarm(s)"
        if not i["started"]:
            what = f"GPIO{i['pin']} not claimed"
    elif not i["connected"]:
        what = f"{i['port']} not open"
    else:
        box = f"{i['box_id']} fw {i['fw']}" if i.get("box_id") else "no HELLO yet"
        errors = sum(i["frame_errors"].values())
        what = f"{box}, {i['frames_ok']} frames, {errors} bad, {i['alarms']} alarm(s)"
    return f"  {i['ref']:<20} {i['state']:<7} {what}"


def format_status(
    st: dict[str, Any], ack_timeout_s: float = QUEUE_WARN_S, tz: str = ""
) -> list[str]:
    """The human summary of a ``/status`` snapshot, one fact per line; times in ``tz``."""
    gw, up, q = st["gateway"], st["uplink"], st["queue"]
    code, warnings = status_verdict(st, ack_timeout_s)
    lines = [f"alarmgw {gw['version']}  {gw['site']}/{gw['id']}  up {ago(gw['uptime_s'])}"]
    verdict = {OK: "OK, the alarm path is alive", WARN: "OK, with warnings"}.get(code, "FAILING")
    lines.append(f"Health      {verdict}")
    lines += [f"  ! {w}" for w in warnings]
    tls = "TLS" if up["tls"] else "plain"
    state = "connected" if up["connected"] else "DOWN"
    lines.append(
        f"Broker      {state} {up['broker']} ({tls}, MQTT {up['protocol']}), "
        f"session {up['session']}, {up['reconnects']} reconnects"
    )
    if not up["connected"] and up.get("last_error"):
        lines.append(f"  last error: {up['last_error']}")
    second = st.get("secondary")
    if second:
        state2 = "connected" if second["connected"] else "down"
        lines.append(f"Secondary   {state2} {second['broker']}")
    if isinstance(st.get("dc09"), dict):
        lines += dc09_view.status_lines(st["dc09"], ago)
    if q["pending"]:
        parts = [f"{row['pending']} {kind}" for kind, row in sorted(q["by_type"].items())]
        lines.append(f"Queue       {', '.join(parts)} pending, oldest {ago(q['oldest_age_s'])}")
    else:
        lines.append("Queue       empty")
    if q.get("memory_only"):
        lines.append(f"  ! {q['memory_only']} event(s) only in memory (outbox not writable)")
    last = st.get("last_alarm")
    unacked = q.get("by_type", {}).get("alarm")
    if unacked and (not last or last.get("type") != "alarm" or last.get("acked_at")):
        # A later test (or an acked alarm) must not hide a real alarm still waiting.
        lines.append(
            f"Last alarm  ! {unacked['pending']} real alarm(s) NOT acked yet, "
            f"oldest {ago(unacked['oldest_age_s'])} ago"
        )
    if last:
        acked = "not acked yet"
        if last.get("acked_at"):
            ms = last.get("ack_ms")
            acked = f"acked in {ms:.0f} ms" if ms is not None else "acked"
        when = local_time(last["ts"], tz)
        lines.append(f"Last alarm  {last.get('type', 'alarm')} {when} {last['input']}")
        lines.append(f"            {acked}, id {last['id']}")
    else:
        lines.append("Last alarm  none since start")
    lines.append("Inputs" if st["inputs"] else "Inputs      none configured")
    lines += [_input_line(i) for i in st["inputs"]]
    for name, section in _sections(st):
        lines.append(f"{name.capitalize():<11} {section_summary(section)}")
    lines.append(f"Key         kid {gw['kid']}, pid {gw['pid']}, config {gw['config']}")
    width = columns()
    return [part for line in lines for part in wrap(escape(line), 12, width)]


_CORE_KEYS = frozenset(
    {
        "gateway",
        "health",
        "inputs",
        "uplink",
        "secondary",
        "sent_by_path",
        "loops",
        "queue",
        "last_alarm",
        "counters",
        "raised",
        "ack_latency",
        "dc09",
    }
)


# What a reader of a /status answer trips over when a field is missing or of another type.
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def _malformed(where: str, err: Exception, as_json: bool, out: TextIO) -> int:
    what = f"missing {err}" if isinstance(err, KeyError) else str(err)
    msg = f"the daemon's {where} answer is one this alarmgw cannot read ({what[:80]})"
    return _unavailable(DaemonUnavailable(msg), as_json, out)


def cmd_status(config: str, *, as_json: bool, out: TextIO = sys.stdout) -> int:
    cfg = _load(config)
    try:
        client = DaemonClient.for_config(cfg)
        _, st = client.json("GET", "/status")
    except DaemonUnavailable as err:
        return _unavailable(err, as_json, out)
    try:
        if not isinstance(st, dict):
            raise TypeError(f"a JSON {type(st).__name__}, not an object")
        if "gateway" not in st:  # 503 from a stuck daemon: {"ok": false, "problems": [...]}
            problems = [str(p) for p in st.get("problems") or ["no status"]]
            if as_json:
                print(json.dumps({"running": True, **st}), file=out)
            else:
                print(fit(f"FAILING: {problems[0]}"), file=out)
                for p in problems[1:]:
                    print(fit(f"  ! {p}"), file=out)
            return FAIL
        code, warnings = status_verdict(st, cfg.alarm.ack_timeout_s)
        tz = cfg.bollard.timezone if cfg.bollard is not None else ""
        text = "\n".join(format_status(st, cfg.alarm.ack_timeout_s, tz))
    except MALFORMED as err:
        return _malformed(f"{client.address}/status", err, as_json, out)
    if as_json:
        print(json.dumps({**st, "verdict": {"exit": code, "warnings": warnings}}), file=out)
    else:
        print(text, file=out)
    return code


# --- queue --------------------------------------------------------------------------------


def _queue_from_file(cfg: GatewayConfig) -> dict[str, Any]:
    with readonly_outbox(Path(cfg.gateway.state_dir) / "outbox.sqlite") as conn:
        return queue_summary(conn, dc09=cfg.dc09 is not None)


def _owed_to_dc09(q: dict[str, Any]) -> int:
    dc09 = q.get("by_path", {}).get("dc09")
    return int(dc09["pending"]) if isinstance(dc09, dict) else 0


def queue_verdict(q: dict[str, Any], ack_timeout_s: float) -> int:
    """2: an alarm has waited longer than the presser's ack timeout for the center's ack or
    the DC-09 receiver's; 1: anything queued."""
    alarm = q["by_type"].get("alarm")
    if alarm and alarm["oldest_age_s"] > ack_timeout_s:
        return FAIL
    for event in q.get("events") or []:
        late = event["type"] == "alarm" and event["age_s"] > ack_timeout_s
        if late and "dc09" in event["owed_by"]:
            return FAIL
    return WARN if q["pending"] or q.get("memory_only") or _owed_to_dc09(q) else OK


def refused_acks(st: dict[str, Any]) -> dict[str, Any] | None:
    """The ``center-key`` verdict of a ``/status`` document when the center's acks are being
    refused (a wrong or rotated center key), else None."""
    acks = st.get("acks")
    verdict = acks.get("verdict") if isinstance(acks, dict) else None
    if isinstance(verdict, dict) and verdict.get("level") in ("warning", "failing"):
        return verdict
    return None


def blame_refused_acks(q: dict[str, Any], st: dict[str, Any]) -> None:
    """Name refused acks as the LAST ERROR of queued rows that have none of their own."""
    verdict = refused_acks(st)
    if verdict is None:
        return
    for row in q.get("by_type", {}).values():
        if isinstance(row, dict) and not row.get("last_error"):
            row["last_error"] = "the center's acks are refused (see below)"
    q["acks_refused"] = f"{verdict['found']} -> {verdict['fix']}"


def format_queue(q: dict[str, Any], source: str) -> list[str]:
    lines = [f"Queue ({source})"]
    if not q["pending"]:
        lines.append("empty: nothing waits for the center's ack")
    else:
        lines.append(f"{'TYPE':<8} {'PENDING':>7}  {'OLDEST':<8} {'FAILED':>6}  LAST ERROR")
        for kind in EVENT_TYPES:
            row = q["by_type"].get(kind)
            if row:
                lines.append(
                    f"{kind:<8} {row['pending']:>7}  {ago(row['oldest_age_s']):<8} "
                    f"{row['failed_attempts']:>6}  {row['last_error'] or '-'}"
                )
        lines.append(f"{'total':<8} {q['pending']:>7}  {ago(q['oldest_age_s'])}")
    if q.get("memory_only"):
        lines.append(f"! {q['memory_only']} more only in memory: the outbox cannot be written")
    dc09 = q.get("by_path", {}).get("dc09")
    if isinstance(dc09, dict) and dc09["pending"]:
        n, oldest = dc09["pending"], ago(dc09["oldest_age_s"])
        lines.append(f"DC-09: {n} wait for the receiver's ACK, oldest {oldest}")
    elif isinstance(dc09, dict):
        lines.append("DC-09: nothing waits for the receiver's ACK")
    lines += _owed_lines(q)
    out = [fit(escape(line)) for line in lines]
    if q.get("acks_refused"):
        out += wrap(escape(f"! {q['acks_refused']}"), 2)
    return out


def _owed_lines(q: dict[str, Any]) -> list[str]:
    """Each queued event (oldest first): type, age, who still owes its ack, its id."""
    events = q.get("events") or []
    if not events:
        return []
    lines = ["Waiting, oldest first (ack still owed by):"]
    for e in events[:EVENTS_SHOWN]:
        owed = ", ".join(PATH_NAMES.get(p, str(p)) for p in e["owed_by"])
        lines.append(f"  {e['type']:<7} {ago(e['age_s']):<7} {owed}")
        lines.append(f"    id {e['id']}")
    more = len(events) - EVENTS_SHOWN + int(q.get("events_more") or 0)
    if more > 0:
        lines.append(f"  ... and {more} more")
    return lines


def cmd_queue(config: str, *, as_json: bool, out: TextIO = sys.stdout) -> int:
    cfg = _load(config)
    try:
        code, st = DaemonClient.for_config(cfg).json("GET", "/status")
    except DaemonUnavailable:
        code, st = 0, {}
    if code == 200 and isinstance(st, dict) and "queue" in st:
        q, source = st["queue"], "from the running daemon"
        blame_refused_acks(q, st)
    else:
        # The daemon is down (or stuck): the outbox file still tells the truth.
        try:
            q = _queue_from_file(cfg)
        except OutboxError as err:
            print(f"alarmgw: {err}", file=sys.stderr)
            return FAIL
        source = "from the outbox file; the daemon does not answer"
    try:
        code = queue_verdict(q, cfg.alarm.ack_timeout_s)
        text = "\n".join(format_queue(q, source))
    except MALFORMED as err:
        return _malformed("/status", err, as_json, out)
    if as_json:
        print(json.dumps({**q, "source": source, "exit": code}), file=out)
    else:
        print(text, file=out)
    return code


def _refused_now(client: DaemonClient) -> dict[str, Any] | None:
    try:
        code, st = client.json("GET", "/status")
    except DaemonUnavailable:
        return None
    return refused_acks(st) if code == 200 else None


# --- test-alarm ---------------------------------------------------------------------------


def _progress(out: TextIO, text: str, *, final: bool = False) -> None:
    text = escape(text)
    if out.isatty():
        out.write("\r" + fit(text).ljust(WIDTH - 1) + ("\n" if final else ""))
    else:
        out.write(fit(text) + "\n")
    out.flush()


def cmd_test_alarm(
    config: str,
    *,
    timeout_s: float,
    input_ref: str | None,
    as_json: bool,
    out: TextIO = sys.stdout,
    path: str = "mqtt",
) -> int:
    cfg = _load(config)
    if path == "dc09" and cfg.dc09 is None:
        print(f"alarmgw: --path dc09: {config} has no [dc09] section", file=sys.stderr)
        return FAIL
    # Whose acknowledgement ends the test: the center's (MQTT) or the DC-09 receiver's.
    who = "the DC-09 receiver" if path == "dc09" else "the center"
    client = DaemonClient.for_config(cfg)
    body = {"input": input_ref} if input_ref else {}
    try:
        status, raised = client.json("POST", "/test-alarm", body)
    except DaemonUnavailable as err:
        return _unavailable(err, as_json, out)
    if status != 202:
        print(f"alarmgw: test alarm refused: {raised.get('error', status)}", file=sys.stderr)
        if as_json:
            print(json.dumps({"acked": False, "error": raised.get("error")}), file=out)
        return FAIL
    started = time.monotonic()
    event_id, ref = raised["id"], raised["input"]
    talk = not as_json
    if talk:
        print(fit(escape(f"TEST alarm (code 601, never dispatched) from {ref}")), file=out)
        print(
            fit(escape(f"registered {event_id}; waiting up to {timeout_s:.0f} s for {who}'s ack")),
            file=out,
        )
    info: dict[str, Any] = {"state": "pending"}
    shown = 0.0
    # On a terminal the progress line updates in place every second; in a log, every 5 s.
    every = 1.0 if out.isatty() else 5.0
    while True:
        left = timeout_s - (time.monotonic() - started)
        if left <= 0:
            break
        try:
            # Long poll: the daemon answers as soon as the ack arrives, else after ~1 s.
            query = f"wait={min(left, 1.0):.2f}" + ("&path=dc09" if path == "dc09" else "")
            _, info = client.json("GET", f"/events/{event_id}?{query}", timeout_s=10.0)
        except DaemonUnavailable as err:
            print(f"alarmgw: {err}", file=sys.stderr)
            break
        if path == "dc09":  # the DC-09 path's state; the center's timings do not apply
            info = {**info, "ack_ms": None, **info.get("dc09", {"state": "unknown"})}
        if info.get("state") != "pending":
            break
        waited = time.monotonic() - started
        if talk and waited - shown >= every:
            shown = waited
            failed = info.get("failed_attempts") or 0
            err_text = f", {failed} failed, last: {info['last_error']}" if failed else ""
            _progress(out, f"  waiting for {who}'s ack: {waited:3.0f} s{err_text}")
    rtt_ms = round((time.monotonic() - started) * 1000, 1)
    acked = info.get("state") == "acked"
    result = {
        "id": event_id,
        "path": path,
        "input": ref,
        "acked": acked,
        "ack_ms": info.get("ack_ms"),
        "rtt_ms": rtt_ms if acked else None,
        "failed_attempts": info.get("failed_attempts"),
        "last_error": info.get("last_error"),
    }
    if as_json:
        print(json.dumps(result), file=out)
    elif acked:
        gw_ms = info.get("ack_ms")
        trip = f"{gw_ms:.0f} ms" if gw_ms is not None else "?"
        tz = cfg.bollard.timezone if cfg.bollard is not None else ""
        _progress(out, f"ACKED by {who} at {local_time(info['acked_at'], tz)}", final=True)
        here = f"{rtt_ms:.0f} ms here"
        if path == "dc09":
            print(fit(f"round trip {here} (raise, DC-09 frame, the receiver's ACK)"), file=out)
        else:
            print(fit(f"round trip {trip} (gateway to center and back), {here}"), file=out)
    else:
        _progress(out, f"NO ACK within {timeout_s:.0f} s", final=True)
        refused = _refused_now(client) if path == "mqtt" else None
        if refused is not None:
            print(
                "\n".join(
                    wrap(f"The center answered, but its ack was refused: {refused['found']}", 2)
                ),
                file=out,
            )
            print("\n".join(wrap(f"  -> {refused['fix']}", 5)), file=out)
        print(fit(f"The test stays queued and is re-sent until {who} acks it."), file=out)
        print(fit("Look at: alarmgw status; alarmgw queue; alarmgw diag"), file=out)
    return OK if acked else FAIL
