"""Trouble and restore events (PROTOCOL.md "Bodies" and "Delivery semantics").

Monitors say what they see with ``TroubleReporter.set(device, code, active, reason=...,
detail=...)``; the reporter decides what the command center is told. A *condition* is one
(device, code), e.g. ``("serial:box-gate-main", "137")``. A *change* is a condition becoming
active or inactive, or an active one changing its ``reason`` (the bollard going from "stuck
moving" to "fault" is news; "retention 12 days" becoming "11 days" is not).

Flapping (PROTOCOL.md "Delivery semantics"): every change of a device is sent until the device
has changed more than 20 times within 10 minutes; past that its changes are summarised: every
``summary_s`` each of its conditions that changed is sent once, in its current state, with
``count`` = how many changes that envelope stands for. The device has settled once it changed
at most 20 times in the last 10 minutes; from then on every change is sent again. Nothing is
lost silently: the individual envelopes plus the counts of the summaries add up to the changes
seen, and the queue grows by a bounded number of envelopes however fast an input flaps.

What the center was last told is kept per condition in a small JSON file, written only when
that changes (bounded by the rule above, never per poll), so a restart neither repeats a
trouble nor forgets the restore of one that cleared while the gateway was down.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog

from gateway.contract.envelope import format_ts
from gateway.private_files import write_private

log = structlog.get_logger("alarmgw.trouble")

FLAP_LIMIT = 20  # PROTOCOL.md: "until it has changed more than 20 times within 10 minutes"
FLAP_WINDOW_S = 600.0
MAX_DETAIL = 160  # PROTOCOL.md: detail is a short text

InputState = Literal["ok", "trouble", "unknown"]


class EventSink(Protocol):
    """Where trouble/restore envelopes go: ``gateway.delivery.relay.Relay`` (durable outbox)."""

    def raise_event(self, kind: str, body: Mapping[str, Any], ts: str | None = None) -> str: ...


@dataclass(slots=True)
class Condition:
    """One (device, code) as last seen, and what the center was last told about it."""

    device: str
    code: str
    active: bool = False
    reason: str = ""
    detail: str = ""
    since: float | None = None  # wall-clock time the current state began (None: not yet seen)
    observed: bool = False
    told: tuple[bool, str] = (False, "")  # (active, reason) in the last envelope sent
    unreported: int = 0  # changes not yet in any envelope


@dataclass(slots=True)
class _Device:
    # The last FLAP_LIMIT + 1 change times: the device flaps while the oldest of them is
    # within FLAP_WINDOW_S, i.e. while it changed more than FLAP_LIMIT times in the window.
    changes: deque[float] = field(default_factory=lambda: deque(maxlen=FLAP_LIMIT + 1))
    flapping: bool = False
    coalesced: int = 0  # changes summarised in the current flapping episode


class TroubleReporter:
    """Turns condition changes into ``trouble``/``restore`` envelopes through ``sink``.

    Call everything from the event-loop thread. ``run()`` sends the summaries of flapping
    devices (and retries an envelope the sink refused) every ``summary_s``. ``clock`` is
    monotonic (the flapping window), ``wall`` gives the envelopes' ``ts``."""

    def __init__(
        self,
        sink: EventSink,
        *,
        state_file: Path | None = None,
        summary_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self._state_file = state_file
        self.summary_s = summary_s
        self._clock = clock
        self._wall = wall
        self._conds: dict[tuple[str, str], Condition] = {}
        self._devices: dict[str, _Device] = {}
        self._told = self._load()
        self.stats: Counter[str] = Counter()

    # -- what monitors call ---------------------------------------------------------------

    def set(
        self, device: str, code: str, active: bool, *, reason: str = "", detail: str = ""
    ) -> None:
        """Report the current state of (device, code); only a change is news."""
        cond = self._cond(device, code)
        cond.observed = True
        reason = reason if active else ""
        if (active, reason) == (cond.active, cond.reason):
            cond.detail = detail  # the same state in newer words
            return
        cond.active, cond.reason, cond.detail = active, reason, detail
        cond.since = self._wall()
        cond.unreported += 1
        now = self._clock()
        dev = self._devices.setdefault(device, _Device())
        dev.changes.append(now)
        if not dev.flapping and self._over_limit(dev, now):
            dev.flapping = True
            log.warning(
                "device flapping: its changes are now summarised",
                device=device,
                limit=FLAP_LIMIT,
                window_s=FLAP_WINDOW_S,
                summary_s=self.summary_s,
            )
        if dev.flapping:
            dev.coalesced += 1
            self.stats["coalesced"] += 1
            return
        self._emit(cond, summary=False)

    def forget_unmonitored(self, devices: Iterable[str]) -> None:
        """Restore every trouble the center was told about for a device that is no longer
        monitored (its section was removed from the config): it would stay open for ever."""
        keep = set(devices)
        for (device, code), (active, _reason) in sorted(self._told.items()):
            if active and device not in keep:
                self.set(device, code, False, detail="no longer monitored by this gateway")

    # -- status ---------------------------------------------------------------------------

    def status(self, device: str) -> InputState:
        """``trouble`` if any condition of ``device`` is active, ``ok`` once one was seen,
        else ``unknown`` (PROTOCOL.md heartbeat ``inputs``)."""
        conds = [c for c in self._conds.values() if c.device == device]
        if any(c.active for c in conds):
            return "trouble"
        return "ok" if any(c.observed for c in conds) else "unknown"

    def conditions(self) -> list[Condition]:
        """Every condition seen or remembered, for status tools."""
        return list(self._conds.values())

    def flapping(self) -> list[str]:
        """Devices whose changes are being summarised now."""
        return sorted(name for name, dev in self._devices.items() if dev.flapping)

    # -- summaries ------------------------------------------------------------------------

    def tick(self) -> None:
        """Send the summary of each flapping device (and retry refused envelopes); a device
        that settled goes back to one envelope per change."""
        now = self._clock()
        for name, dev in self._devices.items():
            conds = [c for c in self._conds.values() if c.device == name and c.unreported]
            for cond in conds:
                self._emit(cond, summary=dev.flapping)
            if dev.flapping and not self._over_limit(dev, now):
                dev.flapping = False
                log.info("device settled", device=name, summarised_changes=dev.coalesced)
                dev.coalesced = 0

    async def run(self) -> None:
        """``tick`` every ``summary_s``, for ever."""
        while True:
            await asyncio.sleep(self.summary_s)
            self.tick()

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _over_limit(dev: _Device, now: float) -> bool:
        return len(dev.changes) > FLAP_LIMIT and now - dev.changes[0] <= FLAP_WINDOW_S

    def _cond(self, device: str, code: str) -> Condition:
        cond = self._conds.get((device, code))
        if cond is None:
            # Start from what the center was told before a restart: no news, no envelope.
            told = self._told.get((device, code), (False, ""))
            cond = Condition(device, code, active=told[0], reason=told[1], told=told)
            self._conds[(device, code)] = cond
        return cond

    def _emit(self, cond: Condition, *, summary: bool) -> None:
        kind = "trouble" if cond.active else "restore"
        detail = cond.detail or (cond.reason if cond.active else "back to normal")
        body: dict[str, Any] = {"code": cond.code, "device": cond.device}
        count = cond.unreported
        if summary or count > 1:
            body["count"] = count
            detail = f"{detail} (flapping: {count} changes since the last report)"
        body["detail"] = detail[:MAX_DETAIL]
        try:
            event_id = self._sink.raise_event(kind, body, ts=format_ts(cond.since or self._wall()))
        except Exception as err:
            # Kept as unreported: the next tick tries again. Never raised into a monitor.
            self.stats["failed"] += 1
            log.error("trouble not queued, will retry", device=cond.device, error=repr(err))
            return
        cond.unreported = 0
        self.stats["summaries" if "count" in body else kind] += 1
        log.info(
            f"{kind} queued",
            id=event_id,
            device=cond.device,
            code=cond.code,
            detail=body["detail"],
            count=body.get("count", 1),
        )
        told = (cond.active, cond.reason)
        if told != cond.told:
            cond.told = told
            self._remember(cond)

    def _load(self) -> dict[tuple[str, str], tuple[bool, str]]:
        if self._state_file is None:
            return {}
        try:
            data = json.loads(self._state_file.read_text("utf-8"))
            active = data["active"]
            return {
                (str(item["device"]), str(item["code"])): (True, str(item.get("reason", "")))
                for item in active
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as err:
            # Worst case the center hears about a trouble a second time.
            log.warning("trouble state unreadable, starting afresh", error=repr(err))
            return {}

    def _remember(self, cond: Condition) -> None:
        key = (cond.device, cond.code)
        if cond.told[0]:
            self._told[key] = cond.told
        else:
            self._told.pop(key, None)
        if self._state_file is None:
            return
        active = [
            {"device": d, "code": c, "reason": reason}
            for (d, c), (_, reason) in sorted(self._told.items())
        ]
        tmp = self._state_file.with_name(self._state_file.name + ".tmp")
        try:
            # No fsync: losing the last write only repeats an envelope after power loss.
            write_private(tmp, json.dumps({"v": 1, "active": active}).encode())
            tmp.replace(self._state_file)
        except OSError as err:
            log.warning("trouble state not saved", file=str(self._state_file), error=str(err))
