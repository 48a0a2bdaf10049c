"""BoxLink against the box simulator on a real pty (and over socket:// and loop://), and the
``alarmgw-sim box`` command as a subprocess. Waits are generous: the machine is shared."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import serial
from structlog.testing import capture_logs

from firmware_sim.box import BoxSimulator, parse_command
from gateway.inputs.codec import BOX_TYPES, GATEWAY_TYPES, Decoder, Frame, encode
from gateway.inputs.serial_box import BoxLink, RS485Options
from tests.serial_helpers import FakeSink, LineReader, eventually, running, stop_process

WAIT = 15.0
REPO = Path(__file__).resolve().parent.parent


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_press_gets_ack_and_blink() -> None:
    sink = FakeSink()
    async with BoxSimulator(heartbeat_s=0.5) as sim:
        link = BoxLink("gate", sim.path, 9600, sink)
        async with running(link):
            await sim.wait_linked(WAIT)
            seq = sim.press()
            await sim.wait_ack(seq, WAIT)
            await sim.wait_led("blink", WAIT)
    assert len(sink.new_alarms) == 1
    call = sink.calls[0]
    assert call.input_ref == "serial:gate"
    assert call.dedupe_key == f"serial:gate:{seq}"
    assert call.dedupe_window_s == 30.0
    assert link.box_id == "box-sim-1"
    assert link.box_fw == "1.4.2"
    assert link.frames_ok >= 2
    assert link.last_valid_frame_at is not None


async def test_press_retransmitted_ten_times_is_one_alarm() -> None:
    sink = FakeSink()
    async with BoxSimulator(heartbeat_s=0.5) as sim:
        link = BoxLink("gate", sim.path, 9600, sink)
        async with running(link):
            await sim.wait_linked(WAIT)
            seq = sim.retransmit(10)
            await eventually(lambda: sim.acks.count(seq) == 10, WAIT)
    presses = [c for c in sink.calls if c.dedupe_key == f"serial:gate:{seq}"]
    assert len(presses) == 10
    assert len(sink.new_alarms) == 1


async def test_garbage_then_press_still_works() -> None:
    sink = FakeSink()
    async with BoxSimulator(heartbeat_s=0.5, seed=7) as sim:
        link = BoxLink("gate", sim.path, 9600, sink)
        with capture_logs() as logs:
            async with running(link):
                await sim.wait_linked(WAIT)
                sim.garbage(30)
                seq = sim.press()
                await sim.wait_ack(seq, WAIT)
    assert sum(link.frame_errors.values()) == 30
    assert len(sink.new_alarms) == 1
    dropped = events(logs, "serial bad line dropped")
    # Rate-limited: at most one line per reason per 5 s (30 bad lines arrive at once).
    assert 1 <= len(dropped) <= len(link.frame_errors)
    assert {d["reason"] for d in dropped} == set(link.frame_errors)


async def test_hello_clears_dedupe_across_a_box_reboot() -> None:
    sink = FakeSink()
    async with BoxSimulator(heartbeat_s=0.5) as sim:
        link = BoxLink("gate", sim.path, 9600, sink)
        async with running(link):
            await sim.wait_linked(WAIT)
            first = sim.press()
            await sim.wait_ack(first, WAIT)
            sim.hello()  # reboot: SEQ restarts, so the next PRESS reuses a SEQ
            await eventually(lambda: "serial:gate:" in sink.forgotten, WAIT)
            since = len(sim.acks)
            again = sim.press()
            await sim.wait_ack(again, WAIT, since=since)
    assert again == first == 1
    assert len(sink.new_alarms) == 2


async def test_feedback_writes_led_frames_from_any_thread() -> None:
    sink = FakeSink()
    async with BoxSimulator(heartbeat_s=0.5) as sim:
        link = BoxLink("gate", sim.path, 9600, sink)
        async with running(link):
            await sim.wait_linked(WAIT)
            seq = sim.press()
            await sim.wait_ack(seq, WAIT)
            feedback = next(iter(sink.feedback.values()))
            feedback.led("solid")  # the center's ack arrived
            await sim.wait_led("solid", WAIT)
            await asyncio.to_thread(feedback.led, "fast")  # e.g. from the uplink's thread
            await sim.wait_led("fast", WAIT)
    assert sim.leds[-3:] == ["blink", "solid", "fast"]


async def test_sink_failure_means_no_ack_until_durable() -> None:
    sink = FakeSink()
    sink.fail_next = 3
    async with BoxSimulator(heartbeat_s=0.5) as sim:
        link = BoxLink("gate", sim.path, 9600, sink)
        with capture_logs() as logs:
            async with running(link):
                await sim.wait_linked(WAIT)
                seq = sim.press()
                await sim.wait_ack(seq, WAIT)
    assert sim.acks.count(seq) == 1  # only the copy that was durable got ACKed
    assert sum(1 for f in sim.sent if f.type == "PRESS") >= 4
    assert len(sink.new_alarms) == 1
    assert 1 <= len(events(logs, "serial press not registered, box will re-send")) <= 3


async def test_ping_and_hooks() -> None:
    sink = FakeSink()
    seen: list[str] = []

    def broken_hook(frame: Frame) -> None:
        raise RuntimeError("supervision bug")

    async with BoxSimulator(heartbeat_s=0.5) as sim:
        link = BoxLink("gate", sim.path, 9600, sink)
        link.on_frame.append(broken_hook)
        link.on_frame.append(lambda frame: seen.append(frame.type))
        with capture_logs() as logs:
            async with running(link):
                await sim.wait_linked(WAIT)
                rtt = await link.ping(WAIT)
                seq = sim.press()
                await sim.wait_ack(seq, WAIT)
    assert 0 < rtt < WAIT
    assert sim.pings >= 1
    assert "PRESS" in seen
    assert events(logs, "serial on_frame hook failed")


async def test_ping_without_port() -> None:
    link = BoxLink("gate", "/nonexistent/tty", 9600, FakeSink())
    with pytest.raises(ConnectionError, match="not open"):
        await link.ping(1.0)


async def test_stale_when_box_goes_silent() -> None:
    async with BoxSimulator(heartbeat_s=0.2) as sim:
        link = BoxLink("gate", sim.path, 9600, FakeSink(), heartbeat_s=0.2)
        async with running(link):
            await sim.wait_linked(WAIT)
            sim.silent(True)
            await eventually(lambda: link.stale, WAIT)
            sim.silent(False)
            await eventually(lambda: not link.stale, WAIT)


async def test_missing_port_retries_then_connects_and_survives_unplug(tmp_path: Path) -> None:
    where = tmp_path / "ttyBOX"
    sink = FakeSink()
    link = BoxLink("gate", str(where), 9600, sink, retry_max_s=0.3)
    with capture_logs() as logs:
        async with running(link) as task:
            await eventually(lambda: bool(events(logs, "serial port cannot be opened, retrying")))
            for round_ in range(2):  # plug in, press, unplug; then again
                async with BoxSimulator(heartbeat_s=0.3) as sim:
                    tmp = tmp_path / "tmp-link"
                    tmp.symlink_to(sim.path)
                    tmp.replace(where)
                    await sim.wait_linked(WAIT)
                    seq = sim.press()
                    await sim.wait_ack(seq, WAIT)
                await eventually(lambda: not link.connected, WAIT)
                assert not task.done(), round_
    failures = events(logs, "serial port cannot be opened, retrying")
    assert failures[0]["port"] == str(where)
    assert "No such file" in failures[0]["error"] or "could not open" in failures[0]["error"]
    assert len(events(logs, "serial port lost, reopening")) == 2
    assert len(events(logs, "serial port open")) == 2
    assert len(sink.new_alarms) == 2


async def test_socket_url() -> None:
    from_gateway: list[Frame] = []
    decoder = Decoder(accept=GATEWAY_TYPES)

    async def box(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode(Frame.of(0, "HELLO", fw="2.0", id="tcp-box")))
        writer.write(encode(Frame.of(1, "PRESS", btn="1")))
        while data := await reader.read(1024):
            from_gateway.extend(e for e in decoder.receive(data) if isinstance(e, Frame))
        writer.close()

    server = await asyncio.start_server(box, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink = FakeSink()
    link = BoxLink("tcp", f"socket://127.0.0.1:{port}", 9600, sink)
    async with server, running(link):
        await eventually(lambda: any(f.get("ref") == "1" for f in from_gateway), WAIT)
    assert link.box_id == "tcp-box"
    assert len(sink.new_alarms) == 1
    assert [f.body.split(",", 1)[1] for f in from_gateway] == [
        "ACK,ref=0",
        "LED,mode=blink",
        "ACK,ref=1",
    ]


async def test_port_without_fileno_uses_a_reader_thread() -> None:
    ports: list[Any] = []

    def opener(url: str, **kwargs: Any) -> Any:
        ports.append(serial.serial_for_url(url, **kwargs))
        return ports[-1]

    sink = FakeSink()
    link = BoxLink("loop", "loop://", 9600, sink, opener=opener)
    async with running(link):
        await eventually(lambda: link.connected, WAIT)
        # loop:// echoes: what the "box" writes here is read by the link, and the link's
        # own LED and ACK come back to it too (rejected: gateway frames, not box frames).
        ports[0].write(encode(Frame.of(5, "PRESS", btn="1")))
        await eventually(lambda: link.frame_errors["unknown-type"] >= 2, WAIT)
    assert len(sink.new_alarms) == 1
    assert not ports[0].is_open


async def test_rs485_is_applied_only_when_configured() -> None:
    applied: list[RS485Options] = []
    options = RS485Options(rts_level_for_tx=False)
    async with BoxSimulator(heartbeat_s=0.5) as sim:
        plain = BoxLink("a", sim.path, 9600, FakeSink(), port_setup=lambda p, o: applied.append(o))
        async with running(plain):
            await sim.wait_linked(WAIT)
        assert applied == []
        rs485 = BoxLink(
            "b",
            sim.path,
            9600,
            FakeSink(),
            rs485=options,
            port_setup=lambda p, o: applied.append(o),
        )
        since = len(sim.acks)
        async with running(rs485):
            await sim.wait_until(lambda: len(sim.acks) > since, WAIT, "ACK")
        assert applied == [options]


async def test_rs485_on_a_pty_fails_and_keeps_retrying() -> None:
    async with BoxSimulator(heartbeat_s=0.5) as sim:
        link = BoxLink("gate", sim.path, 9600, FakeSink(), rs485=RS485Options(), retry_max_s=0.2)
        with capture_logs() as logs:
            async with running(link) as task:
                await eventually(
                    lambda: bool(events(logs, "serial port cannot be opened, retrying")), WAIT
                )
                await asyncio.sleep(0.5)
                assert not task.done()
    assert "RS485" in events(logs, "serial port cannot be opened, retrying")[0]["error"]
    assert not link.connected


def test_cli_commands_parse() -> None:
    assert parse_command("  # comment") is None
    assert parse_command("tamper open") is not None
    for bad in ("tamper ajar", "explode", "wait soon", "silent maybe", "retransmit", "press 1"):
        with pytest.raises(ValueError):
            parse_command(bad)


# --- `alarmgw-sim box` as a process ---


def start_cli(*args: str, stdin: int = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "firmware_sim.cli", "box", *args],
        cwd=REPO,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_frames(port: Any, want: str, timeout_s: float = WAIT) -> Frame:
    decoder = Decoder(accept=BOX_TYPES)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for event in decoder.receive(port.read(256)):
            if isinstance(event, Frame) and event.type == want:
                return event
    raise AssertionError(f"no {want} from the simulator within {timeout_s} s")


def test_cli_script_device_ack_and_quit() -> None:
    proc = start_cli("--script", "press", "--hb", "0.5")
    out = LineReader(proc)
    try:
        first = out.next()
        assert first is not None
        assert first.startswith("device /dev/pts/")
        device = first.split(" ", 1)[1]
        with serial.Serial(device, timeout=0.2) as port:
            press = read_frames(port, "PRESS")  # re-sent until ACKed
            port.write(encode(Frame.of(0, "ACK", ref=str(press.seq))))
            out.wait_for(lambda line: line == f"ack {press.seq}")
            port.write(encode(Frame.of(1, "LED", mode="blink")))
            out.wait_for(lambda line: line == "led blink")
            assert proc.stdin is not None
            proc.stdin.write("tamper open\nbogus\n")
            proc.stdin.flush()
            assert read_frames(port, "TAMPER").get("state") == "open"
            out.wait_for(lambda line: line.startswith("error unknown command"))
            proc.stdin.write("quit\n")
            proc.stdin.flush()
            assert proc.wait(WAIT) == 0
    finally:
        stop_process(proc, out)


def test_cli_link_json_and_sigterm(tmp_path: Path) -> None:
    link = tmp_path / "box"
    proc = start_cli("--link", str(link), "--json", "--hb", "0.2")
    out = LineReader(proc)
    try:
        first = json.loads(out.next() or "{}")
        assert first["event"] == "device"
        assert os.readlink(link) == first["path"]
        sent = json.loads(out.wait_for(lambda line: '"sent"' in line))
        assert sent["type"] in ("HELLO", "HB")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        assert not link.is_symlink()
    finally:
        stop_process(proc, out)


def test_cli_exits_at_end_of_stdin_unless_told_to_stay() -> None:
    proc = start_cli("--hb", "5", stdin=subprocess.DEVNULL)
    try:
        assert proc.wait(WAIT) == 0
    finally:
        stop_process(proc)
    stay = start_cli("--hb", "5", "--stay", stdin=subprocess.DEVNULL)
    out = LineReader(stay)
    try:
        assert (out.next() or "").startswith("device ")
        with pytest.raises(subprocess.TimeoutExpired):
            stay.wait(1.0)
        stay.send_signal(signal.SIGINT)
        assert stay.wait(WAIT) == 0
    finally:
        stop_process(stay, out)


def test_cli_rejects_a_bad_script() -> None:
    proc = start_cli("--script", "press; explode")
    try:
        _, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 2
        assert "unknown command 'explode'" in err
    finally:
        stop_process(proc)


@pytest.mark.parametrize("buzz_ms", [0, 300])
async def test_buzzer_only_when_configured_and_once_per_alarm(buzz_ms: int) -> None:
    sink = FakeSink()
    async with BoxSimulator(heartbeat_s=0.5) as sim:
        link = BoxLink("gate", sim.path, 9600, sink, buzz_ms=buzz_ms)
        async with running(link):
            await sim.wait_linked(WAIT)
            seq = sim.retransmit(3)
            await eventually(lambda: sim.acks.count(seq) == 3, WAIT)
            hb_seq = sim.hb()
            await eventually(lambda: hb_seq in sim.acks, WAIT)  # later frames handled too
    assert sim.buzzes == ([buzz_ms] if buzz_ms else [])
