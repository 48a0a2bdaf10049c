"""``alarmgw-sim fleet``: the command line of firmware_sim/fleet.py (arguments, the registry
it writes, the script and stdin commands, the stats lines)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from center.present import escape
from firmware_sim import fleet as fleet_module
from firmware_sim.fleet import Fleet, raise_fd_limit
from firmware_sim.fleet_sites import PREFIX, School, make_schools, write_registry
from firmware_sim.script import run_commands, split_script

ONLINE_WAIT_S = 60.0  # at start, commands wait this long at most for every gateway online


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "fleet",
        help="many simulated schools' gateways in one process, against a command center",
        description=(fleet_module.__doc__ or "").split("\n\n")[0],
        epilog=(fleet_module.__doc__ or "").split("\n\n")[-1],
    )
    p.add_argument("--gateways", type=int, default=10, metavar="N", help="how many (default 10)")
    p.add_argument("--seed", type=int, default=1, help="same seed, same schools and keys")
    p.add_argument("--host", default="127.0.0.1", help="broker host")
    p.add_argument("--port", type=int, default=1883, help="broker port")
    p.add_argument("--prefix", default=PREFIX, help="topic prefix")
    p.add_argument("--heartbeat", type=float, default=30.0, metavar="S", help="interval (s)")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write DIR/center.toml and DIR/keys/ for the center; state in DIR/state",
    )
    p.add_argument("--registry-only", action="store_true", help="write --out DIR, then exit")
    p.add_argument(
        "--console",
        metavar="HOST:PORT",
        help="add a [console] table with this listen address to center.toml",
    )
    p.add_argument(
        "--center-pub",
        type=Path,
        metavar="FILE",
        help="the center public key to trust (default DIR/keys/center.pub)",
    )
    p.add_argument(
        "--state",
        type=Path,
        metavar="DIR",
        help="seq counters and sessions (default DIR/state/fleet; none: in memory)",
    )
    p.add_argument(
        "--trouble-rate",
        type=float,
        default=0.5,
        metavar="PER_H",
        help="random troubles per gateway per hour (default 0.5; 0: none)",
    )
    p.add_argument(
        "--restore-after",
        type=float,
        default=300.0,
        metavar="S",
        help="mean seconds until a random trouble is restored (default 300)",
    )
    p.add_argument(
        "--test-rate",
        type=float,
        default=1.0,
        metavar="PER_DAY",
        help="test alarms (601) per gateway per day (default 1; 0: none)",
    )
    p.add_argument("--script", default="", help='commands, ";"-separated, run first')
    p.add_argument("--stay", action="store_true", help="keep running at the end of stdin")
    p.add_argument(
        "--stats",
        type=float,
        default=0.0,
        metavar="S",
        help="print connections, messages, RSS and CPU every S seconds",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_run_cli)  # fmt: skip


def _run_cli(args: argparse.Namespace) -> int:
    if not 1 <= args.gateways <= 100_000:
        print("alarmgw-sim fleet: --gateways must be 1..100000", file=sys.stderr)
        return 2
    if not 1 <= args.port <= 65535:
        print("alarmgw-sim fleet: --port must be 1..65535", file=sys.stderr)
        return 2
    if args.heartbeat < 1:
        print("alarmgw-sim fleet: --heartbeat must be at least 1 s", file=sys.stderr)
        return 2
    if args.registry_only and args.out is None:
        print("alarmgw-sim fleet: --registry-only needs --out DIR", file=sys.stderr)
        return 2
    center_pub = args.center_pub or (args.out / "keys" / "center.pub" if args.out else None)
    if center_pub is None:
        print("alarmgw-sim fleet: give --out DIR or --center-pub FILE", file=sys.stderr)
        return 2
    try:
        script = split_script(args.script)
    except ValueError as err:
        print(f"alarmgw-sim fleet: --script: {err}", file=sys.stderr)
        return 2
    schools = make_schools(args.gateways, args.seed)
    if args.out is not None:
        extra = f"[console]\nlisten = {json.dumps(args.console)}\n" if args.console else ""
        toml = write_registry(
            args.out,
            schools,
            host=args.host,
            port=args.port,
            heartbeat_s=args.heartbeat,
            prefix=args.prefix,
            extra=extra,
        )
        print(f"registry {toml} ({len(schools)} gateways)", file=sys.stderr, flush=True)
        if args.registry_only:
            return 0
    if not center_pub.is_file():
        print(f"alarmgw-sim fleet: {center_pub}: no such file", file=sys.stderr)
        return 2
    state = args.state or (args.out / "state" / "fleet" if args.out else None)
    raise_fd_limit(args.gateways + 256)
    return asyncio.run(_main(args, schools, center_pub, state, script))


async def _main(
    args: argparse.Namespace,
    schools: list[School],
    center_pub: Path,
    state: Path | None,
    script: list[list[str]],
) -> int:
    def show(item: dict[str, Any]) -> None:
        print(json.dumps(item, ensure_ascii=False) if args.json else _text(item), flush=True)

    fleet = Fleet(
        schools,
        host=args.host,
        port=args.port,
        center_pub=center_pub,
        heartbeat_s=args.heartbeat,
        state_dir=state,
        prefix=args.prefix,
        trouble_per_h=args.trouble_rate,
        test_per_day=args.test_rate,
        restore_after_s=args.restore_after,
        seed=args.seed,
        say=show,
    )

    async def execute(words: list[str]) -> str:
        result = await fleet.execute(words)
        return json.dumps(result, ensure_ascii=False) if args.json else _text(result)

    async def stats() -> None:
        while True:
            await asyncio.sleep(args.stats)
            show(fleet.stats())

    await fleet.start()
    # The script's commands after the fleet is up (or after a while, if the broker is not).
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(fleet.all_online.wait(), ONLINE_WAIT_S)
    reporter = asyncio.create_task(stats()) if args.stats > 0 else None
    try:
        await run_commands(execute, script, stay=args.stay, say=print)
    finally:
        if reporter is not None:
            reporter.cancel()
        await fleet.stop()
        show(fleet.stats())
    return 0


def _text(item: dict[str, Any]) -> str:
    """One line for a person; what came from the center (a dispatch's status) is escaped."""
    event = item.get("event", "")
    rest = " ".join(f"{k}={v}" for k, v in item.items() if k != "event")
    return escape(f"{time.strftime('%H:%M:%S')}  {event:<12} {rest}")
