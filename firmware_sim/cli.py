"""``alarmgw-sim``: the other side of every wire. Each simulator module registers its own
subcommand through ``register(subparsers)`` and sets ``func`` on its parser."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules that provide a subcommand: each has ``register(subparsers) -> None``.
_MODULES = (
    "firmware_sim.box",
    "firmware_sim.gpio",
    "firmware_sim.bollard",
    "firmware_sim.nvr",
    "firmware_sim.demo",
    "firmware_sim.pki",
    "firmware_sim.fleet_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alarmgw-sim",
        description="Simulators for alarmgw: button box on a pty, GPIO presses, the demo.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        if os.environ.get("DEBUG"):
            raise
        print(f"alarmgw-sim: {err}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
