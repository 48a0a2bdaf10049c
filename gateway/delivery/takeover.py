"""Session takeover: another client connected to the broker with our client id.

MQTT 5 (§3.1.4, §4.13) has the broker send the older connection a DISCONNECT with reason
code 0x8E "Session taken over" before closing it. Two gateways with one id (a cloned SD
card, a copied config) would otherwise knock each other off in a loop, each reconnecting at
once. ``Takeovers`` is what the uplink knows about it: the one line a person reads, the
waits between reconnects after a takeover (``retry.TAKEOVER``, longer each time in a row),
and when the trouble is over (a session held for ``clear_s``, twice the longest wait: a
clone that backs off the same way would have come back by then). Listeners hear the line
at every takeover and ``None`` each time a session has held that long.

A broker that closes the older connection without that DISCONNECT (Mosquitto before
2.0.15, MQTT 3.1.1) gives the uplink nothing to tell a takeover from an outage by.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog
from paho.mqtt.reasoncodes import ReasonCode
from tenacity import AsyncRetrying, RetryCallState

from gateway import retry
from gateway.errors import AlarmgwError

log = structlog.get_logger("alarmgw.uplink")

SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason code "Session taken over"

Listener = Callable[["Takeover | None"], None]


def is_takeover(reason: ReasonCode | int | None) -> bool:
    """True for the reason code of a session handed to another client."""
    if isinstance(reason, ReasonCode):
        return bool(reason.value == SESSION_TAKEN_OVER)
    return reason == SESSION_TAKEN_OVER


class SessionTakenOver(AlarmgwError):
    """The broker gave our session to another client with the same client id."""


class NewRun(Exception):
    """A takeover after a session had held again: its waits start from the first."""


@dataclass(frozen=True, slots=True)
class Takeover:
    """What a person is told: the problem, the fix, and how often it happened."""

    problem: str
    fix: str
    count: int

    @property
    def line(self) -> str:
        return f"{self.problem}; {self.fix}"


def texts(who: str, client_id: str, broker: str) -> tuple[str, str]:
    """(problem, fix) for a client of kind ``who`` ("gateway", or anything else)."""
    if who == "gateway":
        return (
            f"another gateway with the id {client_id} connected to the broker {broker} and "
            "took this session over: two gateways share this id (a cloned SD card?)",
            "give each gateway its own [gateway] id and key (alarmgw keygen, registered "
            "at the center), or switch the other one off",
        )
    return (
        f"another {who} with the id {client_id} connected to the broker {broker} and took "
        f"this session over: two clients share this id",
        "give each its own [mqtt] client_id, or stop the other one",
    )


class Takeovers:
    """The takeovers of one uplink: counted, told to listeners, waited after."""

    def __init__(
        self,
        *,
        who: str,
        client_id: str,
        broker: str,
        first_s: float | None = None,
        cap_s: float | None = None,
    ) -> None:
        self.problem, self.fix = texts(who, client_id, broker)
        self.policy = retry.TAKEOVER.limited(first_s=first_s, cap_s=cap_s)
        self.clear_s = 2 * self.policy.cap_s
        self.count = 0
        self.open: Takeover | None = None  # since the last takeover no session held clear_s
        self.listeners: list[Listener] = []
        self.cleared = True  # no takeover since a session last held (or ever)

    def happened(self) -> SessionTakenOver:
        """Count a takeover and tell the listeners; the error to raise."""
        self.count += 1
        self.open = Takeover(self.problem, self.fix, self.count)
        self.cleared = False
        self._tell(self.open)
        return SessionTakenOver(self.open.line)

    def held(self) -> None:
        """A session has held for ``clear_s``: any takeover is over."""
        if self.open is not None:
            log.info(
                "broker session held: no other client has taken it over since",
                held_s=self.clear_s,
                takeovers=self.count,
            )
        self.open = None
        self.cleared = True
        self._tell(None)

    def retrying(self) -> AsyncRetrying:
        """Retries ``SessionTakenOver`` with the takeover waits, one line each."""
        return self.policy.retrying(SessionTakenOver, retry_log=self._before_sleep)

    def _before_sleep(self, state: RetryCallState) -> None:
        # The one line per takeover: what happened, the fix, and when we try again.
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.error(
            self.open.line if self.open is not None else self.problem,
            takeovers=self.count,
            attempt=state.attempt_number,
            retry_in_s=round(wait, 1),
        )

    def _tell(self, what: Takeover | None) -> None:
        for listener in list(self.listeners):
            try:
                listener(what)
            except Exception:
                log.exception("takeover listener failed")
