"""The GPIO wire simulator's client: presses buttons and reads LEDs of a gateway running on
gpiozero's mock pin factory, through the daemon's ``gateway.inputs.gpio_sim.GpioSimServer``
(its docstring has the line protocol). ``GpioSimClient`` speaks it from asyncio;
``alarmgw-sim gpio`` from a shell.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway.inputs.gpio_sim import MAX_LINE, MODES, GpioSimError, GpioSimServer

__all__ = ["GpioSimClient", "GpioSimError", "GpioSimServer"]


class GpioSimClient:
    """Client of ``GpioSimServer``: ``async with GpioSimClient(path) as sim: await
    sim.tap(17)``. Each method returns the reply after ``ok`` or raises GpioSimError."""

    def __init__(self, socket_path: str | Path) -> None:
        self.socket_path = Path(socket_path)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> GpioSimClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        self._reader, self._writer = await _open(self.socket_path)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
            self._reader = self._writer = None

    async def request(self, line: str) -> str:
        """Send one command line; returns the text after ``ok``."""
        if self._reader is None or self._writer is None:
            await self.connect()
        assert self._reader is not None and self._writer is not None
        async with self._lock:
            self._writer.write(line.encode() + b"\n")
            await self._writer.drain()
            reply = (await self._reader.readline()).decode("ascii", "replace").strip()
        return _ok(reply)

    async def press(self, pin: int) -> str:
        return await self.request(f"press {pin}")

    async def release(self, pin: int) -> str:
        return await self.request(f"release {pin}")

    async def tap(self, pin: int, ms: int = 100) -> str:
        return await self.request(f"tap {pin} {ms}")

    async def bounce(self, pin: int, n: int, ms: int = 100) -> str:
        return await self.request(f"bounce {pin} {n} {ms}")

    async def led(self, pin: int) -> str:
        """The LED's mode: off, blink, fast, solid or pulse."""
        return (await self.request(f"led {pin}")).split()[-1]

    async def wait_led(self, pin: int, mode: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until the LED on ``pin`` shows ``mode`` or has shown it since this client's
        last press/release/tap/bounce; TimeoutError after ``timeout`` seconds. (A timeout
        parameter rather than ``asyncio.timeout``: the server does the waiting.)"""
        try:
            await self.request(f"wait {pin} {mode} {max(0, round(timeout * 1000))}")
        except GpioSimError as err:
            if str(err).startswith("timeout"):
                raise TimeoutError(str(err)) from None
            raise

    async def watch(self) -> AsyncGenerator[tuple[int, str], None]:
        """(pin, mode) for every LED now and on each change, on a connection of its own."""
        reader, writer = await _open(self.socket_path)
        try:
            writer.write(b"watch\n")
            await writer.drain()
            _ok((await reader.readline()).decode("ascii", "replace").strip())
            while line := (await reader.readline()).decode("ascii", "replace"):
                _, pin, mode = line.split()
                yield int(pin), mode
        finally:
            writer.close()


async def _open(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_unix_connection(str(path), limit=MAX_LINE)
    except OSError as err:
        raise GpioSimError(
            f"cannot connect to the GPIO simulator at {path}: {err.strerror or err} "
            "(is the gateway running with GPIOZERO_PIN_FACTORY=mock and ALARMGW_GPIO_SIM set?)"
        ) from err


def _ok(reply: str) -> str:
    if reply.startswith("ok"):
        return reply[2:].strip()
    if not reply:
        raise GpioSimError("the GPIO simulator closed the connection")
    raise GpioSimError(reply.removeprefix("error").strip() or reply)


# --- alarmgw-sim gpio --------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``alarmgw-sim gpio --socket PATH ACTION PIN ...``."""
    parser = subparsers.add_parser(
        "gpio",
        help="press buttons and read LEDs of a gateway on the mock GPIO factory",
        description="Drives the GPIO simulator socket of a gateway started with "
        "GPIOZERO_PIN_FACTORY=mock and ALARMGW_GPIO_SIM=PATH.",
    )
    env = os.environ.get("ALARMGW_GPIO_SIM")
    parser.add_argument(
        "--socket",
        default=env,
        required=env is None,
        help="simulator socket (default: $ALARMGW_GPIO_SIM)",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("press", "press and keep pressed"), ("release", "release")):
        actions.add_parser(name, help=text).add_argument("pin", type=int, help="BCM pin")
    tap = actions.add_parser("tap", help="press, hold MS milliseconds, release")
    tap.add_argument("pin", type=int, help="BCM pin")
    tap.add_argument("ms", type=int, nargs="?", default=100, help="hold time (default 100)")
    bounce = actions.add_parser("bounce", help="N bouncing closures, hold MS, release")
    bounce.add_argument("pin", type=int, help="BCM pin")
    bounce.add_argument("n", type=int, help="number of closures")
    bounce.add_argument("ms", type=int, nargs="?", default=100, help="hold time (default 100)")
    actions.add_parser("led", help="show an LED's mode").add_argument("pin", type=int)
    wait = actions.add_parser("wait", help="wait until an LED shows MODE (exit 1 on timeout)")
    wait.add_argument("pin", type=int, help="BCM pin of the LED")
    wait.add_argument("mode", choices=MODES)
    wait.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    watch = actions.add_parser("watch", help="print LED modes as they change (Ctrl-C ends)")
    watch.add_argument("pin", type=int, nargs="?", help="only this LED")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except GpioSimError as err:
        print(f"alarmgw-sim gpio: {err}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace) -> int:
    if args.action == "watch":
        async with contextlib.aclosing(GpioSimClient(args.socket).watch()) as changes:
            async for pin, mode in changes:
                if args.pin is None or pin == args.pin:
                    print(f"LED GPIO{pin}: {mode}", flush=True)
        return 0
    async with GpioSimClient(args.socket) as sim:
        if args.action == "led":
            print(f"LED GPIO{args.pin}: {await sim.led(args.pin)}")
            return 0
        if args.action == "wait":
            try:
                await sim.wait_led(args.pin, args.mode, args.timeout)
            except TimeoutError as err:
                print(f"alarmgw-sim gpio: {err}", file=sys.stderr)
                return 1
            print(f"LED GPIO{args.pin}: {args.mode}")
            return 0
        if args.action == "tap":
            await sim.tap(args.pin, args.ms)
            print(f"tapped GPIO{args.pin} for {args.ms} ms")
        elif args.action == "bounce":
            await sim.bounce(args.pin, args.n, args.ms)
            print(f"bounced GPIO{args.pin} {args.n} times, held {args.ms} ms, released")
        elif args.action == "press":
            await sim.press(args.pin)
            print(f"pressed GPIO{args.pin} (held until release)")
        else:
            await sim.release(args.pin)
            print(f"released GPIO{args.pin}")
    return 0
