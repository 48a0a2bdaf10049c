"""Socket helpers for driving a paho-mqtt client from the asyncio loop (paho's public API).

The uplink registers the client's socket with the loop and calls ``loop_read`` and
``loop_write`` itself. Two things keep a burst cheap there:

- ``Readiness``: ``loop_read`` reads a handful of packets per call and cannot tell whether
  more bytes wait; a zero-timeout ``poll`` (and ``pending()`` for TLS, whose decrypted bytes
  the selector cannot see) lets the uplink read a whole burst in one loop turn instead of
  one turn per packet.
- ``corked``: paho writes each queued packet with its own ``send()``, and the uplink sets
  TCP_NODELAY (the alarm path must not wait for Nagle). TCP_CORK around one ``loop_write``
  puts a burst (20 publishes, or the PUBACKs for what one read brought) into full segments,
  released when the write ends.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from collections.abc import Iterator
from typing import Any

_CORK = getattr(socket, "TCP_CORK", None)  # Linux only; elsewhere writes go out as paho sends


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


@contextlib.contextmanager
def corked(sock: socket.socket | None) -> Iterator[None]:
    """Hold back partial segments on ``sock`` while the block writes (no-op without it)."""
    if sock is None or _CORK is None:
        yield
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
    except OSError:
        yield  # a closed socket: the write itself reports it
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)
