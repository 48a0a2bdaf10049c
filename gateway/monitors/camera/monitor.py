"""The recorder monitor: poll an ``NvrAdapter`` on a fixed cadence and report (camera, 393).

Every ``poll_s`` the monitor asks the recorder, within ``min(timeout_s, poll_s)``, and reports
condition (camera, 393) (maintenance, PROTOCOL.md "Bodies": "e.g. camera retention below
policy"): a channel not recording, retention below ``required_days``, a failed or full disk,
the recorder unreachable, refusing the credentials, an error status, a bad document or no
answer in time. It is restored once every channel records with enough retention again. The
poll runs in the monitor's own task: a recorder that hangs delays nothing else, and nothing
it sends can crash the monitor.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from gateway.config import CameraSection
from gateway.monitors.camera.jsonapi import JsonAdapter
from gateway.monitors.camera.model import (
    CODE,
    DEVICE,
    CameraStatus,
    NvrAdapter,
    channel_label,
    fmt_days,
    problems,
)
from gateway.monitors.http import StatusError, new_session
from gateway.monitors.reporter import TroubleReporter

log = structlog.get_logger("alarmgw.camera")

GRACE_S = 1.0


def make_adapter(cfg: CameraSection) -> NvrAdapter:
    """The adapter ``cfg.adapter`` names. The vendor ones are imported only when configured
    (the ONVIF client loads its WSDLs)."""
    if cfg.adapter == "onvif":
        from gateway.monitors.camera.profile_g import OnvifAdapter  # noqa: PLC0415

        return OnvifAdapter(cfg)
    if cfg.adapter == "hikvision":
        from gateway.monitors.camera.isapi import HikvisionAdapter  # noqa: PLC0415

        return HikvisionAdapter(cfg)
    return JsonAdapter(cfg.url)


class CameraMonitor:
    """Polls the recorder every ``cfg.poll_s`` and reports condition (camera, 393)."""

    def __init__(
        self, cfg: CameraSection, reporter: TroubleReporter, *, adapter: NvrAdapter | None = None
    ) -> None:
        self.cfg = cfg
        self._reporter = reporter
        self.adapter: NvrAdapter = adapter or make_adapter(cfg)
        self.last: CameraStatus | None = None
        self.error: StatusError | None = None
        self.polls = 0

    def snapshot(self) -> dict[str, Any]:
        """The heartbeat's ``camera``: ``recording``, ``retention_days`` (when known; the worst
        channel's), ``required_days`` and ``ok`` (recording with retention at or above the
        policy, disks fine). A recorder read per channel adds ``channels`` (how many),
        ``below_policy`` (how many below ``required_days``), ``worst_channel`` (the one with
        the least retention) and, when it reports disks, ``disks_failed``."""
        out: dict[str, Any] = {"recording": False, "required_days": self.cfg.required_days}
        last = None if self.error is not None else self.last
        if last is not None:
            out["recording"] = last.recording
            days = float(last.retention_days)
            out["retention_days"] = int(days) if days.is_integer() else round(days, 2)
            if last.channels:
                worst = min(last.channels, key=lambda c: c.retention_days or 0.0)
                out["channels"] = len(last.channels)
                out["below_policy"] = sum(
                    (c.retention_days or 0.0) < self.cfg.required_days for c in last.channels
                )
                out["worst_channel"] = worst.name
            if last.disks:
                out["disks_failed"] = sum(not d.ok for d in last.disks)
        out["ok"] = last is not None and not problems(last, self.cfg.required_days)
        return out

    def evaluate(self, result: CameraStatus | StatusError) -> None:
        """Take one poll's result and report the condition."""
        self.polls += 1
        if isinstance(result, StatusError):
            self.error = result
            found = [(result.reason, f"recorder {result.reason}: {result.detail}")]
        else:
            self.error, self.last = None, result
            found = problems(result, self.cfg.required_days)
        if found:
            self._reporter.set(
                DEVICE,
                CODE,
                True,
                reason="+".join(reason for reason, _ in found),
                detail="; ".join(detail for _, detail in found),
            )
            return
        assert isinstance(result, CameraStatus)
        if result.channels:
            worst = min(result.channels, key=lambda c: c.retention_days or 0.0)
            detail = (
                f"{len(result.channels)} channels recording, retention at least "
                f"{fmt_days(result.retention_days)} days ({channel_label(worst.name)})"
            )
        else:
            detail = f"recording, retention {result.retention_days:g} days"
        self._reporter.set(DEVICE, CODE, False, detail=detail)

    async def poll(self, session: Any, timeout_s: float) -> CameraStatus | StatusError:
        """One bounded poll: the adapter's answer, or the StatusError saying why not."""
        try:
            # The adapter bounds its own requests and cleans up after a timeout; this bounds
            # the adapter as a whole, a little later, so it does not cut that clean-up short.
            async with asyncio.timeout(timeout_s + GRACE_S):
                return await self.adapter.fetch(session, timeout_s=timeout_s)
        except StatusError as err:
            return err
        except TimeoutError:
            return StatusError("timeout", f"no answer from the recorder within {timeout_s:g} s")

    async def run(self) -> None:
        """Poll for ever on a fixed cadence (a slow answer does not stretch the interval)."""
        loop = asyncio.get_running_loop()
        # A request may not outlast the interval: a hung recorder shows within one poll.
        timeout = min(self.cfg.timeout_s, self.cfg.poll_s)
        async with new_session() as session:
            next_at = loop.time()
            while True:
                result = await self.poll(session, timeout)
                if isinstance(result, StatusError) and (
                    self.error is None or self.error.reason != result.reason
                ):
                    # Once per kind of failure, not once per poll.
                    log.warning("recorder status failed", reason=result.reason, error=result.detail)
                self.evaluate(result)
                next_at = max(next_at + self.cfg.poll_s, loop.time())
                await asyncio.sleep(next_at - loop.time())
