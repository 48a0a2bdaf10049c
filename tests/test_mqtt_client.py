"""The socket helpers the uplink drives paho with (gateway/delivery/mqtt_client.py), on real
sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import gateway.delivery.uplink  # noqa: F401 - imported for what it must not change
from gateway.delivery.mqtt_client import Readiness, tcp_socket


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
    with client, peer:
        yield client, peer


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "closed early"
        data += chunk
    return data


def test_readiness_sees_waiting_bytes_and_the_peers_close(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    client, peer = tcp_pair
    ready = Readiness(client)
    assert not ready.more()
    peer.sendall(b"abc")
    client.settimeout(5)
    assert recv_exactly(client, 1) == b"a"
    assert ready.more()  # two bytes still wait
    assert recv_exactly(client, 2) == b"bc"
    assert not ready.more()
    peer.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + 5
    while not ready.more() and time.monotonic() < deadline:
        time.sleep(0.01)  # the FIN crosses loopback
    assert ready.more()  # a read would find the close
    assert client.recv(1) == b""


def test_tcp_socket_only_for_tcp() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert tcp_socket(a) is None
    assert tcp_socket(object()) is None


def test_paho_is_left_as_shipped() -> None:
    # Importing the uplink must not change paho for the whole process.
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    assert "names" in vars(props)
    assert not any(name.startswith("_alarmgw") for name in vars(Properties))
