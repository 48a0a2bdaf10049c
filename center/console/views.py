"""The data behind each console page, as plain JSON-able dicts: the HTML page renders it,
its JSON twin returns it as it is. Everything from a gateway stays data here; the templates
escape it (autoescape)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from center.present import SiteData
from center.store.consoledata import ConsoleQueries

TROUBLE_TYPES = ("trouble", "restore")


def _school(alarm: Mapping[str, Any], sites: Mapping[tuple[str, str], SiteData]) -> str:
    registered = sites.get((alarm["site"], alarm["gw"]))
    if registered is not None and registered.school:
        return registered.school
    return str((alarm["body"].get("location") or {}).get("name") or alarm["site"])


def alarm_item(
    alarm: Mapping[str, Any], sites: Mapping[tuple[str, str], SiteData], now: float
) -> dict[str, Any]:
    body = alarm["body"]
    location = body.get("location") or {}
    registered = sites.get((alarm["site"], alarm["gw"]))
    return {
        "id": alarm["id"],
        "site": alarm["site"],
        "gw": alarm["gw"],
        "type": alarm["type"],
        "code": alarm["code"],
        "kind": alarm["kind"],
        "input": alarm["input"],
        "ts": alarm["ts"],
        "received_at": alarm["received_at"],
        "age_s": round(max(0.0, now - float(alarm["received_at"])), 1),
        "path": alarm["path"],
        "fresh": alarm["fresh"],
        "status": alarm["status"],
        "acked_by": alarm.get("acked_by"),
        "acked_at": alarm.get("acked_at"),
        "resolved_by": alarm.get("resolved_by"),
        "resolved_at": alarm.get("resolved_at"),
        "outcome": alarm.get("outcome"),
        "note": alarm.get("note"),
        "school": _school(alarm, sites),
        "location": location,
        "contact": body.get("contact") or {},
        "registry": asdict(registered) if registered else None,
        "mismatch": bool(registered and registered.mismatch(location)),
    }


def board(
    store: Any, sites: Mapping[tuple[str, str], SiteData], *, now: float | None = None
) -> dict[str, Any]:
    """Open alarms: unacknowledged first, oldest on top; then acknowledged; tests apart."""
    now = time.time() if now is None else now
    items = [alarm_item(a, sites, now) for a in store.open_alarms(limit=5000)]
    items.sort(key=lambda a: (a["status"] != "new", a["received_at"]))
    return {
        "now": now,
        "alarms": [a for a in items if a["type"] != "test"],
        "tests": [a for a in items if a["type"] == "test"],
    }


def detail(
    store: ConsoleQueries,
    alarm: Mapping[str, Any],
    audit: list[dict[str, Any]],
    sites: Mapping[tuple[str, str], SiteData],
    *,
    now: float | None = None,
) -> dict[str, Any]:
    now = time.time() if now is None else now
    item = alarm_item(alarm, sites, now)
    beat = next(
        (g for g in store.fleet() if (g["site"], g["gw"]) == (item["site"], item["gw"])), None
    )
    item["gateway"] = beat
    item["audit"] = audit
    return item


def open_troubles(store: Any) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Per gateway: troubles not followed by a restore of the same code and device."""
    out: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
    for row in store.troubles():
        body = row["body"]
        key = (str(body.get("code")), str(body.get("device")))
        per = out.setdefault((row["site"], row["gw"]), {})
        if row["type"] == "trouble":
            per[key] = {
                "code": key[0],
                "device": key[1],
                "detail": body.get("detail"),
                "since": row["received_at"],
            }
        else:
            per.pop(key, None)
    return {gw: list(per.values()) for gw, per in out.items() if per}


def fleet(
    store: Any,
    registry: Mapping[tuple[str, str], float],
    sites: Mapping[tuple[str, str], SiteData],
    live: Mapping[tuple[str, str], str | None],
    *,
    since: Mapping[tuple[str, str], float] | None = None,
    now: float | None = None,
    state: str | None = None,
    q: str | None = None,
) -> dict[str, Any]:
    """Every registered gateway with its liveness, heartbeat and troubles; counts per state."""
    now = time.time() if now is None else now
    seen = {(g["site"], g["gw"]): g for g in store.fleet()}
    troubles = open_troubles(store)
    rows: list[dict[str, Any]] = []
    for key, heartbeat_s in sorted(registry.items()):
        got = seen.get(key) or {}
        beat = got.get("heartbeat") or {}
        camera = beat.get("camera") or {}
        queue = beat.get("queue") or {}
        status = live.get(key) or got.get("status") or "unknown"
        school = sites[key].school if key in sites and sites[key].school else None
        at = got.get("heartbeat_at")
        rows.append(
            {
                "site": key[0],
                "gw": key[1],
                "school": school,
                "status": status,
                "since": (since or {}).get(key) or got.get("status_at"),
                "heartbeat_s": heartbeat_s,
                "heartbeat_age_s": None if at is None else round(now - at, 1),
                "bollard": (beat.get("bollard") or {}).get("state"),
                "camera_recording": camera.get("recording"),
                "camera_retention_days": camera.get("retention_days"),
                "camera_required_days": camera.get("required_days"),
                "camera_ok": camera.get("ok"),
                "queue_pending": queue.get("pending"),
                "troubles": troubles.get(key, []),
            }
        )
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    if state:
        rows = [r for r in rows if r["status"] == state]
    if q:
        needle = q.casefold()
        rows = [
            r for r in rows if needle in f"{r['site']} {r['gw']} {r['school'] or ''}".casefold()
        ]
    return {"now": now, "counts": counts, "gateways": rows, "state": state, "q": q}
