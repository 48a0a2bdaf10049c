"""Test harness: a throwaway site (keys, configs, broker) and real subprocesses for the
gateway and the center, each stopped by the test that started it."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_sim.broker import Mosquitto
from gateway.contract.signing import write_keypair

SITE = "sz-futian-xmh-014"
GW = "gw-014-a"
PREFIX = "schoolalarm/v1"
BIN = Path(sys.executable).parent


def alarmgw_cmd(*args: str) -> list[str]:
    return [str(BIN / "alarmgw"), *args]


class Proc:
    """A subprocess whose stdout lines are collected by a thread (parsed as JSON when they
    are JSON), with helpers to wait for a line matching a predicate."""

    def __init__(
        self, argv: list[str], *, env: dict[str, str] | None = None, name: str = ""
    ) -> None:
        self.name = name or argv[0]
        self.argv = argv
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            start_new_session=True,
        )
        self.lines: list[Any] = []
        self.errors: list[str] = []
        self._new = threading.Condition()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.errors), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream: Any, sink: list[Any]) -> None:
        for raw in stream:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                item: Any = json.loads(text)
            except ValueError:
                item = text
            with self._new:
                sink.append(item)
                self._new.notify_all()

    def wait_for(
        self, pred: Callable[[Any], bool], timeout: float = 20.0, *, stderr: bool = False
    ) -> Any:
        """The first line (stdout, or stderr) satisfying ``pred``; AssertionError on timeout."""
        sink = self.errors if stderr else self.lines
        deadline = time.monotonic() + timeout
        seen = 0
        with self._new:
            while True:
                for item in sink[seen:]:
                    try:
                        if pred(item):
                            return item
                    except (KeyError, TypeError, AttributeError):
                        pass
                seen = len(sink)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._alive_readers()):
                    raise AssertionError(
                        f"{self.name}: no matching line within {timeout}s; "
                        f"exit={self.proc.poll()} last stdout={self.lines[-5:]} "
                        f"last stderr={self.errors[-5:]}"
                    )
                self._new.wait(min(left, 0.2))

    def _alive_readers(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def matching(self, pred: Callable[[Any], bool], *, stderr: bool = False) -> list[Any]:
        out = []
        for item in list(self.errors if stderr else self.lines):
            try:
                if pred(item):
                    out.append(item)
            except (KeyError, TypeError, AttributeError):
                pass
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._threads:
            t.join(2)
        return int(self.proc.returncode)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class Site:
    """Keys, configs and a broker for one gateway and one center, in a temp dir."""

    root: Path
    broker: Mosquitto
    buttons: list[dict[str, Any]] = field(default_factory=list)
    boxes: list[dict[str, Any]] = field(default_factory=list)
    ack_timeout_s: float = 15.0
    resend_initial_s: float = 0.5
    heartbeat_s: float = 30.0  # the gateway's [heartbeat] interval_s and the center's heartbeat_s
    # More single tables, e.g. {"bollard": {...}, "camera": {...}}. The self-check's clock test
    # is off by default: a test machine's clock need not be NTP-synchronised (it would be 626).
    tables: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"selfcheck": {"clock": False}}
    )
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        keys = self.root / "keys"
        self.gw_key, _, self.gw_pub = write_keypair(keys, "gateway")
        self.center_key, _, self.center_pub = write_keypair(keys, "center")

    @property
    def gateway_toml(self) -> Path:
        return self.root / "gateway.toml"

    @property
    def center_toml(self) -> Path:
        return self.root / "center.toml"

    def write_configs(self) -> None:
        parts = [
            f"""[gateway]
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
port = {self.broker.port}
prefix = "{PREFIX}"
keepalive_s = 5
center_keys = ["keys/center.pub"]

[alarm]
ack_timeout_s = {self.ack_timeout_s}
resend_initial_s = {self.resend_initial_s}
resend_max_s = 2.0

[heartbeat]
interval_s = {self.heartbeat_s}

[http]
listen = "127.0.0.1:0"
"""
        ]
        for name, table in self.tables.items():
            parts.append(
                f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
            )
        for b in self.buttons:
            parts.append("[[button]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in b.items()))
        for s in self.boxes:
            parts.append("[[serial]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in s.items()))
        self.gateway_toml.write_text("\n".join(parts))
        self.center_toml.write_text(
            f"""[center]
key_file = "keys/center.key"
state_dir = "state/center"

[mqtt]
host = "127.0.0.1"
port = {self.broker.port}
prefix = "{PREFIX}"
keepalive_s = 5

[[gateways]]
id = "{GW}"
site = "{SITE}"
public_keys = ["keys/gateway.pub"]
heartbeat_s = {self.heartbeat_s}
"""
        )

    def start_center(self) -> Proc:
        proc = Proc(
            alarmgw_cmd("center", "--config", str(self.center_toml), "--json"), name="center"
        )
        self.procs.append(proc)
        proc.wait_for(lambda e: e["event"] == "subscribed", stderr=True)
        return proc

    def start_gateway(self, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(alarmgw_cmd("run", "--config", str(self.gateway_toml)), env=env, name="gateway")
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()


def is_event(result: str, kind: str = "alarm") -> Callable[[Any], bool]:
    return lambda e: isinstance(e, dict) and e.get("result") == result and e.get("type") == kind


def drain(q: queue.Queue[Any]) -> list[Any]:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out
