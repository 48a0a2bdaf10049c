"""Disk full: an alarm that cannot be committed is still published live from
memory, with a loud trouble; once space returns it is committed and a restore follows.
The gateway's state_dir sits on a 1 MiB tmpfs that the test mounts and fills."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fault.common import assert_exactly_once, boxes, linked, wait_accepted
from tests.harness import Site

pytestmark = pytest.mark.slow


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "statefs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path) -> Path:
    """Write a file until the filesystem refuses more; returns it."""
    filler = mount / "filler"
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as fh:
        while True:
            fh.write(b"\0" * 4096)
            os.fsync(fh.fileno())
    return filler


@pytest.mark.timeout(180)
async def test_alarm_delivered_while_the_disk_is_full(site: Site, small_fs: Path) -> None:
    async with boxes(site, 1) as sims:
        site.write_configs()
        text = site.gateway_toml.read_text()
        site.gateway_toml.write_text(
            text.replace('state_dir = "state/gateway"', f'state_dir = "{small_fs / "gw"}"')
        )
        center = site.start_center()
        gateway = site.start_gateway()
        await linked(sims)
        (box,) = sims.values()
        box.press()
        await wait_accepted(center, 1, 30)

        filler = await asyncio.to_thread(fill, small_fs)
        seq = box.press()
        await box.wait_ack(seq, 30)
        await wait_accepted(center, 2, 30)  # delivered although nothing could be committed
        await box.wait_led("solid", 30)
        await asyncio.to_thread(
            gateway.wait_for, lambda e: e["event"] == "event NOT durable, sending from memory"
        )
        trouble = await asyncio.to_thread(
            center.wait_for,
            lambda e: e.get("type") == "trouble" and e.get("device") == "gateway",
            30,
        )
        assert trouble["code"] == "330"

        filler.unlink()  # space returns
        restore = await asyncio.to_thread(
            center.wait_for,
            lambda e: e.get("type") == "restore" and e.get("device") == "gateway",
            30,
        )
        assert restore["code"] == "330"
        box.press()  # and the durable path works again
        await wait_accepted(center, 3, 30)
        site.close()  # stop the gateway before the tmpfs goes away
    assert_exactly_once(center, 3)
