"""GPIO alarm buttons (gpiozero 2) with their own debounce, and the presser's feedback LED.

A button is wired to ground with the internal pull-up (OPERATOR.md ``[[button]]``). gpiozero
delivers edges on other threads (the test's thread with the mock factory, lgpio's callback
thread on a Pi), so each edge is stamped on that thread and handed to the event loop with
``call_soon_threadsafe``. All decisions happen in the loop thread, in the sans-I/O ``Debouncer``:

- the leading edge of a press counts at once (no latency added when ``hold_s == 0``);
- edges within ``debounce_s`` of the last accepted edge are contact bounce and ignored (MockPin
  ignores gpiozero's ``bounce_time``, and real debounce must not delay the first edge);
- once the window has passed, a level that differs from the accepted one is accepted
  ("settle"), so a bounce that ends in the other state is not lost;
- with ``hold_s > 0`` the press counts only if the button is still down ``hold_s`` after the
  accepted press edge; an earlier release cancels it;
- a button held down counts once, until it is released and pressed again.

A counted press calls ``AlarmSink.raise_alarm`` (gateway/feedback.py), which returns once the
alarm is durable and then drives the LED through ``LedFeedback``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, get_args

import structlog
from gpiozero import LED, Button
from tenacity import AsyncRetrying, retry_if_exception_type, stop_never

from gateway import retry
from gateway.config import ButtonSection
from gateway.errors import AlarmgwError
from gateway.feedback import AlarmSink, Feedback, LedMode

log = structlog.get_logger("alarmgw.gpio")

# Blink timings (seconds on, seconds off) per LED mode; see gateway/feedback.py for meanings.
# A plain LED cannot fade, so ``pulse`` is a short flash every two seconds: slower than
# ``blink`` and mostly dark, so it reads as "someone is coming" rather than "registered".
BLINK_S: dict[str, tuple[float, float]] = {
    "blink": (0.5, 0.5),
    "fast": (0.1, 0.1),
    "pulse": (0.2, 1.8),
}


class GpioPinError(AlarmgwError):
    """A GPIO pin could not be claimed (in use, invalid, or no GPIO on this machine)."""


@dataclass(slots=True)
class Debouncer:
    """Leading-edge debounce with settle and optional hold, driven by explicit timestamps.

    ``edge(pressed, t)`` for every raw edge and ``tick(t)`` when ``deadline()`` is reached
    both return True when a press counts. Times are seconds on one monotonic clock; an edge
    stamped earlier than the last decision is treated as happening at that decision."""

    debounce_s: float
    hold_s: float = 0.0
    pressed: bool = False  # the accepted (debounced) level
    raw: bool = False  # the level of the last raw edge seen
    presses: int = 0  # presses counted (each one raised an alarm)
    bounces_ignored: int = 0  # raw edges ignored as contact bounce
    short_presses: int = 0  # presses released before hold_s
    _last_accepted: float = field(default=-math.inf, init=False, repr=False)
    _hold_from: float | None = field(default=None, init=False, repr=False)
    _now: float = field(default=-math.inf, init=False, repr=False)

    def edge(self, pressed: bool, t: float) -> bool:
        """A raw edge to ``pressed`` at time ``t``; True if a press counts now."""
        counted = self.tick(t)  # decisions due before this edge use the level before it
        t = max(t, self._now)
        self.raw = pressed
        if t - self._last_accepted < self.debounce_s:
            self.bounces_ignored += 1
            return counted
        if pressed == self.pressed:
            return counted  # a repeated report of the accepted level
        return self._accept(pressed, t) or counted

    def tick(self, t: float) -> bool:
        """Process the settle and hold decisions due at or before ``t``."""
        counted = False
        self._now = max(self._now, t)
        while True:
            settle = self._settle_at()
            hold = self._hold_at()
            due = min((d for d in (settle, hold) if d is not None and d <= t), default=None)
            if due is None:
                return counted
            if due == settle:
                counted = self._accept(self.raw, due) or counted
            else:
                self._hold_from = None
                if self.pressed and self.raw:
                    self.presses += 1
                    counted = True
                else:  # released, though the release may still be inside the bounce window
                    self.short_presses += 1

    def deadline(self) -> float | None:
        """When ``tick`` has something to decide next, or None."""
        pending = [d for d in (self._settle_at(), self._hold_at()) if d is not None]
        return min(pending, default=None)

    def _settle_at(self) -> float | None:
        if self.raw == self.pressed:
            return None
        return self._last_accepted + self.debounce_s

    def _hold_at(self) -> float | None:
        return None if self._hold_from is None else self._hold_from + self.hold_s

    def _accept(self, pressed: bool, t: float) -> bool:
        self.pressed = pressed
        self._last_accepted = t
        if not pressed:
            if self._hold_from is not None:
                self.short_presses += 1
                self._hold_from = None
            return False
        if self.hold_s > 0:
            self._hold_from = t
            return False
        self.presses += 1
        return True


LedObserver = Callable[[int, LedMode], None]


class LedFeedback:
    """The presser's LED on a GPIO pin: ``blink`` 0.5 s on/off (alarm registered), ``fast``
    0.1 s on/off (no ack in time), ``solid`` (acked), ``pulse`` 0.2 s on every 2 s (taken
    at the center), ``off``. Call from the loop thread."""

    # Told (pin, mode) on every change of any LED in this process. For the GPIO simulator
    # (firmware_sim/gpio.py), which must see each transition: on loopback the center's ack
    # turns "blink" into "solid" within milliseconds, faster than any poll would notice.
    _observers: ClassVar[list[LedObserver]] = []

    def __init__(self, led: Any, pin: int) -> None:
        self._led = led
        self.pin = pin
        self.mode: LedMode = "off"

    @classmethod
    def observe(cls, observer: LedObserver) -> Callable[[], None]:
        """Call ``observer(pin, mode)`` on every LED change; returns the function that stops
        it. The observer runs in the thread that changed the LED and must not block."""
        cls._observers.append(observer)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                cls._observers.remove(observer)

        return stop

    def led(self, mode: LedMode) -> None:
        """Switch the LED to ``mode``; the same mode again leaves a blink in phase."""
        if mode not in get_args(LedMode):
            raise ValueError(f"unknown LED mode {mode!r}")
        if mode == self.mode:
            return
        if mode == "solid":
            self._led.on()
        elif mode == "off":
            self._led.off()
        else:
            on, off = BLINK_S[mode]
            self._led.blink(on_time=on, off_time=off, background=True)
        self.mode = mode
        log.debug("gpio_led", pin=self.pin, mode=mode)
        for observer in list(self._observers):
            try:
                observer(self.pin, mode)
            except Exception:  # an observer must never break the alarm path
                log.exception("gpio_led_observer_failed", pin=self.pin)

    def close(self) -> None:
        self._led.close()


class GpioButtonInput:
    """One ``[[button]]``: claims its pins in ``start(loop)``, releases them in ``close()``.
    ``run()`` does both around waiting for cancellation (for a TaskGroup).

    ``factory`` is a gpiozero pin factory (default: gpiozero's configured one, e.g. from
    ``GPIOZERO_PIN_FACTORY``); ``clock`` stamps edges and must be monotonic (injectable for
    tests; the loop's timers only decide when to look at it again).

    While its pins cannot be claimed the button cannot raise an alarm: ``run()`` keeps
    trying with ``claim_policy``'s growing waits, ``problem`` says why, and every
    ``on_problem`` callback is told each change (the problem, or None once claimed)."""

    def __init__(
        self,
        cfg: ButtonSection,
        sink: AlarmSink,
        *,
        factory: Any = None,
        clock: Callable[[], float] = time.monotonic,
        claim_policy: retry.Policy = retry.RESTART,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.input_ref = f"gpio:{cfg.name}"
        self._sink = sink
        self._factory = factory
        self._clock = clock
        self._debouncer = Debouncer(debounce_s=cfg.debounce_s, hold_s=cfg.hold_s)
        self._button: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.feedback: LedFeedback | None = None
        self.claim_policy = claim_policy
        self.problem: str | None = None
        self.problem_fix = ""  # what a technician should do about ``problem``
        self.on_problem: list[Callable[[str | None], None]] = []
        self._announced = False

    @property
    def presses(self) -> int:
        """Presses counted (each raised an alarm)."""
        return self._debouncer.presses

    @property
    def bounces_ignored(self) -> int:
        """Raw edges ignored as contact bounce."""
        return self._debouncer.bounces_ignored

    @property
    def short_presses(self) -> int:
        """Presses released before ``hold_s``."""
        return self._debouncer.short_presses

    @property
    def started(self) -> bool:
        """The pins are claimed and presses are being delivered."""
        return self._button is not None

    @property
    def is_pressed(self) -> bool:
        """The debounced level."""
        return self._debouncer.pressed

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Claim the button (and LED) pins and start delivering presses into ``loop``.
        Raises GpioPinError with the button name and pin if a pin cannot be claimed."""
        if self._button is not None:
            return
        self._loop = loop
        self._button = self._claim(
            "pin",
            self.cfg.pin,
            lambda f: Button(self.cfg.pin, pull_up=True, bounce_time=None, pin_factory=f),
        )
        if self.cfg.led_pin is not None:
            try:
                led = self._claim(
                    "led_pin", self.cfg.led_pin, lambda f: LED(self.cfg.led_pin, pin_factory=f)
                )
            except GpioPinError:
                self.close()
                raise
            self.feedback = LedFeedback(led, self.cfg.led_pin)
        # A button already held at start is not a press: only a new edge is.
        self._debouncer.raw = self._debouncer.pressed = bool(self._button.is_pressed)
        self._button.when_pressed = lambda: self._edge_from_thread(pressed=True)
        self._button.when_released = lambda: self._edge_from_thread(pressed=False)
        log.info(
            "gpio_started",
            button=self.name,
            pin=self.cfg.pin,
            led_pin=self.cfg.led_pin,
            hold_s=self.cfg.hold_s,
            debounce_s=self.cfg.debounce_s,
        )

    def close(self) -> None:
        """Release the pins; idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._button is not None:
            # gpiozero keeps handlers per id(device) on the class: drop them, or a later
            # device that reuses the id would inherit them. (None when never set: it warns.)
            if self._button.when_pressed is not None:
                self._button.when_pressed = None
                self._button.when_released = None
            self._button.close()
            self._button = None
        if self.feedback is not None:
            self.feedback.close()
            self.feedback = None

    async def run(self) -> None:
        """Start on the running loop and serve until cancelled; the pins are released then.
        A pin that cannot be claimed is tried again, quietly, until it can."""
        loop = asyncio.get_running_loop()
        attempts = AsyncRetrying(
            wait=self.claim_policy.wait(),
            stop=stop_never,
            retry=retry_if_exception_type(GpioPinError),
            reraise=True,
        )
        async for attempt in attempts:
            with attempt:
                try:
                    self.start(loop)
                except GpioPinError as err:
                    log.debug("button claim failed", button=self.name, error=str(err))
                    self._set_problem(str(err))
                    raise
        self._set_problem(None)
        try:
            await asyncio.Event().wait()
        finally:
            self.close()

    def _set_problem(self, problem: str | None) -> None:
        """Record and announce a change of the button's problem: one log line per change."""
        if self._announced and problem == self.problem:
            return
        self._announced = True  # the first outcome is always announced
        was, self.problem = self.problem, problem
        self.problem_fix = ""
        if problem is not None:
            driver = pin_factory_problem()
            self.problem_fix = driver[1] if driver is not None else ""
            log.error("button cannot raise alarms", button=self.name, problem=problem)
        elif was is not None:
            log.info("button works again", button=self.name, pin=self.cfg.pin)
        for callback in list(self.on_problem):
            try:
                callback(problem)
            except Exception:  # a listener must never stop the button from being claimed
                log.exception("gpio_problem_listener_failed", button=self.name)

    def _claim(self, key: str, pin: int, make: Callable[[Any], Any]) -> Any:
        try:
            return make(self._factory)
        except Exception as err:
            # Any failure here (pin in use, invalid pin, no GPIO driver) must reach the
            # technician as one line naming the button and the pin.
            detail = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise GpioPinError(
                f"button {self.name!r}: cannot claim GPIO{pin} ({key}): {detail}"
            ) from err

    # -- edge thread -> loop thread

    def _edge_from_thread(self, *, pressed: bool) -> None:
        t = self._clock()  # stamp on the edge thread: the loop may be busy
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._on_edge, pressed, t)
        except RuntimeError:  # the loop is closed: the daemon is shutting down
            log.warning("gpio_edge_after_shutdown", button=self.name, pressed=pressed)

    def _on_edge(self, pressed: bool, t: float) -> None:
        if self._button is None:
            return
        before = self._debouncer.bounces_ignored
        counted = self._debouncer.edge(pressed, t)
        if self._debouncer.bounces_ignored != before:
            log.debug("gpio_bounce_ignored", button=self.name, pressed=pressed)
        if counted:
            self._raise()
        self._schedule()

    def _on_timer(self) -> None:
        self._timer = None
        if self._button is None:
            return
        if self._debouncer.tick(self._clock()):
            self._raise()
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._debouncer.deadline()
        if deadline is not None and self._loop is not None:
            delay = max(0.0, deadline - self._clock())
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _raise(self) -> None:
        feedback: Feedback | None = self.feedback
        try:
            raised = self._sink.raise_alarm(
                input_ref=self.input_ref, feedback=feedback, code=self.cfg.code, kind=self.cfg.kind
            )
        except Exception:
            # The presser must not believe the alarm is registered: show "not confirmed".
            log.exception("gpio_alarm_failed", button=self.name, pin=self.cfg.pin)
            if self.feedback is not None:
                self.feedback.led("fast")
            return
        log.info(
            "gpio_press",
            button=self.name,
            pin=self.cfg.pin,
            event_id=raised.event_id,
            new=raised.new,
            presses=self.presses,
            bounces_ignored=self.bounces_ignored,
        )


def led_modes(inputs: Iterable[GpioButtonInput]) -> dict[int, str]:
    """{led_pin: mode} of the inputs that have a feedback LED (for the GPIO simulator)."""
    return {i.feedback.pin: i.feedback.mode for i in inputs if i.feedback is not None}


def pin_factory_problem(
    *,
    model_file: Path = Path("/proc/device-tree/model"),
    dev: Path = Path("/dev"),
    env: Mapping[str, str] = os.environ,
    has_module: Callable[[str], bool] = lambda name: importlib.util.find_spec(name) is not None,
) -> tuple[str, str] | None:
    """(what is wrong, the fix) when gpiozero would not drive this Raspberry Pi's GPIO through
    lgpio; None when it would, off a Raspberry Pi, or when ``GPIOZERO_PIN_FACTORY`` chooses
    another factory on purpose (``mock``, the simulator). Without lgpio, gpiozero falls back to
    its native factory, which needs ``/dev/gpiomem`` and does not support the Pi 5."""
    chosen = env.get("GPIOZERO_PIN_FACTORY", "")
    if chosen and chosen != "lgpio":
        return None
    try:
        model = model_file.read_bytes().rstrip(b"\0").decode("utf-8", "replace").strip()
    except OSError:
        return None  # no device tree: not a Raspberry Pi
    if "Raspberry Pi" not in model:
        return None
    if not has_module("lgpio"):
        native = "its native pin factory (needs /dev/gpiomem"
        native += "; no Pi 5 support)" if "Pi 5" in model else ")"
        return (
            f"{model}: this Python ({sys.prefix}) has no lgpio module: gpiozero falls back "
            f"to {native}",
            f"re-run scripts/install.sh (it installs lgpio), or "
            f"{sys.prefix}/bin/pip install 'lgpio>=0.2.2'",
        )
    chips = sorted(dev.glob("gpiochip*"))
    if not chips:
        return f"{model}: no {dev}/gpiochip* device", "a kernel with the GPIO character device"
    if not any(os.access(chip, os.R_OK | os.W_OK) for chip in chips):
        return (
            f"{model}: cannot open {chips[0]} (permission)",
            "run as a member of group gpio (install.sh puts alarmgw in it): "
            "sudo -u alarmgw alarmgw diag",
        )
    return None
