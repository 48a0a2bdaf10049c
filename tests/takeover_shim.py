"""A loopback MQTT proxy in front of a real Mosquitto that adds the session-takeover
DISCONNECT, for brokers that do not send it.

MQTT 5 §3.1.4: when a client connects with the client id of a connection that is still
open, the broker sends the older connection DISCONNECT with reason code 0x8E (Session taken
over), then closes it. Mosquitto does so from 2.0.15 on; Debian 12's 2.0.11 only closes the
older connection. The shim reads each connection's CONNECT, and when a second one names an
open MQTT 5 connection's client id it sends that older connection the DISCONNECT and closes
it, before passing the new CONNECT on; everything else is forwarded as it is. In front of a
Mosquitto that sends the DISCONNECT itself (``emulate=False``, see ``needs_shim``) the shim
leaves takeovers to the broker.

``cut(client_id)`` closes a client's connection without any DISCONNECT, as a network outage
or a broker restart looks to that client.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
from dataclasses import dataclass, field

from firmware_sim.broker import free_port, mosquitto_binary

TAKEN_OVER = bytes([0xE0, 0x02, 0x8E, 0x00])  # DISCONNECT, reason 0x8E, no properties


def mosquitto_version() -> tuple[int, ...]:
    """The installed Mosquitto's version, from ``mosquitto -h`` (e.g. (2, 0, 11))."""
    out = subprocess.run(
        [mosquitto_binary(), "-h"], capture_output=True, text=True, timeout=10, check=False
    )
    found = re.search(r"mosquitto version (\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    return tuple(int(x) for x in found.groups()) if found else (0,)


def needs_shim() -> bool:
    """Whether the installed Mosquitto closes a taken-over session without telling why."""
    return mosquitto_version() < (2, 0, 15)


async def read_packet(reader: asyncio.StreamReader) -> bytes:
    """One whole MQTT control packet."""
    head = await reader.readexactly(1)
    length, shift, raw = 0, 0, b""
    while True:
        byte = await reader.readexactly(1)
        raw += byte
        length |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            break
    return head + raw + await reader.readexactly(length)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def parse_connect(packet: bytes) -> tuple[int, str]:
    """(protocol level, client id) of a CONNECT packet."""
    _, at = _varint(packet, 1)
    name_len = int.from_bytes(packet[at : at + 2], "big")
    at += 2 + name_len
    level = packet[at]
    at += 1 + 1 + 2  # level, flags, keepalive
    if level == 5:
        props, at = _varint(packet, at)
        at += props
    id_len = int.from_bytes(packet[at : at + 2], "big")
    return level, packet[at + 2 : at + 2 + id_len].decode("utf-8")


@dataclass(eq=False)
class _Conn:
    client_id: str
    level: int
    writers: list[asyncio.StreamWriter]


@dataclass
class TakeoverShim:
    """Listens on ``port`` and forwards to Mosquitto on ``target_port``."""

    target_port: int
    emulate: bool = True  # send the takeover DISCONNECT (for a broker that does not)
    port: int = field(default_factory=free_port)
    taken_over: int = 0  # DISCONNECTs sent
    _server: asyncio.Server | None = None
    _open: dict[str, _Conn] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._open.values()):
            self._close(conn)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self, client_id: str) -> bool:
        """Close ``client_id``'s connection without a DISCONNECT; False if none is open."""
        conn = self._open.pop(client_id, None)
        if conn is None:
            return False
        self._close(conn)
        return True

    @staticmethod
    def _close(conn: _Conn) -> None:
        for writer in conn.writers:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            connect = await read_packet(reader)
            level, client_id = parse_connect(connect)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except (OSError, asyncio.IncompleteReadError, IndexError, UnicodeDecodeError):
            writer.close()
            return
        older = self._open.pop(client_id, None) if self.emulate else None
        if older is not None:
            if older.level == 5:
                with contextlib.suppress(OSError, RuntimeError):
                    older.writers[0].write(TAKEN_OVER)
                self.taken_over += 1
            self._close(older)
        conn = _Conn(client_id, level, [writer, up_writer])
        self._open[client_id] = conn
        up_writer.write(connect)
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer)),
            asyncio.ensure_future(self._pipe(up_reader, writer)),
        ]
        for task in pipes:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        if self._open.get(client_id) is conn:
            del self._open[client_id]
        self._close(conn)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, RuntimeError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
