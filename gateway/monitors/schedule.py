"""Weekly time windows in a site's local time zone, e.g. ``"Mon-Fri 07:00-08:30"``.

A window is days plus a start and end time of day. Days: a name (``Mon`` ... ``Sun``), a range
``Mon-Fri`` (it may wrap: ``Sat-Mon``), or several of those separated by commas
(``Mon,Wed,Fri``). Times: ``HH:MM``; the end may be ``24:00``. An end at or before the start
runs past midnight (``Fri 22:00-06:00`` ends on Saturday morning): the days name the day a
window starts.

Times are wall-clock times of the zone. A time skipped by a daylight-saving change counts as
if the clock had not moved (02:30 is 03:30 that night); of a time that repeats, the first
occurrence counts. No I/O and no clock of its own: instants are passed in as POSIX seconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_WINDOW = re.compile(r"^\s*(?P<days>\S+)\s+(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})\s*$")
_MINUTES_PER_DAY = 24 * 60


def _day(name: str) -> int:
    for index, day in enumerate(DAYS):
        if name.lower() == day.lower():
            return index
    raise ValueError(f"unknown day {name!r} (use {', '.join(DAYS)})")


def _days(spec: str) -> frozenset[int]:
    found: set[int] = set()
    for part in spec.split(","):
        first, dash, last = part.partition("-")
        start = _day(first)
        end = _day(last) if dash else start
        found.update((start + i) % 7 for i in range((end - start) % 7 + 1))
    return frozenset(found)


def _minutes(text: str, *, end: bool) -> int:
    hours, _, minutes = text.partition(":")
    value = int(hours) * 60 + int(minutes)
    limit = _MINUTES_PER_DAY if end else _MINUTES_PER_DAY - 1
    if int(minutes) > 59 or value > limit:
        raise ValueError(f"no such time of day {text!r} (00:00 ... {'24:00' if end else '23:59'})")
    return value


@dataclass(frozen=True, slots=True)
class Window:
    """One ``"Mon-Fri 07:00-08:30"``: the days it starts on, start and end in minutes of the
    day (``end`` <= ``start``: it ends the next day)."""

    text: str
    days: frozenset[int]
    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> Window:
        """ValueError with a one-line reason for anything that is not a window."""
        match = _WINDOW.match(text)
        if match is None:
            raise ValueError(f"expected days and times like 'Mon-Fri 07:00-08:30' (got {text!r})")
        start = _minutes(match["start"], end=False)
        end = _minutes(match["end"], end=True)
        if start == end:
            raise ValueError(f"window {text!r} is empty (start and end are the same)")
        return cls(text.strip(), _days(match["days"]), start, end)

    @property
    def hours(self) -> str:
        """``"07:00-08:30"``: the times of day, for messages."""
        return (
            f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"
        )

    def spans(self, day: date, zone: ZoneInfo) -> tuple[float, float] | None:
        """(start, end) in POSIX seconds of this window starting on ``day``, or None."""
        if day.weekday() not in self.days:
            return None
        end_day = day if self.end > self.start else day + timedelta(days=1)
        return _instant(day, self.start, zone), _instant(end_day, self.end, zone)


def _instant(day: date, minutes: int, zone: ZoneInfo) -> float:
    day += timedelta(days=minutes // _MINUTES_PER_DAY)  # 24:00 is the next day's 00:00
    minutes %= _MINUTES_PER_DAY
    local = datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=zone)
    # fold=0: a skipped time keeps the offset before the change; a repeated one is the first.
    return local.timestamp()


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (e.g. ``"Asia/Shanghai"``); ValueError when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as err:
        raise ValueError(f"unknown time zone {name!r} (an IANA name like 'Asia/Shanghai')") from err


class Schedule:
    """Windows in a time zone. ``active(t)``: the window ``t`` is in; ``next_change(t)``:
    the next instant one begins or ends."""

    def __init__(self, windows: Iterable[Window], tz: ZoneInfo) -> None:
        self.windows = tuple(windows)
        self.tz = tz

    @classmethod
    def parse(cls, windows: Iterable[str], tz: str) -> Schedule:
        return cls((Window.parse(w) for w in windows), zone(tz))

    def _spans(self, at: float, before: int, after: int) -> Iterator[tuple[Window, float, float]]:
        today = datetime.fromtimestamp(at, self.tz).date()
        for offset in range(-before, after + 1):
            day = today + timedelta(days=offset)
            for window in self.windows:
                span = window.spans(day, self.tz)
                if span is not None:
                    yield window, *span

    def active(self, at: float) -> Window | None:
        """The window containing instant ``at`` (start inclusive, end exclusive), or None."""
        # A window starting yesterday may run past midnight into today.
        for window, start, end in self._spans(at, 1, 0):
            if start <= at < end:
                return window
        return None

    def next_change(self, at: float) -> float | None:
        """The first window start or end after ``at``; None without windows."""
        # Every window starts at least once a week: eight days ahead always find one.
        edges = (e for _, start, end in self._spans(at, 1, 8) for e in (start, end) if e > at)
        return min(edges, default=None)
