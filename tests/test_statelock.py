"""One daemon per state directory: a second ``alarmgw run`` on the same state_dir refuses to
start with one line naming the holder, and the lock never outlives its process."""

from __future__ import annotations

import subprocess

from gateway.statelock import StateDirLocked, StateLock
from tests.harness import Site, alarmgw_cmd


def test_a_second_daemon_on_the_same_state_dir_refuses_to_start(site: Site) -> None:
    site.write_configs()
    first = site.start_gateway()
    first.wait_for(lambda e: e["event"] == "gateway started")
    second = subprocess.run(
        alarmgw_cmd("run", "--config", str(site.gateway_toml)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode != 0
    out = second.stdout + second.stderr
    assert f"already in use by process {first.proc.pid}" in out, out
    assert "Traceback" not in out
    assert first.proc.poll() is None  # the running daemon is untouched
    first.kill()
    again = site.start_gateway()  # kill -9 released the lock with the process
    again.wait_for(lambda e: e["event"] == "gateway started")
    again.stop()


def test_the_lock_is_exclusive_and_released(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = StateLock(tmp_path)
    a.acquire()
    b = StateLock(tmp_path)
    try:
        b.acquire()
    except StateDirLocked as err:
        assert "already in use" in str(err)
    else:
        raise AssertionError("a second lock on the same directory was granted")
    a.release()
    b.acquire()
    b.release()
