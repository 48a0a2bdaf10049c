"""``POST /test-alarm`` against the running daemon: refused without the local token,
rate-limited with it, and bounded by the tests still queued."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from firmware_sim.box import BoxSimulator
from gateway.technician import token as tok
from gateway.technician.health import MAX_QUEUED_TESTS
from tests.harness import Site
from tests.helpers import poll
from tests.http_helpers import assert_one_line_error, auth, cli, request, wait_addr

pytestmark = pytest.mark.slow


def post(addr: str, state: Path, headers: dict[str, str] | None = None) -> tuple[int, object]:
    if headers is None:
        headers = auth(state, "POST", "/test-alarm")
    return request(addr, "POST", "/test-alarm", {}, headers)


async def test_test_alarm_needs_the_token_and_is_rate_limited(site: Site) -> None:
    async with BoxSimulator(box_id="box-gate-main") as box:
        site.boxes = [{"name": "box-gate-main", "port": box.path, "heartbeat_s": 2.0}]
        site.write_configs()
        site.start_gateway()  # no center: the tests stay queued
        await box.wait_linked(30)
        state = site.root / "state" / "gateway"
        addr = wait_addr(state)
        assert stat.S_IMODE((state / tok.TOKEN_FILE).stat().st_mode) == 0o600

        # Without the token, with a wrong one, with a replayed nonce: 401, nothing raised.
        code, body = await asyncio.to_thread(post, addr, state, {})
        assert code == 401 and "not authenticated" in body["error"], body  # type: ignore[index]
        forged = {tok.NONCE: tok.new_nonce(), tok.AUTH: "0" * 64}
        code, _ = await asyncio.to_thread(post, addr, state, forged)
        assert code == 401
        once = auth(state, "POST", "/test-alarm")
        code, _ = await asyncio.to_thread(post, addr, state, once)
        assert code == 202
        code, body = await asyncio.to_thread(post, addr, state, once)
        assert code == 401 and "reused" in body["error"], body  # type: ignore[index]

        # A burst: a few go through, then 429.
        codes: list[int] = []
        while 429 not in codes:
            code, body = await asyncio.to_thread(post, addr, state)
            codes.append(code)
        assert codes.count(202) <= 6, codes
        assert "too many test alarms" in body["error"], body  # type: ignore[index]

        # Sustained: at most MAX_QUEUED_TESTS wait for the ack, then every one is refused.
        def queue_full() -> object:
            code, body = post(addr, state)
            return body if code == 429 and "still wait" in body["error"] else None  # type: ignore[index]

        await asyncio.to_thread(poll, queue_full, 120, 0.5)
        _, st = await asyncio.to_thread(request, addr, "GET", "/status")
        pending = st["queue"]["by_type"]["test"]["pending"]
        assert pending <= MAX_QUEUED_TESTS, st["queue"]

        # The CLI authenticates itself; a refusal is one line.
        proc = await asyncio.to_thread(
            cli, "test-alarm", "--config", str(site.gateway_toml), "--timeout", "5"
        )
        assert_one_line_error(proc, "test alarm refused")
