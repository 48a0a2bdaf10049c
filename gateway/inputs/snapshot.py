"""Input snapshots (gateway/snapshots.py) from the inputs' public attributes."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Protocol

from gateway import checks
from gateway.snapshots import GpioInput, InputState, SerialInput, SupervisorSnapshot

SILENT_HEARTBEATS = 3  # SERIAL.md "Rules": silent for 3 x the box heartbeat is trouble


class PinConfig(Protocol):
    @property
    def pin(self) -> int: ...
    @property
    def led_pin(self) -> int | None: ...


class LedLike(Protocol):
    @property
    def mode(self) -> str: ...


class ButtonLike(Protocol):
    """What a snapshot reads of ``gateway.inputs.gpio.GpioButtonInput``."""

    @property
    def input_ref(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def cfg(self) -> PinConfig: ...
    @property
    def started(self) -> bool: ...
    @property
    def is_pressed(self) -> bool: ...
    @property
    def presses(self) -> int: ...
    @property
    def bounces_ignored(self) -> int: ...
    @property
    def short_presses(self) -> int: ...
    @property
    def feedback(self) -> LedLike | None: ...
    @property
    def problem(self) -> str | None: ...
    @property
    def problem_fix(self) -> str: ...


class BoxLike(Protocol):
    """What a snapshot reads of ``gateway.inputs.serial_box.BoxLink``."""

    @property
    def name(self) -> str: ...
    @property
    def port(self) -> str: ...
    @property
    def baud(self) -> int: ...
    @property
    def heartbeat_s(self) -> float: ...
    @property
    def connected(self) -> bool: ...
    @property
    def stale(self) -> bool: ...
    @property
    def box_id(self) -> str | None: ...
    @property
    def box_fw(self) -> str | None: ...
    @property
    def frames_ok(self) -> int: ...
    @property
    def frame_errors(self) -> Mapping[str, int]: ...
    @property
    def last_valid_frame_at(self) -> float | None: ...


Raised = Mapping[tuple[str, str], int]


def gpio_input(b: ButtonLike, raised: Raised, supervisor: SupervisorSnapshot) -> GpioInput:
    """A button: ok once its pins are claimed; trouble while they cannot be claimed (or its
    loop was restarted), with a failing verdict; unknown until then."""
    started = bool(b.started)
    state: InputState = "ok" if started else "unknown"
    if not started and (b.problem is not None or supervisor.restarts(b.input_ref)):
        state = "trouble"
    tried = started or b.problem is not None
    return GpioInput(
        ref=b.input_ref,
        name=b.name,
        state=state,
        pin=b.cfg.pin,
        led_pin=b.cfg.led_pin,
        started=started,
        pressed=bool(b.is_pressed),
        presses=int(b.presses),
        bounces_ignored=int(b.bounces_ignored),
        short_presses=int(b.short_presses),
        led=b.feedback.mode if b.feedback is not None else None,
        alarms=int(raised.get((b.input_ref, "alarm"), 0)),
        verdict=checks.gpio_button(
            b.name, b.cfg.pin, started=started, problem=b.problem, fix=b.problem_fix
        )
        if tried
        else None,
    )


LINK_STATE: dict[checks.Level, InputState] = {
    "ok": "ok",
    "warning": "unknown",
    "failing": "trouble",
}


def serial_input(box: BoxLike, raised: Raised, now: float | None = None) -> SerialInput:
    """A button box; its state is the serial link verdict (gateway/checks.py)."""
    at = time.monotonic() if now is None else now
    ref = f"serial:{box.name}"
    last = box.last_valid_frame_at
    age = None if last is None else round(max(0.0, at - last), 3)
    link = checks.serial_link(
        box.name,
        connected=bool(box.connected),
        stale=bool(box.stale),
        last_frame_age_s=age,
        limit_s=SILENT_HEARTBEATS * box.heartbeat_s,
    )
    return SerialInput(
        ref=ref,
        name=box.name,
        state=LINK_STATE[link.level],
        link=link,
        port=box.port,
        baud=box.baud,
        connected=bool(box.connected),
        stale=bool(box.stale),
        box_id=box.box_id,
        fw=box.box_fw,
        frames_ok=int(box.frames_ok),
        frame_errors=tuple(sorted((str(k), int(v)) for k, v in box.frame_errors.items())),
        last_frame_age_s=age,
        alarms=int(raised.get((ref, "alarm"), 0)),
    )


def input_snapshots(
    buttons: Iterable[ButtonLike],
    boxes: Iterable[BoxLike],
    raised: Raised,
    supervisor: SupervisorSnapshot,
) -> tuple[GpioInput | SerialInput, ...]:
    """Every configured input, buttons first."""
    now = time.monotonic()
    out: list[GpioInput | SerialInput] = [gpio_input(b, raised, supervisor) for b in buttons]
    out += [serial_input(box, raised, now) for box in boxes]
    return tuple(out)
