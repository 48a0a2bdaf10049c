"""``SiteMonitors``: every supervision task of one gateway, built from its config.

The daemon runs each of ``jobs()`` under its ``Supervisor`` (gateway/supervise.py), beside the
alarm path and apart from it: a monitor that raises is logged and restarted, the others and
the alarm path go on. ``snapshot()`` is the monitors' part of the gateway's snapshot
(gateway/snapshots.py); the heartbeat's body is built from snapshots only (PROTOCOL.md
"Bodies" heartbeat).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway import checks
from gateway.config import GatewayConfig
from gateway.contract.envelope import format_ts
from gateway.contract.signing import SigningKey
from gateway.delivery.seq import SeqCounter
from gateway.delivery.transport import Transport
from gateway.delivery.uplink import Uplink
from gateway.monitors.bollard import BollardMonitor
from gateway.monitors.boxlink import BoxSupervisor, SupervisedLink
from gateway.monitors.buttons import ButtonSupervisor, SupervisedButton
from gateway.monitors.heartbeat import Heartbeat, heartbeat_body
from gateway.monitors.reporter import EventSink, TroubleReporter
from gateway.monitors.selfcheck import SelfCheck
from gateway.monitors.takeover import TakeoverMonitor
from gateway.snapshots import (
    BollardSnapshot,
    CameraSnapshot,
    HeartbeatStats,
    InputSnapshot,
    InputState,
    MonitorsSnapshot,
    ProcessSnapshot,
    QueueSnapshot,
    Trouble,
)

if TYPE_CHECKING:
    from gateway.delivery.relay import Identity
    from gateway.monitors.camera import CameraMonitor

Job = tuple[str, Callable[[], Coroutine[Any, Any, None]]]
TROUBLE_FILE = "troubles.json"  # in state_dir: what the center was last told per condition


class Core(Protocol):
    """The snapshots the monitors read of the alarm path (gateway/sources.py)."""

    def process(self) -> ProcessSnapshot: ...
    def queue(self) -> QueueSnapshot: ...
    def inputs(self) -> tuple[InputSnapshot, ...]: ...


def open_trouble(reporter: TroubleReporter, device: str) -> tuple[list[str], str]:
    """(reasons, detail) of the device's open troubles."""
    reasons, details = [], []
    for c in reporter.conditions():
        if c.device == device and c.active:
            reasons += c.reason.split("+")
            details.append(c.detail)
    return reasons, "; ".join(details)


def bollard_snapshot(monitor: BollardMonitor, reporter: TroubleReporter) -> BollardSnapshot:
    """The bollard's state and the verdict on its open trouble (gateway/checks.py)."""
    tracker = monitor.tracker
    reasons, detail = open_trouble(reporter, "bollard")
    return BollardSnapshot(
        state=tracker.state,
        since=None if tracker.since_wall is None else format_ts(tracker.since_wall),
        verdict=checks.bollard(tracker.state, reasons, detail),
    )


def camera_snapshot(camera: CameraMonitor, reporter: TroubleReporter) -> CameraSnapshot:
    """The recorder's last answer (none after a failed poll) and the verdict on the trouble
    its monitor reports (gateway/checks.py), whatever the recorder's make."""
    err = camera.error
    last = None if err is not None else camera.last
    reasons, detail = open_trouble(reporter, "camera")
    facts = "" if last is None else f"recording, retention {last.retention_days:g} days"
    seen = camera.snapshot()  # the per-channel and disk figures of the last answer
    return CameraSnapshot(
        recording=bool(last is not None and last.recording),
        retention_days=None if last is None else float(last.retention_days),
        required_days=camera.cfg.required_days,
        error=None if err is None else str(err),
        verdict=checks.camera(reasons, detail, polled=camera.polls > 0, facts=facts),
        channels=seen.get("channels"),
        below_policy=seen.get("below_policy"),
        worst_channel=seen.get("worst_channel"),
        disks_failed=seen.get("disks_failed"),
        polled=camera.polls > 0,
    )


class SiteMonitors:
    """The reporter, the monitors and the heartbeat of one gateway. Build it on the running
    loop after the inputs exist (it hooks the box links).

    ``sink``: where troubles go (the relay); ``ident``, ``key``, ``seq``, ``uplink``,
    ``session`` and ``route``: what the heartbeat is signed with and sent on; ``core``: the
    snapshots of the alarm path the heartbeat reports."""

    def __init__(
        self,
        cfg: GatewayConfig,
        *,
        sink: EventSink,
        ident: Identity,
        key: SigningKey,
        seq: SeqCounter,
        uplink: Uplink,
        session: Callable[[], int],
        route: Callable[[], Transport | None],
        boxes: Sequence[SupervisedLink],
        core: Core,
        buttons: Sequence[SupervisedButton] = (),
    ) -> None:
        self._core = core
        state_dir = Path(cfg.gateway.state_dir)
        self.reporter = TroubleReporter(
            sink, state_file=state_dir / TROUBLE_FILE, summary_s=cfg.trouble.flap_summary_s
        )
        self.bollard = BollardMonitor(cfg.bollard, self.reporter) if cfg.bollard else None
        self.camera: CameraMonitor | None = None
        if cfg.camera is not None:
            from gateway.monitors.camera import CameraMonitor  # noqa: PLC0415 - aiohttp if used

            self.camera = CameraMonitor(cfg.camera, self.reporter)
        self.boxes = [BoxSupervisor(link, self.reporter) for link in boxes]
        self.buttons = ButtonSupervisor(buttons, self.reporter)
        self.takeover = TakeoverMonitor(self.reporter)
        self.takeover.watch(uplink, "primary")
        mqtt = cfg.mqtt
        self.selfcheck = SelfCheck(
            self.reporter,
            state_dir=state_dir,
            interval_s=cfg.selfcheck.interval_s,
            min_free_mb=cfg.selfcheck.min_free_mb,
            check_clock=cfg.selfcheck.clock,
            cert_warn_days=cfg.selfcheck.cert_warn_days,
            cert_files=[p for p in (mqtt.cert_file, mqtt.ca_file) if p is not None],
            key_files=[p for p in (cfg.gateway.key_file, mqtt.key_file) if p is not None],
        )
        self.heartbeat = Heartbeat(
            ident=ident,
            key=key,
            seq=seq,
            uplink=uplink,
            interval_s=cfg.heartbeat.interval_s,
            snapshot=self.heartbeat_body,
            session=session,
            route=route,  # the secondary after failover
        )
        self.devices = ["gateway", *(b.device for b in self.boxes)]
        self.devices += ["button"] if buttons else []
        self.devices += ["bollard"] if self.bollard else []
        self.devices += ["camera"] if self.camera else []
        self.reporter.forget_unmonitored(self.devices)

    def jobs(self) -> list[Job]:
        """(name, loop factory) of every supervision task."""
        jobs: list[Job] = [
            ("trouble-summary", self.reporter.run),
            ("heartbeat", self.heartbeat.run),
            ("selfcheck", self.selfcheck.run),
        ]
        if self.bollard is not None:
            jobs.append(("bollard", self.bollard.run))
        if self.camera is not None:
            jobs.append(("camera", self.camera.run))
        jobs += [(f"supervise:{b.link.name}", b.run) for b in self.boxes]
        return jobs

    # -- snapshots -------------------------------------------------------------------------

    def snapshot(self) -> MonitorsSnapshot:
        """Everything the monitors know now. On the event loop."""
        rep = self.reporter
        states: list[tuple[str, InputState]] = [(d, rep.status(d)) for d in self.devices]
        hb = self.heartbeat
        return MonitorsSnapshot(
            bollard=None if self.bollard is None else bollard_snapshot(self.bollard, rep),
            camera=None if self.camera is None else camera_snapshot(self.camera, rep),
            selfcheck=self.selfcheck.snapshot(),
            troubles=tuple(
                Trouble(c.device, c.code, c.reason, c.detail) for c in rep.conditions() if c.active
            ),
            flapping=tuple(rep.flapping()),
            device_states=tuple(states),
            heartbeat=HeartbeatStats(
                interval_s=hb.interval_s,
                taken=hb.stats["taken"],
                sent=hb.stats["sent"],
                replaced=hb.stats["replaced"],
                failed=hb.stats["failed"],
                waiting=hb.waiting is not None,
            ),
        )

    def heartbeat_body(self) -> dict[str, Any]:
        """The heartbeat body without ``session`` (the heartbeat adds it when it signs)."""
        core = self._core
        return heartbeat_body(core.process(), core.queue(), core.inputs(), self.snapshot())
