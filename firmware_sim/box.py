"""The button box, simulated on a real pty (SERIAL.md), and ``alarmgw-sim box``.

``BoxSimulator`` plays the box's side of the contract: ``HELLO`` at start, ``HB`` every
heartbeat, ``PRESS`` re-sent every 200 ms until ACKed (at most 50 sends), and the other box
frames on request. It decodes what the gateway sends (``ACK``, ``LED``, ``BUZZ``, ``PING``)
with the gateway's own codec and records it, with asyncio helpers for tests to wait on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import threading
import tty
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway.errors import SerialProtocolError
from gateway.inputs.codec import GATEWAY_TYPES, MAX_SEQ, Decoder, Frame, crc16, encode

__all__ = ["BoxSimulator", "SimEvent", "parse_command", "register"]


@dataclass(frozen=True, slots=True)
class SimEvent:
    """Something that happened on the simulated box: ``sent``, ``resent`` (the same PRESS
    again), ``ack``, ``led``, ``buzz``, ``ping``, ``bad`` (a bad line from the gateway),
    ``garbage``, ``dropped`` (write refused), ``gave-up`` (PRESS never ACKed), ``error``
    (a bad command)."""

    kind: str
    detail: str = ""
    frame: Frame | None = None

    def text(self) -> str:
        """One line for people, e.g. ``sent 2,PRESS,btn=1`` or ``led blink``."""
        return f"{self.kind} {self.detail}".rstrip()

    def as_json(self) -> str:
        """One JSON object, for ``--json``."""
        obj: dict[str, object] = {"event": self.kind, "detail": self.detail}
        if self.frame is not None:
            obj.update(seq=self.frame.seq, type=self.frame.type, fields=dict(self.frame.fields))
        return json.dumps(obj, separators=(",", ":"))


class BoxSimulator:
    """One simulated box. By default it owns a new pty pair; the gateway opens ``path``.

    Pass ``fd`` to drive an existing terminal instead (e.g. one end of a ``socat`` pair; the
    caller keeps ownership of it) and ``peer_path`` to say which device the gateway opens.
    Use ``async with`` (or ``start``/``stop``) inside a running event loop.
    """

    def __init__(
        self,
        *,
        box_id: str = "box-sim-1",
        fw: str = "1.4.2",
        heartbeat_s: float = 2.0,
        resend_s: float = 0.2,
        max_sends: int = 50,
        fd: int | None = None,
        peer_path: str | None = None,
        seed: int | None = None,
        on_event: Callable[[SimEvent], None] | None = None,
    ) -> None:
        self.box_id, self.fw = box_id, fw
        self.heartbeat_s, self.resend_s, self.max_sends = heartbeat_s, resend_s, max_sends
        self.on_event = on_event
        self._rng = random.Random(seed)
        self._owned: list[int] = []
        if fd is None:
            master, slave = os.openpty()
            # Raw mode: no echo, no \n -> \r\n translation. The slave stays open here so the
            # master never reads EIO while the gateway has the port closed.
            tty.setraw(slave)
            self._owned = [master, slave]
            fd, peer_path = master, os.ttyname(slave)
        self._fd = fd
        self._peer_path = peer_path
        self._decoder = Decoder(accept=GATEWAY_TYPES)
        self._seq = 0
        self._silent = False
        self._announcing = False
        self._pending: dict[int, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self.sent: list[Frame] = []
        self.received: list[Frame] = []
        self.acks: list[int] = []
        self.leds: list[str] = []
        self.buzzes: list[int] = []
        self.pings = 0
        self.bad_lines: list[SerialProtocolError] = []

    @property
    def path(self) -> str:
        """The device the gateway opens (the pty slave)."""
        if self._peer_path is None:
            raise RuntimeError("this simulator drives an fd whose peer path was not given")
        return self._peer_path

    @property
    def silenced(self) -> bool:
        return self._silent

    # --- lifecycle ---

    async def start(self) -> None:
        """Start reading the gateway's frames, send HELLO and start the heartbeat."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._on_readable)
        self.hello()
        if self.heartbeat_s > 0:
            self._spawn(self._heartbeat())

    async def stop(self) -> None:
        """Stop every timer, stop reading and close the pty this simulator made."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        self.close()

    def close(self) -> None:
        """Close the pty pair (idempotent; ``stop`` calls it)."""
        for fd in self._owned:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._owned = []

    async def __aenter__(self) -> BoxSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- what the box does (SERIAL.md "Box → gateway") ---

    def hello(self) -> int:
        """(Re)boot: SEQ restarts at 0 and HELLO is sent. Pending PRESS re-sends end. Until
        the gateway ACKs it, HELLO goes out again in place of each HB, because a gateway
        that opens the port late discards what was written before."""
        for event in self._pending.values():
            event.set()
        self._pending.clear()
        self._seq = 1  # the HELLO itself is SEQ 0
        self._announcing = True
        return self._send(self._hello_frame())

    def hb(self) -> int:
        """Send one heartbeat."""
        return self._send(self._frame("HB"))

    def press(self, btn: int = 1) -> int:
        """Press: send PRESS and re-send the same frame every ``resend_s`` until the
        gateway ACKs its SEQ, ``max_sends`` times at most. Returns the SEQ."""
        frame = self._frame("PRESS", btn=str(btn))
        # A HELLO repeated now would clear the gateway's dedupe for this PRESS's re-sends.
        self._announcing = False
        acked = asyncio.Event()
        self._pending[frame.seq] = acked
        self._spawn(self._press_until_acked(frame, acked))
        return frame.seq

    def retransmit(self, n: int, btn: int = 1) -> int:
        """Send one new PRESS frame ``n`` times back to back, whatever comes back."""
        frame = self._frame("PRESS", btn=str(btn))
        self._announcing = False
        for attempt in range(n):
            self._send(frame, "resent" if attempt else "sent")
        return frame.seq

    def release(self, ms: int, btn: int = 1) -> int:
        return self._send(self._frame("RELEASE", btn=str(btn), ms=str(ms)))

    def tamper(self, state: str) -> int:
        return self._send(self._frame("TAMPER", state=state))

    def power(self, state: str) -> int:
        return self._send(self._frame("POWER", state=state))

    def fault(self, code: str) -> int:
        return self._send(self._frame("FAULT", code=code))

    def silent(self, on: bool) -> None:
        """Stop (or resume) sending anything at all, heartbeats included."""
        self._silent = on

    async def send_raw(self, data: bytes) -> None:
        """Write arbitrary bytes to the line, all of them, waiting while the pty is full
        (for fuzzing the gateway's reader with large volumes)."""
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view[:65536])
            except BlockingIOError:
                await asyncio.sleep(0.002)
                continue
            view = view[written:]
            await asyncio.sleep(0)

    def garbage(self, n: int = 1) -> None:
        """Send ``n`` lines the gateway must drop: noise, bad CRC, no CRC, too long,
        non-ASCII, unknown TYPE."""
        for _ in range(n):
            line = self._garbage_line()
            if not self._silent and self._write(line):
                self._emit(SimEvent("garbage", line.decode("ascii", "backslashreplace")))

    # --- what the gateway sent, for tests ---

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Wait until ``predicate()`` holds after some frame from the gateway arrived."""
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate():
                    assert self._changed is not None, "start() the simulator first"
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"box simulator: no {what} within {timeout_s} s "
                f"(acks={self.acks[-10:]}, leds={self.leds[-10:]}, bad={len(self.bad_lines)})"
            ) from None

    async def wait_led(self, mode: str, timeout_s: float = 10.0, *, since: int = 0) -> None:
        """Wait for ``LED,mode=<mode>`` (among ``leds[since:]``)."""
        await self.wait_until(lambda: mode in self.leds[since:], timeout_s, f"LED {mode}")

    async def wait_ack(self, ref: int, timeout_s: float = 10.0, *, since: int = 0) -> None:
        """Wait for ``ACK,ref=<ref>`` (among ``acks[since:]``)."""
        await self.wait_until(lambda: ref in self.acks[since:], timeout_s, f"ACK ref={ref}")

    async def wait_linked(self, timeout_s: float = 10.0) -> None:
        """Wait until the gateway ACKed anything (it has the port open and reads it)."""
        await self.wait_until(lambda: bool(self.acks), timeout_s, "ACK at all")

    # --- internals ---

    def _frame(self, type_: str, **fields: str) -> Frame:
        frame = Frame.of(self._seq, type_, **fields)
        self._seq = (self._seq + 1) & MAX_SEQ
        return frame

    def _hello_frame(self) -> Frame:
        return Frame.of(0, "HELLO", fw=self.fw, id=self.box_id)

    def _send(self, frame: Frame, kind: str = "sent") -> int:
        if self._silent:
            return frame.seq
        self.sent.append(frame)
        if not self._write(encode(frame)):
            kind = "dropped"
        self._emit(SimEvent(kind, frame.body, frame))
        return frame.seq

    def _write(self, data: bytes) -> bool:
        try:
            return os.write(self._fd, data) == len(data)
        except OSError:  # buffer full (nobody reads the port) or the pty is gone
            return False

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None, "start() the simulator first"
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if self._announcing:
                self._send(self._hello_frame())
            else:
                self.hb()

    async def _press_until_acked(self, frame: Frame, acked: asyncio.Event) -> None:
        # SERIAL.md "Rules": re-send every 200 ms until the ACK, at most 50 times.
        try:
            for attempt in range(self.max_sends):
                self._send(frame, "resent" if attempt else "sent")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.resend_s):
                        await acked.wait()
                if acked.is_set():
                    return
            self._emit(SimEvent("gave-up", str(frame.seq), frame))
        finally:
            if self._pending.get(frame.seq) is acked:
                del self._pending[frame.seq]

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            # The pty went away (an fd we do not own was closed): stop polling it.
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            return
        for event in self._decoder.receive(data):
            if isinstance(event, SerialProtocolError):
                self.bad_lines.append(event)
                self._emit(SimEvent("bad", event.reason))
            else:
                self._handle(event)
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def _handle(self, frame: Frame) -> None:
        self.received.append(frame)
        if frame.type == "ACK":
            ref = int(frame.get("ref", "0"))
            self.acks.append(ref)
            if ref == 0:
                self._announcing = False  # the gateway heard our HELLO
            pending = self._pending.get(ref)
            if pending is not None:
                pending.set()
            self._emit(SimEvent("ack", str(ref), frame))
        elif frame.type == "LED":
            mode = frame.get("mode", "")
            self.leds.append(mode)
            self._emit(SimEvent("led", mode, frame))
        elif frame.type == "BUZZ":
            self.buzzes.append(int(frame.get("ms", "0")))
            self._emit(SimEvent("buzz", frame.get("ms", ""), frame))
        elif frame.type == "PING":
            self.pings += 1
            self._emit(SimEvent("ping", "", frame))
            self.hb()  # SERIAL.md "Gateway → box": PING asks for an HB now

    def _garbage_line(self) -> bytes:
        rng = self._rng
        seq = rng.randrange(MAX_SEQ + 1)
        body = f"{seq},PRESS,btn=1".encode("ascii")
        choices: list[bytes] = [
            bytes(rng.choice(b"ABCxyz0123,=*.-_ ") for _ in range(rng.randrange(1, 40))),
            body + b"*%04X" % (crc16(body) ^ 0x5A5A),  # bad CRC
            body,  # no CRC
            b"1," + b"X" * 200,  # too long
            bytes(rng.randrange(0x80, 0x100) for _ in range(8)),  # not ASCII
            b"%d,NOPE*%04X" % (seq, crc16(b"%d,NOPE" % seq)),  # unknown TYPE, good CRC
        ]
        return rng.choice(choices) + b"\r\n"

    def _emit(self, event: SimEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)


# --- `alarmgw-sim box` ---

_STATES = {"tamper": ("open", "closed"), "power": ("mains", "battery", "low")}
_NO_ARGS = ("press", "hello", "quit")
_COMMANDS = frozenset(
    {*_STATES, *_NO_ARGS, "hold", "release", "fault", "garbage", "silent", "retransmit", "wait"}
)


@dataclass(frozen=True, slots=True)
class _Command:
    name: str
    arg: str = ""


def parse_command(line: str) -> _Command | None:
    """One command line of the box CLI (None for a blank line or a comment).
    Raises ValueError naming what is wrong."""
    words = line.split("#", 1)[0].split()
    if not words:
        return None
    name, args = words[0].lower(), words[1:]
    if name not in _COMMANDS:
        raise ValueError(f"unknown command {name!r}")
    if name in _NO_ARGS:
        expected = 0
    elif name in ("release", "garbage"):
        expected = len(args[:1])
    else:
        expected = 1
    if len(args) != expected:
        raise ValueError(f"{name}: expected {expected} argument(s), got {len(args)}")
    arg = args[0] if args else ""
    if name in _STATES:
        if arg not in _STATES[name]:
            raise ValueError(f"{name}: expected one of {'/'.join(_STATES[name])}, got {arg!r}")
    elif name == "silent":
        if arg not in ("on", "off"):
            raise ValueError(f"silent: expected on/off, got {arg!r}")
    elif name in ("wait", "hold"):
        if not _is_number(arg) or float(arg) < 0:
            raise ValueError(f"{name}: expected seconds, got {arg!r}")
    elif name in ("release", "garbage", "retransmit"):
        if arg and not arg.isdigit():
            raise ValueError(f"{name}: expected a whole number, got {arg!r}")
    elif name == "fault":
        try:
            Frame.of(0, "FAULT", code=arg)
        except ValueError:
            raise ValueError(f"fault: bad code {arg!r}") from None
    return _Command(name, arg)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


async def _execute(sim: BoxSimulator, cmd: _Command) -> bool:
    """Run one command; False means quit."""
    name, arg = cmd.name, cmd.arg
    if name == "quit":
        return False
    if name == "press":
        sim.press()
    elif name == "hold":
        sim.press()
        await asyncio.sleep(float(arg))
        sim.release(round(float(arg) * 1000))
    elif name == "release":
        sim.release(int(arg or "1000"))
    elif name == "tamper":
        sim.tamper(arg)
    elif name == "power":
        sim.power(arg)
    elif name == "fault":
        sim.fault(arg)
    elif name == "garbage":
        sim.garbage(int(arg or "1"))
    elif name == "silent":
        sim.silent(arg == "on")
    elif name == "retransmit":
        sim.retransmit(int(arg))
    elif name == "hello":
        sim.hello()
    elif name == "wait":
        await asyncio.sleep(float(arg))
    return True


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``alarmgw-sim box``."""
    parser = subparsers.add_parser(
        "box",
        help="button box on a pty (SERIAL.md)",
        description="Play the button box on a new pty. Prints 'device /dev/pts/N' first, then "
        "one line per thing that happens. Commands (script or stdin, one per line): press, "
        "hold S, release [MS], tamper open|closed, power mains|battery|low, fault CODE, "
        "garbage [N], silent on|off, retransmit N, hello, wait S, quit.",
    )
    parser.add_argument("--link", metavar="PATH", help="make a symlink PATH to the pty device")
    parser.add_argument("--id", default="box-sim-1", help="box serial number sent in HELLO")
    parser.add_argument("--fw", default="1.4.2", help="firmware version sent in HELLO")
    parser.add_argument("--hb", type=float, default=2.0, metavar="S", help="heartbeat seconds")
    parser.add_argument("--script", default="", help='commands, ";"-separated, run first')
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--stay", action="store_true", help="keep running at the end of stdin (until SIGTERM)"
    )
    parser.add_argument("--seed", type=int, help="seed for garbage lines")
    parser.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    try:
        script = [c for part in args.script.split(";") if (c := parse_command(part))]
        Frame.of(0, "HELLO", fw=args.fw, id=args.id)
    except ValueError as err:
        print(f"alarmgw-sim box: {err}", file=sys.stderr)
        return 2
    return asyncio.run(_cli_main(args, script))


async def _cli_main(args: argparse.Namespace, script: list[_Command]) -> int:
    def show(event: SimEvent) -> None:
        print(event.as_json() if args.json else event.text(), flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Before the device line: whoever reads it may signal us at once.
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    sim = BoxSimulator(box_id=args.id, fw=args.fw, heartbeat_s=args.hb, seed=args.seed)
    link = Path(args.link) if args.link else None
    try:
        if link is not None:
            _make_link(link, sim.path)
        if args.json:
            print(json.dumps({"event": "device", "path": sim.path}), flush=True)
        else:
            print(f"device {sim.path}", flush=True)
        sim.on_event = show
        async with sim:
            await _serve_commands(sim, script, show, stop, stay=args.stay)
    finally:
        sim.close()
        if link is not None and link.is_symlink():
            link.unlink()
        for signum in signals:
            loop.remove_signal_handler(signum)
    return 0


async def _serve_commands(
    sim: BoxSimulator,
    script: list[_Command],
    show: Callable[[SimEvent], None],
    stop: asyncio.Event,
    *,
    stay: bool,
) -> None:
    """Run the script, then stdin's commands, until quit, end of input or ``stop``."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    # A daemon thread, not to_thread: a blocking readline must not hold up the exit.
    threading.Thread(target=_read_stdin, args=(loop, lines), daemon=True).start()

    async def commands() -> None:
        for step in script:
            if not await _execute(sim, step):
                return
        while (line := await lines.get()) is not None:
            try:
                cmd = parse_command(line)
            except ValueError as err:
                show(SimEvent("error", str(err)))
                continue
            if cmd is not None and not await _execute(sim, cmd):
                return
        if stay:
            await stop.wait()

    runner = asyncio.create_task(commands())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (runner, stopper):
            task.cancel()
        await asyncio.gather(runner, stopper, return_exceptions=True)


def _read_stdin(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed first: nobody wants the rest
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)


def _make_link(link: Path, target: str) -> None:
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a symlink; not replacing it")
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)  # atomic: a gateway polling the path never sees it missing
