"""The ONVIF Profile G and Hikvision ISAPI recorder adapters against their simulators, over
real HTTP on 127.0.0.1: per-channel retention and recording, disks, credentials, faults, many
recorders at once; the ONVIF simulator's answers against the WSDL schema through zeep."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import onvif
import pytest
import zeep
from lxml import etree
from structlog.testing import capture_logs

from firmware_sim.nvr_base import Recorder
from firmware_sim.nvr_hik import HikSimulator
from firmware_sim.nvr_onvif import ENV, OnvifSimulator
from gateway.config import CameraSection
from gateway.monitors.camera import CameraMonitor
from gateway.monitors.camera.diag import recorder_report
from gateway.monitors.reporter import TroubleReporter

PASSWORD = "s3cret-Pa55"
KINDS = ("onvif", "hikvision")
Sim = OnvifSimulator | HikSimulator


class Sink:
    """Trouble/restore bodies as the reporter queues them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def raise_event(self, kind: str, body: Mapping[str, Any], ts: str | None = None) -> str:
        self.events.append((kind, dict(body)))
        return f"id-{len(self.events)}"


def password_file(tmp_path: Path, text: str = PASSWORD, mode: int = 0o600) -> Path:
    path = tmp_path / "nvr.password"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def make_sim(kind: str, channels: int = 16, days: float = 34) -> Sim:
    recorder = Recorder.with_channels(channels, days, user="admin", password=PASSWORD)
    return OnvifSimulator(recorder) if kind == "onvif" else HikSimulator(recorder)


def camera_cfg(kind: str, sim: Sim, pw: Path, **kw: Any) -> CameraSection:
    return CameraSection.model_validate(
        {
            "adapter": kind,
            "url": sim.url,
            "username": "admin",
            "password_file": str(pw),
            "poll_s": 2.0,
            "timeout_s": 2.0,
            **kw,
        }
    )


async def until(pred: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait for a condition (never a fixed sleep); fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


@asynccontextmanager
async def running(mon: CameraMonitor) -> AsyncIterator[CameraMonitor]:
    task = asyncio.create_task(mon.run())
    try:
        yield mon
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def last(sink: Sink, kind: str) -> dict[str, Any] | None:
    found = [body for k, body in sink.events if k == kind]
    return found[-1] if found else None


def has(sink: Sink, kind: str, text: str, since: int = 0) -> bool:
    return any(k == kind and text in b["detail"] for k, b in sink.events[since:])


# -- per channel ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_retention_drop_on_one_channel_raises_393_naming_it_and_restores(
    kind: str, tmp_path: Path
) -> None:
    sink = Sink()
    async with make_sim(kind) as sim:
        mon = CameraMonitor(camera_cfg(kind, sim, password_file(tmp_path)), TroubleReporter(sink))
        async with running(mon):
            await until(lambda: mon.polls >= 1)
            snap = mon.snapshot()
            assert snap["ok"] is True and snap["channels"] == 16 and snap["below_policy"] == 0
            assert sink.events == []  # fine from the start: no news

            await sim.command(["retention", "12", "3"])
            await until(lambda: has(sink, "trouble", "retention"))
            trouble = last(sink, "trouble")
            assert trouble is not None and trouble["code"] == "393"
            assert trouble["device"] == "camera"
            channel = "channel 3" if kind == "hikvision" else 'channel "Camera 3"'
            assert trouble["detail"] == f"retention 12 of 30 days on {channel}"
            snap = mon.snapshot()
            assert snap["ok"] is False and snap["below_policy"] == 1
            assert snap["worst_channel"] in ("3", "Camera 3") and snap["retention_days"] == 12

            mark = len(sink.events)
            await sim.command(["retention", "31", "3"])
            await until(lambda: last(sink, "restore") is not None and len(sink.events) > mark)
            assert sink.events[-1][0] == "restore"
            assert "16 channels recording" in sink.events[-1][1]["detail"]
            assert mon.snapshot()["ok"] is True


@pytest.mark.parametrize("kind", KINDS)
async def test_a_channel_that_stops_recording_is_named(kind: str, tmp_path: Path) -> None:
    sink = Sink()
    async with make_sim(kind, channels=4) as sim:
        mon = CameraMonitor(camera_cfg(kind, sim, password_file(tmp_path)), TroubleReporter(sink))
        async with running(mon):
            await sim.command(["recording", "off", "2"])
            await until(lambda: has(sink, "trouble", "recording stopped"))
            detail = last(sink, "trouble")["detail"]  # type: ignore[index]
            assert detail.startswith("recording stopped on channel ") and "2" in detail
            assert mon.snapshot()["recording"] is False
            await sim.command(["recording", "on", "2"])
            await until(lambda: sink.events[-1][0] == "restore")


async def test_a_failed_disk_and_a_full_disk_are_troubles(tmp_path: Path) -> None:
    sink = Sink()
    async with make_sim("hikvision", channels=2) as sim:
        mon = CameraMonitor(
            camera_cfg("hikvision", sim, password_file(tmp_path)), TroubleReporter(sink)
        )
        async with running(mon):
            await until(lambda: mon.polls >= 1)
            assert mon.snapshot()["disks_failed"] == 0  # full-and-overwriting is normal
            await sim.command(["disk", "2", "failed"])
            await until(lambda: has(sink, "trouble", "disk 2 failed (error)"))
            assert mon.snapshot()["disks_failed"] == 1
            await sim.command(["disk", "1", "full"])
            await until(lambda: has(sink, "trouble", "disk 1 full"))
            await sim.command(["disk", "1", "ok"])
            await sim.command(["disk", "2", "ok"])
            await until(lambda: sink.events[-1][0] == "restore")


# -- credentials ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_wrong_password_is_one_trouble_one_log_line_and_no_password(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink()
    wrong = "Wr0ng-Secret-99"
    pw = password_file(tmp_path, wrong)
    async with make_sim(kind, channels=2) as sim:
        mon = CameraMonitor(camera_cfg(kind, sim, pw), TroubleReporter(sink))
        caplog.set_level(logging.DEBUG)
        with capture_logs() as logs:
            async with running(mon):
                await until(lambda: mon.polls >= 6)
        troubles = [b for k, b in sink.events if k == "trouble"]
        assert len(troubles) == 1, sink.events
        assert "wrong username or password" in troubles[0]["detail"]
        assert str(pw) in troubles[0]["detail"]
        failed = [e for e in logs if e["event"] == "recorder status failed"]
        assert len(failed) == 1 and failed[0]["reason"] == "auth"
        everything = repr(logs) + caplog.text + repr(sink.events)
        assert wrong not in everything and PASSWORD not in everything
        # Asked once, not once per poll: a recorder locks an account after a few refusals.
        assert sim.refused == 1

        # Fixing the file is picked up at the next poll.
        pw.write_text(PASSWORD + "\n")
        async with running(mon):
            await until(lambda: sink.events[-1][0] == "restore")


async def test_a_password_file_others_may_read_is_refused(tmp_path: Path) -> None:
    sink = Sink()
    pw = password_file(tmp_path, mode=0o644)
    async with make_sim("hikvision", channels=1) as sim:
        mon = CameraMonitor(camera_cfg("hikvision", sim, pw), TroubleReporter(sink))
        async with running(mon):
            await until(lambda: bool(sink.events))
        assert sink.events[0][0] == "trouble"
        assert "mode 0644, others may read it; chmod 600 it" in (sink.events[0][1]["detail"])
        assert sim.http.requests == 0  # never offered


# -- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("fault", "reason"),
    [(["garbage"], "bad-response"), (["down"], "unreachable"), (["hang"], "timeout")],
)
async def test_faults_are_troubles_that_restore(
    kind: str, fault: list[str], reason: str, tmp_path: Path
) -> None:
    sink = Sink()
    async with make_sim(kind, channels=2) as sim:
        cfg = camera_cfg(kind, sim, password_file(tmp_path), timeout_s=0.5)
        mon = CameraMonitor(cfg, TroubleReporter(sink))
        async with running(mon):
            await until(lambda: mon.polls >= 1)
            await sim.command(fault)
            await until(lambda: has(sink, "trouble", f"recorder {reason}"))
            await sim.command(["up" if fault == ["down"] else "ok"])
            await until(lambda: sink.events[-1][0] == "restore")


async def test_a_hanging_recorder_does_not_hold_up_the_loop(tmp_path: Path) -> None:
    """The poll runs in its own task, bounded: other tasks (heartbeat, alarms) keep running
    while the recorder never answers, and the hang is reported within the timeout."""
    sink = Sink()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    async with make_sim("onvif", channels=2) as sim:
        await sim.command(["hang"])
        cfg = camera_cfg("onvif", sim, password_file(tmp_path), timeout_s=1.0, poll_s=1.0)
        mon = CameraMonitor(cfg, TroubleReporter(sink))
        tick = asyncio.create_task(ticker())
        try:
            async with running(mon):
                await until(lambda: sim.http.requests >= 1)
                start = ticks
                await until(lambda: ticks >= start + 20)  # the loop runs while it hangs
                assert mon.polls == 0
                await until(lambda: has(sink, "trouble", "recorder timeout"))
        finally:
            tick.cancel()
            await sim.command(["ok"])


async def test_ten_recorders_of_sixteen_channels_are_all_polled_within_one_interval(
    tmp_path: Path,
) -> None:
    pw = password_file(tmp_path)
    sims = [make_sim(KINDS[n % 2]) for n in range(10)]
    for sim in sims:
        await sim.start()
    monitors = []
    try:
        for n, sim in enumerate(sims):
            cfg = camera_cfg(KINDS[n % 2], sim, pw, poll_s=120.0, timeout_s=60.0)
            monitors.append(CameraMonitor(cfg, TroubleReporter(Sink())))
        tasks = [asyncio.create_task(m.run()) for m in monitors]
        try:
            # Every recorder read in full before any monitor's second poll is due.
            await until(lambda: all(m.polls >= 1 for m in monitors), timeout=100.0)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert all(m.polls == 1 for m in monitors)
        for m in monitors:
            assert m.error is None and m.last is not None, m.error
            assert len(m.last.channels) == 16 and m.snapshot()["ok"] is True
    finally:
        for sim in sims:
            await sim.stop()


# -- the ONVIF simulator speaks the WSDL ------------------------------------------------------


def _zeep_parse(clients: dict[str, zeep.Client], body: bytes) -> Any:
    node = etree.fromstring(body).find(f"{{{ENV}}}Body")[0]
    qname = etree.QName(node)
    client = clients["search" if "search" in (qname.namespace or "") else "devicemgmt"]
    return client.get_element(qname.text).parse(node, client.wsdl.types)


async def test_onvif_simulator_answers_validate_against_the_wsdl_schema(tmp_path: Path) -> None:
    async with make_sim("onvif", channels=3) as sim:
        assert isinstance(sim, OnvifSimulator)
        await sim.command(["recording", "off", "2"])
        await sim.command(["retention", "0", "3"])
        mon = CameraMonitor(
            camera_cfg("onvif", sim, password_file(tmp_path)), TroubleReporter(Sink())
        )
        await mon.poll(None, 10.0)
        answers = list(sim.answers)
    wsdl = Path(onvif.__file__).parent / "wsdl"
    strict = zeep.Settings(strict=True)
    clients = await asyncio.to_thread(
        lambda: {
            n: zeep.Client(str(wsdl / f"{n}.wsdl"), settings=strict)
            for n in ("devicemgmt", "search")
        }
    )
    ops = {op for op, _ in answers}
    assert ops >= {
        "GetServices",
        "GetSystemDateAndTime",
        "GetRecordingSummary",
        "FindRecordings",
        "GetRecordingSearchResults",
        "EndSearch",
        "GetRecordingInformation",
    }
    for op, body in answers:
        value = _zeep_parse(clients, body)
        assert type(value).__name__ == f"{op}Response"
    info = _zeep_parse(clients, answers[-1][1]).RecordingInformation
    assert info.Track[0].TrackType == "Video" and info.RecordingStatus in ("Recording", "Stopped")
    # The check has teeth: an element out of place is refused.
    bad = answers[-1][1].replace(
        b"<tt:RecordingStatus>", b"<tt:Bogus>1</tt:Bogus><tt:RecordingStatus>"
    )
    with pytest.raises(zeep.exceptions.XMLParseError):
        _zeep_parse(clients, bad)


# -- diag and the simulator's command line --------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_diag_shows_the_recorder_channels_and_disks(kind: str, tmp_path: Path) -> None:
    async with make_sim(kind, channels=4) as sim:
        await sim.command(["retention", "5", "4"])
        cfg = camera_cfg(kind, sim, password_file(tmp_path))
        lines = await asyncio.to_thread(recorder_report, cfg)
        text = "\n".join(f"{s} {found} | {action}" for s, found, action in lines)
        assert lines[0][0] == "PASS" and "reachable, authenticated as 'admin'" in lines[0][1]
        assert "4 channels" in text
        assert any(s == "FAIL" and "retention 5 of 30 days" in f for s, f, _ in lines), text
        if kind == "hikvision":
            assert "disk 1: ok" in text
        await sim.command(["password", "changed"])
        lines = await asyncio.to_thread(recorder_report, cfg)
        assert lines[0][0] == "FAIL" and "wrong username or password" in lines[0][1]
        assert PASSWORD not in repr(lines)
        await sim.stop()
        lines = await asyncio.to_thread(recorder_report, cfg)
        assert lines[0][0] == "FAIL" and "unreachable" in lines[0][1]


@pytest.mark.parametrize("kind", KINDS)
def test_sim_command_line(kind: str) -> None:
    sim = Path(sys.executable).with_name("alarmgw-sim")
    out = subprocess.run(
        [
            str(sim),
            "nvr",
            "--kind",
            kind,
            "--port",
            "0",
            "--channels",
            "4",
            "--script",
            "retention 3 2; recording off 1; disk 1 failed; password x; bogus",
        ],
        input="quit\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    ).stdout.splitlines()
    assert out[0].startswith("listening http://127.0.0.1:")
    assert out[1:] == [
        "retention 3 days on channel 2",
        "recording off on channel 1",
        "disk 1 failed",
        "password changed",
        "error unknown command 'bogus'",
    ]
