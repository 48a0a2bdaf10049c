"""Sans-I/O rules of the gateway side of one button box (SERIAL.md "Rules").

``BoxProtocol`` takes the bytes read from the port and the current monotonic time, and
returns *actions* for the I/O glue (``gateway.inputs.serial_box.BoxLink``) to carry out in
order: frames to write, an alarm to raise, dedupe keys to forget, bad lines to log. It never
calls the alarm sink itself, so every rule is testable without a port, a loop or a disk.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from gateway.errors import SerialProtocolError
from gateway.feedback import LedMode
from gateway.inputs.codec import BOX_TYPES, MAX_SEQ, Decoder, Frame

__all__ = [
    "Action",
    "BoxProtocol",
    "ForgetDedupe",
    "FrameReceived",
    "RaiseAlarm",
    "RateLimiter",
    "Rejected",
    "Send",
]

# SERIAL.md "Rules": a PRESS with an already accepted SEQ within the last 30 s is a re-send.
DEDUPE_WINDOW_S = 30.0


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``frame`` to the box."""

    frame: Frame


@dataclass(frozen=True, slots=True)
class FrameReceived:
    """A valid box frame arrived (for ``on_frame`` hooks: link supervision, status)."""

    frame: Frame


@dataclass(frozen=True, slots=True)
class RaiseAlarm:
    """Call ``AlarmSink.raise_alarm`` for a PRESS, then ``BoxProtocol.alarm_durable(seq)``."""

    seq: int
    input_ref: str
    dedupe_key: str
    dedupe_window_s: float = DEDUPE_WINDOW_S


@dataclass(frozen=True, slots=True)
class ForgetDedupe:
    """Call ``AlarmSink.forget_dedupe(prefix)``: the box rebooted and its SEQ restarts."""

    prefix: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A bad line was dropped. ``log`` says whether the rate limit lets it be logged now;
    ``suppressed`` is how many of the same reason were not logged since the last one."""

    error: SerialProtocolError
    log: bool
    suppressed: int


Action = Send | FrameReceived | RaiseAlarm | ForgetDedupe | Rejected


class RateLimiter:
    """At most one pass per ``interval_s`` per key; counts what it held back."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def check(self, key: str, now: float) -> tuple[bool, int]:
        """``(allowed, suppressed_since_last_allowed)`` for one occurrence of ``key``."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] += 1
            return False, 0
        self._last[key] = now
        return True, self._held.pop(key, 0)


class BoxProtocol:
    """The gateway's half of the box contract for the box named ``name`` in the config.

    Feed bytes with ``receive_data``; ask for outgoing frames with ``ack``/``led``/``ping``/
    ``buzz``. The gateway's own frames carry their own SEQ, 0..65535 wrapping (SERIAL.md
    "Framing"). Counters and the box's identity are kept for status and supervision.
    """

    def __init__(self, name: str, *, log_interval_s: float = 5.0) -> None:
        self.name = name
        self.input_ref = f"serial:{name}"
        self._decoder = Decoder(accept=BOX_TYPES)
        self._limiter = RateLimiter(log_interval_s)
        self._tx_seq = 0
        self.last_valid_frame_at: float | None = None
        self.frames_ok = 0
        self.frame_errors: Counter[str] = Counter()
        self.box_id: str | None = None
        self.box_fw: str | None = None

    @property
    def dedupe_prefix(self) -> str:
        """Prefix of every dedupe key this box's PRESSes use."""
        return f"{self.input_ref}:"

    def receive_data(self, data: bytes, now: float) -> list[Action]:
        """Bytes read from the port at monotonic time ``now`` → actions, in order."""
        self._decoder.feed(data)
        actions: list[Action] = []
        while (event := self._decoder.next_event()) is not None:
            if isinstance(event, SerialProtocolError):
                actions.append(self._reject(event, now))
            else:
                actions.extend(self._accept(event, now))
        return actions

    def alarm_durable(self, seq: int) -> Send:
        """The alarm for the PRESS with ``seq`` is on disk: now it may be ACKed."""
        return self.ack(seq)

    def ack(self, ref: int) -> Send:
        """``ACK,ref=<ref>``."""
        return self._make("ACK", ref=str(ref))

    def led(self, mode: LedMode) -> Send:
        """``LED,mode=<mode>`` (SERIAL.md "Rules": feedback to the presser)."""
        return self._make("LED", mode=mode)

    def buzz(self, ms: int) -> Send:
        """``BUZZ,ms=<ms>``."""
        return self._make("BUZZ", ms=str(ms))

    def ping(self) -> Send:
        """``PING``: asks the box for an ``HB`` now."""
        return self._make("PING")

    def silent_for(self, now: float) -> float | None:
        """Seconds since the last valid frame, or None if none came yet."""
        if self.last_valid_frame_at is None:
            return None
        return now - self.last_valid_frame_at

    def _make(self, type_: str, **fields: str) -> Send:
        frame = Frame.of(self._tx_seq, type_, **fields)
        self._tx_seq = (self._tx_seq + 1) & MAX_SEQ
        return Send(frame)

    def _reject(self, error: SerialProtocolError, now: float) -> Rejected:
        # SERIAL.md "Framing": bad input is dropped whole, counted and logged rate-limited;
        # it never stops the link and never raises an alarm by itself.
        self.frame_errors[error.reason] += 1
        allowed, suppressed = self._limiter.check(error.reason, now)
        return Rejected(error, allowed, suppressed)

    def _accept(self, frame: Frame, now: float) -> list[Action]:
        self.last_valid_frame_at = now
        self.frames_ok += 1
        actions: list[Action] = [FrameReceived(frame)]
        if frame.type == "PRESS":
            # SERIAL.md "Rules": a PRESS is ACKed only once its alarm is durable, so the
            # ACK comes from alarm_durable(), called by the glue after raise_alarm returned.
            # A re-sent PRESS gets the same dedupe key; the sink answers it without a new alarm.
            actions.append(RaiseAlarm(frame.seq, self.input_ref, f"{self.input_ref}:{frame.seq}"))
            return actions
        if frame.type == "HELLO":
            self.box_id = frame.get("id")
            self.box_fw = frame.get("fw")
            actions.append(ForgetDedupe(self.dedupe_prefix))
        actions.append(self.ack(frame.seq))
        return actions
