"""``make demo``'s program runs end to end, and leaves nothing behind (also on Ctrl-C)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SIM = str(Path(sys.executable).parent / "alarmgw-sim")


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def workdir_of(output: str) -> str:
    match = re.search(r"working directory \(keys, configs, state\): (\S+)", output)
    assert match, output
    return match.group(1)


def test_demo_runs_end_to_end() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GPIOZERO_PIN_FACTORY"}
    out = subprocess.run([SIM, "demo"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Demo complete: 2 presses, 2 alarms verified and acknowledged" in out.stdout
    assert out.stdout.count("LED solid") == 1 and "LED on pin 27 solid" in out.stdout
    root = workdir_of(out.stdout)
    assert not Path(root).exists()
    assert not processes_mentioning(root)


def test_demo_ctrl_c_stops_everything() -> None:
    # --hold keeps every process up after the presses, so the SIGINT always lands while the
    # broker, center and gateway run (without it a fast demo could finish first).
    proc = subprocess.Popen(
        [SIM, "demo", "--hold"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    seen = ""
    while "Ctrl-C stops everything" not in seen:
        line = proc.stdout.readline()
        assert line, seen  # the demo ended before holding
        seen += line
    root = workdir_of(seen)
    assert processes_mentioning(f"{root}/gateway.toml")
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, seen + rest + err
    assert "everything it started was stopped" in err
    assert not processes_mentioning(root)
    assert not Path(root).exists()
