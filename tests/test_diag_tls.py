"""``alarmgw diag`` against the production broker set-up (TLS, mTLS, ACL; tests/tls_helpers.py)
with the daemon stopped: a good certificate passes the broker check and every certificate's
expiry is reported; one about to expire warns; one from a rogue CA fails the broker check."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.pki import TestPki, gateway_cn, mint_ca, mint_client, mint_test_pki
from tests.harness import GW, SITE, Site
from tests.http_helpers import cli
from tests.tls_helpers import ProductionMosquitto, add_to_mqtt_section

pytestmark = pytest.mark.slow

CN = gateway_cn(SITE, GW)


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[Site, TestPki]]:
    pki = mint_test_pki(tmp_path / "pki", gateways=[(SITE, GW)])
    with ProductionMosquitto(tmp_path / "broker", tmp_path / "pki") as broker:
        site = Site(root=tmp_path, broker=broker)
        try:
            yield site, pki
        finally:
            site.close()


def diag_with_client_cert(site: Site, pki: TestPki, cert: Path, key: Path) -> dict[str, Any]:
    site.write_configs()
    add_to_mqtt_section(
        site.gateway_toml,
        f'tls = true\nca_file = "{pki.ca.cert_file}"\ncert_file = "{cert}"\nkey_file = "{key}"\n',
    )
    proc = cli("diag", "--config", str(site.gateway_toml), "--json")
    assert "Traceback" not in proc.stdout + proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    assert proc.returncode == report["exit"]
    return report


def checks(report: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [c for c in report["checks"] if c["name"] == name]


def test_diag_passes_mtls_and_reports_every_certificate(tls: tuple[Site, TestPki]) -> None:
    site, pki = tls
    own = pki.gateways[CN]
    report = diag_with_client_cert(site, pki, own.cert_file, own.key_file)
    (broker,) = checks(report, "broker")
    assert broker["status"] == "PASS" and "TLSv1." in broker["found"], broker
    certs = checks(report, "certs")
    assert [c["status"] for c in certs] == ["PASS", "PASS", "PASS"], certs
    assert {c["found"].split(":")[0] for c in certs} == {
        "CA ca.pem",
        f"client cert {Path(own.cert_file).name}",
        "broker's cert",
    }


def test_diag_warns_about_a_certificate_about_to_expire(
    tls: tuple[Site, TestPki], tmp_path: Path
) -> None:
    site, pki = tls
    short = mint_client(pki.ca, tmp_path / "short", CN, days=10)
    report = diag_with_client_cert(site, pki, short.cert_file, short.key_file)
    assert checks(report, "broker")[0]["status"] == "PASS"
    warned = [c for c in checks(report, "certs") if c["status"] == "WARN"]
    assert len(warned) == 1 and "expires in" in warned[0]["found"], warned
    assert warned[0]["action"]


def test_diag_fails_the_broker_for_a_rogue_client_certificate(
    tls: tuple[Site, TestPki], tmp_path: Path
) -> None:
    site, pki = tls
    rogue = mint_client(mint_ca(tmp_path / "rogue", "rogue CA"), tmp_path / "rogue", CN)
    report = diag_with_client_cert(site, pki, rogue.cert_file, rogue.key_file)
    (broker,) = checks(report, "broker")
    assert broker["status"] == "FAIL" and broker["action"], broker
    assert report["exit"] == 2
