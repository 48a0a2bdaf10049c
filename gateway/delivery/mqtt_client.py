"""The paho-mqtt client the uplink drives: paho's protocol logic with batched socket I/O
and a direct reader for the two packets a burst is made of.

paho-mqtt 2.x is pure Python and pays per packet: three or more ``recv()`` calls, a
``send()``, a fresh Properties table, a ReasonCode, an MQTTMessage, a dict for its state.
In a drain those packets are nearly all PUBLISH (at the center) and PUBACK (at the
gateway), and that cost was a third of each process's CPU. What is here replaces the
mechanics, not the protocol: writes and reads go through one buffer each, and a complete
PUBLISH (QoS 0 or 1, no properties) or successful PUBACK (no properties) in the read buffer
is decoded directly and handed to the same paho bookkeeping (``_do_on_publish``,
``_send_puback``'s bytes). Everything else, and anything unusual (properties, QoS 2, a
failure reason code, invalid UTF-8, a packet split across reads), goes through paho's
own reader. This relies on paho's private names (``_sock_send``/``_sock_recv``,
``_packet_read``, ``_do_on_publish``, ``_in_packet``, ``_out_packet``, ``_out_messages``):
paho-mqtt is pinned ``<3`` in pyproject.toml, the direct reader switches itself off when a
name is missing, and tests/test_mqtt_client.py feeds the same bytes to it and to stock
paho and compares what comes out.
"""

from __future__ import annotations

import contextlib
import ssl
import struct
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


def _share_property_tables() -> None:
    """paho-mqtt 2.x rebuilds two constant 27-entry tables in every ``Properties()`` (one per
    PUBLISH and PUBACK received under MQTT 5: ~17 µs) and its ``clear()`` probes all 27
    names (~10 µs). The tables are never modified after construction: build them once and
    share them through the class. Behaviour is unchanged (tests/test_paho_tables.py
    compares packed and unpacked properties with stock paho in a subprocess); skipped if
    paho's class looks different."""
    if getattr(Properties, "_alarmgw_shared", False):
        return
    proto = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    tables = {k: proto.__dict__.get(k) for k in ("types", "names", "properties")}
    if any(v is None for v in tables.values()) or set(proto.__dict__) != {"packetType", *tables}:
        return
    compressed = tuple(name.replace(" ", "") for name in tables["names"])  # type: ignore[union-attr]

    def __init__(self: Properties, packetType: int) -> None:  # paho calls it packetType
        object.__setattr__(self, "packetType", packetType)

    def clear(self: Properties) -> None:
        found = [name for name in compressed if name in self.__dict__]
        for name in found:
            delattr(self, name)

    for key, value in tables.items():
        setattr(Properties, key, value)
    Properties.__init__ = __init__  # type: ignore[method-assign]
    Properties.clear = clear  # type: ignore[method-assign]
    Properties._alarmgw_shared = True  # type: ignore[attr-defined]


_share_property_tables()


RECV_CHUNK = 64 * 1024
SEND_BUFFER_MAX = 256 * 1024  # beyond this, paho keeps packets in its own queue (backpressure)

_PUBLISH, _PUBACK = 0x30, 0x40
_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
# What paho's reader uses and sets, checked once per client: without any of them the
# direct reader stays off and paho reads everything itself.
_PAHO_NAMES = (
    "_in_packet",
    "_out_packet",
    "_out_messages",
    "_out_message_mutex",
    "_msgtime_mutex",
    "_last_bytes_received",
    "_manual_ack",
    "_protocol",
    "_do_on_publish",
    "_send_puback",
    "_call_socket_register_write",
    "_in_callback_mutex",
    "_easy_log",
)


def _puback_reason(code: int) -> ReasonCode:
    reason = ReasonCode(PacketTypes.PUBACK)
    reason.unpack(bytes([code]))
    return reason


# PUBACK reasons the direct reader passes on, built by paho once (0 success, 16 no matching
# subscribers); any other code goes through paho's reader. Shared: nobody modifies them.
_PUBACK_REASONS = {code: _puback_reason(code) for code in (0, 16)}
_PUBACK_PROPS = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]


class BatchingClient(mqtt.Client):
    """A paho client whose socket I/O is batched (paho's protocol logic is untouched).

    paho writes every packet with its own ``send()`` (a burst of 20 publishes, or the
    PUBACKs for 20 received messages, is 20 TCP segments) and reads every packet with three
    or more ``recv()`` calls (1 byte of command, 1 per length byte, then the rest). Here
    writes collect in a buffer that the ``Uplink`` sends with one ``send()`` per loop turn
    (``flush_out``), and reads are served from one ``recv(64 KiB)``. This works through
    paho's two socket primitives, ``_sock_send``/``_sock_recv`` (paho-mqtt 2.x, pinned
    ``<3`` in pyproject.toml; tests/test_uplink_relay.py covers it against Mosquitto).

    Reads: a complete PUBLISH or PUBACK at the front of the buffer is taken by the direct
    reader (see the module docstring); a PUBLISH so taken goes to ``on_payload(topic,
    payload)``, which its owner sets (it replaces ``on_message`` and paho's per-topic
    callbacks for those packets; left None, paho delivers every PUBLISH itself)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = bytearray()
        self._wbuf = bytearray()
        self.on_payload: Callable[[str, bytes], None] | None = None
        self.direct_reads = all(hasattr(self, name) for name in _PAHO_NAMES)

    def _packet_read(self) -> MQTTErrorCode:
        if self.direct_reads and self._in_packet["command"] == 0:
            rc = self._read_direct()
            if rc is not None:
                return rc
        return super()._packet_read()

    def _read_direct(self) -> MQTTErrorCode | None:
        """Take the next packet from the read buffer if it is complete and one of the two
        kinds handled here; None leaves it to paho's reader (which also reports a
        connection error: a failed read here is simply tried again there)."""
        rbuf = self._rbuf
        if not rbuf:
            try:
                data = mqtt.Client._sock_recv(self, RECV_CHUNK)
            except (OSError, ConnectionError):
                return None
            if not data:
                return None
            rbuf += data
        size = len(rbuf)
        length = shift = 0
        pos = 1
        while True:  # the remaining length: 1 to 4 bytes, 7 bits each
            if pos >= size or pos > 4:
                return None
            byte = rbuf[pos]
            length |= (byte & 0x7F) << shift
            shift += 7
            pos += 1
            if not byte & 0x80:
                break
        end = pos + length
        if end > size:
            return None
        head = rbuf[0]
        if head & 0xF0 == _PUBLISH:
            return self._direct_publish(head, pos, end)
        if head == _PUBACK:
            return self._direct_puback(pos, end)
        return None

    def _direct_publish(self, head: int, pos: int, end: int) -> MQTTErrorCode | None:
        qos = (head >> 1) & 3
        deliver = self.on_payload
        if qos > 1 or deliver is None or self._manual_ack or end - pos < 2:
            return None
        rbuf = self._rbuf
        size = (rbuf[pos] << 8) | rbuf[pos + 1]
        start = pos + 2
        at = start + size
        if size == 0:  # a topic alias (MQTT 5) or malformed (3.1.1)
            return None
        mid = 0
        if qos:
            if at + 2 > end:
                return None
            mid = (rbuf[at] << 8) | rbuf[at + 1]
            at += 2
        if self._protocol == mqtt.MQTTv5:
            if at >= end or rbuf[at] != 0:  # properties: paho decodes them
                return None
            at += 1
        elif at > end:
            return None
        try:
            name = rbuf[start : start + size].decode("utf-8")
        except UnicodeDecodeError:
            return None
        payload = bytes(rbuf[at:end])
        del rbuf[:end]
        self._received()
        with self._in_callback_mutex:  # as paho calls on_message
            try:
                deliver(name, payload)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_payload: %s", err)
                if not self.suppress_exceptions:
                    raise
        if not qos:
            return _SUCCESS
        if self._out_packet or len(self._wbuf) >= SEND_BUFFER_MAX:
            return self._send_puback(mid)  # after what paho holds
        # paho's own PUBACK bytes (reason 0 is left out, as paho does), straight to the buffer.
        first = not self._wbuf
        self._wbuf += struct.pack("!BBH", _PUBACK, 2, mid)
        if first:
            self._call_socket_register_write()
        return _SUCCESS

    def _direct_puback(self, pos: int, end: int) -> MQTTErrorCode | None:
        rbuf = self._rbuf
        if end - pos == 2:
            reason = _PUBACK_REASONS[0]
        elif end - pos == 3 and self._protocol == mqtt.MQTTv5:
            found = _PUBACK_REASONS.get(rbuf[pos + 2])
            if found is None:  # a failure: paho builds the ReasonCode with its name
                return None
            reason = found
        else:
            return None
        mid = (rbuf[pos] << 8) | rbuf[pos + 1]
        del rbuf[:end]
        self._received()
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, reason, _PUBACK_PROPS)
        return _SUCCESS

    def _received(self) -> None:
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()

    def buffered_in(self) -> bool:
        """Bytes read from the socket that paho has not consumed yet (an SSL socket may
        also hold decrypted bytes the selector cannot see)."""
        if self._rbuf:
            return True
        sock = self._sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def _sock_recv(self, bufsize: int) -> bytes:
        rbuf = self._rbuf
        if not rbuf:
            data = super()._sock_recv(max(bufsize, RECV_CHUNK))
            if len(data) <= bufsize:
                return data  # also b"" (closed by the broker)
            rbuf += data
        out = bytes(rbuf[:bufsize])
        del rbuf[:bufsize]
        return out

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if self._sock is None:
            raise ConnectionError("self._sock is None")
        if len(self._wbuf) >= SEND_BUFFER_MAX and not self.flush_out():
            self._call_socket_register_write()
            raise BlockingIOError
        self._wbuf += buf
        return len(buf)

    def wants_flush(self) -> bool:
        return bool(self._wbuf)

    def flush_out(self) -> bool:
        """Send what the buffer holds, as far as the socket takes it; True when all went.
        Raises OSError when the connection is gone."""
        wbuf = self._wbuf
        while wbuf:
            try:
                sent = super()._sock_send(wbuf)
            except BlockingIOError:
                return False
            del wbuf[:sent]
        return True

    def _sock_close(self) -> None:
        # paho closes right after queueing DISCONNECT: give the buffered bytes one try.
        with contextlib.suppress(OSError, ConnectionError):
            if self._sock is not None:
                self.flush_out()
        self._wbuf.clear()
        self._rbuf.clear()
        super()._sock_close()
