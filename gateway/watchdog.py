"""The systemd watchdog: ``WATCHDOG=1`` only while the alarm path is alive.

systemd/alarmgw.service sets ``WatchdogSec``; systemd passes it as ``WATCHDOG_USEC`` (and the
main PID as ``WATCHDOG_PID``) and restarts the service when no ``WATCHDOG=1`` arrives in time.
A ping from a timer alone would prove only that the event loop turns; here each ping first
checks the alarm path (DESIGN.md "The path of an alarm"): the MQTT uplink's housekeeping loop
(``Uplink.loop_heartbeat``, the loop time of its last 1 s tick) and the outbox pump
(``Relay.pump_tick``, at least one round a second) must both have shown a sign of life
within ``STALE_S``. A dead task stops ticking, so this also covers "the task is alive".

Two layers: gateway/supervise.py restarts a single loop that stalls for 30 s; the watchdog
is the layer below it. It withholds the ping only once a loop has been silent longer than
the supervisor's stall limit plus a restart delay, so systemd restarts the whole daemon (the
outbox is durable: queued alarms survive) only when supervision did not bring the loop back,
or when the event loop itself is blocked (then no check runs and no ping is sent at all).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from gateway.sdnotify import notify

log = structlog.get_logger("alarmgw.watchdog")

# gateway/supervise.py restarts a loop stalled for 30 s; then it needs up to a few seconds to
# tick again. Only silence beyond that is a failure of supervision.
STALE_S = 45.0

Ticks = Mapping[str, Callable[[], float]]


def interval_from_env(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds that systemd asked for, or None (no watchdog, or it
    is meant for another process: ``WATCHDOG_PID`` names a different PID)."""
    env = os.environ if env is None else env
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000


@dataclass(frozen=True, slots=True)
class Problem:
    """Why the alarm path is not alive: which loop, and whether it never started or went
    silent (``age_s`` ago)."""

    loop: str
    started: bool
    age_s: float = 0.0

    def __str__(self) -> str:
        if not self.started:
            return f"{self.loop} loop has not started"
        return f"{self.loop} loop silent for {self.age_s:.0f} s"


def alarm_path_problem(ticks: Ticks, now: float, stale_s: float = STALE_S) -> Problem | None:
    """Why the alarm path is not alive at loop time ``now``, or None when it is. ``ticks``
    maps a loop's name to a callable returning the loop time of its last sign of life (0.0:
    none yet)."""
    for name, tick in ticks.items():
        last = tick()
        if last == 0.0:
            return Problem(name, started=False)
        if now - last > stale_s:
            return Problem(name, started=True, age_s=now - last)
    return None


class Watchdog:
    """Checks the alarm path every ``interval_s / 2`` (systemd's advice) and pings when alive.

    ``beats`` and ``withheld`` count the outcomes; ``problem`` is the last one found."""

    def __init__(
        self,
        ticks: Ticks,
        *,
        interval_s: float,
        stale_s: float = STALE_S,
        send: Callable[[str], object] = notify,
    ) -> None:
        self._ticks = dict(ticks)
        self.period_s = interval_s / 2
        self.stale_s = stale_s
        self._send = send
        self.beats = 0
        self.withheld = 0
        self.problem: Problem | None = None

    def check(self) -> Problem | None:
        """One check: ping when the alarm path is alive; returns the problem, if any."""
        now = asyncio.get_running_loop().time()
        problem = alarm_path_problem(self._ticks, now, self.stale_s)
        if problem is None:
            self._send("WATCHDOG=1")
            self.beats += 1
            if self.problem is not None:
                log.info("alarm path alive again; watchdog pings resume")
                self._send("STATUS=running")
        else:
            self.withheld += 1
            last = self.problem
            if last is None or (last.loop, last.started) != (problem.loop, problem.started):
                # One line per change, not one per check: the journal keeps what matters.
                log.error("alarm path not alive; watchdog ping withheld", problem=str(problem))
                self._send(f"STATUS=watchdog ping withheld: {problem}")
        self.problem = problem
        return problem

    async def run(self) -> None:
        """Check, then wait half the interval; returns only when cancelled. The first check
        waits one period too: the loops tick at start, and systemd counts from READY=1."""
        while True:
            await asyncio.sleep(self.period_s)
            self.check()


def start(ticks: Ticks) -> list[asyncio.Task[None]]:
    """The watchdog task when systemd asked for one (``WATCHDOG_USEC``), else nothing."""
    interval = interval_from_env()
    if interval is None:
        return []
    dog = Watchdog(ticks, interval_s=interval)
    log.info("systemd watchdog on", timeout_s=interval, check_every_s=dog.period_s)
    return [asyncio.create_task(dog.run(), name="watchdog")]
