"""The helpers every test shares: waiting for a condition (never for a fixed time), one fake
alarm sink, and one reference-center factory.

Waits are generous on purpose: the test machines are shared and noisy. A test waits up to
this long for something that should happen; it never asserts that it happened quickly.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from center.service import Center, Registry
from center.state import CenterState
from gateway.contract.signing import SigningKey, VerifyKey
from gateway.delivery.seq import SeqCounter
from gateway.feedback import Feedback, Raised

WAIT_S = 20.0


async def wait_until(
    pred: Callable[[], Any], timeout: float = WAIT_S, what: str = "", every: float = 0.01
) -> Any:
    """The first truthy ``pred()``, polled on the event loop; AssertionError after
    ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or pred}")
        await asyncio.sleep(every)


async def wait_line(proc: Any, pred: Any, timeout: float = 30.0, *, stderr: bool = False) -> Any:
    """The first line of a ``tests.harness.Proc`` matching ``pred``, without blocking the loop."""
    return await asyncio.to_thread(proc.wait_for, pred, timeout, stderr=stderr)


def poll(fn: Callable[[], Any], timeout: float = 60.0, every: float = 0.2, what: str = "") -> Any:
    """``wait_until`` for synchronous code (a thread, or a test without a loop): the first
    truthy result of ``fn``; an ``OSError`` or ``ValueError`` counts as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (OSError, ValueError) as err:
            last = err
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"{what or 'condition'} not met within {timeout} s (last: {last!r})")


@dataclass(frozen=True, slots=True)
class SinkCall:
    input_ref: str
    dedupe_key: str | None
    dedupe_window_s: float
    event_id: str
    new: bool


@dataclass(frozen=True)
class RecordedAlarm:
    input_ref: str
    feedback: Feedback | None
    code: str
    kind: str
    test: bool


@dataclass
class FakeSink:
    """An in-memory ``AlarmSink`` with the real one's rules: the same dedupe key within its
    window gives the earlier id (``new=False``), and the presser's LED goes ``blink`` once the
    alarm is "durable". ``fail`` (an exception) makes every call raise, ``fail_next`` the next
    N calls (like a full disk)."""

    clock: Callable[[], float] = time.monotonic
    calls: list[SinkCall] = field(default_factory=list)
    alarms: list[RecordedAlarm] = field(default_factory=list)  # the new ones
    forgotten: list[str] = field(default_factory=list)
    feedback: dict[str, Feedback] = field(default_factory=dict)
    fail: Exception | None = None
    fail_next: int = 0
    _dedupe: dict[str, tuple[str, float]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def new_alarms(self) -> list[SinkCall]:
        return [c for c in self.calls if c.new]

    def raise_alarm(
        self,
        *,
        input_ref: str,
        feedback: Feedback | None,
        code: str = "120",
        kind: str = "panic",
        test: bool = False,
        dedupe_key: str | None = None,
        dedupe_window_s: float = 30.0,
    ) -> Raised:
        if self.fail is not None:
            raise self.fail
        if self.fail_next:
            self.fail_next -= 1
            raise OSError(28, "No space left on device (fake)")
        now = self.clock()
        earlier = self._dedupe.get(dedupe_key) if dedupe_key else None
        if earlier is not None and now - earlier[1] < dedupe_window_s:
            event_id, new = earlier[0], False
        else:
            event_id, new = f"evt-{next(self._ids)}", True
            if dedupe_key:
                self._dedupe[dedupe_key] = (event_id, now)
            self.alarms.append(RecordedAlarm(input_ref, feedback, code, kind, test))
        self.calls.append(SinkCall(input_ref, dedupe_key, dedupe_window_s, event_id, new))
        if feedback is not None:
            self.feedback[event_id] = feedback
            feedback.led("blink")
        return Raised(event_id=event_id, new=new)

    def forget_dedupe(self, prefix: str) -> None:
        self.forgotten.append(prefix)
        for key in [k for k in self._dedupe if k.startswith(prefix)]:
            del self._dedupe[key]


def make_center(
    tmp_path: Path,
    gateways: list[tuple[str, str, VerifyKey]],
    *,
    prefix: str = "schoolalarm/v1",
    key: SigningKey | None = None,
    heartbeat_s: float = 30.0,
) -> Center:
    """The reference center, in-process, trusting ``(site, gw, key)`` of each gateway."""
    reg = Registry()
    for site, gw, verify_key in gateways:
        reg.add(site, gw, verify_key, heartbeat_s=heartbeat_s)
    return Center(
        prefix=prefix,
        key=key or SigningKey.generate(),
        seq=SeqCounter(tmp_path / "seq.json"),
        state=CenterState(tmp_path / "center.sqlite"),
        registry=reg,
    )
