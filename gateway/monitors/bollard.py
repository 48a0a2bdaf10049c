"""The anti-ram bollard (OPERATOR.md ``[bollard]``).

Two sources, either or both: limit switches on GPIO (``up_pin``, ``down_pin``, optional
``fault_pin``; gpiozero, active low unless ``active_low = false``) and the controller's HTTP
status (``status_url``: GET returns ``{"state": "up"|"down"|"moving"|"fault"}``, polled every
``poll_s``). The state is ``up``, ``down``, ``moving``, ``fault`` or ``unknown``, with the time
it was entered (the heartbeat's ``bollard``).

Down is a normal state: the guard lowers the bollard to let vehicles in. It is a problem only
inside the site's protection hours (``protect``, in ``timezone``) or, with ``down_alert_s``,
when it stays down that long at any hour.

All problems are one condition, trouble ``380`` (sensor trouble) of device ``bollard``
(PROTOCOL.md "Bodies"), whose reason names what is wrong: ``fault`` (fault input, both limit
switches made, or the controller says so), ``stuck`` (``moving`` longer than
``moving_timeout_s``), ``protection`` (down, and not back up, inside a protection window:
detail "down during protection hours 07:00-08:30"), ``down`` (down longer than
``down_alert_s``) and ``unreachable`` (the status URL does not answer properly). When none is
left (the bollard came up, or the window ended) the bollard is restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.config import BollardSection
from gateway.contract.envelope import format_ts
from gateway.errors import AlarmgwError
from gateway.monitors.reporter import TroubleReporter
from gateway.monitors.schedule import Schedule

log = structlog.get_logger("alarmgw.bollard")

DEVICE, CODE = "bollard", "380"
STATES = ("up", "down", "moving", "fault", "unknown")
# Limit switches bounce like buttons (and gpiozero's MockPin ignores bounce_time): the
# levels are read once no edge came for this long.
GPIO_SETTLE_S = 0.05
WALL_RECHECK_S = 60.0


def gpio_state(up: bool, down: bool, fault: bool) -> tuple[str, str]:
    """(state, why it is a fault) from the limit switches (True: made / active)."""
    if fault:
        return "fault", "fault input active"
    if up and down:
        return "fault", "both limit switches made"
    if up:
        return "up", ""
    if down:
        return "down", ""
    return "moving", ""  # between the switches


def parse_status(doc: Any) -> str:
    """The controller's state from its status document; ValueError when it has none."""
    state = doc.get("state") if isinstance(doc, dict) else None
    if state not in STATES[:4]:
        raise ValueError(f"no valid 'state' in {str(doc)[:60]!r}")
    return str(state)


@dataclass(slots=True)
class BollardTracker:
    """The bollard's state over time and its problems; no I/O, times passed in: ``now`` on
    the monotonic clock, ``wall`` in POSIX seconds (for the protection hours)."""

    moving_timeout_s: float
    down_alert_s: float | None = None  # None: down is never a problem by its duration
    schedule: Schedule | None = None  # the protection hours; None: none
    state: str = "unknown"
    note: str = ""  # why it is a fault
    since: float | None = None  # monotonic time the state began
    since_wall: float | None = None
    lowered_at: float | None = None  # monotonic time it reached down; None once up again

    def update(self, state: str, now: float, wall: float, note: str = "") -> bool:
        """Take the current state; True when it changed."""
        self.note = note
        if state == "down" and self.lowered_at is None:
            self.lowered_at = now
        elif state == "up":
            self.lowered_at = None
        if state == self.state:
            return False
        self.state, self.since, self.since_wall = state, now, wall
        return True

    def problems(self, now: float, wall: float) -> list[tuple[str, str]]:
        """(reason, detail) of everything wrong now, worst first."""
        found: list[tuple[str, str]] = []
        if self.state == "fault":
            found.append(("fault", f"bollard fault: {self.note or 'reported'}"))
        if self.state == "moving" and self.since is not None:
            moving_for = now - self.since
            if moving_for >= self.moving_timeout_s:
                found.append(
                    (
                        "stuck",
                        f"moving for {moving_for:.0f} s (limit {self.moving_timeout_s:g} s)",
                    )
                )
        if self.lowered_at is not None:
            window = self.schedule.active(wall) if self.schedule is not None else None
            if window is not None:
                found.append(("protection", f"down during protection hours {window.hours}"))
            down_for = now - self.lowered_at
            if self.down_alert_s is not None and down_for >= self.down_alert_s:
                found.append(("down", f"bollard down for {down_for:.0f} s"))
        return found

    def deadline(self, now: float, wall: float) -> float | None:
        """The next monotonic time after ``now`` when ``problems`` changes without new input,
        or None."""
        due = []
        if self.state == "moving" and self.since is not None:
            due.append(self.since + self.moving_timeout_s)
        if self.lowered_at is not None:
            if self.down_alert_s is not None:
                due.append(self.lowered_at + self.down_alert_s)
            change = self.schedule.next_change(wall) if self.schedule is not None else None
            if change is not None:
                # The wall clock may be stepped (NTP after boot): look again at least every
                # WALL_RECHECK_S instead of trusting one long sleep.
                due.append(now + min(change - wall, WALL_RECHECK_S))
        return min((d for d in due if d > now), default=None)


class BollardMonitor:
    """Watches the bollard and reports condition (bollard, 380). ``run()`` until cancelled.

    ``factory``: a gpiozero pin factory (default: gpiozero's configured one). ``clock`` and
    ``wall``: the monotonic and the POSIX clock (tests pass fakes)."""

    def __init__(
        self,
        cfg: BollardSection,
        reporter: TroubleReporter,
        *,
        factory: Any = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self._reporter = reporter
        self._factory = factory
        self._clock = clock
        self._wall = wall
        self.tracker = BollardTracker(cfg.moving_timeout_s, cfg.down_alert_s, cfg.schedule)
        self._pins: dict[str, Any] = {}
        self._http: str | None = None  # the controller's last state
        self._http_error: str | None = None  # why the last poll failed
        self._wake = asyncio.Event()
        self._settle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def snapshot(self) -> dict[str, Any]:
        """The heartbeat's ``bollard``: ``state`` and ``since`` (RFC 3339)."""
        out: dict[str, Any] = {"state": self.tracker.state}
        if self.tracker.since_wall is not None:
            out["since"] = format_ts(self.tracker.since_wall)
        return out

    async def run(self) -> None:
        """Claim the pins and/or poll the controller; evaluate on every edge, poll and timer."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            if self.cfg.up_pin is not None:
                try:
                    self._claim()
                except AlarmgwError as err:
                    # Unreadable switches leave the center blind: say so, then let the
                    # supervisor retry with backoff.
                    self._reporter.set(DEVICE, CODE, True, reason="gpio", detail=str(err)[:120])
                    raise
            async with asyncio.TaskGroup() as group:
                if self.cfg.status_url:
                    group.create_task(self._poll_loop(), name="bollard-http")
                group.create_task(self._evaluate_loop(), name="bollard-eval")
        finally:
            self._release()

    # -- GPIO -------------------------------------------------------------------------------

    def _claim(self) -> None:
        from gpiozero import DigitalInputDevice  # noqa: PLC0415 - gpiozero only when wired

        pins = {"up": self.cfg.up_pin, "down": self.cfg.down_pin, "fault": self.cfg.fault_pin}
        for name, pin in pins.items():
            if pin is None:
                continue
            try:
                dev = DigitalInputDevice(
                    pin, pull_up=self.cfg.active_low, bounce_time=None, pin_factory=self._factory
                )
            except Exception as err:
                self._release()
                raise AlarmgwError(f"bollard: cannot claim GPIO{pin} ({name}_pin): {err}") from err
            # gpiozero calls these on its own thread: hand them over to the loop.
            dev.when_activated = self._edge_from_thread
            dev.when_deactivated = self._edge_from_thread
            self._pins[name] = dev
        log.info("bollard switches claimed", **{f"{k}_pin": v for k, v in pins.items()})

    def _release(self) -> None:
        if self._settle is not None:
            self._settle.cancel()
            self._settle = None
        for dev in self._pins.values():
            with contextlib.suppress(Exception):  # closing must not mask why we stopped
                dev.when_activated = None
                dev.when_deactivated = None
                dev.close()
        self._pins.clear()

    def _edge_from_thread(self) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: shutting down
                loop.call_soon_threadsafe(self._edge)

    def _edge(self) -> None:
        if self._settle is not None:
            self._settle.cancel()
        assert self._loop is not None
        self._settle = self._loop.call_later(GPIO_SETTLE_S, self._wake.set)

    def _read_gpio(self) -> tuple[str, str] | None:
        if not self._pins:
            return None
        fault = self._pins.get("fault")
        return gpio_state(
            bool(self._pins["up"].is_active),
            bool(self._pins["down"].is_active),
            bool(fault.is_active) if fault is not None else False,
        )

    # -- HTTP -------------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        from gateway.monitors.http import StatusError, StatusPoller, new_session  # noqa: PLC0415

        loop = asyncio.get_running_loop()
        timeout = min(self.cfg.timeout_s, self.cfg.poll_s)
        async with new_session() as session:
            poller = StatusPoller(session, self.cfg.status_url, timeout_s=timeout)
            next_at = loop.time()
            while True:
                try:
                    self._http = parse_status(await poller.get())
                    self._http_error = None
                except (StatusError, ValueError) as err:
                    why = (
                        f"controller {err.reason}: {err.detail}"
                        if isinstance(err, StatusError)
                        else f"controller bad-response: {err}"
                    )
                    if self._http_error is None:  # once per outage, not once per poll
                        log.warning("bollard status failed", url=self.cfg.status_url, error=why)
                    self._http, self._http_error = None, why
                self._wake.set()
                next_at = max(next_at + self.cfg.poll_s, loop.time())
                await asyncio.sleep(next_at - loop.time())

    # -- evaluation -------------------------------------------------------------------------

    def _current(self) -> tuple[str, str]:
        gpio = self._read_gpio()
        http = self._http
        if gpio is not None:
            if gpio[0] != "fault" and http == "fault":
                return "fault", "controller reports fault"
            return gpio  # the limit switches are the ground truth for the position
        if http is not None:
            return http, "controller reports fault" if http == "fault" else ""
        return "unknown", ""

    def evaluate(self) -> None:
        """Read the sources, update the state and report the condition."""
        now, wall = self._clock(), self._wall()
        state, note = self._current()
        if self.tracker.update(state, now, wall, note):
            log.info("bollard state", state=state, note=note or None)
        problems = self.tracker.problems(now, wall)
        if self._http_error is not None:
            problems.append(("unreachable", self._http_error))
        if problems:
            self._reporter.set(
                DEVICE,
                CODE,
                True,
                reason="+".join(reason for reason, _ in problems),
                detail="; ".join(detail for _, detail in problems),
            )
        elif state != "unknown":
            self._reporter.set(DEVICE, CODE, False, detail=f"bollard {state}")

    async def _evaluate_loop(self) -> None:
        while True:
            self._wake.clear()
            self.evaluate()
            now = self._clock()
            due = self.tracker.deadline(now, self._wall())
            timeout = None if due is None else due - now + 0.01
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
