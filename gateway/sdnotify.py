"""sd_notify: one datagram to ``$NOTIFY_SOCKET`` (a leading ``@`` is an abstract socket);
a no-op when the variable is unset."""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send e.g. ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``; True when sent."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    address = "\0" + target[1:] if target.startswith("@") else target
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True
