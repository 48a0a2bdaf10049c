"""A reference SIA DC-09 receiver (pysiaalarm's asyncio one) on loopback, a TCP forwarder that
can be cut to make the receiver unreachable, and a relay whose outbox owes alarms to DC-09."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pysiaalarm import CommunicationsProtocol, SIAAccount, SIAEvent
from pysiaalarm.aio import SIAClient
from pysiaalarm.aio.server import SIAServerUDP
from pysiaalarm.utils import Counter

from firmware_sim.broker import free_port
from gateway.contract.signing import SigningKey
from gateway.delivery.outbox import Outbox
from gateway.delivery.relay import Identity, Relay
from gateway.delivery.seq import SeqCounter

WAIT_S = 30.0
ACCOUNT = "AB12"
# pysiaalarm uses a key's characters as the AES key: the transmitter gets their hex.
KEY_128 = "A1B2C3D4E5F60718"
KEY_256 = "A1B2C3D4E5F60718293A4B5C6D7E8F90"


def hex_of(key_text: str) -> str:
    return key_text.encode("ascii").hex()


@dataclass
class Receiver:
    """pysiaalarm's SIAClient on 127.0.0.1:``port``; ``events`` in arrival order with the
    monotonic time each reached the callback. Over UDP, pysiaalarm's own datagram server is
    used directly: on CPython 3.11 its ``connection_made`` asserts a transport class the
    selector loop's datagram transport is not, and it never answers."""

    key: str | None = None
    transport: str = "tcp"
    port: int = field(default_factory=free_port)
    events: list[tuple[float, SIAEvent]] = field(default_factory=list)
    _client: Any = None
    _udp: asyncio.BaseTransport | None = None

    async def _on_event(self, event: SIAEvent) -> None:
        self.events.append((time.monotonic(), event))

    async def start(self) -> None:
        account = SIAAccount(ACCOUNT, self.key)
        if self.transport == "udp":
            server = _UdpServer({ACCOUNT: account}, self._on_event, Counter())
            self._udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: server, local_addr=("127.0.0.1", self.port)
            )
            return
        self._client = SIAClient(
            "127.0.0.1", self.port, [account], self._on_event, protocol=CommunicationsProtocol.TCP
        )
        await self._client.async_start()

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.async_stop()
            self._client = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    def codes(self) -> list[str | None]:
        return [e.code for _, e in self.events]


class _UdpServer(SIAServerUDP):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]


class Forwarder:
    """127.0.0.1:``port`` → ``target``; ``cut()`` closes the listener and every connection,
    as if the receiver went away; ``start()`` again on the same port."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_w}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(4096):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()


def make_relay(tmp: Path, dc09_types: tuple[str, ...] = ("alarm", "test")) -> Relay:
    """A relay attached to no broker, whose outbox owes ``dc09_types`` to DC-09."""
    return Relay(
        ident=Identity("sz-test-site", "gw-a", "schoolalarm/v1"),
        key=SigningKey.generate(),
        seq=SeqCounter(tmp / "gseq"),
        outbox=Outbox(tmp / "outbox.sqlite", dc09_types=dc09_types),
        center_keys={},
        location={"name": "Gate", "address": "Road 1", "lat": 1.0, "lon": 2.0},
        contact={"phone": "110"},
    )
