"""Helpers for tests of the local endpoint and the technician commands: plain HTTP to the
daemon on loopback, the CLI as a subprocess, and polling without timed assertions."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from gateway.technician import token as tok
from tests.harness import alarmgw_cmd
from tests.helpers import poll

WIDTH = 80


def request(
    addr: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """(status, JSON body, or text when not JSON) of one request to ``addr`` (host:port)."""
    host, _, port = addr.rpartition(":")
    conn = HTTPConnection(host.strip("[]"), int(port), timeout=30)
    data = None if body is None else json.dumps(body).encode()
    hdrs = dict(headers or {})
    if body is not None:
        hdrs.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read().decode()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw


def auth(state_dir: Path, method: str, path: str) -> dict[str, str]:
    """The headers the CLI sends to authenticate one request with the daemon's token."""
    nonce = tok.new_nonce()
    key = tok.read_token(state_dir)
    return {tok.NONCE: nonce, tok.AUTH: tok.request_auth(key, method, path, nonce)}


def wait_addr(state_dir: Path, timeout: float = 30.0) -> str:
    """The daemon's endpoint address once it has written ``http.addr``."""
    return poll(lambda: (state_dir / "http.addr").read_text().strip() or None, timeout)


def healthz_is(addr: str, code: int, needle: str = "") -> Callable[[], Any]:
    """A poll function: the /healthz body once it has ``code`` (and a problem with needle)."""

    def check() -> Any:
        status, body = request(addr, "GET", "/healthz")
        if status != code:
            return None
        if needle and not any(needle in p for p in body["problems"]):
            return None
        return body

    return check


def cli(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    """``alarmgw ARGS`` as a subprocess (waited for; killed if it overruns)."""
    return subprocess.run(
        alarmgw_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=_env(),
        check=False,
    )


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": str(WIDTH)}


def assert_fits(text: str) -> None:
    """Every line fits an 80-column terminal."""
    long = [line for line in text.splitlines() if len(line) > WIDTH]
    assert not long, long


def assert_one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    """A clear one-line message, no traceback, exit 2."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
