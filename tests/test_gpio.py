"""GPIO buttons on gpiozero's mock factory: debounce, hold, LED feedback, pin errors, and the
GPIO simulator over a real unix socket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

import pytest
from gpiozero import LED, Device
from gpiozero.pins.mock import MockFactory
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim.cli import main as sim_main
from firmware_sim.gpio import GpioSimClient, GpioSimError, GpioSimServer
from gateway.config import ButtonSection
from gateway.feedback import LedMode
from gateway.inputs.gpio import Debouncer, GpioButtonInput, GpioPinError, led_modes
from tests.gpio_helpers import WAIT_S, FakeClock, FakeSink, drain, socket_dir, wait_until

PIN, LED_PIN = 17, 27


@pytest.fixture
def factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[MockFactory]:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    previous = Device.pin_factory
    mock = MockFactory()
    Device.pin_factory = mock
    yield mock
    mock.reset()
    Device.pin_factory = previous


@pytest.fixture
def sink() -> FakeSink:
    return FakeSink()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_input(
    factory: MockFactory, sink: FakeSink, clock: FakeClock
) -> Iterator[Callable[..., GpioButtonInput]]:
    """Build and start a GpioButtonInput on the running loop; closed after the test."""
    made: list[GpioButtonInput] = []

    def make(**settings: object) -> GpioButtonInput:
        cfg = ButtonSection.model_validate({"name": "gate-main", "pin": PIN, **settings})
        button = GpioButtonInput(cfg, sink, factory=factory, clock=clock)
        made.append(button)
        button.start(asyncio.get_running_loop())
        return button

    yield make
    for button in made:
        button.close()


# --- the debounce logic alone, on explicit timestamps -----------------------------------


def test_debouncer_counts_leading_edge_at_once() -> None:
    d = Debouncer(debounce_s=0.05)
    assert d.edge(True, 10.0) is True
    assert d.presses == 1
    assert d.deadline() is None


def test_debouncer_ignores_bounce_within_window() -> None:
    d = Debouncer(debounce_s=0.05)
    levels = [True, False, True, False, True]
    counted = [d.edge(level, 10.0 + i * 0.001) for i, level in enumerate(levels)]
    assert counted == [True, False, False, False, False]
    assert d.bounces_ignored == 4
    assert d.edge(False, 11.0) is False  # the real release, after the window
    assert d.presses == 1
    assert d.pressed is False


def test_debouncer_separate_presses_count_separately() -> None:
    d = Debouncer(debounce_s=0.05)
    for start in (10.0, 10.2, 10.4):
        d.edge(True, start)
        d.edge(False, start + 0.1)
    assert d.presses == 3
    assert d.bounces_ignored == 0


def test_debouncer_settles_a_bounce_that_ends_released() -> None:
    d = Debouncer(debounce_s=0.05)
    assert d.edge(True, 10.0)
    d.edge(False, 10.01)  # ignored, but the contact stays open
    assert d.deadline() == pytest.approx(10.05)
    assert (d.pressed, d.raw) == (True, False)
    d.tick(10.06)
    assert (d.pressed, d.raw) == (False, False)
    assert d.edge(True, 10.3) is True  # so this is a new press
    assert d.presses == 2


def test_debouncer_settles_a_press_that_arrived_during_the_window() -> None:
    d = Debouncer(debounce_s=0.05)
    d.edge(True, 10.0)
    d.edge(False, 10.2)
    d.edge(True, 10.21)  # within the window after the release: not accepted yet
    assert d.presses == 1
    assert d.tick(10.3) is True  # still down once the window has passed: a press
    assert d.presses == 2


def test_debouncer_hold_short_press_does_not_count() -> None:
    d = Debouncer(debounce_s=0.05, hold_s=0.5)
    assert d.edge(True, 10.0) is False
    assert d.deadline() == pytest.approx(10.5)
    assert d.edge(False, 10.2) is False
    assert d.deadline() is None
    assert d.tick(20.0) is False
    assert (d.presses, d.short_presses) == (0, 1)


def test_debouncer_hold_long_press_counts_once() -> None:
    d = Debouncer(debounce_s=0.05, hold_s=0.5)
    d.edge(True, 10.0)
    assert d.tick(10.4) is False
    assert d.tick(10.5) is True
    assert d.tick(60.0) is False  # held on: still one press
    d.edge(False, 61.0)
    d.edge(True, 62.0)
    assert d.tick(62.5) is True
    assert d.presses == 2


def test_debouncer_hold_sees_a_release_still_inside_the_bounce_window() -> None:
    d = Debouncer(debounce_s=0.1, hold_s=0.05)
    d.edge(True, 10.0)
    d.edge(False, 10.02)  # not accepted yet (bounce window), but the contact is open
    assert d.tick(10.06) is False  # so the hold is not satisfied
    d.tick(10.2)
    assert (d.presses, d.short_presses, d.pressed) == (0, 1, False)


def test_debouncer_hold_counts_when_tick_runs_late() -> None:
    d = Debouncer(debounce_s=0.05, hold_s=0.5)
    d.edge(True, 10.0)
    assert d.edge(False, 11.0) is True  # the overdue hold decision comes first
    assert d.presses == 1


@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.2), min_size=1, max_size=40),
    debounce=st.floats(min_value=0.0, max_value=0.1),
    hold=st.sampled_from([0.0, 0.05, 0.3]),
)
def test_debouncer_properties(gaps: list[float], debounce: float, hold: float) -> None:
    d = Debouncer(debounce_s=debounce, hold_s=hold)
    t, level, press_edges = 100.0, False, 0
    for gap in gaps:
        t += gap
        level = not level
        press_edges += level
        d.edge(level, t)
    d.tick(t + 100.0)  # far past every settle and hold decision
    assert d.pressed == level  # after the window the accepted level is the real one
    assert d.presses <= press_edges
    assert d.deadline() is None


# --- GpioButtonInput on the mock factory ------------------------------------------------


async def test_one_press_one_alarm(
    make_input: Callable[..., GpioButtonInput], factory: MockFactory, sink: FakeSink
) -> None:
    button = make_input(led_pin=LED_PIN, code="121", kind="duress")
    factory.pin(PIN).drive_low()
    await wait_until(lambda: len(sink.alarms) == 1)
    alarm = sink.alarms[0]
    assert (alarm.input_ref, alarm.code, alarm.kind) == ("gpio:gate-main", "121", "duress")
    assert alarm.feedback is button.feedback is not None
    assert button.feedback.mode == "blink"
    assert (button.presses, button.bounces_ignored) == (1, 0)
    factory.pin(PIN).drive_high()
    await drain()
    assert len(sink.alarms) == 1


async def test_quick_toggles_within_debounce_are_one_alarm(
    make_input: Callable[..., GpioButtonInput],
    factory: MockFactory,
    sink: FakeSink,
    clock: FakeClock,
) -> None:
    button = make_input(debounce_s=0.05)
    pin = factory.pin(PIN)
    for i in range(5):  # press, release, press, release, press: 1 ms apart
        (pin.drive_low if i % 2 == 0 else pin.drive_high)()
        clock.advance(0.001)
    await wait_until(lambda: button.bounces_ignored == 4)
    clock.advance(1.0)
    pin.drive_high()
    await wait_until(lambda: not button.is_pressed)
    assert len(sink.alarms) == 1
    assert button.presses == 1


async def test_presses_further_apart_than_debounce_are_separate_alarms(
    make_input: Callable[..., GpioButtonInput],
    factory: MockFactory,
    sink: FakeSink,
    clock: FakeClock,
) -> None:
    make_input(debounce_s=0.05)
    pin = factory.pin(PIN)
    for n in (1, 2, 3):
        pin.drive_low()
        await wait_until(lambda n=n: len(sink.alarms) == n)  # type: ignore[misc]
        clock.advance(0.2)
        pin.drive_high()
        clock.advance(0.2)
    assert len(sink.alarms) == 3


async def test_hold_short_press_raises_nothing(
    make_input: Callable[..., GpioButtonInput],
    factory: MockFactory,
    sink: FakeSink,
    clock: FakeClock,
) -> None:
    button = make_input(hold_s=0.3)
    factory.pin(PIN).drive_low()
    clock.advance(0.1)
    factory.pin(PIN).drive_high()
    await wait_until(lambda: button.short_presses == 1)
    clock.advance(5.0)
    await asyncio.sleep(0.5)  # past the hold time in real time too: nothing may fire
    assert sink.alarms == []
    assert button.presses == 0


async def test_hold_long_press_raises_one_alarm(
    make_input: Callable[..., GpioButtonInput],
    factory: MockFactory,
    sink: FakeSink,
    clock: FakeClock,
) -> None:
    button = make_input(hold_s=0.3)
    factory.pin(PIN).drive_low()
    await drain()
    assert sink.alarms == []  # not before hold_s
    clock.advance(0.35)
    await wait_until(lambda: len(sink.alarms) == 1)
    clock.advance(10.0)
    await asyncio.sleep(0.4)  # still held: no second alarm
    assert len(sink.alarms) == 1
    assert button.presses == 1


async def test_led_modes_drive_the_led_pin(
    make_input: Callable[..., GpioButtonInput], factory: MockFactory
) -> None:
    button = make_input(led_pin=LED_PIN)
    led, pin = button.feedback, factory.pin(LED_PIN)
    assert led is not None
    assert (led.mode, pin.state) == ("off", False)
    led.led("solid")
    assert (led.mode, pin.state) == ("solid", True)
    led.led("off")
    assert (led.mode, pin.state) == ("off", False)
    modes: tuple[LedMode, ...] = ("fast", "blink")
    for mode in modes:
        pin.clear_states()
        led.led(mode)
        assert led.mode == mode
        # The blink thread toggles the pin: on, off, on (at least).
        await wait_until(lambda: len(pin.states) >= 4)
    with pytest.raises(ValueError, match="unknown LED mode"):
        led.led("disco")  # type: ignore[arg-type]
    assert led_modes([button]) == {LED_PIN: "blink"}


async def test_sink_failure_turns_led_fast(
    make_input: Callable[..., GpioButtonInput], factory: MockFactory, sink: FakeSink
) -> None:
    sink.fail = OSError("disk full")
    button = make_input(led_pin=LED_PIN)
    factory.pin(PIN).drive_low()
    assert button.feedback is not None
    await wait_until(lambda: button.feedback is not None and button.feedback.mode == "fast")
    assert button.presses == 1


async def test_pin_in_use_is_a_clear_error(factory: MockFactory, sink: FakeSink) -> None:
    other = LED(PIN, pin_factory=factory)
    try:
        button = GpioButtonInput(ButtonSection(name="gate-main", pin=PIN), sink, factory=factory)
        with pytest.raises(GpioPinError) as caught:
            button.start(asyncio.get_running_loop())
        message = str(caught.value)
        assert "'gate-main'" in message
        assert "GPIO17" in message
        assert "\n" not in message
    finally:
        other.close()


async def test_led_pin_in_use_releases_the_button_pin(factory: MockFactory, sink: FakeSink) -> None:
    other = LED(LED_PIN, pin_factory=factory)
    cfg = ButtonSection(name="gate-main", pin=PIN, led_pin=LED_PIN)
    button = GpioButtonInput(cfg, sink, factory=factory)
    with pytest.raises(GpioPinError, match=r"GPIO27 \(led_pin\)"):
        button.start(asyncio.get_running_loop())
    other.close()
    button.start(asyncio.get_running_loop())  # the button pin was not left claimed
    button.close()
    button.close()  # idempotent


async def test_run_releases_pins_when_cancelled(factory: MockFactory, sink: FakeSink) -> None:
    button = GpioButtonInput(ButtonSection(name="gate-main", pin=PIN), sink, factory=factory)
    task = asyncio.create_task(button.run())
    await wait_until(lambda: button.started)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not button.started
    LED(PIN, pin_factory=factory).close()  # claimable again


# --- the GPIO simulator over a unix socket ----------------------------------------------


async def test_sim_tap_raises_alarm_and_reports_led(
    make_input: Callable[..., GpioButtonInput], factory: MockFactory, sink: FakeSink
) -> None:
    button = make_input(led_pin=LED_PIN)
    with socket_dir() as tmp:
        server = GpioSimServer(tmp / "gpio.sock", lambda: led_modes([button]), factory=factory)
        await server.start()
        try:
            async with GpioSimClient(tmp / "gpio.sock") as sim:
                assert await sim.led(LED_PIN) == "off"
                assert await sim.tap(PIN, 20) == f"tap {PIN} 20"
                await wait_until(lambda: len(sink.alarms) == 1)
                assert sink.alarms[0].input_ref == "gpio:gate-main"
                await sim.wait_led(LED_PIN, "blink", timeout=WAIT_S)
                assert await sim.led(LED_PIN) == "blink"
                assert factory.pin(PIN).state is True  # released again (pulled up)
        finally:
            await server.close()
        assert not (tmp / "gpio.sock").exists()


async def test_sim_wait_sees_a_mode_that_already_passed(
    make_input: Callable[..., GpioButtonInput], factory: MockFactory, sink: FakeSink
) -> None:
    button = make_input(led_pin=LED_PIN)
    with socket_dir() as tmp:
        server = GpioSimServer(tmp / "s", lambda: led_modes([button]), factory=factory)
        await server.start()
        try:
            async with GpioSimClient(tmp / "s") as sim:
                await sim.tap(PIN, 10)
                await wait_until(lambda: len(sink.alarms) == 1)
                assert button.feedback is not None
                # The ack on loopback can arrive before the client asks about "blink".
                button.feedback.led("solid")
                await sim.wait_led(LED_PIN, "blink", timeout=WAIT_S)
                await sim.wait_led(LED_PIN, "solid", timeout=WAIT_S)
                with pytest.raises(TimeoutError, match="GPIO27 is solid, not fast"):
                    await sim.wait_led(LED_PIN, "fast", timeout=0.2)
                await sim.press(PIN)  # a new mark: "blink" was before it
                with pytest.raises(TimeoutError):
                    await sim.wait_led(LED_PIN, "blink", timeout=0.2)
                with pytest.raises(GpioSimError, match="no LED on GPIO5"):
                    await sim.wait_led(5, "solid", timeout=WAIT_S)
                with pytest.raises(GpioSimError, match="usage: wait PIN MODE"):
                    await sim.request(f"wait {LED_PIN} disco")
        finally:
            await server.close()


async def test_sim_bounce_is_one_alarm(
    make_input: Callable[..., GpioButtonInput],
    factory: MockFactory,
    sink: FakeSink,
    clock: FakeClock,
) -> None:
    button = make_input(debounce_s=0.05)
    with socket_dir() as tmp:
        server = GpioSimServer(tmp / "s", lambda: led_modes([button]), factory=factory)
        await server.start()
        try:
            async with GpioSimClient(tmp / "s") as sim:
                await sim.bounce(PIN, 5, 10)
            await wait_until(lambda: button.bounces_ignored >= 8)
            assert len(sink.alarms) == 1
        finally:
            await server.close()


async def test_sim_errors_are_one_line_replies(
    make_input: Callable[..., GpioButtonInput], factory: MockFactory
) -> None:
    button = make_input(led_pin=LED_PIN)
    with socket_dir() as tmp:
        server = GpioSimServer(tmp / "s", lambda: led_modes([button]), factory=factory)
        await server.start()
        try:
            async with GpioSimClient(tmp / "s") as sim:
                with pytest.raises(GpioSimError, match="unknown command 'jump'"):
                    await sim.request("jump 17")
                with pytest.raises(GpioSimError, match="usage: tap PIN"):
                    await sim.request("tap seventeen")
                with pytest.raises(GpioSimError, match="no LED on GPIO5"):
                    await sim.led(5)
                with pytest.raises(GpioSimError, match="is an output"):
                    await sim.press(LED_PIN)
                assert await sim.press(PIN) == f"press {PIN}"  # the session survives errors
                assert await sim.release(PIN) == f"release {PIN}"
        finally:
            await server.close()


async def test_sim_watch_streams_led_changes(
    make_input: Callable[..., GpioButtonInput], factory: MockFactory
) -> None:
    button = make_input(led_pin=LED_PIN)
    assert button.feedback is not None
    with socket_dir() as tmp:
        server = GpioSimServer(tmp / "s", lambda: led_modes([button]), factory=factory)
        await server.start()
        try:
            seen: list[tuple[int, str]] = []
            async with asyncio.timeout(WAIT_S):
                watch = GpioSimClient(tmp / "s").watch()
                async with contextlib.aclosing(watch) as changes:
                    async for change in changes:
                        seen.append(change)
                        if change == (LED_PIN, "off"):
                            button.feedback.led("solid")
                        if change == (LED_PIN, "solid"):
                            break
            assert seen == [(LED_PIN, "off"), (LED_PIN, "solid")]
        finally:
            await server.close()


async def test_sim_cli_prints_one_line_per_reply(
    make_input: Callable[..., GpioButtonInput],
    factory: MockFactory,
    sink: FakeSink,
    capsys: pytest.CaptureFixture[str],
) -> None:
    button = make_input(led_pin=LED_PIN)
    with socket_dir() as tmp:
        sock = str(tmp / "s")
        server = GpioSimServer(sock, lambda: led_modes([button]), factory=factory)
        await server.start()
        try:
            # The CLI runs its own event loop: give it a thread, keep serving on this one.
            assert await asyncio.to_thread(sim_main, ["gpio", "--socket", sock, "tap", "17"]) == 0
            await wait_until(lambda: len(sink.alarms) == 1)
            assert await asyncio.to_thread(sim_main, ["gpio", "--socket", sock, "led", "27"]) == 0
            assert await asyncio.to_thread(sim_main, ["gpio", "--socket", sock, "led", "4"]) == 2
            wait = ["gpio", "--socket", sock, "wait", "27", "blink"]
            assert await asyncio.to_thread(sim_main, wait) == 0
            wait = ["gpio", "--socket", sock, "wait", "27", "solid", "--timeout", "0.1"]
            assert await asyncio.to_thread(sim_main, wait) == 1
        finally:
            await server.close()
    out, err = capsys.readouterr()
    printed = [line for line in out.splitlines() if line.startswith(("tapped", "LED"))]
    assert printed == ["tapped GPIO17 for 100 ms", "LED GPIO27: blink", "LED GPIO27: blink"]
    assert "no LED on GPIO4" in err
    assert "timeout: LED GPIO27 is blink, not solid" in err


async def test_sim_client_reports_missing_socket() -> None:
    with socket_dir() as tmp, pytest.raises(GpioSimError, match="cannot connect"):
        await GpioSimClient(tmp / "nothing").press(PIN)


async def test_sim_server_refuses_real_pins() -> None:
    with socket_dir() as tmp:
        server = GpioSimServer(tmp / "s", dict, factory=object())
        with pytest.raises(GpioSimError, match="GPIOZERO_PIN_FACTORY=mock"):
            await server.start()
