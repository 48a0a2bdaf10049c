"""A GPIO button whose pin cannot be claimed: 380 on device ``button`` and its restore, a
FAILING ``alarmgw status`` with the reason and the fix, and no restart storm in the log."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from gpiozero import LED, Device
from gpiozero.pins.mock import MockFactory
from structlog.testing import capture_logs

from gateway import retry
from gateway.config import ButtonSection
from gateway.inputs.gpio import GpioButtonInput
from gateway.inputs.snapshot import gpio_input
from gateway.monitors.buttons import ButtonSupervisor
from gateway.monitors.reporter import TroubleReporter
from gateway.snapshots import SupervisorSnapshot
from gateway.technician.status import _input
from gateway.technician.tools import status_verdict
from tests.gpio_helpers import FakeSink, wait_until
from tests.harness import Site

PIN = 17
FAST = retry.RESTART.limited(first_s=0.01, cap_s=0.02)


class EventSink:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def raise_event(self, kind: str, body: Mapping[str, Any], ts: str | None = None) -> str:
        self.events.append((kind, dict(body)))
        return f"ev-{len(self.events)}"


@pytest.fixture
def factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[MockFactory]:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    previous = Device.pin_factory
    mock = MockFactory()
    Device.pin_factory = mock
    yield mock
    mock.reset()
    Device.pin_factory = previous


async def test_dead_button_sends_380_fails_status_and_restores(factory: MockFactory) -> None:
    holder = LED(PIN, pin_factory=factory)  # another program holds the pin
    cfg = ButtonSection.model_validate({"name": "gate-main", "pin": PIN})
    button = GpioButtonInput(cfg, FakeSink(), factory=factory, claim_policy=FAST)
    sink = EventSink()
    reporter = TroubleReporter(sink)
    ButtonSupervisor([button], reporter)
    with capture_logs() as logs:
        task = asyncio.create_task(button.run())
        try:
            await wait_until(lambda: sink.events, what="the 380 trouble")
            assert sink.events[0][0] == "trouble"
            assert sink.events[0][1]["code"] == "380"
            assert sink.events[0][1]["device"] == "button"
            assert "GPIO17" in sink.events[0][1]["detail"]

            snap = gpio_input(button, {}, SupervisorSnapshot(()))
            assert snap.state == "trouble"
            assert snap.verdict is not None and snap.verdict.level == "failing"
            st = _status_doc(_input(snap, None))
            code, problems = status_verdict(st)
            assert code == 2
            assert "GPIO17" in problems[0] and "->" in problems[0]

            await wait_until(lambda: _claims(logs) >= 3, what="a few more claims")
            holder.close()
            await wait_until(lambda: button.started, what="the pin claimed")
            await wait_until(lambda: len(sink.events) == 2, what="the restore")
            assert sink.events[1][0] == "restore"
            assert sink.events[1][1]["code"] == "380"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    dead = [e for e in logs if e["event"] == "button cannot raise alarms"]
    assert len(dead) == 1
    assert [e for e in logs if e["event"] == "button works again"]


def _claims(logs: list[dict[str, Any]]) -> int:
    return len([e for e in logs if e.get("event") == "button claim failed"])


def _status_doc(inp: dict[str, Any]) -> dict[str, Any]:
    return {
        "health": {"ok": True, "problems": []},
        "queue": {"by_type": {}, "oldest_age_s": None},
        "inputs": [inp],
        "uplink": {"connected": True},
    }


@pytest.mark.slow
async def test_daemon_with_an_unclaimable_pin_tells_the_center(site: Site) -> None:
    # No pin factory can drive GPIO17 here: gpiozero's own choice on a machine without one.
    from tests.test_site_supervision import event, expect

    site.buttons = [{"name": "gate-main", "pin": PIN}]
    site.write_configs()
    center = site.start_center()
    gateway = site.start_gateway({"GPIOZERO_PIN_FACTORY": "no-such-factory"})
    got = await expect(center, event("trouble", "button", "380", "GPIO17"))
    assert "gate-main" in got["detail"]

    def is_dead(e: Any) -> bool:
        return isinstance(e, dict) and e.get("event") == "button cannot raise alarms"

    await asyncio.to_thread(gateway.wait_for, is_dead)
    dead = gateway.matching(is_dead)
    restarts = gateway.matching(lambda e: e.get("event") == "loop restarted")
    assert len(dead) == 1 and not restarts
