"""The local credential shared by the daemon and the CLI of one config.

At start the daemon writes a fresh random token to ``state_dir/http.token`` (0600, like the
rest of the state directory: readable by the daemon's user and root only). The token itself
never crosses the wire, in either direction:

- the CLI authenticates a request with ``X-Alarmgw-Nonce`` (fresh random) and
  ``X-Alarmgw-Auth`` = HMAC-SHA256(token, ``"cli" METHOD PATH NONCE``); the daemon requires it
  for POSTs and refuses a nonce it has seen before;
- the daemon proves it holds the token by answering every request that carries a nonce with
  ``X-Alarmgw-Proof`` = HMAC-SHA256(token, ``"daemon" NONCE``): the CLI believes only an
  answer with the right proof, so a process squatting the port is not taken for the daemon.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from gateway.private_files import write_private

TOKEN_FILE = "http.token"  # noqa: S105 - a file name
NONCE = "X-Alarmgw-Nonce"
AUTH = "X-Alarmgw-Auth"
PROOF = "X-Alarmgw-Proof"
_NONCE_RE = re.compile(r"[0-9a-f]{32,64}")


class TokenError(Exception):
    """The token file cannot be read or holds no token."""


def create_token(state_dir: Path) -> bytes:
    """A fresh token, written 0600 to ``state_dir/http.token`` (atomically)."""
    token = secrets.token_hex(32).encode()
    tmp = state_dir / f".{TOKEN_FILE}.{os.getpid()}.tmp"
    write_private(tmp, token + b"\n")
    tmp.replace(state_dir / TOKEN_FILE)
    return token


def read_token(state_dir: Path) -> bytes:
    path = state_dir / TOKEN_FILE
    try:
        token = path.read_bytes().strip()
    except OSError as err:
        raise TokenError(f"cannot read {path}: {err.strerror}") from err
    if len(token) < 32:
        raise TokenError(f"{path} holds no token")
    return token


def new_nonce() -> str:
    return secrets.token_hex(16)


def valid_nonce(nonce: str | None) -> bool:
    return nonce is not None and _NONCE_RE.fullmatch(nonce) is not None


def _mac(token: bytes, *parts: str) -> str:
    return hmac.new(token, "\n".join(parts).encode(), hashlib.sha256).hexdigest()


def request_auth(token: bytes, method: str, path: str, nonce: str) -> str:
    """``X-Alarmgw-Auth`` for a request (``path`` with its query string)."""
    return _mac(token, "cli", method.upper(), path, nonce)


def daemon_proof(token: bytes, nonce: str) -> str:
    """``X-Alarmgw-Proof`` for an answer to a request that carried ``nonce``."""
    return _mac(token, "daemon", nonce)


def same(a: str | None, b: str) -> bool:
    return a is not None and hmac.compare_digest(a.encode(), b.encode())
