"""A throwaway PKI for tests, the bench and a first field trial: a CA, a broker certificate and
client certificates for the gateways and the command center.

The client certificate's CN is the MQTT identity: config/mosquitto/production.conf sets
``use_identity_as_username true``, so Mosquitto takes the CN as the user name, and the ACL
(config/mosquitto/acl) confines a gateway with ``pattern write P/%u/...``. A gateway's CN is
therefore ``{site}/{gw}`` (both match PROTOCOL.md "Identities", so the CN can never
hold the ``+`` or ``#`` that make Mosquitto refuse a pattern match); the center's is ``center``.

Keys are ECDSA P-256 (small and fast on a Pi), PEM, mode 0600. A production deployment uses
the operator's own CA; this one is for testing and says so in its name.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

IDENT = r"[a-z0-9][a-z0-9-]{0,62}"  # PROTOCOL.md "Identities"
GATEWAY_CN_RE = re.compile(rf"^({IDENT})/({IDENT})$")
CENTER_CN = "center"


@dataclass(frozen=True, slots=True)
class Issued:
    """One certificate and its private key, in memory and on disk."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_file: Path
    key_file: Path


def gateway_cn(site: str, gw: str) -> str:
    """The certificate CN (and so the broker user name) of gateway ``gw`` at ``site``."""
    cn = f"{site}/{gw}"
    if not GATEWAY_CN_RE.match(cn):
        raise ValueError(f"site and gw must match {IDENT} (got {site!r}, {gw!r})")
    return cn


def file_stem(cn: str) -> str:
    """File name stem for a CN: ``site/gw`` → ``site.gw`` ('.' is in no identity)."""
    return cn.replace("/", ".")


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    path.chmod(0o600)


def _issue(
    out: Path,
    stem: str,
    subject: x509.Name,
    *,
    issuer: Issued | None,
    extensions: list[tuple[x509.ExtensionType, bool]],
    days: int,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    signer_key = key if issuer is None else issuer.key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate a little clock skew
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), False
        )
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical)
    cert = builder.sign(signer_key, hashes.SHA256())
    cert_file, key_file = out / f"{stem}.pem", out / f"{stem}.key"
    _write_key(key_file, key)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert, key, cert_file, key_file)


_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def _key_usage(*allowed: str) -> x509.KeyUsage:
    """A KeyUsage extension with only ``allowed`` set."""
    return x509.KeyUsage(**{name: name in allowed for name in _USAGES})


def _leaf_usage() -> x509.KeyUsage:
    return _key_usage("digital_signature", "key_agreement")


def mint_ca(out: Path, name: str = "alarmgw TEST CA", *, days: int = 3650) -> Issued:
    """A self-signed CA: ``out/ca.pem`` and ``out/ca.key``."""
    usage = _key_usage("key_cert_sign", "crl_sign")
    return _issue(
        out,
        "ca",
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
        issuer=None,
        extensions=[(x509.BasicConstraints(ca=True, path_length=0), True), (usage, True)],
        days=days,
    )


def mint_server(
    ca: Issued, out: Path, hosts: list[str], *, stem: str = "broker", days: int = 825
) -> Issued:
    """The broker's certificate for ``hosts`` (DNS names or IP addresses, all in the SAN)."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return _issue(
        out,
        stem,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]),
        issuer=ca,
        extensions=[
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_leaf_usage(), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.SubjectAlternativeName(names), False),
        ],
        days=days,
    )


def mint_client(ca: Issued, out: Path, cn: str, *, days: int = 825) -> Issued:
    """A client certificate whose CN is the broker user name: ``out/<file_stem(cn)>.pem``."""
    return _issue(
        out,
        file_stem(cn),
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
        issuer=ca,
        extensions=[
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_leaf_usage(), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        ],
        days=days,
    )


@dataclass(frozen=True, slots=True)
class TestPki:
    """What ``mint_test_pki`` wrote."""

    __test__ = False  # not a pytest test class, whatever its name says

    ca: Issued
    broker: Issued
    center: Issued
    gateways: dict[str, Issued]  # by CN


def mint_test_pki(
    out: Path,
    *,
    gateways: list[tuple[str, str]],
    hosts: list[str] | None = None,
    ca_name: str = "alarmgw TEST CA",
) -> TestPki:
    """A CA, a broker certificate for ``hosts`` (default localhost and 127.0.0.1), the
    center's client certificate (CN ``center``) and one per (site, gw)."""
    ca = mint_ca(out, ca_name)
    broker = mint_server(ca, out, hosts or ["localhost", "127.0.0.1"])
    center = mint_client(ca, out, CENTER_CN)
    issued = {}
    for site, gw in gateways:
        cn = gateway_cn(site, gw)
        issued[cn] = mint_client(ca, out, cn)
    return TestPki(ca, broker, center, issued)


def _gateway_arg(value: str) -> tuple[str, str]:
    match = GATEWAY_CN_RE.match(value)
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected SITE/GW, e.g. sz-futian-xmh-014/gw-014-a: {value}"
        )
    return match[1], match[2]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``alarmgw-sim pki``."""
    parser = subparsers.add_parser(
        "pki",
        help="mint a TEST CA, broker, center and gateway certificates",
        description="Write a test CA (ca.pem/ca.key), a broker certificate (broker.pem/.key), "
        "the center's client certificate (CN 'center': center.pem/.key) and one client "
        "certificate per --gateway (CN 'SITE/GW': SITE.GW.pem/.key) into --out. For tests "
        "and trials; production uses the operator's CA. Refuses a non-empty --out.",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR")
    parser.add_argument(
        "--gateway", action="append", default=[], type=_gateway_arg, metavar="SITE/GW"
    )
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="broker host name or IP for the SAN (repeatable; default localhost, 127.0.0.1)",
    )
    parser.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        raise RuntimeError(f"{out} is not empty: refusing to overwrite keys")
    pki = mint_test_pki(out, gateways=args.gateway, hosts=args.host or None)
    for issued in (pki.ca, pki.broker, pki.center, *pki.gateways.values()):
        cn = issued.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        print(f"{issued.cert_file} (+ {issued.key_file.name}): CN {cn!s}")
    return 0
