"""gateway/delivery/mqtt_client.py (imported by gateway/delivery/uplink.py) shares paho's
constant Properties
tables (a speed-up); the packed bytes and unpacked values must be exactly those of stock
paho-mqtt, which runs in a subprocess here (this process has the shared tables, as the
gateway and the center do)."""

from __future__ import annotations

import json
import subprocess
import sys

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import gateway.delivery.uplink  # noqa: F401 - applies the shared tables

CASES = """
from paho.mqtt.packettypes import PacketTypes
CASES = [
    (PacketTypes.PUBLISH, {"MessageExpiryInterval": 90, "ContentType": "application/json",
        "ResponseTopic": "a/b", "CorrelationData": b"xyz", "PayloadFormatIndicator": 1,
        "UserProperty": [("k", "v"), ("k2", "v2")], "TopicAlias": 3}),
    (PacketTypes.CONNECT, {"SessionExpiryInterval": 3600, "ReceiveMaximum": 20,
        "MaximumPacketSize": 65536, "TopicAliasMaximum": 10, "RequestProblemInformation": 1}),
    (PacketTypes.CONNACK, {"AssignedClientIdentifier": "c1", "ServerKeepAlive": 30,
        "ReasonString": "ok", "RetainAvailable": 1, "MaximumQoS": 1}),
    (PacketTypes.PUBACK, {"ReasonString": "not authorized", "UserProperty": [("a", "b")]}),
    (PacketTypes.PUBACK, {}),
    (PacketTypes.SUBSCRIBE, {"SubscriptionIdentifier": 7}),
]
"""

RUN = (
    CASES
    + """
import json
from paho.mqtt.properties import Properties
out = []
for ptype, values in CASES:
    p = Properties(ptype)
    for k, v in values.items():
        setattr(p, k, v)
    packed = p.pack()
    q = Properties(ptype)
    q.unpack(packed)
    q_str = str(q)
    q.clear()
    out.append([packed.hex(), q_str, q.isEmpty()])
print(json.dumps(out))
"""
)


def test_properties_behave_as_stock_paho() -> None:
    assert getattr(Properties, "_alarmgw_shared", False)
    stock = json.loads(
        subprocess.run(
            [sys.executable, "-c", RUN], capture_output=True, text=True, check=True
        ).stdout
    )
    ns: dict[str, object] = {}
    exec(RUN.replace("print(json.dumps(out))", "RESULT = out"), ns)  # our own code, as above
    assert ns["RESULT"] == stock
    assert len(stock) == 6


def test_wrong_property_still_refused() -> None:
    p = Properties(PacketTypes.PUBACK)
    try:
        p.MessageExpiryInterval = 5
    except Exception as err:  # paho raises MQTTException
        assert "does not apply" in str(err)
    else:
        raise AssertionError("a PUBLISH-only property was accepted on PUBACK")
