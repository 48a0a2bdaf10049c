"""gateway/delivery/mqtt_client.py reads PUBLISH and PUBACK packets itself (a speed-up). Whatever
bytes arrive, and however they are split across reads, it must do exactly what stock
paho-mqtt does: the same messages and publish completions in the same order, the same
bytes written back (PUBACKs, PUBRECs), the same state left behind. Both read the same
stream from a fake socket here; the stock client is ``paho.mqtt.client.Client`` itself."""

from __future__ import annotations

import random
import struct
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.delivery.mqtt_client import BatchingClient

PUBLISHED = 6  # messages each client publishes first, so PUBACKs have something to complete


class FakeSocket:
    """recv() serves the given chunks in order, never across a chunk's end."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = [bytearray(c) for c in chunks if c]
        self.written = bytearray()

    def recv(self, n: int) -> bytes:
        if not self.chunks:
            raise BlockingIOError
        head = self.chunks[0]
        out = bytes(head[:n])
        del head[:n]
        if not head:
            self.chunks.pop(0)
        return out

    def send(self, data: bytes) -> int:
        self.written += data
        return len(data)

    def setblocking(self, _flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass

    def pending(self) -> int:
        return 0


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(
    topic: bytes,
    payload: bytes,
    *,
    qos: int = 1,
    mid: int = 1,
    v5: bool = True,
    props: bytes = b"\x00",
    retain: bool = False,
    dup: bool = False,
) -> bytes:
    var = struct.pack("!H", len(topic)) + topic
    if qos:
        var += struct.pack("!H", mid)
    if v5:
        var += props
    body = var + payload
    head = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    return bytes([head]) + _remaining(len(body)) + body


def puback(mid: int, code: int | None = None, props: bytes | None = None) -> bytes:
    body = struct.pack("!H", mid)
    if code is not None:
        body += bytes([code])
    if props is not None:
        body += props
    return bytes([0x40]) + _remaining(len(body)) + body


def _props(**values: Any) -> bytes:
    p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for k, v in values.items():
        setattr(p, k, v)
    return bytes(p.pack())  # type: ignore[no-untyped-call]


def stream(v5: bool) -> bytes:
    """Every case the direct reader takes, and every case it must leave to paho."""
    t = b"schoolalarm/v1/s/g/event"
    parts = [
        publish(t, b'{"a":1}', qos=1, mid=10, v5=v5),
        publish(t, b"", qos=1, mid=11, v5=v5),  # empty payload
        publish(t, b"q0", qos=0, v5=v5),
        publish(t, b"x" * 300, qos=1, mid=12, v5=v5),  # two length bytes
        publish(t, bytes(range(256)) * 80, qos=1, mid=13, v5=v5),  # three length bytes
        publish(t, b"kept", qos=1, mid=14, v5=v5, retain=True, dup=True),
        publish(b"\xff\xfe/bad-utf8", b"p", qos=1, mid=15, v5=v5),
        publish("schöol/ünicode".encode(), b"u", qos=1, mid=16, v5=v5),
        publish(t, b"qos2", qos=2, mid=17, v5=v5),  # PUBREC, paho's path
        puback(1),
        puback(2),
        puback(999),  # unknown mid: ignored by both
        publish(t, b"after", qos=1, mid=65535, v5=v5),
        publish(t, b"boom", qos=1, mid=20, v5=v5),  # the callback raises: still acknowledged
        bytes([0xD0, 0x00]),  # PINGRESP
    ]
    if v5:
        parts += [
            publish(t, b"props", qos=1, mid=18, props=_props(MessageExpiryInterval=30)),
            publish(t, b"user", qos=1, mid=19, props=_props(UserProperty=[("k", "v")])),
            puback(3, 0),
            puback(4, 16),  # no matching subscribers: a success
            puback(5, 0x87),  # not authorised: paho builds the reason
            puback(6, 0, b"\x00"),  # with an empty property length
        ]
    else:
        parts += [puback(3), puback(4), puback(5), puback(6)]
    return b"".join(parts)


def run(client_cls: type[mqtt.Client], v5: bool, chunks: list[bytes]) -> dict[str, Any]:
    proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    client = client_cls(CallbackAPIVersion.VERSION2, client_id="t", protocol=proto)
    log: list[tuple[Any, ...]] = []

    def got(topic: bytes, payload: bytes) -> None:
        log.append(("msg", topic, payload))
        if payload == b"boom":
            raise RuntimeError("a callback that fails")

    def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        got(m._topic, bytes(m.payload))

    def on_publish(_c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        log.append(("pub", mid, int(rc.value), str(rc), rc.is_failure))

    client.on_message = on_message
    client.on_publish = on_publish
    if isinstance(client, BatchingClient):
        assert client.direct_reads
        client.on_payload = lambda topic, payload: got(topic.encode(), payload)
    client.suppress_exceptions = True  # logged, and the PUBACK still goes
    client.max_inflight_messages_set(100)
    sock = FakeSocket(chunks)
    client._sock = sock  # type: ignore[assignment]
    client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
    for i in range(PUBLISHED):
        client.publish(f"out/{i}", b"m%d" % i, qos=1)
    rounds = 0
    while sock.chunks or (isinstance(client, BatchingClient) and client.buffered_in()):
        rounds += 1
        assert rounds < 100_000
        rc = client.loop_read()
        assert rc == mqtt.MQTT_ERR_SUCCESS
        client.loop_write()
        if isinstance(client, BatchingClient):
            client.flush_out()
    return {
        "log": log,
        "written": bytes(sock.written),
        "out_messages": sorted(client._out_messages),
        "inflight": client._inflight_messages,
        "in_messages": sorted(client._in_messages),
        "in_packet_idle": client._in_packet["command"] == 0,
    }


def _chunkings(data: bytes, seed: int) -> list[list[bytes]]:
    rng = random.Random(seed)
    cuts: list[bytes] = []
    at = 0
    while at < len(data):
        n = rng.choice([1, 2, 3, 7, 50, 500, 5000])
        cuts.append(data[at : at + n])
        at += n
    return [[data], [data[i : i + 1] for i in range(len(data))], cuts]


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_direct_reader_matches_stock_paho(v5: bool, seed: int) -> None:
    data = stream(v5)
    for chunks in _chunkings(data, seed):
        stock = run(mqtt.Client, v5, chunks)
        ours = run(BatchingClient, v5, chunks)
        assert ours == stock
        messages = [e for e in stock["log"] if e[0] == "msg"]
        assert len(messages) >= 9 and stock["written"]  # the stream was read at all


def test_direct_reader_takes_the_common_packets() -> None:
    """The speed-up is real: PUBLISH (QoS 1, no properties) and PUBACK read whole from the
    buffer never reach paho's own reader."""
    t = b"a/b/c/event"
    data = b"".join(publish(t, b"x" * 400, mid=i + 1) for i in range(50))
    data += b"".join(puback(i + 1) for i in range(PUBLISHED))
    client = BatchingClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5)
    got: list[str] = []
    client.on_payload = lambda topic, _p: got.append(topic)
    slow: list[int] = []
    stock_read = mqtt.Client._packet_read

    def counting(self: mqtt.Client) -> Any:
        slow.append(1)
        return stock_read(self)

    mqtt.Client._packet_read = counting  # type: ignore[method-assign]
    try:
        sock = FakeSocket([data])
        client._sock = sock  # type: ignore[assignment]
        client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
        for i in range(PUBLISHED):
            client.publish(f"out/{i}", b"m", qos=1)
        for _ in range(200):
            if not (sock.chunks or client.buffered_in()):
                break
            client.loop_read()
    finally:
        mqtt.Client._packet_read = stock_read  # type: ignore[method-assign]
    assert len(got) == 50
    assert client._out_messages == {}
    assert not slow
    assert client.flush_out() and client._wbuf == b""
