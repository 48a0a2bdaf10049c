"""The bollard's protection hours: the schedule syntax and its time zones (one without and
one with daylight saving), the config checks, and the monitor raising trouble 380 only when
the bollard is down inside a window — with fake clocks, never waiting for a real window."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from gateway.config import BollardSection, load_config
from gateway.errors import ConfigError
from gateway.monitors.bollard import BollardMonitor, BollardTracker
from gateway.monitors.reporter import TroubleReporter
from gateway.monitors.schedule import Schedule, Window
from tests.gpio_helpers import FakeClock, wait_until
from tests.test_config import MINIMAL, problems, write

SCHOOL = ["Mon-Fri 07:00-08:30", "Mon-Fri 11:30-12:30", "Mon-Fri 16:00-18:00"]


def at(text: str) -> float:
    """POSIX seconds of an ISO 8601 time with its offset."""
    return datetime.fromisoformat(text).timestamp()


def text_of(schedule: Schedule, when: str) -> str | None:
    """The window active at ``when``, as written, or None."""
    window = schedule.active(at(when))
    return None if window is None else window.text


# -- the schedule ------------------------------------------------------------------------


def test_school_hours_in_shanghai() -> None:
    s = Schedule.parse(SCHOOL, "Asia/Shanghai")
    # Wednesday 2 December 2026, UTC+8 all year.
    assert s.active(at("2026-12-02T06:59:59+08:00")) is None
    window = s.active(at("2026-12-02T07:00:00+08:00"))
    assert window is not None and window.hours == "07:00-08:30"
    assert s.active(at("2026-12-01T23:00:00+00:00")) == window  # the same instant in UTC
    assert s.active(at("2026-12-02T08:29:59+08:00")) == window
    assert s.active(at("2026-12-02T08:30:00+08:00")) is None  # the end is not inside
    assert text_of(s, "2026-12-02T17:00:00+08:00") == "Mon-Fri 16:00-18:00"
    assert s.next_change(at("2026-12-02T08:00:00+08:00")) == at("2026-12-02T08:30:00+08:00")
    assert s.next_change(at("2026-12-02T08:30:00+08:00")) == at("2026-12-02T11:30:00+08:00")


def test_weekends_and_day_boundaries() -> None:
    s = Schedule.parse(SCHOOL, "Asia/Shanghai")
    assert s.active(at("2026-12-05T07:30:00+08:00")) is None  # Saturday
    # Friday evening to Monday morning: the next change skips the weekend.
    assert s.next_change(at("2026-12-04T18:00:00+08:00")) == at("2026-12-07T07:00:00+08:00")
    night = Schedule.parse(["Fri 22:00-06:00", "Sun 00:00-24:00"], "Asia/Shanghai")
    assert night.active(at("2026-12-04T21:59:59+08:00")) is None
    assert text_of(night, "2026-12-05T05:59:59+08:00") == "Fri 22:00-06:00"
    assert night.active(at("2026-12-05T06:00:00+08:00")) is None
    assert text_of(night, "2026-12-06T23:59:59+08:00") == "Sun 00:00-24:00"
    assert night.active(at("2026-12-07T00:00:00+08:00")) is None  # Monday
    assert night.next_change(at("2026-12-06T12:00:00+08:00")) == at("2026-12-07T00:00:00+08:00")
    wrap = Schedule.parse(["Sat-Mon 09:00-10:00", "wed,THU 09:00-10:00"], "UTC")
    days = {w.days for w in wrap.windows}
    assert days == {frozenset({5, 6, 0}), frozenset({2, 3})}


def test_a_zone_with_daylight_saving() -> None:
    s = Schedule.parse(["Mon-Fri 07:00-08:30"], "Europe/Berlin")
    # 07:00 local is 06:00 UTC in winter (CET) and 05:00 UTC in summer (CEST).
    assert s.active(at("2026-03-27T06:00:00+00:00")) is not None  # Friday, CET
    assert s.active(at("2026-03-30T05:00:00+00:00")) is not None  # Monday, CEST
    assert s.active(at("2026-03-30T06:45:00+00:00")) is None  # 08:45 CEST
    # Over the spring-forward weekend the gap is 2 days and 23 hours, not 3 days.
    friday_end = at("2026-03-27T08:30:00+01:00")
    assert s.next_change(friday_end) == at("2026-03-30T07:00:00+02:00")
    assert s.next_change(friday_end) - friday_end == (3 * 24 - 1) * 3600 - 90 * 60
    # A window across the change is shorter (spring) or longer (autumn) in real time.
    spring = Schedule.parse(["Sun 01:00-04:00"], "Europe/Berlin")
    start = at("2026-03-29T01:00:00+01:00")
    assert spring.next_change(start) - start == 2 * 3600
    autumn = Schedule.parse(["Sun 01:00-04:00"], "Europe/Berlin")
    start = at("2026-10-25T01:00:00+02:00")
    assert autumn.next_change(start) - start == 4 * 3600
    # 02:30 happens twice on 25 October: the window is active through both.
    assert autumn.active(at("2026-10-25T02:30:00+01:00")) is not None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Mon-Fry 07:00-08:30", "unknown day 'Fry'"),
        ("Mon-Fri 7-8", "expected days and times"),
        ("Mon-Fri 07:00-25:00", "no such time of day '25:00'"),
        ("Mon-Fri 24:00-24:00", "no such time of day '24:00'"),
        ("Mon 07:60-08:00", "no such time of day '07:60'"),
        ("Mon 08:00-08:00", "empty"),
        ("07:00-08:30", "expected days and times"),
        ("", "expected days and times"),
    ],
)
def test_bad_windows_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        Window.parse(text)


# -- config ------------------------------------------------------------------------------


def test_config_reports_bad_schedule_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + "\n[bollard]\nup_pin = 5\ndown_pin = 6\n"
        + 'timezone = "Asia/Shangai"\n'
        + 'protect = [\n  "Mon-Fri 07:00-08:30",\n  "Mon-Fry 11:30-12:30",\n]\n',
    )
    found = problems(path)
    lines = path.read_text().splitlines()
    tz_line = lines.index('timezone = "Asia/Shangai"') + 1
    bad_line = lines.index('  "Mon-Fry 11:30-12:30",') + 1
    assert found == [
        f"{path}:{tz_line}: bollard.timezone: unknown time zone 'Asia/Shangai' "
        "(an IANA name like 'Asia/Shanghai')",
        f"{path}:{bad_line}: bollard.protect[1]: unknown day 'Fry' "
        "(use Mon, Tue, Wed, Thu, Fri, Sat, Sun)",
    ]


def test_config_protect_needs_a_timezone(tmp_path: Path) -> None:
    path = write(
        tmp_path, MINIMAL + '\n[bollard]\nup_pin = 5\ndown_pin = 6\nprotect = ["Mon 07:00-08:00"]\n'
    )
    assert [p.split(": ", 1)[1] for p in problems(path)] == [
        'bollard.protect: protect needs timezone, e.g. timezone = "Asia/Shanghai"'
    ]


def test_down_is_no_problem_without_a_schedule() -> None:
    cfg = BollardSection.model_validate({"up_pin": 5, "down_pin": 6})
    assert cfg.schedule is None and cfg.down_alert_s is None
    t = BollardTracker(cfg.moving_timeout_s, cfg.down_alert_s, cfg.schedule)
    t.update("down", 0, 0)
    assert t.problems(86_400, 86_400) == [] and t.deadline(0, 0) is None


# -- the monitor -------------------------------------------------------------------------


@dataclass
class Events:
    """The reporter's sink: (type, detail) of each trouble/restore."""

    seen: list[tuple[str, str]] = field(default_factory=list)

    def raise_event(self, kind: str, body: Mapping[str, Any], ts: str | None = None) -> str:
        assert (body["device"], body["code"]) == ("bollard", "380")
        self.seen.append((kind, str(body["detail"])))
        return f"evt-{len(self.seen)}"


@dataclass
class Rig:
    monitor: BollardMonitor
    factory: MockFactory
    events: Events
    clock: FakeClock
    wall: FakeClock

    def position(self, state: str) -> None:
        """Limit switches (active low): up, down or between them (moving)."""
        up, down = self.factory.pin(5), self.factory.pin(6)
        (up.drive_low if state == "up" else up.drive_high)()
        (down.drive_low if state == "down" else down.drive_high)()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.wall.advance(seconds)


@contextlib.asynccontextmanager
async def rig(start: str, **cfg: Any) -> AsyncIterator[Rig]:
    """A monitor on mock limit switches, at local time ``start``, bollard up."""
    clock, wall = FakeClock(), FakeClock(at(start))
    events = Events()
    factory = MockFactory()
    section = BollardSection.model_validate({"up_pin": 5, "down_pin": 6, **cfg})
    reporter = TroubleReporter(events, clock=clock, wall=wall)
    monitor = BollardMonitor(section, reporter, factory=factory, clock=clock, wall=wall)
    r = Rig(monitor, factory, events, clock, wall)
    task = asyncio.create_task(monitor.run())
    try:
        # Claiming sets the pull-ups, which sets the mock levels: drive them after that.
        await wait_until(lambda: monitor.snapshot()["state"] != "unknown")
        r.position("up")
        monitor.evaluate()
        assert monitor.snapshot()["state"] == "up"
        yield r
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        factory.close()


SHANGHAI = {"timezone": "Asia/Shanghai", "protect": SCHOOL}


async def test_down_outside_the_windows_is_normal_and_inside_is_trouble() -> None:
    async with rig("2026-12-02T06:00:00+08:00", **SHANGHAI) as r:
        r.position("down")  # the morning delivery, before school starts
        r.monitor.evaluate()
        assert r.monitor.snapshot()["state"] == "down"
        # Raised for the delivery: the reporter only says that it is up, no trouble.
        assert all(kind == "restore" for kind, _ in r.events.seen)
        before = len(r.events.seen)
        # Still down when the window begins: the monitor's own deadline is the window start.
        due = r.monitor.tracker.deadline(r.clock(), r.wall())
        assert due is not None and due - r.clock() == 60.0  # re-checked every minute
        r.advance(3600)  # 07:00
        r.monitor.evaluate()
        assert r.events.seen[before:] == [("trouble", "down during protection hours 07:00-08:30")]
        r.advance(1800)
        r.monitor.evaluate()  # still down, same problem: no news
        assert len(r.events.seen) == before + 1
        r.position("up")
        r.monitor.evaluate()
        assert r.events.seen[-1][0] == "restore" and len(r.events.seen) == before + 2


async def test_the_window_ending_while_down_restores() -> None:
    async with rig("2026-12-02T17:59:00+08:00", **SHANGHAI) as r:
        r.position("down")
        r.monitor.evaluate()
        assert r.events.seen[-1] == ("trouble", "down during protection hours 16:00-18:00")
        due = r.monitor.tracker.deadline(r.clock(), r.wall())
        assert due == r.clock() + 60.0  # 18:00, the window's end
        r.advance(60)
        r.monitor.evaluate()
        assert r.events.seen[-1] == ("restore", "bollard down")
        assert r.monitor.snapshot()["state"] == "down"


async def test_faults_stay_380_with_their_own_reasons() -> None:
    async with rig("2026-12-02T07:10:00+08:00", moving_timeout_s=20, **SHANGHAI) as r:
        r.position("moving")
        r.monitor.evaluate()
        r.advance(21)
        r.monitor.evaluate()
        assert r.events.seen[-1] == ("trouble", "moving for 21 s (limit 20 s)")
        r.position("down")
        r.monitor.evaluate()
        assert r.events.seen[-1] == ("trouble", "down during protection hours 07:00-08:30")
        r.factory.pin(5).drive_low()  # both limit switches made
        r.monitor.evaluate()
        assert r.events.seen[-1] == (
            "trouble",
            "bollard fault: both limit switches made; down during protection hours 07:00-08:30",
        )


async def test_down_alert_s_still_works_at_any_hour() -> None:
    async with rig("2026-12-05T03:00:00+08:00", down_alert_s=600, **SHANGHAI) as r:
        r.position("down")  # Saturday night: not a protection window
        r.monitor.evaluate()
        r.advance(600)
        r.monitor.evaluate()
        assert r.events.seen[-1] == ("trouble", "bollard down for 600 s")


def test_schedule_with_utc_instants_is_the_same_as_local() -> None:
    s = Schedule.parse(["Mon 00:00-01:00"], "Asia/Shanghai")
    # Monday 00:30 in Shanghai is still Sunday in UTC.
    sunday_utc = datetime(2026, 12, 6, 16, 30, tzinfo=UTC).timestamp()
    assert s.active(sunday_utc) is not None


def test_config_error_is_one_line_per_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL + '\n[bollard]\nstatus_url = "http://127.0.0.1:9/s"\ntimezone = "Mars/Olympus"\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert all("\n" not in p for p in caught.value.problems)
    assert "Mars/Olympus" in caught.value.problems[0]
