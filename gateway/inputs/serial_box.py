"""The gateway side of one button box on a serial port (SERIAL.md).

``BoxLink.run`` keeps the port open for ever: it opens it (a device path such as
``/dev/ttyAMA0`` or ``/dev/pts/N``, or a pyserial URL such as ``socket://HOST:PORT`` or
``loop://``), hands what it reads to the sans-I/O ``BoxProtocol`` and carries out the actions
that come back. When the port is missing or fails (unplugged), it reopens it with the
``retry.SERIAL_OPEN`` policy (jittered backoff, one log line per retry): the link never dies
and bad input never stops it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial
import serial.rs485
import structlog
from structlog.typing import FilteringBoundLogger

from gateway import retry
from gateway.feedback import AlarmSink, LedMode
from gateway.inputs.box_protocol import (
    Action,
    BoxProtocol,
    ForgetDedupe,
    FrameReceived,
    RaiseAlarm,
    RateLimiter,
    Rejected,
    Send,
)
from gateway.inputs.codec import Frame, encode

__all__ = ["BoxFeedback", "BoxLink", "RS485Options", "apply_rs485"]

# Ports without a pollable fd (``loop://``) are written directly; a write that cannot finish
# in this time is dropped (the box re-sends what matters).
WRITE_TIMEOUT_S = 0.5
# Ports with an fd are written without blocking, through a bounded buffer that the event loop
# drains when the port is writable: ~30 frames. A box that stops reading fills it; what does
# not fit is dropped (the box re-sends PRESS until ACKed) and the link reports ``write_stalled``.
MAX_OUTBUF = 4096
# The buffer has not emptied for this long: the box is not draining its side.
WRITE_STALL_S = 5.0
READ_CHUNK = 4096
# Reader-thread ports (no fileno, e.g. loop://) poll with this read timeout so stop is quick.
THREAD_READ_TIMEOUT_S = 0.2
# What a failed open raises (a missing device, a refused RS-485 ioctl, a bad URL).
OPEN_ERRORS = (serial.SerialException, OSError, ValueError)


@dataclass(frozen=True, slots=True)
class RS485Options:
    """Kernel RS-485 mode for a UART whose transceiver needs RTS to drive the bus."""

    rts_level_for_tx: bool = True
    rts_level_for_rx: bool = False
    delay_before_tx: float | None = None
    delay_before_rx: float | None = None


def apply_rs485(port: serial.Serial, options: RS485Options) -> None:
    """Switch ``port`` to RS-485 mode (an ioctl; it fails on a pty)."""
    port.rs485_mode = serial.rs485.RS485Settings(
        rts_level_for_tx=options.rts_level_for_tx,
        rts_level_for_rx=options.rts_level_for_rx,
        delay_before_tx=options.delay_before_tx,
        delay_before_rx=options.delay_before_rx,
    )


class BoxFeedback:
    """The ``Feedback`` handed to the alarm path: ``led(mode)`` writes an LED frame to the box.
    Safe to call from any thread (the work is moved onto the link's event loop)."""

    def __init__(self, link: BoxLink) -> None:
        self._link = link

    def led(self, mode: LedMode) -> None:
        self._link.send_led(mode)


class PortUnusable(ConnectionError):
    """The port opened but was lost before it carried a valid frame (a flapping adapter)."""


def _retry_event(err: BaseException | None) -> str:
    if isinstance(err, PortUnusable):
        return "serial port unusable, retrying"
    return "serial port cannot be opened, retrying"


class BoxLink:
    """One button box named ``name`` (its config name) on ``port`` at ``baud``.

    PRESSes become ``sink.raise_alarm`` calls; every valid frame is ACKed per SERIAL.md
    "Rules". ``on_frame`` callbacks see every valid frame (for link supervision). Status:
    ``connected``, ``last_valid_frame_at`` (monotonic), ``frames_ok``, ``frame_errors`` (per
    reason), ``box_id``, ``box_fw``, ``stale``.
    """

    def __init__(
        self,
        name: str,
        port: str,
        baud: int,
        sink: AlarmSink,
        *,
        ack_timeout_s: float = 15.0,
        heartbeat_s: float = 2.0,
        opener: Callable[..., serial.Serial] | None = None,
        log: FilteringBoundLogger | None = None,
        rs485: RS485Options | None = None,
        port_setup: Callable[[serial.Serial, RS485Options], None] = apply_rs485,
        retry_max_s: float = 5.0,
        buzz_ms: int = 0,
    ) -> None:
        self.name = name
        self.port = port
        self.baud = baud
        self.sink = sink
        # The alarm path owns the ack timer (LED fast after it); kept here for status.
        self.ack_timeout_s = ack_timeout_s
        # SERIAL.md: the local buzzer sounds only where the site's config allows it (alarms
        # are silent by default): [alarm] buzzer_ms > 0.
        self.buzz_ms = buzz_ms
        self.heartbeat_s = heartbeat_s
        self.on_frame: list[Callable[[Frame], None]] = []
        self.feedback = BoxFeedback(self)
        self._opener: Callable[..., serial.Serial] = opener or serial.serial_for_url
        self._rs485 = rs485
        self._port_setup = port_setup
        self._retry_max_s = retry_max_s
        base: FilteringBoundLogger = log or structlog.get_logger("alarmgw.serial")
        self._log = base.bind(box=name, port=port)
        self._proto = BoxProtocol(name)
        self._limiter = RateLimiter(5.0)
        self._serial: Any = None
        self._reader_fd: int | None = None
        self._lost: asyncio.Future[BaseException] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._started_at: float | None = None
        self._unsent_led: LedMode | None = None
        self._pongs: list[asyncio.Future[None]] = []
        self._open_failures = 0
        self._writer_fd: int | None = None  # the port's fd while it is written without blocking
        self._outbuf = bytearray()
        self._outbuf_since: float | None = None  # when the buffer last went from empty to not
        self.frames_dropped = 0  # frames that did not fit the buffer of a box not draining

    # --- status, for supervision and `alarmgw status` ---

    @property
    def connected(self) -> bool:
        return self._serial is not None

    @property
    def last_valid_frame_at(self) -> float | None:
        return self._proto.last_valid_frame_at

    @property
    def frames_ok(self) -> int:
        return self._proto.frames_ok

    @property
    def frame_errors(self) -> Counter[str]:
        return self._proto.frame_errors

    @property
    def box_id(self) -> str | None:
        return self._proto.box_id

    @property
    def box_fw(self) -> str | None:
        return self._proto.box_fw

    @property
    def stale(self) -> bool:
        """No valid frame for 3 heartbeat intervals (SERIAL.md "Rules": trouble 350)."""
        now = time.monotonic()
        since = self._proto.last_valid_frame_at or self._started_at
        return since is not None and now - since > 3 * self.heartbeat_s

    @property
    def write_stalled(self) -> bool:
        """What we write has not drained for ``WRITE_STALL_S``: the box is not reading."""
        since = self._outbuf_since
        return since is not None and time.monotonic() - since > WRITE_STALL_S

    # --- the loop ---

    async def run(self) -> None:
        """Open, serve and reopen the port for ever (cancel the task to stop)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._started_at = time.monotonic()
        policy = retry.SERIAL_OPEN.limited(cap_s=self._retry_max_s)
        while True:
            # Only a port that carried valid frames ends the retries (and is reopened at
            # once): one that opens and fails at once (a flapping USB adapter) waits like a
            # port that cannot be opened, so it cannot spin.
            attempts = policy.retrying(
                *OPEN_ERRORS, PortUnusable, log=self._log, event=_retry_event
            )
            async for attempt in attempts:
                with attempt:
                    await self._open_and_serve()

    async def _open_and_serve(self) -> None:
        try:
            port = self._open()
        except OPEN_ERRORS:
            self._open_failures += 1
            raise
        frames_before = self._proto.frames_ok
        await self._serve(port)
        if self._proto.frames_ok == frames_before:
            raise PortUnusable("lost before a valid frame")

    async def ping(self, timeout_s: float = 2.0) -> float:
        """Send PING and return the seconds until the box's HB answer arrived.
        Raises ``ConnectionError`` when the port is not open, ``TimeoutError`` on no answer."""
        loop = asyncio.get_running_loop()
        pong: asyncio.Future[None] = loop.create_future()
        self._pongs.append(pong)
        started = time.monotonic()
        try:
            if not self._write(self._proto.ping().frame):
                raise ConnectionError(f"serial port {self.port} is not open")
            async with asyncio.timeout(timeout_s):
                await pong
        finally:
            if pong in self._pongs:
                self._pongs.remove(pong)
        return time.monotonic() - started

    def send_led(self, mode: LedMode) -> None:
        """Write ``LED,mode=<mode>``; from another thread it is handed to the loop."""
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self.send_led, mode)
            return
        sent = self._write(self._proto.led(mode).frame)
        # A port that is down now gets the latest LED state when it is back.
        self._unsent_led = None if sent else mode

    def _open(self) -> Any:
        kwargs: dict[str, Any] = {
            "baudrate": self.baud,
            "timeout": 0,
            "write_timeout": WRITE_TIMEOUT_S,
        }
        if "://" not in self.port:
            # A second process on the same UART would steal half the bytes of each line.
            kwargs["exclusive"] = True
        port = self._opener(self.port, **kwargs)
        if self._rs485 is not None:
            try:
                self._port_setup(port, self._rs485)
            except BaseException:
                port.close()
                raise
        return port

    async def _serve(self, port: Any) -> None:
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[BaseException] = loop.create_future()
        self._lost, self._serial = lost, port
        self._log.info("serial port open", failed_attempts=self._open_failures)
        self._open_failures = 0
        if self._unsent_led is not None:
            self.send_led(self._unsent_led)
        fd = _usable_fileno(port)
        reader: _ReaderThread | None = None
        if fd is not None:
            os.set_blocking(fd, False)  # writes go through _flush, never wait on the box
            self._reader_fd = self._writer_fd = fd
            loop.add_reader(fd, self._on_readable)
        else:
            port.timeout = THREAD_READ_TIMEOUT_S
            reader = _ReaderThread(port, loop, self._receive, self._link_lost)
            reader.start()
        try:
            err = await lost
            self._log.warning("serial port lost, reopening", error=str(err) or repr(err))
        finally:
            self._serial = None
            self._stop_reader()
            if reader is not None:
                reader.stop()
                await asyncio.to_thread(reader.join, 2.0)
            try:
                port.close()
            except (serial.SerialException, OSError) as err:
                self._log.debug("serial port close failed", error=str(err))

    def _stop_reader(self) -> None:
        if self._reader_fd is not None and self._loop is not None:
            self._loop.remove_reader(self._reader_fd)
            self._reader_fd = None
        if self._writer_fd is not None and self._loop is not None:
            self._loop.remove_writer(self._writer_fd)
        # What was waiting for the old port is stale for the next one: the box re-sends.
        self._writer_fd = None
        self._outbuf.clear()
        self._outbuf_since = None

    def _link_lost(self, err: BaseException) -> None:
        self._stop_reader()  # a dead fd stays readable: stop polling it at once
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(err)

    def _on_readable(self) -> None:
        port = self._serial
        if port is None:
            return
        try:
            data: bytes = port.read(READ_CHUNK)
        except (serial.SerialException, OSError) as err:
            self._link_lost(err)
            return
        if data:
            self._receive(data)

    def _receive(self, data: bytes) -> None:
        now = time.monotonic()
        for action in self._proto.receive_data(data, now):
            self._perform(action, now)

    def _perform(self, action: Action, now: float) -> None:
        if isinstance(action, Send):
            self._write(action.frame)
        elif isinstance(action, FrameReceived):
            self._frame_received(action.frame)
        elif isinstance(action, RaiseAlarm):
            self._raise_alarm(action, now)
        elif isinstance(action, ForgetDedupe):
            self._log.info("serial box hello", box_id=self.box_id, fw=self.box_fw)
            try:
                self.sink.forget_dedupe(action.prefix)
            except Exception as err:
                self._log.error("serial dedupe reset failed", error=repr(err))
        elif isinstance(action, Rejected) and action.log:
            self._log.warning(
                "serial bad line dropped",
                reason=action.error.reason,
                line=action.error.line[:60].decode("ascii", "backslashreplace"),
                suppressed=action.suppressed,
            )

    def _frame_received(self, frame: Frame) -> None:
        if frame.type == "HB":
            for pong in self._pongs:
                if not pong.done():
                    pong.set_result(None)
        for hook in list(self.on_frame):
            try:
                hook(frame)
            except Exception:
                # Supervision is a side path: it may never take the alarm path down.
                self._log.exception("serial on_frame hook failed", hook=repr(hook))

    def _raise_alarm(self, action: RaiseAlarm, now: float) -> None:
        try:
            raised = self.sink.raise_alarm(
                input_ref=action.input_ref,
                feedback=self.feedback,
                dedupe_key=action.dedupe_key,
                dedupe_window_s=action.dedupe_window_s,
            )
        except Exception as err:
            # No ACK: the box keeps re-sending the PRESS (SERIAL.md "Rules"), so the next
            # copy retries the alarm. Log at most once per interval while that goes on.
            allowed, suppressed = self._limiter.check("raise-failed", now)
            if allowed:
                self._log.error(
                    "serial press not registered, box will re-send",
                    seq=action.seq,
                    error=repr(err),
                    suppressed=suppressed,
                )
            return
        log = self._log.info if raised.new else self._log.debug
        log("serial press", seq=action.seq, event_id=raised.event_id, new=raised.new)
        self._write(self._proto.alarm_durable(action.seq).frame)
        if self.buzz_ms > 0 and raised.new:
            self._write(self._proto.buzz(self.buzz_ms).frame)

    def _write(self, frame: Frame) -> bool:
        """Queue ``frame`` for the box; False when the port is closed or the frame was dropped."""
        port = self._serial
        if port is None:
            return False
        data = encode(frame)
        if self._writer_fd is None:
            return self._write_direct(port, frame, data)
        if len(self._outbuf) + len(data) > MAX_OUTBUF:
            self.frames_dropped += 1
            self._dropped(frame, "serial box not reading, frame dropped")
            return False
        if not self._outbuf:
            self._outbuf_since = time.monotonic()
        self._outbuf += data
        self._flush()
        return True

    def _flush(self) -> None:
        """Write what the port takes now; the loop calls this again when it is writable."""
        fd, loop = self._writer_fd, self._loop
        if fd is None or loop is None:
            return
        try:
            written = os.write(fd, self._outbuf)
        except BlockingIOError:
            written = 0
        except OSError as err:
            self._link_lost(err)
            return
        del self._outbuf[:written]
        if self._outbuf:
            loop.add_writer(fd, self._flush)  # replaces an earlier registration
        else:
            loop.remove_writer(fd)
            self._outbuf_since = None

    def _write_direct(self, port: Any, frame: Frame, data: bytes) -> bool:
        try:
            written = port.write(data)
        except serial.SerialTimeoutException:
            written = 0
        except (serial.SerialException, OSError) as err:
            self._link_lost(err)
            return False
        if written is not None and written < len(data):
            self._dropped(frame, "serial write incomplete, frame dropped")
            return False
        return True

    def _dropped(self, frame: Frame, what: str) -> None:
        allowed, suppressed = self._limiter.check(what, time.monotonic())
        if allowed:
            self._log.warning(what, frame=frame.body, suppressed=suppressed)


def _usable_fileno(port: Any) -> int | None:
    """The fd to watch with ``loop.add_reader``, or None (e.g. ``loop://`` has none)."""
    try:
        fd = port.fileno()
    except (AttributeError, OSError, ValueError, serial.SerialException):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


class _ReaderThread(threading.Thread):
    """Reads a port without a pollable fd and hands bytes to the event loop."""

    def __init__(
        self,
        port: Any,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[bytes], None],
        lost: Callable[[BaseException], None],
    ) -> None:
        super().__init__(name=f"serial-reader-{port.name}", daemon=True)
        self._port, self._loop, self._deliver, self._lost = port, loop, deliver, lost
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                data: bytes = self._port.read(max(1, self._port.in_waiting))
            except (serial.SerialException, OSError, ValueError) as err:
                if not self._stopping.is_set():
                    self._call(self._lost, err)
                return
            if data:
                self._call(self._deliver, data)

    def _call(self, func: Callable[[Any], None], arg: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(func, arg)
        except RuntimeError:  # the loop closed under us: nothing is listening any more
            self._stopping.set()
