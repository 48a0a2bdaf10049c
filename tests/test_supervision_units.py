"""Site supervision without processes: the trouble reporter's flapping rule and memory, the
bollard's state logic, the recorder's documents, box-link rules, self-checks, the heartbeat
body's validation and the center's liveness view."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

from center.liveness import Liveness
from center.service import Center, human_line
from firmware_sim.bollard import BollardSimulator
from firmware_sim.nvr import NvrSimulator
from gateway.config import CameraSection, load_config
from gateway.contract import envelope as E
from gateway.contract.signing import SigningKey
from gateway.errors import ConfigError
from gateway.inputs.codec import Frame
from gateway.monitors.bollard import BollardTracker, gpio_state, parse_status
from gateway.monitors.boxlink import BoxSupervisor
from gateway.monitors.camera import CameraMonitor, CameraStatus, parse_json_status
from gateway.monitors.http import StatusError
from gateway.monitors.reporter import FLAP_LIMIT, TroubleReporter
from gateway.monitors.selfcheck import SelfCheck, kernel_clock_synced
from gateway.supervise import Supervisor
from tests import helpers
from tests.gpio_helpers import FakeClock

SITE, GW, PREFIX = "school-1", "gw-1", "schoolalarm/v1"
KEY = SigningKey.generate()


@dataclass
class Sink:
    """Records events; every body is built into a real signed envelope (so it is valid)."""

    events: list[E.Envelope] = field(default_factory=list)
    fail: bool = False

    def raise_event(self, kind: str, body: Mapping[str, Any], ts: str | None = None) -> str:
        if self.fail:
            raise OSError("disk on fire")
        env = E.build(
            type=kind, site=SITE, gw=GW, seq=len(self.events) + 1, body=body, key=KEY, ts=ts
        )
        self.events.append(env)
        return env.id

    def changes_reported(self) -> int:
        """Individual envelopes count 1, summaries their ``count``."""
        return sum(int(e.body.get("count", 1)) for e in self.events)


def reporter(sink: Sink, clock: FakeClock, **kw: Any) -> TroubleReporter:
    return TroubleReporter(sink, clock=clock, wall=lambda: 1_700_000_000 + clock.now, **kw)


# -- trouble reporter --------------------------------------------------------------------


def test_each_change_is_an_event_and_repeats_are_not() -> None:
    sink, clock = Sink(), FakeClock()
    r = reporter(sink, clock)
    assert r.status("serial:box") == "unknown"
    r.set("serial:box", "137", False, detail="closed")  # what the center knows: no news
    assert sink.events == [] and r.status("serial:box") == "ok"
    r.set("serial:box", "137", True, reason="open", detail="cover open")
    r.set("serial:box", "137", True, reason="open", detail="cover still open")
    r.set("serial:box", "137", False, detail="cover closed")
    assert [(e.type, e.body["code"], e.body["detail"]) for e in sink.events] == [
        ("trouble", "137", "cover open"),
        ("restore", "137", "cover closed"),
    ]
    assert all("count" not in e.body for e in sink.events)


def test_a_new_reason_while_active_is_news() -> None:
    sink, clock = Sink(), FakeClock()
    r = reporter(sink, clock)
    r.set("bollard", "380", True, reason="stuck", detail="moving for 21 s")
    r.set("bollard", "380", True, reason="fault", detail="fault input active")
    assert [e.body["detail"] for e in sink.events] == ["moving for 21 s", "fault input active"]


def test_flapping_1000_times_in_a_minute_is_bounded_and_counted() -> None:
    sink, clock = Sink(), FakeClock()
    r = reporter(sink, clock, summary_s=10.0)
    next_tick = clock.now + r.summary_s
    for i in range(1000):  # one change every 60 ms: 1,000 in a minute
        clock.advance(0.06)
        r.set("serial:box", "137", i % 2 == 0, reason="open", detail=f"change {i}")
        if clock.now >= next_tick:
            r.tick()
            next_tick += r.summary_s
    r.tick()
    assert r.flapping() == ["serial:box"]
    individual = [e for e in sink.events if "count" not in e.body]
    summaries = [e for e in sink.events if "count" in e.body]
    assert len(individual) == FLAP_LIMIT  # every change until more than 20 in 10 minutes
    assert 1 <= len(summaries) <= 8  # one per summary period at most
    assert sink.changes_reported() == 1000  # none lost silently
    assert all("flapping" in e.body["detail"] for e in summaries)
    # Quiet for 10 minutes: settled, and the next change is sent on its own again.
    clock.advance(601)
    r.tick()
    assert r.flapping() == []
    before = len(sink.events)
    r.set("serial:box", "137", True, reason="open", detail="opened once")
    assert len(sink.events) == before + 1 and "count" not in sink.events[-1].body


def test_flapping_is_per_device() -> None:
    sink, clock = Sink(), FakeClock()
    r = reporter(sink, clock)
    for i in range(FLAP_LIMIT + 5):
        r.set("serial:a", "137", i % 2 == 0, reason="open")
    r.set("serial:b", "137", True, reason="open", detail="b opened")
    assert sink.events[-1].body["device"] == "serial:b"


def test_a_refused_event_is_retried_with_its_count(tmp_path: Path) -> None:
    sink, clock = Sink(fail=True), FakeClock()
    r = reporter(sink, clock)
    with capture_logs() as logs:
        r.set("camera", "393", True, reason="retention", detail="retention 3 days")
        r.set("camera", "393", False, detail="fine")
        r.set("camera", "393", True, reason="retention", detail="retention 2 days")
    assert sink.events == [] and any(e["event"] == "trouble not queued, will retry" for e in logs)
    sink.fail = False
    r.tick()
    assert [(e.type, e.body.get("count")) for e in sink.events] == [("trouble", 3)]


def test_restart_neither_repeats_a_trouble_nor_forgets_its_restore(tmp_path: Path) -> None:
    state = tmp_path / "troubles.json"
    sink, clock = Sink(), FakeClock()
    first = reporter(sink, clock, state_file=state)
    first.set("serial:box", "350", True, reason="silent", detail="silent")
    first.set("camera", "393", True, reason="retention", detail="low")
    assert len(sink.events) == 2
    again = reporter(sink, clock, state_file=state)
    again.set("serial:box", "350", True, reason="silent", detail="still silent")
    assert len(sink.events) == 2  # the center knows already
    again.set("serial:box", "350", False, detail="answers again")
    assert sink.events[-1].type == "restore"
    # [camera] was removed from the config: its open trouble is closed, not left for ever.
    again.forget_unmonitored({"gateway", "serial:box"})
    assert (sink.events[-1].type, sink.events[-1].body["device"]) == ("restore", "camera")
    third = reporter(sink, clock, state_file=state)
    assert [c for c in third.conditions() if c.active] == []


def test_unreadable_state_file_is_a_fresh_start(tmp_path: Path) -> None:
    state = tmp_path / "troubles.json"
    state.write_text("{not json")
    r = reporter(Sink(), FakeClock(), state_file=state)
    assert r.conditions() == []


# -- bollard -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("up", "down", "fault", "state"),
    [
        (True, False, False, "up"),
        (False, True, False, "down"),
        (False, False, False, "moving"),
        (True, True, False, "fault"),
        (True, False, True, "fault"),
    ],
)
def test_limit_switches_to_state(up: bool, down: bool, fault: bool, state: str) -> None:
    assert gpio_state(up, down, fault)[0] == state


@pytest.mark.parametrize("doc", [{"state": "sideways"}, [], "up", None, {"status": "up"}])
def test_controller_garbage_is_rejected(doc: Any) -> None:
    with pytest.raises(ValueError):
        parse_status(doc)


def test_bollard_stuck_down_and_back_up() -> None:
    t = BollardTracker(moving_timeout_s=20, down_alert_s=5)
    t.update("up", 0, 0)
    assert t.problems(0, 0) == [] and t.deadline(0, 0) is None
    t.update("moving", 1, 1)  # lowering: not a problem yet
    assert t.problems(10, 10) == [] and t.deadline(10, 10) == 21
    assert [r for r, _ in t.problems(21, 21)] == ["stuck"]
    t.update("down", 22, 22)
    assert t.problems(23, 23) == [] and t.deadline(23, 23) == 27
    assert [r for r, _ in t.problems(27, 27)] == ["down"]
    t.update("moving", 30, 30)  # raising: still not up, so still down
    assert [r for r, _ in t.problems(31, 31)] == ["down"]
    t.update("up", 32, 32)
    assert t.problems(33, 33) == []


# -- recorder ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        "garbage",
        [1, 2],
        {"recording": "yes", "retention_days": 30},
        {"recording": True, "retention_days": True},
        {"recording": True, "retention_days": -1},
        {"recording": True},
    ],
)
def test_recorder_garbage_is_a_bad_response(doc: Any) -> None:
    with pytest.raises(StatusError) as err:
        parse_json_status(doc)
    assert err.value.reason == "bad-response"


def camera_cfg(**kw: Any) -> CameraSection:
    return CameraSection.model_validate({"url": "http://127.0.0.1:1/status", **kw})


def test_camera_troubles_and_heartbeat_section() -> None:
    sink = Sink()
    mon = CameraMonitor(camera_cfg(), reporter(sink, FakeClock()))
    mon.evaluate(CameraStatus(True, 34))
    assert mon.snapshot() == {
        "recording": True,
        "retention_days": 34,
        "required_days": 30,
        "ok": True,
    }
    mon.evaluate(CameraStatus(False, 12.5))
    assert sink.events[-1].body["detail"] == (
        "recorder is not recording; retention 12.5 days, policy 30"
    )
    mon.evaluate(StatusError("timeout", "no answer within 1 s"))
    assert mon.snapshot() == {"recording": False, "required_days": 30, "ok": False}
    mon.evaluate(CameraStatus(True, 30))
    assert [e.type for e in sink.events] == ["trouble", "trouble", "restore"]


async def test_a_monitor_that_raises_is_logged_and_restarted() -> None:
    calls: list[int] = []

    class Flaky:
        async def fetch(self, session: Any, *, timeout_s: float) -> CameraStatus:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("adapter bug")
            return CameraStatus(True, 40)

    sink = Sink()
    mon = CameraMonitor(camera_cfg(poll_s=0.1), reporter(sink, FakeClock()), adapter=Flaky())
    sup = Supervisor(first_delay_s=0.05)
    with capture_logs() as logs:
        task = asyncio.create_task(sup.run("camera", mon.run))
        async with asyncio.timeout(10):
            while len(calls) < 3:
                await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sup.restarts["camera"] == 1
    assert any(e["event"] == "loop restarted" and "adapter bug" in e["why"] for e in logs)
    assert mon.snapshot()["ok"] is True


# -- box link ----------------------------------------------------------------------------


@dataclass
class FakeLink:
    name: str = "box-1"
    heartbeat_s: float = 2.0
    on_frame: list[Any] = field(default_factory=list)
    stale: bool = False
    connected: bool = True
    last_valid_frame_at: float | None = None
    box_id: str | None = "SN-1"
    write_stalled: bool = False


def test_box_frames_to_conditions() -> None:
    sink, clock = Sink(), FakeClock()
    link = FakeLink()
    sup = BoxSupervisor(link, reporter(sink, clock), clock=clock)
    for hook in link.on_frame:  # no running loop: handled at once
        hook(Frame.of(1, "TAMPER", state="open"))
        hook(Frame.of(2, "POWER", state="low"))
        hook(Frame.of(3, "FAULT", code="7"))
        hook(Frame.of(4, "POWER", state="mains"))
        hook(Frame.of(5, "TAMPER", state="closed"))
        hook(Frame.of(0, "HELLO", fw="1.4.2", id="SN-1"))
    got = [(e.type, e.body["code"]) for e in sink.events]
    assert got == [
        ("trouble", "137"),
        ("trouble", "301"),
        ("trouble", "302"),
        ("trouble", "330"),
        ("restore", "301"),
        ("restore", "302"),
        ("restore", "137"),
        ("restore", "330"),
    ]
    assert {e.body["device"] for e in sink.events} == {"serial:box-1"}
    link.stale, link.last_valid_frame_at = True, clock.now - 7
    sup.check()
    assert sink.events[-1].body["code"] == "350" and sink.events[-1].type == "trouble"
    assert sup.describe() == {"device": "serial:box-1", "status": "trouble"}
    link.on_frame[0](Frame.of(6, "HB"))
    assert (sink.events[-1].type, sink.events[-1].body["code"]) == ("restore", "350")


def test_a_box_that_does_not_read_is_a_communication_trouble() -> None:
    sink, clock = Sink(), FakeClock()
    link = FakeLink(write_stalled=True)
    sup = BoxSupervisor(link, reporter(sink, clock), clock=clock)
    sup.check()
    assert (sink.events[-1].type, sink.events[-1].body["code"]) == ("trouble", "350")
    assert "does not read" in sink.events[-1].body["detail"]
    count = len(sink.events)
    link.on_frame[0](Frame.of(1, "HB"))  # it still sends: no restore while it does not read
    assert len(sink.events) == count
    link.write_stalled = False
    link.on_frame[0](Frame.of(2, "HB"))
    assert (sink.events[-1].type, sink.events[-1].body["code"]) == ("restore", "350")


# -- self-checks -------------------------------------------------------------------------


def self_signed(path: Path, days: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_self_checks_find_disk_clock_cert_and_key_problems(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "gateway.key"
    self_signed(cert, days=5)
    key.write_text("secret")
    os.chmod(key, 0o644)
    sink = Sink()
    check = SelfCheck(
        reporter(sink, FakeClock()),
        state_dir=tmp_path,
        min_free_mb=100,
        cert_warn_days=30,
        cert_files=[cert],
        key_files=[key],
        clock_probe=lambda: False,
        disk_free=lambda _p: 50 * 2**20,
    )
    check.apply(check.measure())
    got = {e.body["code"]: e.body["detail"] for e in sink.events}
    assert set(got) == {"330", "626", "393"}
    assert "50 MB free" in got["330"] and "expires in" in got["393"] and "0644" in got["393"]
    assert {e.body["device"] for e in sink.events} == {"gateway"}
    os.chmod(key, 0o600)
    self_signed(cert, days=365)
    check._clock_probe = lambda: True
    check._disk_free = lambda _p: 500 * 2**20
    check.apply(check.measure())
    assert sorted(e.body["code"] for e in sink.events if e.type == "restore") == [
        "330",
        "393",
        "626",
    ]


def test_kernel_clock_probe_answers() -> None:
    assert kernel_clock_synced() in (True, False, None)


# -- heartbeat body ----------------------------------------------------------------------

HEARTBEAT = {
    "uptime_s": 12,
    "session": 3,
    "queue": {"pending": 0, "oldest_s": 0},
    "inputs": {"gpio:gate-main": "ok", "serial:box-1": "trouble"},
    "bollard": {"state": "up", "since": "2026-01-01T00:00:00.000Z"},
    "camera": {"recording": True, "retention_days": 34, "required_days": 30, "ok": True},
    "clock": {"synced": True},
    "disk": {"free_bytes": 123456789},
}


def heartbeat(body: Mapping[str, Any]) -> E.Envelope:
    return E.build(type="heartbeat", site=SITE, gw=GW, seq=1, body=body, key=KEY)


def test_full_heartbeat_body_is_valid_and_round_trips() -> None:
    env = heartbeat(HEARTBEAT)
    assert E.parse(env.to_bytes()).body == HEARTBEAT
    bare = {k: v for k, v in HEARTBEAT.items() if k not in ("bollard", "camera")}
    heartbeat(bare)  # bollard and camera only where the site has them


@pytest.mark.parametrize(
    "change",
    [
        {"uptime_s": None},
        {"session": "3"},
        {"queue": {"pending": -1, "oldest_s": 0}},
        {"inputs": {"gpio:a": "fine"}},
        {"inputs": {"box": "ok"}},
        {"bollard": {"state": "sideways"}},
        {"camera": {"recording": "yes", "ok": True}},
        {"clock": {}},
        {"disk": {"free_bytes": 1.5}},
    ],
)
def test_heartbeat_body_errors_are_rejected(change: dict[str, Any]) -> None:
    body = {**HEARTBEAT, **change}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(ValueError, match="malformed"):
        heartbeat(body)


def test_trouble_count_must_be_positive() -> None:
    body = {"code": "137", "device": "serial:box", "detail": "x", "count": 0}
    with pytest.raises(ValueError, match="count"):
        E.build(type="trouble", site=SITE, gw=GW, seq=1, body=body, key=KEY)


# -- center liveness ---------------------------------------------------------------------


def test_liveness_online_stale_offline() -> None:
    clock = FakeClock()
    live = Liveness({(SITE, GW): 10.0}, clock=clock)
    assert live.status(SITE, GW) == "unknown"
    assert live.heartbeat(SITE, GW, 1, current=True).status == "online"  # type: ignore[union-attr]
    clock.advance(24)
    assert live.check() == []  # not yet 2.5 x 10 s
    clock.advance(2)
    (change,) = live.check()
    assert (change.status, change.reason) == ("stale", "no-heartbeat")
    assert "no heartbeat for 26 s" in change.human()
    assert live.heartbeat(SITE, GW, 1, current=False) is None  # an old session's: no news
    assert live.state(SITE, GW, "offline", 1).status == "offline"  # type: ignore[union-attr]
    assert live.check() == []  # offline stays offline until it is heard of
    assert live.state(SITE, GW, "online", 2).reason == "online-state"  # type: ignore[union-attr]


def make_center(tmp_path: Path) -> Center:
    return helpers.make_center(tmp_path, [(SITE, GW, KEY.verify_key)], heartbeat_s=30)


def test_center_late_will_of_an_old_session_keeps_the_gateway_online(tmp_path: Path) -> None:
    c = make_center(tmp_path)
    state_topic = f"{PREFIX}/{SITE}/{GW}/state"

    def state(seq: int, status: str, session: int) -> bytes:
        body = {"status": status, "session": session, "version": "0.1.0"}
        return E.build(type="state", site=SITE, gw=GW, seq=seq, body=body, key=KEY).to_bytes()

    birth = c.receive(state_topic, state(10, "online", 2))
    assert c.observe(birth).status == "online"  # type: ignore[union-attr]
    late_will = c.receive(state_topic, state(5, "offline", 1))
    assert late_will.result == "accepted" and late_will.stale
    assert c.observe(late_will) is None
    assert c.liveness.status(SITE, GW) == "online"
    assert "stale session, ignored" in human_line(late_will)
    hb = c.receive(
        f"{PREFIX}/{SITE}/{GW}/heartbeat", heartbeat({**HEARTBEAT, "session": 2}).to_bytes()
    )
    line = hb.to_json()
    assert line["heartbeat"]["bollard"]["state"] == "up" and line["session"] == 2
    assert "bollard up" in human_line(hb) and "serial:box-1 trouble" in human_line(hb)
    current_will = c.receive(state_topic, state(11, "offline", 2))
    assert c.observe(current_will).status == "offline"  # type: ignore[union-attr]


# -- config ------------------------------------------------------------------------------

MINIMAL = """\
[gateway]
site = "sz-futian-xmh-014"
id = "gw-014-a"
key_file = "gw.key"
state_dir = "state"

[location]
name = "Gate"
address = "Road 1"
lat = 22.5
lon = 114.0
phone = "110"

[mqtt]
center_keys = ["center.pub"]
"""


def test_supervision_keys_load_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(MINIMAL)
    cfg = load_config(path, check_files=False)
    assert (cfg.selfcheck.interval_s, cfg.selfcheck.min_free_mb, cfg.selfcheck.clock) == (
        60.0,
        100,
        True,
    )
    assert cfg.trouble.flap_summary_s == 60.0


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ("[selfcheck]\ninterval_s = 0.01\n", "selfcheck.interval_s", "greater than or equal"),
        ("[selfcheck]\nclok = false\n", "selfcheck.clok", "did you mean 'clock'"),
        ("[trouble]\nflap_summary_s = 0\n", "trouble.flap_summary_s", "greater than or equal"),
        (
            '[bollard]\nstatus_url = "http://10.0.0.9/s"\npoll_s = 0.05\n',
            "bollard.poll_s",
            "greater than or equal",
        ),
        ('[camera]\nurl = "http://10.0.0.8/s"\ntimeout_s = 0\n', "camera.timeout_s", "greater"),
    ],
)
def test_supervision_keys_errors_name_file_line_and_key(
    tmp_path: Path, table: str, key: str, message: str
) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(MINIMAL + "\n" + table)
    with pytest.raises(ConfigError) as caught:
        load_config(path, check_files=False)
    (problem,) = caught.value.problems
    line = len(MINIMAL.splitlines()) + 1 + len(table.splitlines())
    assert problem.startswith(f"{path}:{line}: {key}: ") and message in problem, problem


# -- simulators --------------------------------------------------------------------------


async def test_nvr_and_bollard_simulator_commands() -> None:
    async with NvrSimulator(retention_days=34) as nvr:
        assert await nvr.command(["retention", "12.5"]) == "retention 12.5 days"
        assert await nvr.command(["error", "503"]) == "http error 503"
        for bad in (["retention", "-1"], ["recording", "maybe"], ["error", "x"], ["fly"]):
            with pytest.raises(ValueError):
                await nvr.command(bad)
    async with BollardSimulator(http=("127.0.0.1", 0)) as bollard:
        assert await bollard.command(["lower", "0.05"]) == "bollard moving"
        await asyncio.sleep(0.2)
        assert bollard.state == "down"
        assert await bollard.command(["fault", "on"]) == "bollard fault"
        assert (await bollard.command(["down-http"])).startswith("http down")
        with pytest.raises(ValueError):
            await bollard.command(["sideways"])


def test_simulator_clis_run_a_script_and_stop_at_end_of_input() -> None:
    sim = str(Path(sys.executable).parent / "alarmgw-sim")
    out = subprocess.run(
        [sim, "nvr", "--port", "0", "--script", "recording off; retention 3; garbage"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1:] == ["recording off", "retention 3 days", "http garbage"]
    out = subprocess.run(
        [sim, "bollard", "--no-gpio", "--port", "0", "--script", "down; stuck; bogus"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[2:] == [
        "bollard down",
        "bollard moving",
        "error unknown command 'bogus'",
    ]
