"""``[dc09]`` in the gateway config: defaults, the key file, one line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.contract.signing import write_keypair
from gateway.delivery.dc09.transmitter import settings_from_config
from gateway.errors import ConfigError

BASE = """[gateway]
site = "s-1"
id = "g-1"
key_file = "keys/gateway.key"
state_dir = "state"

[location]
name = "Gate"
address = "Road 1"
lat = 1.0
lon = 2.0
phone = "110"

[mqtt]
center_keys = ["keys/center.pub"]

[[button]]
name = "gate-main"
pin = 17

[[serial]]
name = "box"
port = "/dev/null"
"""


def write(tmp_path: Path, dc09: str) -> Path:
    write_keypair(tmp_path / "keys", "gateway")
    write_keypair(tmp_path / "keys", "center")
    path = tmp_path / "gateway.toml"
    path.write_text(BASE + "\n[dc09]\n" + dc09)
    return path


def test_defaults_and_settings(tmp_path: Path) -> None:
    (tmp_path / "dc09.key").write_text("41" * 32 + "\n")
    cfg = load_config(
        write(tmp_path, 'host = "127.0.0.1"\naccount = "AB12"\nkey_file = "dc09.key"\n')
    )
    assert cfg.dc09 is not None
    assert (cfg.dc09.port, cfg.dc09.transport, cfg.dc09.receiver, cfg.dc09.line) == (
        12300,
        "tcp",
        "R1",
        "L1",
    )
    assert cfg.dc09.event_types() == {"alarm", "test"}
    s = settings_from_config(cfg.dc09, ["gpio:gate-main", "serial:box"])
    assert s.key == b"A" * 32
    assert s.zones == {"gpio:gate-main": 1, "serial:box": 2}
    assert s.receivers == (("127.0.0.1", 12300),)


def test_all_events_and_secondary(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            'host = "a"\naccount = "123"\nevents = "all"\nsecondary_host = "b"\n'
            "secondary_port = 9\n",
        )
    )
    assert cfg.dc09 is not None
    assert cfg.dc09.event_types() == {"alarm", "test", "trouble", "restore"}
    s = settings_from_config(cfg.dc09, [])
    assert s.key is None
    assert s.receivers == (("a", 12300), ("b", 9))


@pytest.mark.parametrize(
    ("dc09", "needle"),
    [
        ('host = "a"\naccount = "ab12"\n', "dc09.account"),
        ('host = "a"\naccount = "AB12"\nreceiver = "1"\n', "dc09.receiver"),
        ('host = "a"\naccount = "AB12"\ntransport = "sctp"\n', "dc09.transport"),
        ('host = "a"\naccount = "AB12"\nkey_file = "missing.key"\n', "cannot read"),
        ('host = "a"\naccount = "AB12"\nkey_file = "short.key"\n', "32, 48 or 64 hex digits"),
        ('host = "a"\naccount = "AB12"\nevents = "some"\n', "dc09.events"),
        ('account = "AB12"\n', "dc09.host"),
    ],
)
def test_problems_are_one_line_each(tmp_path: Path, dc09: str, needle: str) -> None:
    (tmp_path / "short.key").write_text("4142")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, dc09))
    assert any(needle in p for p in info.value.problems), info.value.problems
    assert all("\n" not in p for p in info.value.problems)
