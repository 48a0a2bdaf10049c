"""``alarmgw center alarms|ack|resolve|status``: operate the command center through its store
(the running service publishes the dispatches these cause). Every line shown escapes what
came from a gateway."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from typing import Any

from center.config import load_center_config
from center.lifecycle import OUTCOMES, Lifecycle
from center.present import escape
from center.run import open_config_store, site_data

ACTIONS = ("alarms", "ack", "resolve", "status")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alarmgw center",
        description="Operate the command center: list alarms, acknowledge, resolve, status.",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def add(name: str, helptext: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="center config")
        return p

    p = add("alarms", "list alarms (tests apart), oldest first")
    p.add_argument("--open", action="store_true", help="only those not resolved")
    p.add_argument("--json", action="store_true", help="one JSON object per alarm")
    p = add("ack", "acknowledge an alarm: help is being sent (the gateway is told)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--by", required=True, metavar="NAME", help="who takes it")
    p = add("resolve", "close an alarm with its outcome (the gateway is told)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--outcome", required=True, choices=OUTCOMES)
    p.add_argument("--by", required=True, metavar="NAME")
    p.add_argument("--note", default="", help="free text for the audit trail")
    p = add("status", "the center's store, gateways and (if running) service health")
    p.add_argument("--json", action="store_true", help="one JSON object")
    return parser


def main(argv: list[str], *, config: str | None = None) -> int:
    """Run one action; ``config`` is a ``--config`` given before the action."""
    args = build_parser().parse_args(argv)
    path = getattr(args, "config", None) or config
    if path is None:
        print(f"alarmgw center {args.action}: --config FILE is required", file=sys.stderr)
        return 2
    cfg = load_center_config(path)
    store = open_config_store(cfg)
    try:
        life = Lifecycle(store)
        if args.action == "alarms":
            return _alarms(life, cfg, open_only=args.open, as_json=args.json)
        if args.action == "ack":
            alarm = life.acknowledge(args.id, by=args.by)
            print(escape(f"acknowledged {alarm['id']} by {alarm['acked_by']}"))
            return 0
        if args.action == "resolve":
            alarm = life.resolve(args.id, outcome=args.outcome, by=args.by, note=args.note)
            print(escape(f"resolved {alarm['id']} ({alarm['outcome']}) by {alarm['resolved_by']}"))
            return 0
        return _status(store.summary(now=time.time()), cfg.health, as_json=args.json)
    finally:
        store.close()


def alarm_json(alarm: dict[str, Any], sites: dict[tuple[str, str], Any]) -> dict[str, Any]:
    body = alarm["body"]
    registered = sites.get((alarm["site"], alarm["gw"]))
    location = body.get("location") or {}
    return {
        **{k: v for k, v in alarm.items() if k != "body"},
        "location": location,
        "contact": body.get("contact"),
        "registry": registered.to_json() if registered else None,
        "location_mismatch": bool(registered and registered.mismatch(location)),
    }


def _alarms(life: Lifecycle, cfg: Any, *, open_only: bool, as_json: bool) -> int:
    sites = site_data(cfg)
    found = life.alarms(open_only=open_only)
    if as_json:
        for alarm in found:
            print(json.dumps(alarm_json(alarm, sites), ensure_ascii=False))
        return 0
    alarms = [a for a in found if a["type"] != "test"]
    tests = [a for a in found if a["type"] == "test"]
    for title, group in (("ALARMS", alarms), ("TESTS (never dispatched)", tests)):
        print(f"{title}: {len(group)}")
        for alarm in group:
            print(escape(_line(alarm, sites)))
    return 0


def _line(alarm: dict[str, Any], sites: dict[tuple[str, str], Any]) -> str:
    body, loc = alarm["body"], alarm["body"].get("location") or {}
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(alarm["received_at"]))
    state = alarm["status"]
    if state == "acknowledged":
        state += f" by {alarm['acked_by']}"
    elif state == "resolved":
        state += f" ({alarm['outcome']}) by {alarm['resolved_by']}"
    fresh = "" if alarm["fresh"] else "  FRESHNESS NOT PROVEN (possible replay or state loss)"
    registered = sites.get((alarm["site"], alarm["gw"]))
    differs = "  LOCATION DIFFERS FROM REGISTRY" if registered and registered.mismatch(loc) else ""
    where = ", ".join(str(loc[k]) for k in ("name", "address", "floor", "room") if loc.get(k))
    return (
        f"  {alarm['id']}  {when}  {state:<12} {alarm['site']}/{alarm['gw']}  "
        f"{body.get('kind')} ({body.get('code')}) at {where}  "
        f"phone {(body.get('contact') or {}).get('phone')}{fresh}{differs}"
    )


def _status(summary: dict[str, Any], health: Any, *, as_json: bool) -> int:
    service: dict[str, Any] | None = None
    if health.enabled:
        try:
            url = f"http://{health.listen}/healthz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                service = json.loads(resp.read())
        except (OSError, ValueError):
            service = None
    summary["service"] = service
    if as_json:
        print(json.dumps(summary))
        return 0 if service is not None else 1
    print(
        f"service: {'running' if service else 'not reachable'}"
        + (f" ({service.get('status')})" if service else "")
    )
    print(
        f"open alarms: {summary['open_alarms'] or 'none'}; by age {summary['open_alarms_by_age']}"
    )
    print(f"unproven open alarms: {summary['open_unproven']}; open tests: {summary['open_tests']}")
    print(f"gateways: {summary['gateways'] or 'none reported'}")
    print(f"accepted envelopes: {summary['accepted_envelopes']}; rejected: {summary['rejected']}")
    print(f"unsent dispatches: {summary['unsent_dispatches']}")
    return 0 if service is not None else 1
