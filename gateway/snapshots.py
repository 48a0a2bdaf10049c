"""Typed, immutable snapshots of the running gateway's state.

Each part publishes what it knows as one frozen value: delivery (the relay and its broker
links), the queue (the outbox), the inputs, the monitors, the supervisor and the process.
``/status``, ``/metrics``, ``alarmgw status`` and the heartbeat read these, never the live
objects. ``SnapshotSource`` is what the HTTP endpoint is given instead of the gateway.

Counts and maps are tuples of pairs, so a snapshot shares nothing mutable with the loop
that took it and can be handed to another thread as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.checks import Verdict

InputState = Literal["ok", "trouble", "unknown"]
Pairs = tuple[tuple[str, int], ...]


# --- delivery -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkSnapshot:
    """One broker session (the primary, or the secondary)."""

    path: str  # "primary" or "secondary"
    broker: str  # host:port
    tls: bool
    protocol: str
    connected: bool
    reconnects: int
    last_error: str | None
    loop_age_s: float | None  # since the link's loop last ticked; None before its first tick
    takeover: Verdict | None = None  # another client took the session over (failing)


@dataclass(frozen=True, slots=True)
class LastAlarm:
    id: str
    type: str
    input: str
    ts: str
    acked_at: float | None


@dataclass(frozen=True, slots=True)
class Raised:
    input: str
    type: str
    count: int


@dataclass(frozen=True, slots=True)
class DeliveryCounters:
    alarms_raised: int = 0
    events_sent: int = 0
    events_acked: int = 0
    publish_refused: int = 0
    acks_rejected: int = 0


@dataclass(frozen=True, slots=True)
class RefusedAcks:
    """Acks the gateway ignored for one reason (``unknown-kid``, ``bad-signature``, ...)."""

    reason: str
    count: int
    since_ack: int  # refused since the last ack that verified
    last_kid: str | None  # the kid the last of them named


@dataclass(frozen=True, slots=True)
class DeliverySnapshot:
    """The relay's figures held in memory (no outbox read)."""

    session: int
    memory_only: int  # events not durable: the outbox could not commit them
    primary: LinkSnapshot
    secondary: LinkSnapshot | None
    sent_by_path: Pairs
    counters: DeliveryCounters
    raised: tuple[Raised, ...]
    last_alarm: LastAlarm | None
    pump_age_s: float | None  # since the outbox pump last went round
    refused_acks: tuple[RefusedAcks, ...] = ()
    center_kids: tuple[str, ...] = ()  # the center keys trusted for acks


@dataclass(frozen=True, slots=True)
class QueueRow:
    type: str
    pending: int
    oldest_age_s: float
    failed_attempts: int | None  # None where it was not read
    last_error: str | None


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """What waits for the center's ack, as stored in the outbox, plus memory-only events."""

    rows: tuple[QueueRow, ...]
    memory_only: int = 0

    @property
    def stored(self) -> int:
        return sum(r.pending for r in self.rows)

    @property
    def pending(self) -> int:
        """Every unacknowledged event, memory-only ones included."""
        return self.stored + self.memory_only

    @property
    def oldest_age_s(self) -> float | None:
        return max((r.oldest_age_s for r in self.rows), default=None)


# --- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpioInput:
    ref: str
    name: str
    state: InputState
    pin: int
    led_pin: int | None
    started: bool
    pressed: bool
    presses: int
    bounces_ignored: int
    short_presses: int
    led: str | None
    alarms: int
    verdict: Verdict | None = None  # None before its pins were first tried


@dataclass(frozen=True, slots=True)
class SerialInput:
    ref: str
    name: str
    state: InputState
    link: Verdict
    port: str
    baud: int
    connected: bool
    stale: bool
    box_id: str | None
    fw: str | None
    frames_ok: int
    frame_errors: Pairs
    last_frame_age_s: float | None
    alarms: int


InputSnapshot = GpioInput | SerialInput


# --- monitors -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BollardSnapshot:
    state: str  # up, down, moving, fault, unknown
    since: str | None  # RFC 3339, when the state began
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class CameraSnapshot:
    recording: bool
    retention_days: float | None  # the worst channel's, for a recorder read per channel
    required_days: int
    error: str | None
    verdict: Verdict
    channels: int | None = None  # a recorder read per channel (ONVIF, Hikvision): how many
    below_policy: int | None = None  # channels holding fewer than required_days
    worst_channel: str | None = None  # the channel with the least retention
    disks_failed: int | None = None  # when the recorder reports its disks
    polled: bool = True  # False until the recorder was asked once: its state is unknown

    @property
    def ok(self) -> bool:
        return self.verdict.ok


@dataclass(frozen=True, slots=True)
class SelfCheckSnapshot:
    """The gateway's own last measured conditions (clock, disk, certificates, keys)."""

    clock_synced: bool | None
    free_bytes: int | None
    verdicts: tuple[Verdict, ...]
    cert_days: tuple[tuple[str, float], ...] = ()  # (file, days until it expires)


@dataclass(frozen=True, slots=True)
class Trouble:
    device: str
    code: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class HeartbeatStats:
    interval_s: float
    taken: int
    sent: int
    replaced: int
    failed: int
    waiting: bool


@dataclass(frozen=True, slots=True)
class MonitorsSnapshot:
    bollard: BollardSnapshot | None
    camera: CameraSnapshot | None
    selfcheck: SelfCheckSnapshot
    troubles: tuple[Trouble, ...]  # open ones
    flapping: tuple[str, ...]
    device_states: tuple[tuple[str, InputState], ...]  # per monitored device
    heartbeat: HeartbeatStats

    def device_state(self, device: str) -> InputState:
        return dict(self.device_states).get(device, "unknown")


# --- supervisor and process -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoopSnapshot:
    name: str
    restarts: int
    last_failure: str | None


@dataclass(frozen=True, slots=True)
class SupervisorSnapshot:
    loops: tuple[LoopSnapshot, ...]  # every loop that was restarted at least once

    def restarts(self, name: str) -> int:
        return next((loop.restarts for loop in self.loops if loop.name == name), 0)


@dataclass(frozen=True, slots=True)
class ProcessSnapshot:
    site: str
    id: str
    kid: str
    version: str
    versions: tuple[tuple[str, str], ...]
    pid: int
    uptime_s: float
    config: str
    state_dir: str


# --- liveness (any thread) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoopLiveness:
    name: str
    running: bool
    tick_age_s: float | None  # None before its first tick


@dataclass(frozen=True, slots=True)
class Liveness:
    """What ``/healthz`` judges, read without iterating anything the event loop mutates, so
    it can be taken on another thread while that loop is stuck."""

    loops: tuple[LoopLiveness, ...]
    connected: bool  # to the primary or the secondary broker
    broker: str
    last_error: str | None
    memory_only: int
    outbox: str  # the outbox file's path
    min_free_bytes: int  # [selfcheck] min_free_mb


# --- the whole gateway ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewaySnapshot:
    process: ProcessSnapshot
    delivery: DeliverySnapshot
    inputs: tuple[InputSnapshot, ...]
    monitors: MonitorsSnapshot | None  # None until the monitors are running
    supervisor: SupervisorSnapshot


def input_state(i: InputSnapshot, monitors: MonitorsSnapshot | None) -> InputState:
    """An input's state for ``/status`` and the heartbeat: its own (a button's pins, a box's
    serial link), and for a box also ``trouble`` while it has an open trouble (tamper, power,
    fault)."""
    serial = isinstance(i, SerialInput)
    if serial and monitors is not None and monitors.device_state(i.ref) == "trouble":
        return "trouble"
    return i.state


class SnapshotSource(Protocol):
    """Where the HTTP endpoint gets the gateway's state. ``snapshot`` runs on the daemon's
    event loop; ``liveness`` on any thread."""

    def snapshot(self) -> GatewaySnapshot: ...

    def liveness(self) -> Liveness: ...
