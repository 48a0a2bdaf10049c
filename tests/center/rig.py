"""A command center under test: keys, a config for a backend, a broker, the real
``alarmgw center`` process(es) and fake gateways."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_sim.broker import Mosquitto, free_port
from gateway.contract.signing import SigningKey, write_keypair
from tests.center.helpers import GW, PREFIX, SITE
from tests.harness import Proc, alarmgw_cmd


@dataclass
class CenterRig:
    root: Path
    broker: Mosquitto
    backend: dict[str, Any]
    gateways: list[tuple[str, str]] = field(default_factory=lambda: [(SITE, GW)])
    share_group: str | None = None
    procs: list[Proc] = field(default_factory=list)
    health_port: int = 0
    gw_key: SigningKey = field(init=False)
    center_key: SigningKey = field(init=False)

    def __post_init__(self) -> None:
        keys = self.root / "keys"
        self.gw_key, _, _ = write_keypair(keys, "gateway")
        self.center_key, _, _ = write_keypair(keys, "center")

    def config(self, name: str = "center", *, extra_gateway: str = "") -> Path:
        store = ""
        if self.backend["kind"] == "postgresql":
            store = f'store = "postgresql"\ndsn = "{self.backend["dsn"]}"\n'
        share = f'share_group = "{self.share_group}"\n' if self.share_group else ""
        regs = "".join(
            f'[[gateways]]\nid = "{gw}"\nsite = "{site}"\npublic_keys = ["keys/gateway.pub"]\n'
            f"heartbeat_s = 30\n{extra_gateway}\n"
            for site, gw in self.gateways
        )
        self.health_port = free_port()
        path = self.root / f"{name}.toml"
        path.write_text(
            f'[center]\nkey_file = "keys/center.key"\nstate_dir = "state/{name}"\n{store}\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {self.broker.port}\nprefix = "{PREFIX}"\n'
            f'keepalive_s = 5\n{share}\n[health]\nlisten = "127.0.0.1:{self.health_port}"\n\n{regs}'
        )
        return path

    def start(self, name: str = "center", *, as_json: bool = True, **kw: Any) -> Proc:
        args = ["center", "--config", str(self.config(name, **kw))]
        proc = Proc(alarmgw_cmd(*args, *(["--json"] if as_json else [])), name=name)
        self.procs.append(proc)
        proc.wait_for(lambda e: e["event"] == "subscribed", stderr=True, timeout=60)
        return proc

    def cli(self, *args: str, name: str = "center") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            alarmgw_cmd("center", *args, "--config", str(self.root / f"{name}.toml")),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def cli_json(self, *args: str) -> list[dict[str, Any]]:
        done = self.cli(*args, "--json")
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
