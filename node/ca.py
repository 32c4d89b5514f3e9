"""A small certificate authority for node-to-node mutual TLS (development, tests, small sites).

`callmesh ca init DIR` makes the CA (DIR/ca.pem, DIR/ca.key); `callmesh ca issue DIR --node ID
--site SITE --trust inhouse|partner` makes DIR/ID.pem and DIR/ID.key for one node. A node
certificate names the node (CN), its site (O) and its site's trust (OU); its DNS names say which
channels may reach it (see `pin_name`): every node carries NODE_NAME, and INHOUSE_NAME or
PARTNER_NAME by its trust, so a channel pinned to INHOUSE_NAME completes its handshake only with
an in-house node. Keys are ECDSA P-256. Production sites may use their own CA with the same
names.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from registry.errors import InvalidRecord
from registry.records import Trust, check_id

NODE_NAME = "node.callmesh"
"""A DNS name in every node certificate: what a channel that accepts any node checks."""
TRUST_NAMES = {Trust.INHOUSE: "inhouse.callmesh", Trust.PARTNER: "partner.callmesh"}
"""A DNS name per trust: what a channel pinned to that trust checks."""
CA_CERT, CA_KEY = "ca.pem", "ca.key"


class CaError(ValueError):
    code = "ca_error"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified certificate names."""

    node_id: str
    site: str
    trust: Trust


def pin_name(trust: Trust | None) -> str:
    """The name a channel checks the server's certificate against: any node, or a trust."""
    return NODE_NAME if trust is None else TRUST_NAMES[trust]


def _name(**parts: str) -> x509.Name:
    oids = {"cn": NameOID.COMMON_NAME, "o": NameOID.ORGANIZATION_NAME}
    oids["ou"] = NameOID.ORGANIZATIONAL_UNIT_NAME
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in parts.items()])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def init_ca(directory: Path, *, name: str = "callmesh development CA", days: int = 3650) -> Path:
    """A new CA in `directory` (refuses to overwrite one); the CA certificate's path."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / CA_KEY).exists():
        raise CaError(f"{directory / CA_KEY} exists: a CA is there already")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(cn=name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write(directory / CA_KEY, _key_pem(key), private=True)
    _write(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return directory / CA_CERT


def issue(
    directory: Path, node_id: str, site: str, trust: Trust, *, days: int = 825
) -> tuple[Path, Path]:
    """A certificate and key for one node, signed by the CA in `directory`: (cert, key) paths."""
    try:
        check_id("node id", node_id)
        check_id("site", site)
    except InvalidRecord as error:
        raise CaError(str(error)) from None
    try:
        ca_key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    except (OSError, ValueError) as error:
        raise CaError(f"no usable CA in {directory} (callmesh ca init): {error}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CaError(f"{directory / CA_KEY} is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName(NODE_NAME),
        x509.DNSName(TRUST_NAMES[trust]),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn=node_id, o=site, ou=trust.name.lower()))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{node_id}.pem", directory / f"{node_id}.key"
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def identity_of(pem: bytes) -> Identity:
    """The node, site and trust a (verified) node certificate names; CaError when it names none."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as error:
        raise CaError(f"not a PEM certificate: {error}") from None

    def one(oid: x509.ObjectIdentifier) -> str:
        values = cert.subject.get_attributes_for_oid(oid)
        if len(values) != 1:
            raise CaError(f"certificate subject {cert.subject.rfc4514_string()} lacks {oid}")
        return str(values[0].value)

    trust_name = one(NameOID.ORGANIZATIONAL_UNIT_NAME)
    try:
        trust = Trust[trust_name.upper()]
    except KeyError:
        raise CaError(f"certificate trust {trust_name!r:.40} is not inhouse or partner") from None
    return Identity(one(NameOID.COMMON_NAME), one(NameOID.ORGANIZATION_NAME), trust)
