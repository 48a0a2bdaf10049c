"""Deployment: systemd/alarmgw.service and scripts/install.sh, against a scratch root.

- The unit as installed passes ``systemd-analyze verify`` and rates <= 2.0 in
  ``systemd-analyze security --offline=yes``, and has what the gatehouse Pi needs.
- install.sh creates the user and groups, directories, config, key and the enabled unit;
  a second run changes nothing (and keeps an edited config); uninstall removes the program
  and the unit but keeps config, keys and the outbox; --purge removes those too.

systemd-analyze, systemd-sysusers and systemctl come from the apt package ``systemd``, which
scripts/ensure-system-deps.sh installs; only where none can be had (and not in CI) does the
test skip.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.contract.signing import load_signing_key

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "scripts" / "install.sh"
VENV = Path(sys.executable).parent.parent
MAX_EXPOSURE = 2.0


def need_systemd_tools() -> None:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("install.sh creates users and chowns files: run the tests as root (CI does)")
    missing = [
        t for t in ("systemd-analyze", "systemd-sysusers", "systemctl") if not shutil.which(t)
    ]
    if missing and not os.environ.get("CI"):
        pytest.skip(
            f"{', '.join(missing)} not installed (scripts/ensure-system-deps.sh installs them)"
        )
    assert not missing, f"CI must have {missing}: scripts/ensure-system-deps.sh installs them"


def run_install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def installed(root: Path) -> Path:
    root.mkdir()
    result = run_install(root, "--venv", str(VENV))
    assert result.returncode == 0, result.stderr + result.stdout
    return root / "etc/systemd/system/alarmgw.service"


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path under ``root``: mode, owner, group, and content hash or link target."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            what = "-> " + os.readlink(path)
        elif path.is_file():
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = "dir"
        out[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, what)
    return out


def passwd(root: Path, name: str) -> list[str]:
    for line in (root / "etc/passwd").read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")
    raise AssertionError(f"no user {name}")


def group_members(root: Path, name: str) -> list[str]:
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields[3].split(",") if fields[3] else []
    raise AssertionError(f"no group {name}")


def unit_settings(unit: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_has_what_the_gatehouse_needs() -> None:
    s = unit_settings(REPO / "systemd" / "alarmgw.service")
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["Restart"] == ["always"] and s["StartLimitIntervalSec"] == ["0"]
    assert float(s["WatchdogSec"][0]) >= 30  # checks every 15 s; a blocked loop: restart
    assert s["User"] == ["alarmgw"] and s["SupplementaryGroups"] == ["gpio dialout"]
    assert s["StateDirectory"] == ["alarmgw"]
    assert "LG_WD=/run/alarmgw" in s["Environment"] and s["RuntimeDirectory"] == ["alarmgw"]
    assert {"char-gpiochip rw", "char-ttyAMA rw"} <= set(s["DeviceAllow"])
    assert s["DevicePolicy"] == ["closed"]
    assert "PrivateDevices" not in s  # it would hide /dev/gpiochip* and the serial ports
    assert s["ExecStart"] == [
        "/opt/alarmgw/venv/bin/alarmgw run --config /etc/alarmgw/gateway.toml"
    ]


def test_installed_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    need_systemd_tools()
    unit = installed(tmp_path / "root")
    assert (
        f"ExecStart={VENV}/bin/alarmgw run --config /etc/alarmgw/gateway.toml" in unit.read_text()
    )
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    # verify exits 0 on mere warnings (an unknown key, say): none may name our unit.
    assert verify.returncode == 0, verify.stderr
    assert "alarmgw.service" not in verify.stdout + verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    found = re.search(r"Overall exposure level for alarmgw\.service: ([0-9.]+)", security.stdout)
    assert found, security.stdout + security.stderr
    assert float(found[1]) <= MAX_EXPOSURE, security.stdout


def test_install_is_idempotent_and_uninstall_keeps_what_matters(tmp_path: Path) -> None:
    need_systemd_tools()
    root = tmp_path / "root"
    root.mkdir()
    first = run_install(root, "--venv", str(VENV))
    assert first.returncode == 0, first.stderr + first.stdout
    kid = re.search(r"new gateway key, kid ([0-9a-f]{16})", first.stdout)

    user = passwd(root, "alarmgw")
    uid, gid = int(user[2]), int(user[3])
    assert user[6].endswith("nologin") and user[5] == "/var/lib/alarmgw"
    assert "alarmgw" in group_members(root, "gpio")
    assert "alarmgw" in group_members(root, "dialout")
    etc = root / "etc/alarmgw"
    assert (etc / "gateway.toml").read_text() == (REPO / "config/gateway.example.toml").read_text()
    key = etc / "gateway.key"
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_uid == uid
    assert kid and load_signing_key(key).kid == kid[1]
    assert (etc / "gateway.toml").stat().st_gid == gid and etc.stat().st_mode & 0o777 == 0o750
    state = root / "var/lib/alarmgw"
    assert state.stat().st_uid == uid and state.stat().st_mode & 0o777 == 0o700
    wants = root / "etc/systemd/system/multi-user.target.wants/alarmgw.service"
    assert os.readlink(wants) == "/etc/systemd/system/alarmgw.service"
    # `alarmgw` on PATH: /usr/local/bin/alarmgw is the venv's entry point.
    link = root / "usr/local/bin/alarmgw"
    assert os.readlink(link) == f"{VENV}/bin/alarmgw"

    # Again: nothing changes, no new key; an edited config survives.
    before = snapshot(root)
    again = run_install(root, "--venv", str(VENV))
    assert again.returncode == 0, again.stderr
    assert "new gateway key" not in again.stdout
    assert snapshot(root) == before
    edited = (etc / "gateway.toml").read_text().replace("replace-me-gw", "gw-edited")
    (etc / "gateway.toml").write_text(edited)
    assert run_install(root, "--venv", str(VENV)).returncode == 0
    assert (etc / "gateway.toml").read_text() == edited

    removed = run_install(root, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    for gone in (
        "etc/systemd/system/alarmgw.service",
        "etc/systemd/system/multi-user.target.wants/alarmgw.service",
        "etc/sysusers.d/alarmgw.conf",
        "etc/udev/rules.d/60-alarmgw-gpio.rules",
        "usr/local/bin/alarmgw",
    ):
        assert not (root / gone).is_symlink() and not (root / gone).exists(), gone
    assert key.exists() and (etc / "gateway.toml").read_text() == edited and state.is_dir()
    assert run_install(root, "--uninstall").returncode == 0  # idempotent too

    purged = run_install(root, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not etc.exists() and not state.exists()


def test_install_refuses_what_it_cannot_do_right(tmp_path: Path) -> None:
    need_systemd_tools()
    root = tmp_path / "root"
    root.mkdir()
    # A venv built inside a scratch root would point at the scratch path: refused.
    no_venv = run_install(root)
    assert no_venv.returncode == 2 and "--root needs --venv" in no_venv.stderr
    assert list(root.iterdir()) == []  # refused before touching anything
    assert run_install(root, "--purge").returncode == 2
    assert run_install(root, "--bogus").returncode == 2
    assert run_install(root, "--venv", str(tmp_path / "nothing")).returncode == 2


def test_install_leaves_a_foreign_alarmgw_on_path_alone(tmp_path: Path) -> None:
    need_systemd_tools()
    root = tmp_path / "root"
    (root / "usr/local/bin").mkdir(parents=True)
    theirs = root / "usr/local/bin/alarmgw"
    theirs.write_text("#!/bin/sh\necho someone else's\n")
    result = run_install(root, "--venv", str(VENV))
    assert result.returncode == 0, result.stderr
    assert "is not a link: left alone" in result.stdout
    assert run_install(root, "--uninstall").returncode == 0
    assert theirs.read_text() == "#!/bin/sh\necho someone else's\n"
