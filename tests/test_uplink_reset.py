"""A broker connection that is reset right after its CONNACK (a stale connection taking the
session over, a proxy giving up) must end in a reconnect, never in a hung event loop.

The gateway publishes its birth from paho's on_connect. paho holds a non-reentrant lock
around its callbacks, and a write that fails there makes it call on_disconnect under the
same lock: writing from inside the callback would block the loop thread for good. The
uplink runs on a loop thread of its own here, so a hang fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from gateway.delivery.uplink import MqttSettings, Session, Uplink

CONNACK_V5 = b"\x20\x03\x00\x00\x00"  # session present 0, success, no properties


class ResettingBroker:
    """Accepts connections; answers the first with a CONNACK and a reset at once, and
    counts the connections that follow."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.reconnected = threading.Event()
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.server.settimeout(0.2)
        accepted = 0
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted += 1
            if accepted > 1:
                self._held.append(conn)
                self.reconnected.set()
                continue
            conn.settimeout(5.0)
            conn.recv(4096)  # the CONNECT
            conn.sendall(CONNACK_V5)
            # SO_LINGER 0: close() sends RST, so the client's next write fails.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.server.close()
        self._thread.join(5.0)
        for conn in self._held:
            conn.close()


@pytest.fixture
def broker() -> Iterator[ResettingBroker]:
    b = ResettingBroker()
    try:
        yield b
    finally:
        b.close()


def test_a_reset_right_after_connack_ends_in_a_reconnect(broker: ResettingBroker) -> None:
    loop = asyncio.new_event_loop()
    settings = MqttSettings(
        "127.0.0.1", broker.port, 5, "gw-reset", backoff_initial_s=0.05, backoff_max_s=0.2
    )
    session = Session("t/state", b"offline", "t/state", b"online")
    uplink = Uplink(
        settings, subscriptions=["t/ack"], on_message=lambda _t, _p: None, prepare=lambda: session
    )
    task = loop.create_task(uplink.run())

    def serve() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert broker.reconnected.wait(30.0), "the uplink never reconnected: its loop hangs"
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(10.0)
    assert not thread.is_alive()
    loop.close()
