"""``alarmgw-sim demo`` (what ``make demo`` runs): one site, end to end, on real parts.

A throwaway directory gets keys and configs; Mosquitto starts on a free loopback port; the
reference center and the gateway run as their own processes (``alarmgw center``, ``alarmgw
run``); a button box is simulated on a real pty and a GPIO button through gpiozero's mock
factory. Both buttons are pressed once, and the demo narrates what a person would want to
see: the alarm leaving, arriving verified at the center, the ack coming back, the LED going
solid. Everything it started is stopped on the way out, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from firmware_sim.box import BoxSimulator
from firmware_sim.broker import Mosquitto, free_port
from firmware_sim.fleet_sites import gateway_tables, make_schools
from firmware_sim.gpio import GpioSimClient
from gateway.contract.signing import write_keypair

SITE, GW, PREFIX = "sz-futian-xmh-014", "gw-014-a", "schoolalarm/v1"
BUTTON_PIN, LED_PIN = 17, 27
STEP_TIMEOUT_S = 30.0
CONSOLE_USER, CONSOLE_PASSWORD = "demo", "demo-console"


class DemoFailed(Exception):
    """A step did not happen in time; the message says which."""


class Child:
    """A subprocess whose stdout/stderr lines (JSON when they parse) land in one queue."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.text: list[str] = []
        self._changed = asyncio.Event()
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(proc.stdout)),
            asyncio.create_task(self._read(proc.stderr)),
        ]

    @classmethod
    async def start(cls, name: str, argv: list[str], env: dict[str, str]) -> Child:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **env},
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops its children
        )
        return cls(name, proc)

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            text = raw.decode("utf-8", "replace").rstrip()
            try:
                item = json.loads(text)
            except ValueError:
                item = None
            if isinstance(item, dict):
                self.lines.append(item)
            else:
                self.text.append(text)
            self._changed.set()

    async def wait(self, pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        seen = 0
        try:
            async with asyncio.timeout(STEP_TIMEOUT_S):
                while True:
                    for item in self.lines[seen:]:
                        with contextlib.suppress(KeyError, TypeError):
                            if pred(item):
                                return item
                    seen = len(self.lines)
                    if self.proc.returncode is not None:
                        break
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pass
        last = (self.text[-1:] or [json.dumps(self.lines[-1])] if self.lines else [""])[0]
        raise DemoFailed(f"{self.name}: no {what} within {STEP_TIMEOUT_S:.0f} s (last: {last})")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


class Narrator:
    """Prints one timestamped line per step, relative to the press."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def mark(self) -> None:
        self.t0 = time.perf_counter()

    def say(self, who: str, what: str, *, timed: bool = True) -> None:
        stamp = f"+{(time.perf_counter() - self.t0) * 1000:7.1f} ms" if timed else " " * 11
        print(f"  {stamp}  {who:<8} {what}", flush=True)


def write_site(root: Path, port: int, box_path: str) -> tuple[Path, Path]:
    keys = root / "keys"
    write_keypair(keys, "gateway")
    write_keypair(keys, "center")
    gateway = root / "gateway.toml"
    gateway.write_text(f"""# written by alarmgw-sim demo
[gateway]
site = "{SITE}"
id = "{GW}"
key_file = "keys/gateway.key"
state_dir = "state/gateway"

[location]
name = "South gate guardhouse"
address = "Xiangmihu Road 1, Futian, Shenzhen"
lat = 22.5431
lon = 114.0287
phone = "+86-755-0000-0000"

[mqtt]
host = "127.0.0.1"
port = {port}
prefix = "{PREFIX}"
keepalive_s = 10
center_keys = ["keys/center.pub"]

[[button]]
name = "gate-main"
pin = {BUTTON_PIN}
led_pin = {LED_PIN}

[[serial]]
name = "box-gate-main"
port = "{box_path}"
baud = 9600

[heartbeat]
interval_s = 30

[http]
listen = "127.0.0.1:0"
""")
    center = root / "center.toml"
    center.write_text(f"""# written by alarmgw-sim demo
[center]
key_file = "keys/center.key"
state_dir = "state/center"

[mqtt]
host = "127.0.0.1"
port = {port}
prefix = "{PREFIX}"

[[gateways]]
id = "{GW}"
site = "{SITE}"
public_keys = ["keys/gateway.pub"]
heartbeat_s = 30
""")
    return gateway, center


def alarmgw() -> str:
    return str(Path(sys.executable).parent / "alarmgw")


def accepted_alarm(input_ref: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: (
        e.get("result") == "accepted" and e.get("type") == "alarm" and e.get("input") == input_ref
    )


async def press_box(n: Narrator, box: BoxSimulator, center: Child, gateway: Child) -> None:
    print("\n1) The alarm button on the serial button box is pressed.")
    n.mark()
    seq = box.press()
    n.say("box", f"PRESS sent (frame seq {seq}); the box re-sends it until ACKed")
    await box.wait_ack(seq, STEP_TIMEOUT_S)
    reg = await gateway.wait(lambda e: e["event"] == "alarm registered", "registered alarm")
    n.say("gateway", f"alarm {reg['id']} signed (seq {reg['seq']}) and on disk; box ACKed")
    await box.wait_led("blink", STEP_TIMEOUT_S)
    n.say("box", "LED blinks: the alarm is registered")
    got = await center.wait(accepted_alarm("serial:box-gate-main"), "verified alarm")
    n.say("center", f"ALARM verified: {SITE}/{GW}, input {got['input']}, code {got['code']}")
    await gateway.wait(
        lambda e: e["event"] == "acknowledged by the center" and e["id"] == reg["id"], "ack"
    )
    n.say("gateway", "the center's signed ack arrived and verified; alarm leaves the queue")
    await box.wait_led("solid", STEP_TIMEOUT_S)
    n.say("box", "LED solid: the command center has it")


async def press_gpio(n: Narrator, gpio: GpioSimClient, center: Child, gateway: Child) -> None:
    print(f"\n2) The GPIO button 'gate-main' (BCM {BUTTON_PIN}) is pressed.")
    n.mark()
    await gpio.press(BUTTON_PIN)
    n.say("button", f"pin {BUTTON_PIN} pulled low")
    reg = await gateway.wait(
        lambda e: e["event"] == "alarm registered" and e["input"] == "gpio:gate-main",
        "registered GPIO alarm",
    )
    n.say("gateway", f"alarm {reg['id']} signed (seq {reg['seq']}) and on disk")
    got = await center.wait(accepted_alarm("gpio:gate-main"), "verified GPIO alarm")
    n.say("center", f"ALARM verified: {SITE}/{GW}, input {got['input']}, code {got['code']}")
    await gateway.wait(
        lambda e: e["event"] == "acknowledged by the center" and e["id"] == reg["id"], "ack"
    )
    n.say("gateway", "the center's signed ack arrived and verified")
    await gpio.wait_led(LED_PIN, "solid", STEP_TIMEOUT_S)
    n.say("led", f"LED on pin {LED_PIN} solid: the command center has it")
    await gpio.release(BUTTON_PIN)


def box_event(kind: str, code: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: (
        e.get("result") == "accepted"
        and e.get("type") == kind
        and e.get("code") == code
        and e.get("device") == "serial:box-gate-main"
    )


async def open_box_cover(n: Narrator, box: BoxSimulator, center: Child) -> None:
    """Site supervision: a trouble and its restore reach the center."""
    print("\n3) Someone opens the button box's cover, then closes it again.")
    n.mark()
    box.tamper("open")
    n.say("box", "TAMPER,state=open sent")
    got = await center.wait(box_event("trouble", "137"), "tamper trouble")
    n.say("center", f"TROUBLE 137 (tamper) {got['device']}: {got['detail']}")
    box.tamper("closed")
    n.say("box", "TAMPER,state=closed sent")
    got = await center.wait(box_event("restore", "137"), "tamper restore")
    n.say("center", f"RESTORE 137 (tamper) {got['device']}: {got['detail']}")


def console_available() -> bool:
    """The center's web console is part of this installation (``center/console``)."""
    return importlib.util.find_spec("center.console") is not None


async def add_fleet_and_console(root: Path, center_toml: Path, fleet: int, seed: int) -> str | None:
    """Append the fleet's schools (and, when the console exists, a ``[console]`` table and a
    demo login) to the center's config; the console's URL, or None."""
    extra = []
    if fleet:
        extra.append(gateway_tables(root, make_schools(fleet, seed), heartbeat_s=30))
    url = None
    if console_available():
        port = free_port()
        extra.append(f'[console]\nlisten = "127.0.0.1:{port}"\n')
        url = f"http://127.0.0.1:{port}/"
    with center_toml.open("a", encoding="utf-8") as fh:
        fh.write("\n" + "\n".join(extra))
    if url is not None:
        (root / "state" / "center").mkdir(parents=True, exist_ok=True, mode=0o700)
        proc = await asyncio.create_subprocess_exec(
            alarmgw(), "center", "user", "add", CONSOLE_USER, "--role", "dispatcher",
            "--config", str(center_toml), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _out, err = await proc.communicate(CONSOLE_PASSWORD.encode() + b"\n")
        if proc.returncode != 0:
            print(f"  console  no demo login: {err.decode(errors='replace').strip()}")
    return url


async def start_fleet(root: Path, port: int, fleet: int, seed: int, center: Child) -> Child:
    """``alarmgw-sim fleet`` with the schools added to the center's registry."""
    argv = [str(Path(sys.executable).parent / "alarmgw-sim"), "fleet", "--gateways", str(fleet),
            "--seed", str(seed), "--port", str(port), "--center-pub", str(root / "keys/center.pub"),
            "--state", str(root / "state" / "fleet"), "--json", "--stay"]  # fmt: skip
    child = await Child.start("fleet", argv, {})
    last = make_schools(fleet, seed)[-1].gw
    await center.wait(
        lambda e: e.get("type") == "gateway-status" and e["gw"] == last, "the fleet online"
    )
    return child


def show_console(url: str | None) -> None:
    if url is not None:
        print(f"\nCenter console: {url}  (login {CONSOLE_USER} / {CONSOLE_PASSWORD})", flush=True)


async def run_demo(keep: bool, *, hold: bool = False, fleet: int = 0, seed: int = 1) -> int:
    root = Path(tempfile.mkdtemp(prefix="alarmgw-demo-"))
    n = Narrator()
    children: list[Child] = []
    broker = Mosquitto(root / "broker")
    box = BoxSimulator(box_id="box-gate-main", fw="1.4.2")
    started_box = False
    try:
        print("alarmgw demo: broker + center + gateway + simulated button box and GPIO button")
        print(f"  working directory (keys, configs, state): {root}")
        broker.start()
        print(f"  broker   Mosquitto on 127.0.0.1:{broker.port}")
        await box.start()
        started_box = True
        print(f"  box      simulated button box on {box.path}")
        gateway_toml, center_toml = write_site(root, broker.port, box.path)
        console_url = await add_fleet_and_console(root, center_toml, fleet, seed)
        center = await Child.start(
            "center", [alarmgw(), "center", "--config", str(center_toml), "--json"], {}
        )
        children.append(center)
        await center.wait(lambda e: e["event"] == "subscribed", "broker subscription")
        print("  center   reference command center: connected, trusting the gateway's key")
        if fleet:
            children.append(await start_fleet(root, broker.port, fleet, seed, center))
            print(f"  fleet    {fleet} simulated schools online (alarmgw-sim fleet)")
        sock = root / "gpio.sock"
        env = {"GPIOZERO_PIN_FACTORY": "mock", "ALARMGW_GPIO_SIM": str(sock)}
        gateway = await Child.start(
            "gateway", [alarmgw(), "run", "--config", str(gateway_toml)], env
        )
        children.append(gateway)
        await center.wait(
            lambda e: e.get("type") == "state" and e.get("status") == "online", "gateway online"
        )
        print("  gateway  running, connected; the center saw its signed 'online' state")
        await box.wait_linked(STEP_TIMEOUT_S)
        await gateway.wait(lambda e: e["event"] == "GPIO simulator listening", "GPIO simulator")

        await press_box(n, box, center, gateway)
        async with GpioSimClient(sock) as gpio:
            await press_gpio(n, gpio, center, gateway)
        await open_box_cover(n, box, center)
        if hold:
            show_console(console_url)
            print(
                "\nThe site keeps running for you to look at; Ctrl-C stops everything.", flush=True
            )
            await asyncio.Event().wait()

        print("\n4) The gateway is stopped cleanly.")
        n.mark()
        await gateway.stop()
        await center.wait(
            lambda e: e.get("type") == "state" and e.get("status") == "offline", "offline state"
        )
        n.say("center", "the gateway said 'offline' (signed) before it left")
        print("\nDemo complete: 2 presses, 2 alarms verified and acknowledged, LEDs solid.")
        if console_url is not None:
            print("The console ran beside the center; `make console` keeps one running:")
            show_console(console_url)
        return 0
    except DemoFailed as err:
        print(f"\nalarmgw demo FAILED: {err}", file=sys.stderr)
        for child in children:
            for line in child.text[-5:]:
                print(f"  [{child.name}] {line}", file=sys.stderr)
        return 1
    finally:
        for child in reversed(children):
            await child.stop()
        if started_box:
            await box.stop()
        broker.stop()
        if keep:
            print(f"  kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run_demo(args.keep, hold=args.hold, fleet=args.fleet, seed=args.seed))
    except KeyboardInterrupt:
        print("\ndemo interrupted; everything it started was stopped", file=sys.stderr)
        return 130


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "demo",
        help="end-to-end demo: broker, center, gateway, box and GPIO button; one press each",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument(
        "--hold",
        action="store_true",
        help="after the presses, keep the site running until Ctrl-C",
    )
    p.add_argument(
        "--fleet", type=int, default=0, metavar="N", help="also N simulated schools (0: none)"
    )
    p.add_argument("--seed", type=int, default=1, help="the fleet's seed")
    p.set_defaults(func=_run)
