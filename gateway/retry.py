"""Retry policies: one per kind of loop that retries, all configured in this module.

Every policy is tenacity's: retry forever (``stop_never``) on the errors the caller names,
and wait a jittered exponential time between attempts. Attempt ``n`` is followed by a wait
between half and all of ``first_s * 2 ** (n - 1)``, capped at ``cap_s`` ("equal jitter": a
fleet that lost the same broker does not come back in step, and no retry follows at once).

Each retry is logged as one structlog line (``before_sleep``) with the attempt number, the
wait and the error. A long outage must stay readable: the line is a warning when the error
is new or changed, or once a minute while it repeats; the repeats in between are debug.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

__all__ = [
    "BIND",
    "CONNECT",
    "HTTP_POLL",
    "RECONNECT",
    "RESTART",
    "SERIAL_OPEN",
    "TAKEOVER",
    "Policy",
    "RetryLog",
]

_log: FilteringBoundLogger = structlog.get_logger("alarmgw.retry")

# While the same error repeats, one retry line a minute is a warning; the others are debug.
REPEAT_WARNING_S = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """How one kind of loop retries: waits from ``first_s`` doubling up to ``cap_s``."""

    kind: str
    first_s: float
    cap_s: float
    attempts: int | None = None  # None: for ever

    def limited(self, *, first_s: float | None = None, cap_s: float | None = None) -> Policy:
        """The same policy with other limits (a setting, or a test that cannot wait)."""
        first = self.first_s if first_s is None else first_s
        cap = self.cap_s if cap_s is None else cap_s
        return dataclasses.replace(self, first_s=min(first, cap), cap_s=cap)

    def wait(self) -> wait_base:
        """Half of the exponential delay fixed, the other half random: [d/2, d]."""
        half_first, half_cap = self.first_s / 2, self.cap_s / 2
        return wait_exponential(multiplier=half_first, max=half_cap) + wait_random_exponential(
            multiplier=half_first, max=half_cap
        )

    def retrying(
        self,
        *errors: type[BaseException],
        log: FilteringBoundLogger | None = None,
        event: Event | None = None,
        retry_log: Callable[[RetryCallState], None] | None = None,
        **context: Any,
    ) -> AsyncRetrying:
        """An ``AsyncRetrying`` that retries ``errors`` (anything else is raised at once)
        and logs every retry as ``event`` (or ``event(error)``) with ``context``. After the
        last attempt (only for a policy with ``attempts``) its error is raised. A caller
        that retries again and again (a poll) passes one ``retry_log`` for all of them, so
        repeats of the same error stay quiet across calls; a caller with a line of its own
        passes its own ``before_sleep`` callable as ``retry_log``."""
        stop: stop_base = stop_never if self.attempts is None else stop_after_attempt(self.attempts)
        return AsyncRetrying(
            wait=self.wait(),
            stop=stop,
            retry=retry_if_exception_type(errors),
            before_sleep=retry_log
            or RetryLog(log or _log, event or f"{self.kind}: retrying", kind=self.kind, **context),
            reraise=True,
        )


Event = str | Callable[[BaseException | None], str]
"""A retry line's event: fixed, or chosen by the error that caused the retry."""


class RetryLog:
    """A ``before_sleep`` callback: one structlog line per retry (see the module docstring)."""

    def __init__(
        self,
        log: FilteringBoundLogger,
        event: Event,
        *,
        clock: Callable[[], float] = time.monotonic,
        **context: Any,
    ) -> None:
        self._log = log
        self._event = event
        self._context = context
        self._clock = clock
        self._last: tuple[str, float] | None = None  # error text, time of its warning

    def __call__(self, state: RetryCallState) -> None:
        outcome = state.outcome
        err = outcome.exception() if outcome is not None and outcome.failed else None
        text = describe(err) if err is not None else "no error"
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        now = self._clock()
        last = self._last
        loud = last is None or last[0] != text or now - last[1] >= REPEAT_WARNING_S
        if loud:
            self._last = (text, now)
        emit = self._log.warning if loud else self._log.debug
        emit(
            self._event if isinstance(self._event, str) else self._event(err),
            **self._context,
            attempt=state.attempt_number,
            retry_in_s=round(wait, 3),
            error=text,
        )


def describe(err: BaseException) -> str:
    """One line for a technician: the message, or the type when there is none."""
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# -- the policies ------------------------------------------------------------------------
# An alarm gateway must be back on the broker within seconds of it returning: both MQTT
# policies are capped low. The others protect the machine from a tight loop.

CONNECT = Policy("connect", first_s=0.5, cap_s=5.0)
"""The MQTT connection while no session has been up yet (daemon start, broker down)."""

RECONNECT = Policy("reconnect", first_s=0.2, cap_s=3.0)
"""The MQTT connection after a session was lost (the first attempt is immediate)."""

TAKEOVER = Policy("reconnect after session takeover", first_s=6.0, cap_s=30.0)
"""The MQTT connection after the broker handed our session to another client with our
client id (MQTT 5 reason 0x8E): reconnecting at once would only knock that client off in
turn, so each takeover in a row waits longer, from no less than RECONNECT's longest wait up
to a cap that still lets a queued alarm out within half a minute."""

SERIAL_OPEN = Policy("open serial port", first_s=0.2, cap_s=5.0)
"""Opening a button box's serial port (unplugged USB adapter, missing device)."""

BIND = Policy("bind", first_s=1.0, cap_s=60.0)
"""Binding the technician's HTTP endpoint (port taken by another process)."""

HTTP_POLL = Policy("poll http status", first_s=0.1, cap_s=0.4, attempts=3)
"""A refused or reset GET of a device's status, tried again within one poll."""

RESTART = Policy("restart", first_s=0.5, cap_s=30.0)
"""Restarting a supervised loop that died, returned or stalled."""
