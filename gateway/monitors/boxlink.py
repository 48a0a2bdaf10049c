"""Button-box link supervision (SERIAL.md "Rules"), beside the link, not in it.

``BoxSupervisor`` hooks ``BoxLink.on_frame`` and watches ``BoxLink.stale``; it reports the
box's conditions under device ``serial:<name>`` (the config name; PROTOCOL.md "Bodies"):

- ``350`` communication trouble: no valid frame for 3 x the box heartbeat, or the box does
  not read what the gateway writes (its ACKs and LED frames pile up); the next valid frame
  once the link is silent no more and drains again restores it.
- ``137`` tamper: ``TAMPER,state=open``; ``closed`` restores it.
- ``301`` mains lost: ``POWER,state=battery`` (and ``low``: a low battery runs on battery);
  ``302`` low battery: ``POWER,state=low``; ``mains`` restores both.
- ``330`` peripheral trouble: ``FAULT,code=N``; SERIAL.md names no "fault cleared" frame, so
  ``FAULT,code=0`` (self-test passed) or a ``HELLO`` (the box restarted and tests itself
  again; a fault that persists is sent again) restores it.

The hook only schedules the work on the loop: the frame's ACK and a PRESS in the same read
go first, so supervision never delays the alarm path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from gateway.inputs.codec import Frame
from gateway.monitors.reporter import TroubleReporter

log = structlog.get_logger("alarmgw.boxlink")

SILENT_HEARTBEATS = 3  # SERIAL.md: "no valid frame for 3 x the heartbeat interval"


class SupervisedLink(Protocol):
    """What supervision needs of ``gateway.inputs.serial_box.BoxLink``."""

    name: str
    heartbeat_s: float
    on_frame: list[Callable[[Frame], None]]

    @property
    def stale(self) -> bool: ...

    @property
    def connected(self) -> bool: ...

    @property
    def last_valid_frame_at(self) -> float | None: ...

    @property
    def box_id(self) -> str | None: ...

    @property
    def write_stalled(self) -> bool: ...


class BoxSupervisor:
    """Supervises one box link; ``run()`` watches for silence until cancelled."""

    def __init__(
        self,
        link: SupervisedLink,
        reporter: TroubleReporter,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.device = f"serial:{link.name}"
        self._reporter = reporter
        self._clock = clock
        link.on_frame.append(self._on_frame)

    def _on_frame(self, frame: Frame) -> None:
        try:
            asyncio.get_running_loop().call_soon(self._handle_safely, frame)
        except RuntimeError:  # no loop (a synchronous test): handle it now
            self._handle_safely(frame)

    def _handle_safely(self, frame: Frame) -> None:
        try:
            self.handle(frame)
        except Exception:
            # Supervision is a side path: a bug here must not reach the serial link.
            log.exception("box supervision failed", box=self.link.name, frame=frame.type)

    def _set(self, code: str, active: bool, reason: str, detail: str) -> None:
        box = f" (box {self.link.box_id})" if self.link.box_id else ""
        self._reporter.set(self.device, code, active, reason=reason, detail=detail + box)

    def handle(self, frame: Frame) -> None:
        """One valid frame from the box: it is alive, and some frames carry a state."""
        if not self.link.write_stalled:
            self._set("350", False, "", "link answers again")
        state = frame.get("state", "")
        if frame.type == "TAMPER":
            opened = state == "open"
            self._set("137", opened, "open", f"cover {'open' if opened else 'closed'}")
        elif frame.type == "POWER":
            self._set("301", state in ("battery", "low"), "battery", f"power: {state}")
            self._set("302", state == "low", "low", f"power: {state}")
        elif frame.type == "FAULT":
            code = frame.get("code", "")
            failed = code != "0"
            text = f"self-test fault code {code}" if failed else "self-test passed"
            self._set("330", failed, f"code-{code}", text)
        elif frame.type == "HELLO":
            self._set("330", False, "", f"box restarted (fw {frame.get('fw', '?')})")

    def check(self) -> None:
        """Report ``350`` when the link has been silent for 3 heartbeats or does not drain."""
        if self.link.write_stalled:
            self._set("350", True, "not-reading", "the box does not read what the gateway sends")
            return
        if not self.link.stale:
            return
        last = self.link.last_valid_frame_at
        if last is None:
            why = "no valid frame since the gateway started"
        else:
            why = f"no valid frame for {self._clock() - last:.1f} s"
        port = "" if self.link.connected else " (serial port not open)"
        limit = SILENT_HEARTBEATS * self.link.heartbeat_s
        self._set("350", True, "silent", f"{why}, limit {limit:g} s{port}")

    async def run(self) -> None:
        """Check for silence a few times per heartbeat, for ever."""
        # Half a heartbeat between checks: 350 comes at most that late after the limit.
        period = max(0.05, self.link.heartbeat_s / 2)
        while True:
            self.check()
            await asyncio.sleep(period)

    def describe(self) -> dict[str, Any]:
        """For status tools: the device name and its state for the heartbeat."""
        return {"device": self.device, "status": self._reporter.status(self.device)}
