"""GPIO button supervision: a button whose pins cannot be claimed cannot raise an alarm.

``ButtonSupervisor`` listens to each ``GpioButtonInput``'s problem changes and reports one
condition to the command center: ``380`` sensor trouble on device ``button`` (PROTOCOL.md
"Bodies") while any button is dead, with the dead buttons' names as its reason, and its
restore once every button works again. A button box's input is supervised by its own link
(``350`` on ``serial:<name>``, gateway/monitors/boxlink.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.monitors.reporter import TroubleReporter

DEVICE = "button"
CODE = "380"


class SupervisedButton(Protocol):
    """What supervision needs of ``gateway.inputs.gpio.GpioButtonInput``."""

    name: str
    problem: str | None
    on_problem: list[Callable[[str | None], None]]


class ButtonSupervisor:
    """Keeps ``(button, 380)`` in step with the buttons' problems; event driven, no task.
    Each button announces its first claim's outcome, so a trouble the center was told
    before a restart is restored once the buttons work."""

    def __init__(self, buttons: Sequence[SupervisedButton], reporter: TroubleReporter) -> None:
        self.buttons = list(buttons)
        self._reporter = reporter
        for button in self.buttons:
            button.on_problem.append(lambda _problem: self.update())
        if any(b.problem is not None for b in self.buttons):  # announced before this
            self.update()

    def update(self) -> None:
        """Report the current state: active while any button has a problem."""
        dead = [b for b in self.buttons if b.problem is not None]
        if not dead:
            self._reporter.set(DEVICE, CODE, False, detail="every button can raise alarms")
            return
        reason = "+".join(sorted(b.name for b in dead))
        detail = "; ".join(str(b.problem) for b in dead)
        self._reporter.set(DEVICE, CODE, True, reason=reason, detail=detail)
