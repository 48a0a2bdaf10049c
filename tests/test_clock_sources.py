"""The clock check reads sources the daemon's sandbox allows: timesyncd's flag file, chrony
through ``chronyc -c tracking``, then adjtimex; an EPERM from adjtimex alone is unknown."""

from __future__ import annotations

import stat
from pathlib import Path

from gateway import checks

TRACKING = (
    "A9FEA97B,169.254.169.123,4,1764780000.1,-0.000001,0.000002,0.000010,"
    "-12.5,0.001,0.02,0.000300,0.000020,64.1,{leap}\n"
)


def fake_chronyc(tmp_path: Path, leap: str, rc: int = 0) -> str:
    script = tmp_path / "chronyc"
    script.write_text(f"#!/bin/sh\nprintf '%s' '{TRACKING.format(leap=leap)}'\nexit {rc}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def no_adjtimex() -> bool | None:
    return None  # ProtectClock=yes: EPERM


def test_timesyncd_flag_file_means_synced(tmp_path: Path) -> None:
    (tmp_path / "timesync").mkdir()
    (tmp_path / "timesync" / "synchronized").touch()
    synced = checks.clock_synced(
        timesync_dir=tmp_path / "timesync", chronyc=str(tmp_path / "none"), adjtimex=no_adjtimex
    )
    assert synced is True


def test_timesyncd_running_but_not_synced_is_not_synced(tmp_path: Path) -> None:
    (tmp_path / "timesync").mkdir()
    synced = checks.clock_synced(
        timesync_dir=tmp_path / "timesync", chronyc=str(tmp_path / "none"), adjtimex=no_adjtimex
    )
    assert synced is False
    assert checks.clock(synced).level == "failing"  # 626 is raised


def test_chrony_leap_status(tmp_path: Path) -> None:
    absent = tmp_path / "no-timesync"
    normal = fake_chronyc(tmp_path, "Normal")
    assert checks.clock_synced(timesync_dir=absent, chronyc=normal, adjtimex=no_adjtimex)
    unsynced = fake_chronyc(tmp_path, "Not synchronised")
    assert checks.clock_synced(timesync_dir=absent, chronyc=unsynced, adjtimex=no_adjtimex) is False


def test_chrony_not_answering_falls_back_to_adjtimex(tmp_path: Path) -> None:
    absent = tmp_path / "no-timesync"
    broken = fake_chronyc(tmp_path, "Normal", rc=1)
    assert checks.clock_synced(timesync_dir=absent, chronyc=broken, adjtimex=lambda: False) is False
    assert checks.clock_synced(timesync_dir=absent, chronyc=broken, adjtimex=no_adjtimex) is None


def test_selfcheck_snapshot_before_the_first_round_does_not_probe(tmp_path: Path) -> None:
    from gateway.monitors.reporter import TroubleReporter
    from gateway.monitors.selfcheck import SelfCheck

    probed: list[int] = []

    def probe() -> bool:
        probed.append(1)
        return True

    sc = SelfCheck(TroubleReporter(_Sink()), state_dir=tmp_path, clock_probe=probe)
    assert sc.snapshot().clock_synced is None and not probed


class _Sink:
    def raise_event(self, kind: str, body: object, ts: str | None = None) -> str:
        return "id"
