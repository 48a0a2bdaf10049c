"""Talking to the running daemon's local endpoint (gateway/technician/health.py) from the CLI.

The address comes from the config: ``state_dir/http.addr`` (written by the daemon with the
port it actually bound, which matters for ``listen = "...:0"``), else ``[http] listen``.
Nothing answering is the expected "daemon not running" case, reported in one line. Only an
answer proving the daemon's token (gateway/technician/token.py) is believed: whatever else
squats the port is reported as not the daemon.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.configtypes import split_host_port
from gateway.errors import AlarmgwError
from gateway.technician import token as tok
from gateway.technician.health import ADDR_FILE, connect_address


class DaemonUnavailable(AlarmgwError):
    """Nothing usable answers at the daemon's endpoint (stopped, starting, or stuck)."""


class DaemonNotRunning(DaemonUnavailable):
    """Nothing listens at the daemon's endpoint: the daemon is not running."""


class NotTheDaemon(DaemonUnavailable):
    """What answers at the daemon's address cannot prove it holds this config's token."""


def daemon_address(cfg: GatewayConfig) -> str:
    """``host:port`` of the daemon's endpoint per its config and ``state_dir/http.addr``."""
    addr_file = Path(cfg.gateway.state_dir) / ADDR_FILE
    try:
        written = addr_file.read_text().strip()
    except OSError:
        written = ""
    if written:
        return written
    if cfg.http.port == 0:
        raise DaemonNotRunning(f"daemon not running (no {ADDR_FILE} in {addr_file.parent})")
    return connect_address(cfg.http.host, cfg.http.port)


class DaemonClient:
    """JSON over HTTP to one daemon endpoint; every failure is a ``DaemonUnavailable``."""

    def __init__(
        self, address: str, *, timeout_s: float = 5.0, state_dir: Path | None = None
    ) -> None:
        self.address = address
        self.host, self.port = split_host_port(address)
        self.timeout_s = timeout_s
        # Where the daemon's token is (gateway/technician/token.py), read per request: the
        # daemon writes a new one each time it starts.
        self.state_dir = state_dir

    @classmethod
    def for_config(cls, cfg: GatewayConfig, *, timeout_s: float = 5.0) -> DaemonClient:
        state_dir = Path(cfg.gateway.state_dir)
        return cls(daemon_address(cfg), timeout_s=timeout_s, state_dir=state_dir)

    def _token(self) -> bytes | None:
        if self.state_dir is None:
            return None
        try:
            return tok.read_token(self.state_dir)
        except tok.TokenError as err:
            raise DaemonUnavailable(
                f"{err} (run as the daemon's user or root; is the daemon running?)"
            ) from err

    def request(
        self, method: str, path: str, body: Any = None, *, timeout_s: float | None = None
    ) -> tuple[int, bytes]:
        """(HTTP status, body bytes)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout_s or self.timeout_s)
        headers = {"Accept": "application/json"}
        token = self._token()
        nonce = tok.new_nonce()
        if token is not None:
            headers[tok.NONCE] = nonce
            headers[tok.AUTH] = tok.request_auth(token, method, path, nonce)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            if token is not None and not tok.same(
                resp.getheader(tok.PROOF), tok.daemon_proof(token, nonce)
            ):
                raise NotTheDaemon(
                    f"something answers at {self.address} but it is not the alarmgw daemon of "
                    f"this config (no proof of its {tok.TOKEN_FILE}): another process on the "
                    "[http] port, or a daemon of another state_dir?"
                )
            return resp.status, raw
        except ConnectionRefusedError as err:
            raise DaemonNotRunning(
                f"daemon not running (nothing answers at {self.address})"
            ) from err
        except TimeoutError as err:
            raise DaemonUnavailable(
                f"daemon stuck? no answer at {self.address} within "
                f"{timeout_s or self.timeout_s:.0f} s"
            ) from err
        except (OSError, http.client.HTTPException) as err:
            raise DaemonUnavailable(f"cannot talk to the daemon at {self.address}: {err}") from err
        finally:
            conn.close()

    def json(
        self, method: str, path: str, body: Any = None, *, timeout_s: float | None = None
    ) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body)."""
        status, raw = self.request(method, path, body, timeout_s=timeout_s)
        try:
            return status, json.loads(raw)
        except ValueError as err:
            raise DaemonUnavailable(
                f"{self.address}{path} answered HTTP {status} without JSON: is it alarmgw?"
            ) from err
