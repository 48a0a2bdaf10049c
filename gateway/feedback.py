"""The seam between inputs and the alarm path.

An input (GPIO button, serial box) calls ``AlarmSink.raise_alarm`` from the event-loop
thread. The call returns only once the alarm is committed to disk (PROTOCOL.md
"Delivery semantics"), so the input may then tell the presser "registered" (and a serial
box its ACK, SERIAL.md "Rules"). Later the alarm path drives the presser's
feedback through the ``Feedback`` the input handed in: ``solid`` when the center's signed ack
arrives, ``fast`` when it has not arrived within the configured time; ``pulse`` once a person
at the center has taken the alarm and ``off`` once it is resolved (PROTOCOL.md ``dispatch``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

LedMode = Literal["off", "blink", "fast", "solid", "pulse"]


class Feedback(Protocol):
    """Feedback to the person who pressed (an LED on a pin, or LED frames to a box)."""

    def led(self, mode: LedMode) -> None: ...


@dataclass(frozen=True, slots=True)
class Raised:
    """Result of ``raise_alarm``: the envelope id and whether it is a new alarm (False when a
    dedupe key matched an alarm raised before, e.g. a box re-sending the same PRESS)."""

    event_id: str
    new: bool


class AlarmSink(Protocol):
    def raise_alarm(
        self,
        *,
        input_ref: str,
        feedback: Feedback | None,
        code: str = "120",
        kind: str = "panic",
        test: bool = False,
        dedupe_key: str | None = None,
        dedupe_window_s: float = 30.0,
    ) -> Raised:
        """Build, sign and durably commit an alarm; returns once it is on disk.

        ``input_ref`` is ``gpio:<name>`` or ``serial:<name>``. ``dedupe_key`` (e.g.
        ``serial:box-gate-main:17`` for box SEQ 17) makes a repeated call within
        ``dedupe_window_s`` return the earlier alarm's id with ``new=False``; the key is
        stored in the same transaction as the alarm, so it survives a restart.
        Schedules ``feedback.led("blink")`` for the next loop turn, i.e. right after the
        caller's own reply (also for a repeat whose alarm still waits for the center's ack;
        ``solid`` for a repeat whose alarm the center acknowledged already)."""
        ...

    def forget_dedupe(self, prefix: str) -> None:
        """Drop every stored dedupe key starting with ``prefix`` (a box sent HELLO)."""
        ...
