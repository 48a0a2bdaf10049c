"""``alarmgw status`` believes only the daemon of its config: a process squatting the
``[http]`` port is reported as such, a ``/status`` it cannot read is one line, and the real
daemon, once it has the port, is believed."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.broker import free_port
from gateway.technician import token as tok
from tests.harness import Site
from tests.helpers import wait_line
from tests.http_helpers import assert_one_line_error, cli

pytestmark = pytest.mark.slow

HEALTHY = {"gateway": {"site": "x"}, "health": {"ok": True, "problems": []}}


@contextmanager
def squatter(port: int, state: Path, *, prove: bool) -> Iterator[None]:
    """An HTTP server on ``port`` answering ``/status`` with a healthy-looking, incomplete
    document; with ``prove``, it also knows the daemon's token (a daemon of another
    version, say)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(HEALTHY).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            nonce = self.headers.get(tok.NONCE)
            if prove and nonce:
                self.send_header(tok.PROOF, tok.daemon_proof(tok.read_token(state), nonce))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_status_is_not_fooled_by_a_squatter_on_the_http_port(site: Site) -> None:
    port = free_port()
    site.write_configs()
    toml = site.gateway_toml.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"')
    site.gateway_toml.write_text(toml)
    state = site.root / "state" / "gateway"
    status = ("status", "--config", str(site.gateway_toml))
    with squatter(port, state, prove=False):
        gateway = site.start_gateway()
        await wait_line(gateway, lambda e: e.get("event") == "http endpoint cannot listen")
        proc = await asyncio.to_thread(cli, *status)
        assert_one_line_error(proc, "not the alarmgw daemon of this config")
        assert "OK" not in proc.stdout
    with squatter(port, state, prove=True):
        proc = await asyncio.to_thread(cli, *status)
        assert_one_line_error(proc, "cannot read")
        proc = await asyncio.to_thread(cli, *status, "--json")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
    # The squatter is gone: the daemon gets the port and is believed.
    await wait_line(gateway, lambda e: e.get("event") == "http endpoint listening", 90)
    proc = await asyncio.to_thread(cli, *status)
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
