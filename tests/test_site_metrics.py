"""``/metrics`` carries the site: bollard, recorder, open troubles, clock, disk, certificates."""

from __future__ import annotations

import dataclasses

from prometheus_client.parser import text_string_to_metric_families

from gateway import checks
from gateway.snapshots import (
    BollardSnapshot,
    CameraSnapshot,
    GatewaySnapshot,
    SelfCheckSnapshot,
    SupervisorSnapshot,
    Trouble,
)
from gateway.technician import metrics, status
from tests.test_snapshots import QUEUE, delivery, monitors, process


def scrape(snap: GatewaySnapshot) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    fams = metrics.families(snap, QUEUE, healthy=True, ack_latency=status.AckLog().histogram())
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(metrics.render(fams)):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_site_figures_in_metrics() -> None:
    m = monitors(
        bollard=BollardSnapshot("down", None, checks.bollard("down", [], "")),
        camera=CameraSnapshot(
            True, 12.5, 30, None, checks.camera(["retention"], "12 d", polled=True)
        ),
        selfcheck=SelfCheckSnapshot(False, 5 * 2**30, (), (("/etc/alarmgw/gw.crt", 41.5),)),
        troubles=(Trouble("camera", "393", "retention", "12 d"), Trouble("gateway", "626", "", "")),
    )
    got = scrape(GatewaySnapshot(process(), delivery(), (), m, SupervisorSnapshot(())))
    assert got["alarmgw_bollard_state"][(("state", "down"),)] == 1
    assert got["alarmgw_bollard_state"][(("state", "up"),)] == 0
    assert got["alarmgw_camera_recording"][()] == 1
    assert got["alarmgw_camera_retention_days"][()] == 12.5
    assert got["alarmgw_troubles_open"][(("code", "393"), ("device", "camera"))] == 1
    assert got["alarmgw_clock_synced"][()] == 0
    assert got["alarmgw_disk_free_bytes"][()] == 5 * 2**30
    assert got["alarmgw_certificate_days_left"][(("file", "/etc/alarmgw/gw.crt"),)] == 41.5


def test_a_recorder_not_asked_yet_is_left_out() -> None:
    camera = CameraSnapshot(False, None, 30, None, checks.camera([], "", polled=False))
    m = monitors(camera=dataclasses.replace(camera, polled=False))
    got = scrape(GatewaySnapshot(process(), delivery(), (), m, SupervisorSnapshot(())))
    assert "alarmgw_camera_recording" not in got
