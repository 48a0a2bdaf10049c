"""The GPIO simulator's server side, shipped with the daemon like gpiozero's own mock pin
factory: presses buttons and reads LEDs of a gateway running on that factory, over a unix
stream socket.

Inside the gateway process (``GPIOZERO_PIN_FACTORY=mock`` and ``ALARMGW_GPIO_SIM=PATH``) the
daemon runs ``GpioSimServer(PATH, leds)``. A button is wired to ground with a pull-up
(OPERATOR.md ``[[button]]``), so "press" drives the pin low. Line protocol, one
command per line, every command answered by one line ``ok ...`` or ``error ...``:

    press PIN            -> ok press PIN              (drive low)
    release PIN          -> ok release PIN            (drive high)
    tap PIN [MS]         -> ok tap PIN MS             (press, MS ms (default 100), release)
    bounce PIN N [MS]    -> ok bounce PIN N MS        (contact bounce: N closures back to back,
                                                       the last one held MS ms, then release)
    led PIN              -> ok led PIN MODE           (MODE: off, blink, fast, solid, pulse)
    wait PIN MODE [MS]   -> ok led PIN MODE           (once the LED shows MODE, or has shown it
                                                       since this connection's last press,
                                                       release, tap or bounce; default 10000)
    watch                -> ok watch, then "led PIN MODE" for every LED now and on each change

LED changes are recorded as they happen (``LedFeedback.observe``), not sampled: on loopback the
center's ack can turn ``blink`` into ``solid`` before a ``tap`` has even released the button.
``firmware_sim.gpio.GpioSimClient`` speaks the protocol from asyncio; ``alarmgw-sim gpio`` from a
shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from gateway.inputs.gpio import LedFeedback

MAX_LINE = 256  # a command is a few words; a longer line is a confused client
MAX_HOLD_MS = 60_000
MAX_WAIT_MS = 600_000
MAX_BOUNCES = 100
HISTORY = 1024  # LED transitions kept for ``wait``
MODES = ("off", "blink", "fast", "solid", "pulse")
USAGE = {
    "press": "press PIN",
    "release": "release PIN",
    "tap": "tap PIN [MS]",
    "bounce": "bounce PIN N [MS]",
    "led": "led PIN",
    "wait": "wait PIN MODE [MS]",
    "watch": "watch",
}
DRIVES = ("press", "release", "tap", "bounce")  # commands that move this connection's mark


class GpioSimError(Exception):
    """The simulator answered ``error ...`` or could not be reached."""


def _mock_factory(factory: Any) -> Any:
    if factory is None:
        Device.ensure_pin_factory()
        factory = Device.pin_factory
    if not isinstance(factory, MockFactory):
        # Never drive real pins: the simulator exists for GPIOZERO_PIN_FACTORY=mock only.
        raise GpioSimError("the GPIO simulator needs GPIOZERO_PIN_FACTORY=mock")
    return factory


class GpioSimServer:
    """Serves the line protocol on a unix socket. ``leds`` returns ``{led_pin: mode}``;
    ``factory`` defaults to gpiozero's configured factory, which must be the mock one."""

    def __init__(
        self,
        socket_path: str | Path,
        leds: Callable[[], dict[int, str]],
        *,
        factory: Any = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self._leds = leds
        self._factory_arg = factory
        self._factory: Any = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._history: list[tuple[int, str]] = []  # LED transitions, oldest first
        self._dropped = 0  # transitions trimmed from the front of _history
        self._changed = asyncio.Event()
        self._stop_observing: Callable[[], None] | None = None

    async def start(self) -> None:
        """Bind the socket (replacing a stale one) and accept clients."""
        self._factory = _mock_factory(self._factory_arg)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(self.socket_path.lstat().st_mode):
                raise GpioSimError(f"{self.socket_path} exists and is not a socket")
            self.socket_path.unlink()  # left over from a process that did not clean up
        loop = asyncio.get_running_loop()

        def observe(pin: int, mode: str) -> None:  # any thread: hand over to the loop
            loop.call_soon_threadsafe(self._record, pin, mode)

        self._stop_observing = LedFeedback.observe(observe)
        self._server = await asyncio.start_unix_server(
            self._client, path=str(self.socket_path), limit=MAX_LINE
        )
        # Anyone who can connect can press an alarm button: owner only.
        self.socket_path.chmod(0o600)

    async def close(self) -> None:
        """Stop accepting, end the client sessions and remove the socket."""
        if self._stop_observing is not None:
            self._stop_observing()
            self._stop_observing = None
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    def _record(self, pin: int, mode: str) -> None:
        self._history.append((pin, mode))
        if len(self._history) > HISTORY:
            del self._history[: len(self._history) - HISTORY]
            self._dropped += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def _end(self) -> int:
        return self._dropped + len(self._history)

    def _since(self, mark: int) -> list[tuple[int, str]]:
        return self._history[max(0, mark - self._dropped) :]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        mark = self._end()
        try:
            while True:
                try:
                    raw = await reader.readline()
                except ValueError:  # over MAX_LINE
                    writer.write(b"error line too long\n")
                    break
                if not raw:
                    break
                words = raw.decode("ascii", "replace").split()
                if not words:
                    continue
                if words == ["watch"]:
                    await self._watch(writer)
                    break
                if words[0] in DRIVES:
                    mark = self._end()
                writer.write((await self._command(words, mark) + "\n").encode())
                await writer.drain()
        except ConnectionError:
            pass  # the client went away; nothing to answer
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _command(self, words: list[str], mark: int) -> str:
        verb, args = words[0], words[1:]
        if verb not in USAGE:
            return f"error unknown command {verb!r} (one of: {', '.join(USAGE)})"
        mode = args.pop(1) if verb == "wait" and len(args) > 1 and args[1] in MODES else None
        low, high = {"tap": (1, 2), "bounce": (2, 3), "wait": (1, 2)}.get(verb, (1, 1))
        if not (low <= len(args) <= high and all(a.isdigit() for a in args)) or (
            verb == "wait" and mode is None
        ):
            return f"error usage: {USAGE[verb]}"
        pin, numbers = int(args[0]), [int(a) for a in args[1:]]
        if verb == "led":
            current = self._leds().get(pin)
            return f"ok led {pin} {current}" if current else f"error no LED on GPIO{pin}"
        if mode is not None:
            return await self._wait(pin, mode, numbers[0] if numbers else 10_000, mark)
        try:
            mock = self._input_pin(pin)
        except GpioSimError as err:
            return f"error {err}"
        if verb in ("press", "release"):
            (mock.drive_low if verb == "press" else mock.drive_high)()
            return f"ok {verb} {pin}"
        count = numbers.pop(0) if verb == "bounce" else 1
        ms = numbers[0] if numbers else 100
        if ms > MAX_HOLD_MS or not 1 <= count <= MAX_BOUNCES:
            return f"error MS must be <= {MAX_HOLD_MS}, N 1..{MAX_BOUNCES}"
        # Real contact bounce lasts microseconds: the edges follow each other without a pause.
        for _ in range(count - 1):
            mock.drive_low()
            mock.drive_high()
        mock.drive_low()
        await asyncio.sleep(ms / 1000)
        mock.drive_high()
        return f"ok tap {pin} {ms}" if verb == "tap" else f"ok bounce {pin} {count} {ms}"

    def _input_pin(self, pin: int) -> Any:
        try:
            mock = self._factory.pin(pin)
        except Exception as err:
            raise GpioSimError(f"no pin GPIO{pin}: {err}") from err
        if mock.function != "input":
            raise GpioSimError(f"GPIO{pin} is an output (an LED?), not a button")
        return mock

    async def _wait(self, pin: int, mode: str, ms: int, mark: int) -> str:
        if ms > MAX_WAIT_MS:
            return f"error MS must be <= {MAX_WAIT_MS}"
        try:
            async with asyncio.timeout(ms / 1000):
                while True:
                    current = self._leds().get(pin)
                    if current is None:
                        return f"error no LED on GPIO{pin}"
                    if current == mode or (pin, mode) in self._since(mark):
                        return f"ok led {pin} {mode}"
                    await self._changed.wait()
        except TimeoutError:
            return f"error timeout: LED GPIO{pin} is {self._leds().get(pin)}, not {mode}"

    async def _watch(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok watch\n")
        sent: dict[int, str] = {}
        mark = self._end()
        changes = sorted(self._leds().items())
        while True:
            lines = []
            for pin, mode in changes:
                if sent.get(pin) != mode:  # a change seen in the snapshot and recorded later
                    sent[pin] = mode
                    lines.append(f"led {pin} {mode}\n")
            if lines:
                writer.write("".join(lines).encode())
                await writer.drain()
            changed = self._changed
            if mark == self._end():
                await changed.wait()
            changes, mark = self._since(mark), self._end()
