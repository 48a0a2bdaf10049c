"""The production broker set-up for real: config/mosquitto/production.conf and acl on a free
loopback port, certificates from firmware_sim/pki.py, gateway and center as subprocesses.

- mTLS end to end: a GPIO press reaches the center and is acked; the broker sees the
  certificate CN as the user name; the gateway writes one summary line for the alarm.
- No secrets in any log line of either process (password, private keys, certificates).
- Certificates from the wrong CA are refused, in both directions, and so is no certificate.
- A gateway publishing into another gateway's topics is refused by the broker's ACL with
  MQTT 5 reason code 135, and the gateway reports it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.gpio import GpioSimClient
from firmware_sim.pki import TestPki, gateway_cn, mint_ca, mint_client, mint_test_pki
from gateway.config import load_config
from gateway.contract.envelope import parse_ts
from gateway.contract.signing import write_keypair
from gateway.delivery.uplink import MqttSettings, Uplink
from gateway.errors import ConfigError
from tests.harness import GW, PREFIX, SITE, Proc, Site, is_event
from tests.helpers import wait_line, wait_until
from tests.tls_helpers import ProductionMosquitto, add_to_mqtt_section, tls_lines

pytestmark = pytest.mark.slow

OTHER_GW = "gw-014-b"
PASSWORD = "s3cret-Pa55word-never-logged"


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[Site, ProductionMosquitto, TestPki]]:
    pki = mint_test_pki(tmp_path / "pki", gateways=[(SITE, GW), (SITE, OTHER_GW)])
    with ProductionMosquitto(tmp_path / "broker", tmp_path / "pki") as broker:
        site = Site(root=tmp_path, broker=broker)
        try:
            yield site, broker, pki
        finally:
            site.close()


def pem_body_chunks(path: Path) -> list[str]:
    """Pieces of a PEM file's base64 body: none may show up in a log line."""
    body = "".join(
        line for line in path.read_text().splitlines() if line and not line.startswith("-----")
    )
    return [body[i : i + 24] for i in range(0, len(body) - 24, 24)]


def all_output(*procs: Proc) -> list[str]:
    return [str(item) for p in procs for item in [*p.lines, *p.errors]]


async def press(gateway: Proc, sock: Path) -> str:
    await wait_line(gateway, lambda e: e["event"] == "GPIO simulator listening")
    async with GpioSimClient(sock) as gpio:
        await gpio.tap(17, 150)
    line = await wait_line(gateway, lambda e: e["event"] == "alarm registered")
    return str(line["id"])


async def test_mtls_alarm_acked_summary_line_and_no_secrets_in_logs(
    tls: tuple[Site, ProductionMosquitto, TestPki], tmp_path: Path
) -> None:
    site, broker, pki = tls
    site.buttons = [{"name": "gate-main", "pin": 17, "led_pin": 27}]
    site.write_configs()
    # A password too: the broker ignores it (the CN is the user name), but it is in the
    # config, so it must never reach a log line.
    creds = f'username = "{GW}"\npassword = "{PASSWORD}"\n'
    add_to_mqtt_section(site.gateway_toml, tls_lines(pki, gateway_cn(SITE, GW), extra=creds))
    add_to_mqtt_section(site.center_toml, tls_lines(pki, "center"))
    sock = tmp_path / "gpio.sock"
    center = site.start_center()
    gateway = site.start_gateway({"GPIOZERO_PIN_FACTORY": "mock", "ALARMGW_GPIO_SIM": str(sock)})
    await wait_line(center, lambda e: e.get("type") == "state" and e.get("status") == "online")
    event_id = await press(gateway, sock)
    got = await wait_line(center, lambda e: is_event("accepted")(e) and e["id"] == event_id)
    assert (got["site"], got["gw"]) == (SITE, GW)
    summary = await wait_line(
        gateway, lambda e: e["event"] == "acknowledged by the center" and e["id"] == event_id
    )

    # The one summary line per alarm: id, input, durable-at, sent-at, acked-at, latency.
    assert summary["input"] == "gpio:gate-main"
    durable, sent, acked = (parse_ts(summary[k]) for k in ("durable_at", "sent_at", "acked_at"))
    assert durable <= sent <= acked
    assert summary["latency_ms"] >= 0 and summary["attempts"] >= 1

    # use_identity_as_username and use_username_as_clientid: the broker knows the gateway
    # and the center by their certificates' CNs, as user name and as client id.
    connected = re.findall(
        r"New client connected from \S+ as (\S+) \(.*u'([^']*)'\)", broker.log_text()
    )
    assert (gateway_cn(SITE, GW), gateway_cn(SITE, GW)) in connected
    assert ("center", "center") in connected

    gateway.stop()
    center.stop()
    # Under systemd stdout is not a terminal: every gateway stdout line is a JSON object.
    assert gateway.lines and all(isinstance(line, dict) for line in gateway.lines)
    secrets = [PASSWORD, "PRIVATE KEY", "BEGIN CERTIFICATE"]
    for pem in (
        site.root / "keys" / "gateway.key",
        site.root / "keys" / "center.key",
        pki.gateways[gateway_cn(SITE, GW)].key_file,
        pki.gateways[gateway_cn(SITE, GW)].cert_file,
        pki.center.key_file,
    ):
        secrets += pem_body_chunks(Path(pem))
    output = all_output(gateway, center)
    leaks = [(s, line) for s in secrets for line in output if s in line]
    assert leaks == []


async def test_bad_credentials_are_refused_and_not_logged(
    tls: tuple[Site, ProductionMosquitto, TestPki], tmp_path: Path
) -> None:
    site, broker, pki = tls
    rogue_ca = mint_ca(tmp_path / "rogue", "rogue CA")
    rogue = mint_client(rogue_ca, tmp_path / "rogue", gateway_cn(SITE, GW))
    site.write_configs()
    # The right CN from the wrong CA, plus a password: refused, and neither leaks.
    add_to_mqtt_section(
        site.gateway_toml,
        f'tls = true\nca_file = "{pki.ca.cert_file}"\ncert_file = "{rogue.cert_file}"\n'
        f'key_file = "{rogue.key_file}"\nusername = "{GW}"\npassword = "{PASSWORD}"\n',
    )
    gateway = site.start_gateway()
    # The handshake completes on the client's side (TLS 1.3), then the broker hangs up.
    await wait_line(gateway, lambda e: e["event"] == "broker unreachable")
    assert "certificate verify failed" in await asyncio.to_thread(
        wait_for_log, broker, "certificate verify failed"
    )
    gateway.stop()
    assert not gateway.matching(lambda e: e["event"] == "connected to broker")
    secrets = [PASSWORD, "PRIVATE KEY", *pem_body_chunks(rogue.key_file)]
    assert [line for line in all_output(gateway) for s in secrets if s in line] == []


def wait_for_log(broker: ProductionMosquitto, text: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in (log := broker.log_text()):
        assert time.monotonic() < deadline, f"broker log never said {text!r}: {log[-2000:]}"
        time.sleep(0.05)
    return log


@pytest.mark.parametrize("case", ["client cert from a rogue CA", "no client cert", "rogue server"])
async def test_wrong_ca_or_no_certificate_is_refused(
    tls: tuple[Site, ProductionMosquitto, TestPki], tmp_path: Path, case: str
) -> None:
    _site, broker, pki = tls
    rogue_ca = mint_ca(tmp_path / "rogue", "rogue CA")
    own = pki.gateways[gateway_cn(SITE, GW)]
    ca, cert, key = pki.ca.cert_file, own.cert_file, own.key_file
    if case == "client cert from a rogue CA":
        rogue = mint_client(rogue_ca, tmp_path / "rogue", gateway_cn(SITE, GW))
        cert, key = rogue.cert_file, rogue.key_file
        broker_says = "certificate verify failed"
    elif case == "no client cert":
        broker_says = "peer did not return a certificate"
    else:  # the gateway trusts only a rogue CA: it must refuse the genuine broker
        ca, broker_says = rogue_ca.cert_file, ""
    no_cert = case == "no client cert"
    settings = MqttSettings(
        "127.0.0.1",
        broker.port,
        5,
        f"alarmgw-{SITE}-{GW}",
        tls=True,
        ca_file=str(ca),
        cert_file=None if no_cert else str(cert),
        key_file=None if no_cert else str(key),
    )
    uplink = Uplink(settings, subscriptions=[f"{PREFIX}/{SITE}/{GW}/ack"], on_message=print)
    task = asyncio.create_task(uplink.run())
    try:
        await wait_until(lambda: uplink.last_error is not None)
        if case == "rogue server":
            assert "CERTIFICATE_VERIFY_FAILED" in (uplink.last_error or "")
        else:
            await asyncio.to_thread(wait_for_log, broker, broker_says)
        assert not uplink.connected
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # And the genuine pair connects to the same broker (the refusal was about the CA).
    good = Uplink(
        MqttSettings(
            "127.0.0.1",
            broker.port,
            5,
            f"alarmgw-{SITE}-{GW}",
            tls=True,
            ca_file=str(pki.ca.cert_file),
            cert_file=str(own.cert_file),
            key_file=str(own.key_file),
        ),
        subscriptions=[],
        on_message=print,
    )
    task = asyncio.create_task(good.run())
    try:
        await wait_until(lambda: good.connected)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_publishing_into_another_gateways_topics_is_refused_135(
    tls: tuple[Site, ProductionMosquitto, TestPki], tmp_path: Path
) -> None:
    site, _broker, pki = tls
    site.buttons = [{"name": "gate-main", "pin": 17}]
    site.write_configs()
    # Gateway gw-014-a's certificate, but configured as gw-014-b: every publish goes to
    # gw-014-b's topics, which the ACL gives only to the CN sz-futian-xmh-014/gw-014-b.
    text = site.gateway_toml.read_text().replace(f'id = "{GW}"', f'id = "{OTHER_GW}"', 1)
    site.gateway_toml.write_text(text)
    add_to_mqtt_section(site.gateway_toml, tls_lines(pki, gateway_cn(SITE, GW)))
    add_to_mqtt_section(site.center_toml, tls_lines(pki, "center"))
    center = site.start_center()
    sock = tmp_path / "gpio.sock"
    gateway = site.start_gateway({"GPIOZERO_PIN_FACTORY": "mock", "ALARMGW_GPIO_SIM": str(sock)})
    await wait_line(gateway, lambda e: e["event"] == "connected to broker")
    event_id = await press(gateway, sock)
    event_topic = f"{PREFIX}/{SITE}/{OTHER_GW}/event"
    refused = await wait_line(
        gateway, lambda e: e["event"] == "broker refused publish" and e["topic"] == event_topic
    )
    assert refused["code"] == 135 and refused["level"] == "error"
    # Refused is not delivered: the alarm stays queued and is tried again, refused again.
    await wait_line(
        gateway,
        lambda e: (
            e["event"] == "broker refused publish"
            and e["topic"] == event_topic
            and e is not refused
        ),
    )
    gateway.stop()
    center.stop()
    assert not gateway.matching(
        lambda e: e["event"] == "acknowledged by the center" and e["id"] == event_id
    )
    assert not center.matching(lambda e: e.get("id") == event_id)


def test_pki_cn_scheme_matches_protocol_identities() -> None:
    assert gateway_cn(SITE, GW) == f"{SITE}/{GW}"
    for bad in [("Site", GW), (SITE, "gw+1"), (SITE, "#"), ("", GW)]:
        with pytest.raises(ValueError, match="must match"):
            gateway_cn(*bad)


def test_config_error_never_echoes_a_password(tmp_path: Path) -> None:
    write_keypair(tmp_path, "gateway")
    write_keypair(tmp_path, "center")
    (tmp_path / "g.toml").write_text(
        '[gateway]\nsite = "s"\nid = "g"\nkey_file = "gateway.key"\nstate_dir = "st"\n'
        '[location]\nname = "n"\naddress = "a"\nlat = 1.0\nlon = 2.0\nphone = "1"\n'
        '[mqtt]\nusername = "u"\npassword = 98765432\ncenter_keys = ["center.pub"]\n'
        "keepalive_s = 1\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "g.toml")
    problems = caught.value.problems
    assert any("mqtt.password" in p for p in problems)
    assert any("(got 1)" in p for p in problems)  # other values are still shown
    assert not any("98765432" in p for p in problems)
