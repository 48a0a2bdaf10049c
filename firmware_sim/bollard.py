"""``alarmgw-sim bollard``: an anti-ram bollard and its controller (``[bollard]``).

``BollardSimulator`` keeps a position (``up``, ``down``, ``moving``) and a fault flag and shows
them the two ways a gateway can read a bollard: on the limit-switch pins of a gateway running
on gpiozero's mock factory, through its GPIO simulator socket (firmware_sim/gpio.py:
``press`` drives a pin low, ``release`` high; with ``active_low`` a made switch is low), and/or
as the controller's HTTP status ``GET /status`` → ``{"state": "up"}`` (with the faults of
firmware_sim/httpstatus.py).

Commands (``--script "a; b"`` first, then stdin, one per line): ``up``, ``down``, ``raise
[S]`` / ``lower [S]`` (moving for S seconds, default 1, then there), ``stuck`` (moving, stays),
``fault on|off``, the HTTP faults ``ok``, ``error [STATUS]``, ``garbage``, ``hang``, ``slow S``,
``down-http``, ``up-http``, and ``wait S``, ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from firmware_sim.gpio import GpioSimClient
from firmware_sim.httpstatus import StatusServer, http_command
from firmware_sim.script import run_commands, seconds, split_script

POSITIONS = ("up", "down", "moving")


class BollardSimulator:
    """One bollard. ``gpio_socket``: drive the limit switches of a gateway through its GPIO
    simulator socket (pins and polarity as in its ``[bollard]``); ``http``: serve the
    controller's status on ``(host, port)`` (port 0: a free one). Either or both."""

    def __init__(
        self,
        *,
        gpio_socket: str | Path | None = None,
        up_pin: int = 5,
        down_pin: int = 6,
        fault_pin: int | None = 13,
        active_low: bool = True,
        http: tuple[str, int] | None = None,
        position: str = "up",
    ) -> None:
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}")
        self.position = position
        self.fault = False
        self.pins = {"up": up_pin, "down": down_pin, "fault": fault_pin}
        self.active_low = active_low
        self._gpio = GpioSimClient(gpio_socket) if gpio_socket is not None else None
        self.http = StatusServer(self.document, host=http[0], port=http[1]) if http else None
        self._travel: asyncio.Task[None] | None = None

    @property
    def state(self) -> str:
        """What the controller reports: ``fault`` or the position."""
        return "fault" if self.fault else self.position

    @property
    def url(self) -> str:
        if self.http is None:
            raise RuntimeError("this bollard serves no HTTP status")
        return self.http.url

    def document(self) -> dict[str, Any]:
        return {"state": self.state}

    async def start(self) -> None:
        """Start serving and put the switches where the position says."""
        if self.http is not None:
            await self.http.start()
        if self._gpio is not None:
            await self._gpio.connect()
        await self._apply()

    async def stop(self) -> None:
        await self._cancel_travel()
        if self._gpio is not None:
            await self._gpio.close()
        if self.http is not None:
            await self.http.stop()

    async def __aenter__(self) -> BollardSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- what the bollard does --------------------------------------------------------------

    async def set_position(self, position: str) -> None:
        """Jump to ``position`` (a travel under way is abandoned)."""
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}")
        await self._cancel_travel()
        self.position = position
        await self._apply()

    async def travel(self, to: str, seconds_: float = 1.0) -> None:
        """Move: ``moving`` now, ``to`` after ``seconds_`` (in the background)."""
        await self.set_position("moving")
        self._travel = asyncio.create_task(self._arrive(to, seconds_))

    async def set_fault(self, on: bool) -> None:
        self.fault = on
        await self._apply()

    async def _arrive(self, to: str, after: float) -> None:
        await asyncio.sleep(after)
        self._travel = None
        self.position = to
        await self._apply()

    async def _cancel_travel(self) -> None:
        task, self._travel = self._travel, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _apply(self) -> None:
        if self._gpio is None:
            return
        made = {"up": self.position == "up", "down": self.position == "down", "fault": self.fault}
        for name, pin in self.pins.items():
            if pin is None:
                continue
            low = made[name] == self.active_low  # made and active low, or open and active high
            await (self._gpio.press(pin) if low else self._gpio.release(pin))

    async def command(self, words: list[str]) -> str:
        """Perform one command line (split into words); returns what it did."""
        verb, args = words[0], words[1:]
        if verb in ("up", "down") and not args:
            await self.set_position(verb)
        elif verb in ("raise", "lower") and len(args) <= 1:
            await self.travel("up" if verb == "raise" else "down", seconds(args[0]) if args else 1)
        elif verb == "stuck" and not args:
            await self.set_position("moving")
        elif verb == "fault" and args in (["on"], ["off"]):
            await self.set_fault(args[0] == "on")
        elif self.http is not None and verb in ("down-http", "up-http") and not args:
            return await http_command(self.http, [verb.removesuffix("-http")])
        elif self.http is not None and verb in ("ok", "error", "garbage", "hang", "slow"):
            return await http_command(self.http, words)
        else:
            raise ValueError(f"unknown command {' '.join(words)!r}")
        return f"bollard {self.state}"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``alarmgw-sim bollard``."""
    parser = subparsers.add_parser(
        "bollard",
        help="anti-ram bollard: GPIO limit switches and/or the controller's HTTP status",
        description="Drive the limit switches of a gateway on the mock GPIO factory (--socket) "
        "and/or serve GET /status -> {state} (--port). Commands (script or stdin): up, down, "
        "raise [S], lower [S], stuck, fault on|off, ok, error [STATUS], garbage, hang, slow S, "
        "down-http, up-http, wait S, quit.",
    )
    env = os.environ.get("ALARMGW_GPIO_SIM")
    parser.add_argument("--socket", default=env, help="GPIO simulator socket ($ALARMGW_GPIO_SIM)")
    parser.add_argument("--no-gpio", action="store_true", help="do not drive GPIO pins")
    parser.add_argument("--up-pin", type=int, default=5, help="BCM pin of the up switch (5)")
    parser.add_argument("--down-pin", type=int, default=6, help="BCM pin of the down switch (6)")
    parser.add_argument("--fault-pin", type=int, default=13, help="fault output pin (13; -1 none)")
    parser.add_argument("--active-high", action="store_true", help="switches drive the pin high")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP listen address (loopback)")
    parser.add_argument("--port", type=int, help="serve the HTTP status on this port (0: free)")
    parser.add_argument("--start", choices=POSITIONS, default="up", help="initial position (up)")
    parser.add_argument("--script", default="", help='commands, ";"-separated, run first')
    parser.add_argument("--stay", action="store_true", help="keep running at the end of stdin")
    parser.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    socket = None if args.no_gpio else args.socket
    if socket is None and args.port is None:
        print("alarmgw-sim bollard: give --socket (GPIO) and/or --port (HTTP)", file=sys.stderr)
        return 2
    return asyncio.run(_cli_main(args, socket))


async def _cli_main(args: argparse.Namespace, socket: str | None) -> int:
    sim = BollardSimulator(
        gpio_socket=socket,
        up_pin=args.up_pin,
        down_pin=args.down_pin,
        fault_pin=None if args.fault_pin < 0 else args.fault_pin,
        active_low=not args.active_high,
        http=(args.host, args.port) if args.port is not None else None,
        position=args.start,
    )
    async with sim:
        if sim.http is not None:
            print(f"listening {sim.url}", flush=True)
        print(f"bollard {sim.state}", flush=True)
        await run_commands(
            sim.command,
            split_script(args.script),
            stay=args.stay,
            say=lambda text: print(text, flush=True),
        )
    return 0
