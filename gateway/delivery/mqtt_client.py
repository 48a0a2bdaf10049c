"""Socket helpers for driving a paho-mqtt client from the asyncio loop (paho's public API).

The uplink registers the client's socket with the loop and calls ``loop_read`` and
``loop_write`` itself. ``loop_read`` reads a handful of packets per call and cannot tell
whether more bytes wait; ``Readiness`` (a zero-timeout ``poll``, plus ``pending()`` for TLS,
whose decrypted bytes the selector cannot see) lets the uplink read a whole burst in one
loop turn instead of one turn per packet, then answer it with one ``loop_write``.
"""

from __future__ import annotations

import select
import socket
import ssl
from typing import Any


class Readiness:
    """Whether bytes wait on ``sock`` that nobody has read yet."""

    def __init__(self, sock: Any) -> None:
        self._tls = sock if isinstance(sock, ssl.SSLSocket) else None
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    def more(self) -> bool:
        """True when a read would find something (data, or the peer's close)."""
        if self._tls is not None and self._tls.pending() > 0:
            return True
        return bool(self._poll.poll(0))


def tcp_socket(sock: Any) -> socket.socket | None:
    """``sock`` when it is a TCP socket (plain or TLS), else None (e.g. a websocket)."""
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        return sock
    return None
