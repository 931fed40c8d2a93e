"""Shared helpers for the edge tests: a tiny DER writer, OCSP request builders, a test PKI.

The DER writer is deliberately independent of ``edge.ocsp_request`` so that hand-built
requests test the reader rather than echo it; INTEGER and OID contents come from asn1crypto.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import core as asn1_core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

SHA1_OID = "1.3.14.3.2.26"
SHA256_OID = "2.16.840.1.101.3.4.2.1"
SHA384_OID = "2.16.840.1.101.3.4.2.2"
SHA512_OID = "2.16.840.1.101.3.4.2.3"
NONCE_OID = "1.3.6.1.5.5.7.48.1.2"
DER_NULL = b"\x05\x00"
DER_TRUE = b"\x01\x01\xff"

# ---------------------------------------------------------------------------- DER writer


def der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + der_length(len(content)) + content


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def octets(value: bytes) -> bytes:
    return tlv(0x04, value)


def integer_content(value: int) -> bytes:
    """Minimal two's-complement content of an INTEGER, as asn1crypto encodes it."""
    return asn1_core.Integer(value).contents


def integer(value: int) -> bytes:
    return tlv(0x02, integer_content(value))


def oid(dotted: str) -> bytes:
    return asn1_core.ObjectIdentifier(dotted).dump()


def oid_content(dotted: str) -> bytes:
    return asn1_core.ObjectIdentifier(dotted).contents


def algorithm_identifier(dotted: str = SHA1_OID, params: bytes = DER_NULL) -> bytes:
    return seq(oid(dotted), params)


def cert_id(
    *,
    algorithm: bytes | None = None,
    name_hash: bytes = b"\x11" * 20,
    key_hash: bytes = b"\x22" * 20,
    serial_content: bytes = b"\x01",
) -> bytes:
    """CertID with a raw serial INTEGER content (so padded and odd encodings can be built)."""
    if algorithm is None:
        algorithm = algorithm_identifier()
    return seq(algorithm, octets(name_hash), octets(key_hash), tlv(0x02, serial_content))


def extension(dotted: str, value: bytes, critical: bytes = b"") -> bytes:
    """Extension with ``critical`` given as a raw BOOLEAN TLV (b"" to omit it)."""
    return seq(oid(dotted), critical, octets(value))


def nonce_extension(nonce: bytes = b"\xab" * 16) -> bytes:
    return extension(NONCE_OID, octets(nonce))


def single_request(cert_id_der: bytes, single_extensions: list[bytes] | None = None) -> bytes:
    parts = [cert_id_der]
    if single_extensions is not None:
        parts.append(tlv(0xA0, seq(*single_extensions)))
    return seq(*parts)


def ocsp_request(
    requests: list[bytes],
    *,
    version: bytes | None = None,
    requestor: bytes | None = None,
    extensions: list[bytes] | None = None,
    signature: bytes | None = None,
) -> bytes:
    """OCSPRequest from already-encoded Request elements; optional fields as raw inner TLVs."""
    tbs = []
    if version is not None:
        tbs.append(tlv(0xA0, version))
    if requestor is not None:
        tbs.append(tlv(0xA1, requestor))
    tbs.append(seq(*requests))
    if extensions is not None:
        tbs.append(tlv(0xA2, seq(*extensions)))
    outer = [seq(*tbs)]
    if signature is not None:
        outer.append(tlv(0xA0, signature))
    return seq(*outer)


def simple_request(**cert_id_kwargs: object) -> bytes:
    return ocsp_request([single_request(cert_id(**cert_id_kwargs))])  # type: ignore[arg-type]


# ------------------------------------------------------------ requests built by cryptography

HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(),
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}


def crypto_request_by_hash(
    name_hash: bytes, key_hash: bytes, serial: int, hash_name: str = "sha1", nonce: bytes | None = None
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash, key_hash, serial, HASHES[hash_name])
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def fake_hashes(hash_name: str, seed: bytes = b"issuer") -> tuple[bytes, bytes]:
    """Deterministic stand-in issuer hashes of the right length for ``hash_name``."""
    return hashlib.new(hash_name, seed + b"/name").digest(), hashlib.new(hash_name, seed + b"/key").digest()


# ---------------------------------------------------------------------------- a test PKI


@dataclass(frozen=True)
class Pki:
    ca: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    leaf2: x509.Certificate

    def expected_hashes(self, hash_name: str) -> tuple[bytes, bytes]:
        """RFC 6960 issuerNameHash / issuerKeyHash computed from cryptography's view of the CA."""
        name_der = self.ca.subject.public_bytes()
        key_bits = self.ca.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return hashlib.new(hash_name, name_der).digest(), hashlib.new(hash_name, key_bits).digest()

    def write(self, directory: Path) -> dict[str, Path]:
        pem = serialization.Encoding.PEM
        paths = {name: directory / f"{name}.pem" for name in ("ca", "leaf", "leaf2", "leaf_key")}
        paths["ca"].write_bytes(self.ca.public_bytes(pem))
        paths["leaf"].write_bytes(self.leaf.public_bytes(pem))
        paths["leaf2"].write_bytes(self.leaf2.public_bytes(pem))
        paths["leaf_key"].write_bytes(
            self.leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        return paths


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pki-edge tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    serial: int,
    ca: bool,
) -> x509.Certificate:
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def make_pki() -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Test CA", ca_key, _name("Test CA"), ca_key, 0x01, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    # A serial with the high bit set: its DER content needs a 0x00 pad octet.
    leaf = _certificate("leaf.example", leaf_key, ca.subject, ca_key, 0x8F3A5C7E9B1D2F4A6C8E0A2B4C6D8E0F1A2B3C, False)
    leaf2_key = ec.generate_private_key(ec.SECP256R1())
    leaf2 = _certificate("leaf2.example", leaf2_key, ca.subject, ca_key, 0x1234, False)
    return Pki(ca, ca_key, leaf, leaf_key, leaf2)


@pytest.fixture(scope="session")
def pki() -> Pki:
    return make_pki()


# ---------------------------------------------------------------------------- running edges
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, x509.Certificate]:
    """A signed store (serial 1 good, 2 revoked) and its CA, one per test module."""
    from tests.edge.edges import signed_store

    data = tmp_path_factory.mktemp("edges")
    return data, signed_store(data)


@pytest.fixture(scope="module")
def servers(store: tuple[Path, x509.Certificate]) -> Iterator[list[str]]:
    """The fast lane's and the ASGI path's edge on ``store``, in subprocesses."""
    from tests.edge.edges import edge_servers

    yield from edge_servers(store[0])


@pytest.fixture(scope="module")
def app(store: tuple[Path, x509.Certificate]) -> Iterator[Any]:
    """One application for the in-process tests: LMDB allows one environment per file and process."""
    from contract.config import Config
    from edge.app import create_app

    saved = os.environ.get("PKI_EDGE_DATA")
    os.environ["PKI_EDGE_DATA"] = str(store[0])
    try:
        yield create_app(Config())
    finally:
        if saved is None:
            os.environ.pop("PKI_EDGE_DATA")
        else:
            os.environ["PKI_EDGE_DATA"] = saved
