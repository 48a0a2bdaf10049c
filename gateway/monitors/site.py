"""``SiteMonitors``: every supervision task of one gateway, built from its config.

The daemon runs each of ``jobs()`` under its ``Supervisor`` (gateway/supervise.py), beside the
alarm path and apart from it: a monitor that raises is logged and restarted, the others and
the alarm path go on. The heartbeat's body is assembled here from all of them
(shared/spec/PROTOCOL.md "Bodies" heartbeat).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.monitors.bollard import BollardMonitor
from gateway.monitors.boxlink import BoxSupervisor
from gateway.monitors.heartbeat import Heartbeat
from gateway.monitors.reporter import InputState, TroubleReporter
from gateway.monitors.selfcheck import SelfCheck

if TYPE_CHECKING:
    from gateway.daemon import Gateway
    from gateway.monitors.camera import CameraMonitor

Job = tuple[str, Callable[[], Coroutine[Any, Any, None]]]
TROUBLE_FILE = "troubles.json"  # in state_dir: what the center was last told per condition


class SiteMonitors:
    """The reporter, the monitors and the heartbeat of the gateway ``gw``. Build it on the
    running loop after the inputs exist (it hooks the box links)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        cfg = gw.cfg
        state_dir = Path(cfg.gateway.state_dir)
        self.reporter = TroubleReporter(
            gw.relay, state_file=state_dir / TROUBLE_FILE, summary_s=cfg.trouble.flap_summary_s
        )
        self.bollard = BollardMonitor(cfg.bollard, self.reporter) if cfg.bollard else None
        self.camera: CameraMonitor | None = None
        if cfg.camera is not None:
            from gateway.monitors.camera import CameraMonitor  # noqa: PLC0415 - aiohttp if used

            self.camera = CameraMonitor(cfg.camera, self.reporter)
        self.boxes = [BoxSupervisor(link, self.reporter) for link in gw.boxes]
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
            ident=gw.relay.ident,
            key=gw.key,
            seq=gw.seq,
            uplink=gw.uplink,
            interval_s=cfg.heartbeat.interval_s,
            snapshot=self.snapshot,
            session=lambda: gw.relay.session,
            route=lambda: gw.relay.route("heartbeat"),  # the secondary after failover
        )
        devices = {"gateway", *(b.device for b in self.boxes)}
        devices |= {"bollard"} if self.bollard else set()
        devices |= {"camera"} if self.camera else set()
        self.reporter.forget_unmonitored(devices)
        self._register_status()

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

    # -- the heartbeat's body --------------------------------------------------------------

    def _button_state(self, button: Any) -> InputState:
        if button.started:
            return "ok"
        # A button whose pins could not be claimed is restarted by the supervisor.
        return "trouble" if self.gw.supervisor.restarts.get(button.input_ref) else "unknown"

    def inputs(self) -> dict[str, InputState]:
        """Per input (``gpio:<name>``, ``serial:<name>``): ok, trouble or unknown."""
        out: dict[str, InputState] = {b.input_ref: self._button_state(b) for b in self.gw.buttons}
        for box in self.boxes:
            out[box.device] = self.reporter.status(box.device)
        return out

    def snapshot(self) -> dict[str, Any]:
        """The heartbeat body without ``session`` (the heartbeat adds it when it signs)."""
        now = time.time()
        relay = self.gw.relay
        created = [
            float(oldest)
            for v in relay.outbox.summary().values()
            if isinstance(oldest := v.get("oldest"), int | float)
        ]
        free = self.selfcheck.disk_free_bytes()
        body: dict[str, Any] = {
            "uptime_s": round(time.monotonic() - self.gw.started_mono),
            "queue": {
                "pending": relay.pending_count(),
                "oldest_s": round(max(0.0, now - min(created)), 1) if created else 0,
            },
            "inputs": self.inputs(),
            "clock": {"synced": self.selfcheck.clock_synced() is True},
            "disk": {"free_bytes": free if free is not None else 0},
        }
        if self.bollard is not None:
            body["bollard"] = self.bollard.snapshot()
        if self.camera is not None:
            body["camera"] = self.camera.snapshot()
        return body

    # -- /status (gateway/technician/health.py) --------------------------------------

    def _register_status(self) -> None:
        providers = self.gw.health.providers
        if self.bollard is not None:
            bollard = self.bollard
            providers.add(
                "bollard",
                lambda: {
                    **bollard.snapshot(),
                    "ok": self.reporter.status("bollard") != "trouble",
                },
            )
        if self.camera is not None:
            camera = self.camera
            providers.add(
                "camera",
                lambda: {
                    **camera.snapshot(),
                    "error": str(camera.error) if camera.error else None,
                },
            )
        providers.add("supervision", self.status)

    def status(self) -> dict[str, Any]:
        """Open troubles, flapping devices and heartbeat counters, for ``/status``."""
        open_troubles = [
            {"device": c.device, "code": c.code, "reason": c.reason, "detail": c.detail}
            for c in self.reporter.conditions()
            if c.active
        ]
        summary = ", ".join(f"{t['device']} {t['code']} ({t['reason']})" for t in open_troubles)
        return {
            "ok": not open_troubles,
            "status": f"open troubles: {summary}" if open_troubles else "no open troubles",
            "troubles": open_troubles,
            "flapping": self.reporter.flapping(),
            "heartbeat": {
                "interval_s": self.heartbeat.interval_s,
                **self.heartbeat.stats,
                "waiting": self.heartbeat.waiting is not None,
            },
        }
