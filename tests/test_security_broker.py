"""Attacks on the production broker set-up (config/mosquitto/production.conf, acl and the
alarmgw_acl subscription plugin), run for real against Mosquitto with test certificates.

- Client id takeover: a gateway's certificate asking for the center's client id, or another
  gateway's, must not knock that client off (the broker uses the certificate CN as the id).
- ``alarmgw diag`` beside the running daemon does not take over the daemon's connection.
- Subscriptions: a gateway may subscribe to its own ``ack`` only; joining the center's
  shared-subscription group, reading every gateway's events or another gateway's acks is
  refused with SUBACK 0x87, and the center keeps receiving every event; also after a reload.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from firmware_sim.pki import Issued, TestPki, gateway_cn, mint_test_pki
from gateway.delivery.uplink import MqttSettings, Uplink
from tests.harness import GW, SITE, Site
from tests.http_helpers import cli
from tests.tls_helpers import ProductionMosquitto, add_to_mqtt_section, tls_lines

pytestmark = pytest.mark.slow

P = "schoolalarm/v1"
GW_A, GW_B = GW, "gw-014-b"  # gw-014-a is the harness site's gateway
CN_A, CN_B = gateway_cn(SITE, GW_A), gateway_cn(SITE, GW_B)
CENTER_ID = "alarmgw-center-c0ffee00"
REFUSED = 0x87  # MQTT 5 "Not authorized"
TIMEOUT = 20.0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[ProductionMosquitto, TestPki]]:
    pki = mint_test_pki(tmp_path / "pki", gateways=[(SITE, GW_A), (SITE, GW_B)])
    with ProductionMosquitto(tmp_path / "broker", tmp_path / "pki") as running:
        yield running, pki


def wait(pred: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Probe:
    """A plain paho client with a certificate, recording what the broker tells it."""

    def __init__(
        self,
        pki: TestPki,
        issued: Issued,
        client_id: str,
        port: int,
        *,
        protocol: int = mqtt.MQTTv5,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
        )
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert_file))
        ctx.load_cert_chain(str(issued.cert_file), str(issued.key_file))
        self.client.tls_set_context(ctx)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=False)
        self.lock = threading.Lock()
        self.connects = 0
        self.disconnects: list[str] = []
        self.subacks: dict[int, list[int]] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        wait(lambda: self.connects > 0 or bool(self.disconnects), f"{client_id} to connect")
        assert self.connects == 1, f"{client_id}: {self.disconnects}"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        with self.lock:
            if reason.is_failure:
                self.disconnects.append(str(reason))
            else:
                self.connects += 1

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        with self.lock:
            self.disconnects.append(str(reason))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        with self.lock:
            self.subacks[mid] = [r.value for r in reasons]

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload))

    def subscribe(self, topic_filter: str) -> int:
        """The broker's reason code for one SUBSCRIBE (granted QoS, or >= 0x80 refused)."""
        rc, mid = self.client.subscribe(topic_filter, qos=1)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        wait(lambda: mid in self.subacks or bool(self.disconnects), f"SUBACK {topic_filter}")
        return self.subacks[mid][0]

    def round_trip(self) -> None:
        """A SUBSCRIBE answered: everything the broker sent before has been read."""
        self.subscribe(f"{P}/never/never/nothing")

    def close(self, *, abruptly: bool = False) -> None:
        if abruptly:
            self.client.loop_stop()
            sock = self.client.socket()
            if sock is not None:
                sock.close()  # no DISCONNECT: the broker publishes the will
            return
        self.client.disconnect()
        self.client.loop_stop()


def uplink_for(pki: TestPki, port: int, issued: Issued, client_id: str, subs: list[str]) -> Uplink:
    settings = MqttSettings(
        "127.0.0.1",
        port,
        5,
        client_id,
        tls=True,
        ca_file=str(pki.ca.cert_file),
        cert_file=str(issued.cert_file),
        key_file=str(issued.key_file),
    )
    return Uplink(settings, subscriptions=subs, on_message=lambda _t, _p: None)


async def test_a_gateway_certificate_cannot_take_over_the_center_or_another_gateway(
    broker: tuple[ProductionMosquitto, TestPki],
) -> None:
    mosquitto, pki = broker
    port = mosquitto.port
    center = uplink_for(pki, port, pki.center, CENTER_ID, [f"{P}/+/+/event"])
    gw_b = uplink_for(
        pki, port, pki.gateways[CN_B], f"alarmgw-{SITE}-{GW_B}", [f"{P}/{SITE}/{GW_B}/ack"]
    )
    tasks = [asyncio.create_task(u.run()) for u in (center, gw_b)]
    try:
        async with asyncio.timeout(TIMEOUT):
            await center.wait_connected()
            await gw_b.wait_connected()
        # Gateway A's certificate, each victim's client id in turn.
        for victim_id in (CENTER_ID, f"alarmgw-{SITE}-{GW_B}"):
            attacker = await asyncio.to_thread(Probe, pki, pki.gateways[CN_A], victim_id, port)
            await asyncio.to_thread(attacker.round_trip)
            await asyncio.to_thread(attacker.close)
        # A round trip on each victim's own session: a takeover would have shown by now.
        for victim, kind in ((center, "ack"), (gw_b, "heartbeat")):
            assert (
                await victim.publish(f"{P}/{SITE}/{GW_B}/{kind}", b"{}") < 0x80
            )  # PUBACK: success or "no subscribers"
    except BaseException:
        print(mosquitto.log_text()[-3000:])
        raise
    finally:
        connected = (center.connected, gw_b.connected)
        reconnects = (center.reconnects, gw_b.reconnects)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert connected == (True, True)
    assert reconnects == (0, 0)
    log = mosquitto.log_text()
    assert "already connected, closing old connection" not in log
    # The broker knows every client by its certificate's CN, whatever id it asked for.
    ids = set(re.findall(r"New client connected from \S+ as (\S+) \(", log))
    assert ids == {"center", CN_A, CN_B}


def test_the_will_still_fires_under_the_certificate_id(
    broker: tuple[ProductionMosquitto, TestPki],
) -> None:
    mosquitto, pki = broker
    state = f"{P}/{SITE}/{GW_B}/state"
    center = Probe(pki, pki.center, CENTER_ID, mosquitto.port)
    try:
        assert center.subscribe(f"{P}/+/+/state") == 1
        gw_b = Probe(
            pki, pki.gateways[CN_B], f"alarmgw-{SITE}-{GW_B}", mosquitto.port, will=(state, b"off")
        )
        gw_b.close(abruptly=True)
        wait(lambda: (state, b"off") in center.messages, "the will on the state topic")
    finally:
        center.close()


def test_a_gateway_may_subscribe_to_its_own_ack_only(
    broker: tuple[ProductionMosquitto, TestPki],
) -> None:
    mosquitto, pki = broker
    gw_a = Probe(pki, pki.gateways[CN_A], f"alarmgw-{SITE}-{GW_A}", mosquitto.port)
    try:
        for attack in (
            f"$share/center/{P}/+/+/event",
            f"{P}/+/+/event",
            f"{P}/#",
            f"{P}/{SITE}/{GW_B}/ack",
            f"$share/g/{P}/{SITE}/{GW_A}/ack",
            "#",
        ):
            assert gw_a.subscribe(attack) == REFUSED, attack
        assert gw_a.subscribe(f"{P}/{SITE}/{GW_A}/ack") == 1
        assert gw_a.disconnects == []
    finally:
        gw_a.close()
    # MQTT 3.1.1 has no reason codes: the refusal is 0x80 "Failure".
    old = Probe(pki, pki.gateways[CN_A], "a311", mosquitto.port, protocol=mqtt.MQTTv311)
    try:
        assert old.subscribe(f"{P}/+/+/event") == 0x80
        assert old.subscribe(f"{P}/{SITE}/{GW_A}/ack") == 1
    finally:
        old.close()


def test_the_center_may_subscribe_to_gateway_topics_and_nothing_else(
    broker: tuple[ProductionMosquitto, TestPki],
) -> None:
    mosquitto, pki = broker
    center = Probe(pki, pki.center, CENTER_ID, mosquitto.port)
    try:
        for kind in ("event", "heartbeat", "state"):
            assert center.subscribe(f"{P}/+/+/{kind}") == 1
            assert center.subscribe(f"$share/center/{P}/+/+/{kind}") == 1
            assert center.subscribe(f"{P}/{SITE}/+/{kind}") == 1
        for refused in (f"{P}/#", f"{P}/+/+/ack", f"{P}/+/+/+", "#", "$SYS/#"):
            assert center.subscribe(refused) == REFUSED, refused
    finally:
        center.close()


def test_a_gateway_in_the_centers_shared_group_takes_no_events_away(
    broker: tuple[ProductionMosquitto, TestPki],
) -> None:
    mosquitto, pki = broker
    port = mosquitto.port
    group = f"$share/center/{P}/+/+/event"
    center = Probe(pki, pki.center, CENTER_ID, port)
    thief = Probe(pki, pki.gateways[CN_A], f"alarmgw-{SITE}-{GW_A}", port)
    sender = Probe(pki, pki.gateways[CN_B], f"alarmgw-{SITE}-{GW_B}", port)
    try:
        assert center.subscribe(group) == 1
        thief_got = thief.subscribe(group)
        infos = [
            sender.client.publish(f"{P}/{SITE}/{GW_B}/event", f"e{i}".encode(), qos=1)
            for i in range(20)
        ]
        for info in infos:
            info.wait_for_publish(TIMEOUT)
        # Every event is now queued to the group; one round trip each delivers them.
        center.round_trip()
        thief.round_trip()
        assert sorted(p for _t, p in center.messages) == sorted(f"e{i}".encode() for i in range(20))
        assert thief_got == REFUSED
        assert thief.messages == []
    finally:
        for probe in (center, thief, sender):
            probe.close()


def test_diag_beside_the_running_daemon_does_not_knock_it_off(tmp_path: Path) -> None:
    """With the certificate CN as the client id, a second connection under the gateway's
    certificate would take over the daemon's session: diag asks the daemon instead."""
    pki = mint_test_pki(tmp_path / "pki", gateways=[(SITE, GW_A)])
    with ProductionMosquitto(tmp_path / "broker", tmp_path / "pki") as mosquitto:
        site = Site(root=tmp_path, broker=mosquitto)
        try:
            site.write_configs()
            add_to_mqtt_section(site.gateway_toml, tls_lines(pki, gateway_cn(SITE, GW_A)))
            add_to_mqtt_section(site.center_toml, tls_lines(pki, "center"))
            site.start_center()
            gateway = site.start_gateway()
            gateway.wait_for(lambda e: e["event"] == "connected to broker", TIMEOUT)
            proc = cli("diag", "--config", str(site.gateway_toml), "--json")
            report = json.loads(proc.stdout)
            (broker_check,) = [c for c in report["checks"] if c["name"] == "broker"]
            assert broker_check["status"] == "PASS", broker_check
            assert "already connected" not in mosquitto.log_text()
            assert not gateway.matching(lambda e: e["event"] == "broker connection lost")
        finally:
            site.close()


def test_the_subscription_rules_survive_a_config_reload(
    broker: tuple[ProductionMosquitto, TestPki],
) -> None:
    """``systemctl reload mosquitto`` (SIGHUP) re-reads the ACL; the plugin stays in force."""
    mosquitto, pki = broker
    proc = mosquitto.proc
    assert proc is not None
    # A broker that has only just opened its port may not have its signal handlers yet (the
    # default action of SIGHUP ends it): wait until it says it is running. It logs the reload
    # on its next loop turn: ask again until the log shows it.
    wait(lambda: " running" in mosquitto.log_text(), "the broker to run", timeout=60.0)
    last_hup = 0.0

    def reloaded() -> bool:
        nonlocal last_hup
        assert proc.poll() is None, "the broker exited on SIGHUP"
        if "Reloading config" in mosquitto.log_text():
            return True
        if time.monotonic() - last_hup > 1.0:
            proc.send_signal(signal.SIGHUP)
            last_hup = time.monotonic()
        return False

    wait(reloaded, "the broker to reload", timeout=60.0)
    gw_a = Probe(pki, pki.gateways[CN_A], f"alarmgw-{SITE}-{GW_A}", mosquitto.port)
    try:
        assert gw_a.subscribe(f"$share/center/{P}/+/+/event") == REFUSED
        assert gw_a.subscribe(f"{P}/{SITE}/{GW_A}/ack") == 1
    finally:
        gw_a.close()
