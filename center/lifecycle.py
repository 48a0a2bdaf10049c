"""An alarm's lifecycle at the command center: ``new`` -> ``acknowledged`` (by whom, when)
-> ``resolved`` (outcome ``real``, ``false``, ``test`` or ``malicious``; a note), each step
in the append-only audit trail. Acknowledging or resolving a real alarm queues a signed
``dispatch`` for its gateway (PROTOCOL.md "Bodies"), which the running service publishes.
Tests (type ``test``, code 601) are kept and shown apart, and never dispatched.

The service layer that the CLI (``alarmgw center ack|resolve|alarms``) and a web console use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from center.outbound import dispatch_body
from center.store import Store
from gateway.errors import AlarmgwError

OUTCOMES = ("real", "false", "test", "malicious")
NOTE_MAX = 2000
ACTOR_MAX = 100


class LifecycleError(AlarmgwError):
    """A lifecycle step that cannot be taken (unknown alarm, wrong state); one line."""


class Lifecycle:
    """Lifecycle steps on a store; ``clock`` gives the time of each step."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock

    def alarms(self, *, open_only: bool = False) -> list[dict[str, Any]]:
        """Alarms and tests, oldest first (``open_only``: not resolved)."""
        return self.store.alarms(open_only=open_only)

    def get(self, alarm_id: str) -> dict[str, Any]:
        found = self.store.alarm(alarm_id)
        if found is None:
            raise LifecycleError(f"no alarm with id {alarm_id!r}")
        return found

    def acknowledge(self, alarm_id: str, *, by: str) -> dict[str, Any]:
        """Someone has taken the alarm and help is being sent."""
        actor = _actor(by)
        alarm = self.get(alarm_id)
        if alarm["status"] != "new":
            raise LifecycleError(f"alarm {alarm_id} is already {_state_of(alarm)}")
        now = self._clock()
        done = self.store.update_alarm(
            alarm_id,
            expect=("new",),
            fields={"status": "acknowledged", "acked_by": actor, "acked_at": now},
            action="acknowledged",
            actor=actor,
            detail="",
            now=now,
            outbox=self._dispatch(alarm, "acknowledged"),
        )
        if not done:
            raise LifecycleError(
                f"alarm {alarm_id} changed meanwhile: {_state_of(self.get(alarm_id))}"
            )
        return self.get(alarm_id)

    def resolve(self, alarm_id: str, *, outcome: str, by: str, note: str = "") -> dict[str, Any]:
        """Close the alarm with its outcome (acknowledging it on the way if nobody had)."""
        actor = _actor(by)
        if outcome not in OUTCOMES:
            raise LifecycleError(f"outcome must be one of {', '.join(OUTCOMES)} (got {outcome!r})")
        if len(note) > NOTE_MAX:
            raise LifecycleError(f"note longer than {NOTE_MAX} characters")
        alarm = self.get(alarm_id)
        if alarm["status"] == "resolved":
            raise LifecycleError(f"alarm {alarm_id} is already {_state_of(alarm)}")
        now = self._clock()
        fields: dict[str, Any] = {
            "status": "resolved",
            "resolved_by": actor,
            "resolved_at": now,
            "outcome": outcome,
            "note": note,
        }
        done = self.store.update_alarm(
            alarm_id,
            expect=("new", "acknowledged"),
            fields=fields,
            action="resolved",
            actor=actor,
            detail=f"outcome {outcome}" + (f": {note}" if note else ""),
            now=now,
            outbox=self._dispatch(alarm, "resolved"),
        )
        if not done:
            raise LifecycleError(
                f"alarm {alarm_id} changed meanwhile: {_state_of(self.get(alarm_id))}"
            )
        return self.get(alarm_id)

    def audit(self, alarm_id: str) -> list[dict[str, Any]]:
        return self.store.audit(alarm_id)

    @staticmethod
    def _dispatch(alarm: dict[str, Any], status: str) -> tuple[str, dict[str, Any]] | None:
        if alarm["type"] == "test":
            return None  # a test is never dispatched
        return "dispatch", dispatch_body([alarm["id"]], status)


def _actor(by: str) -> str:
    actor = by.strip()
    if not actor or len(actor) > ACTOR_MAX or not actor.isprintable():
        raise LifecycleError(f"--by must be a printable name of 1..{ACTOR_MAX} characters")
    return actor


def _state_of(alarm: dict[str, Any]) -> str:
    if alarm["status"] == "acknowledged":
        return f"acknowledged by {alarm['acked_by']}"
    if alarm["status"] == "resolved":
        return f"resolved ({alarm['outcome']}) by {alarm['resolved_by']}"
    return str(alarm["status"])
