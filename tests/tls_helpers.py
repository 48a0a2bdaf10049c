"""The production Mosquitto config (config/mosquitto/production.conf, acl and the alarmgw_acl
subscription plugin) on a free loopback port with a throwaway PKI, and the harness site's
configs switched to mTLS."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from firmware_sim.broker import Mosquitto
from firmware_sim.pki import TestPki

REPO = Path(__file__).resolve().parent.parent
MOSQUITTO_CONFIG = REPO / "config" / "mosquitto"


def build_acl_plugin(out_dir: Path) -> Path:
    """config/mosquitto/alarmgw_acl.c compiled the way docs/install.md says."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plugin = out_dir / "alarmgw_acl.so"
    source = MOSQUITTO_CONFIG / "alarmgw_acl.c"
    cmd = ["gcc", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", str(plugin), str(source)]
    built = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert built.returncode == 0, f"building {source.name} failed: {built.stderr}"
    return plugin


def render_production_conf(pki_dir: Path, port: int, log: Path, plugin: Path) -> str:
    """config/mosquitto/production.conf with test paths, port and logging; the ACL file and
    the subscription plugin are the shipped ones, unchanged. Every substitution must apply:
    a reshaped config fails here instead of silently testing something else."""
    text = (MOSQUITTO_CONFIG / "production.conf").read_text()
    substitutions = [
        ("listener 8883\n", f"listener {port} 127.0.0.1\n"),
        ("/etc/mosquitto/alarmgw/acl", str(MOSQUITTO_CONFIG / "acl")),
        ("/usr/local/lib/mosquitto/alarmgw_acl.so", str(plugin)),
        ("/etc/mosquitto/alarmgw/", f"{pki_dir}/"),
        ("persistence true\n", "persistence false\n"),
        ("log_dest syslog\n", f"log_dest file {log}\n"),
    ]
    for old, new in substitutions:
        assert old in text, f"production.conf no longer has {old!r}"
        text = text.replace(old, new)
    if os.geteuid() == 0:
        text += "user root\n"  # else Mosquitto drops to 'mosquitto' and cannot read keys
    return text


class ProductionMosquitto(Mosquitto):
    """A Mosquitto started with the rendered production config (TLS, mTLS, ACL)."""

    def __init__(self, workdir: Path, pki_dir: Path) -> None:
        super().__init__(workdir)
        self.pki_dir = pki_dir

    def _write_conf(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        plugin = build_acl_plugin(self.workdir)
        self.conf.write_text(render_production_conf(self.pki_dir, self.port, self.log, plugin))

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def tls_lines(pki: TestPki, cn: str, *, extra: str = "") -> str:
    """``[mqtt]`` lines for mTLS as the client ``cn`` (``center`` or ``site/gw``)."""
    issued = pki.center if cn == "center" else pki.gateways[cn]
    return (
        f'tls = true\nca_file = "{pki.ca.cert_file}"\n'
        f'cert_file = "{issued.cert_file}"\nkey_file = "{issued.key_file}"\n{extra}'
    )


def add_to_mqtt_section(toml: Path, lines: str) -> None:
    """Append ``lines`` to the ``[mqtt]`` table the harness wrote (after ``keepalive_s``)."""
    text = toml.read_text()
    anchor = "keepalive_s = 5\n"
    assert text.count(anchor) == 1, f"{toml}: harness config changed shape"
    toml.write_text(text.replace(anchor, anchor + lines))
