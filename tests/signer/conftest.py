"""Shared helpers for the signer tests: a key pool, certificates built with cryptography, a store.

Certificates here are built directly with ``cryptography`` (not with ``signer.certs``) so the
tests check the signer against an independent construction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from contract.config import Config
from signer.state import SignerStore

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_KEY_CACHE: dict[tuple[str, int], PrivateKey] = {}


def pool_key(kind: str, index: int = 0) -> PrivateKey:
    """A key of ``kind`` (ec-p256, ec-p384, rsa-2048), generated once per test session."""
    cached = _KEY_CACHE.get((kind, index))
    if cached is not None:
        return cached
    if kind == "ec-p256":
        key: PrivateKey = ec.generate_private_key(ec.SECP256R1())
    elif kind == "ec-p384":
        key = ec.generate_private_key(ec.SECP384R1())
    elif kind == "rsa-2048":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(kind)
    _KEY_CACHE[(kind, index)] = key
    return key


def sig_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def utc(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def build_ca(
    key: PrivateKey,
    cn: str,
    not_before: dt.datetime,
    not_after: dt.datetime,
    *,
    issuer: tuple[x509.Certificate, PrivateKey] | None = None,
    ca: bool = True,
    basic_constraints: bool = True,
) -> x509.Certificate:
    issuer_name = issuer[0].subject if issuer else name(cn)
    signing_key = issuer[1] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if basic_constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    return builder.sign(signing_key, sig_hash(signing_key))


def build_leaf(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    serial: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
    public_key: object | None = None,
    cn: str = "leaf",
) -> x509.Certificate:
    pub = public_key if public_key is not None else pool_key("ec-p256", 99).public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(pub)  # type: ignore[arg-type]
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, sig_hash(ca_key))
    )


def build_delegate(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    key: PrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
    *,
    eku: list[x509.ObjectIdentifier] | None = None,
    nocheck: bool = True,
    cn: str = "OCSP responder",
) -> x509.Certificate:
    """A delegated OCSP responder certificate issued by ``ca_cert`` (EKU id-kp-OCSPSigning by default)."""
    usages = [ExtendedKeyUsageOID.OCSP_SIGNING] if eku is None else eku
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if nocheck:
        builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
    return builder.sign(ca_key, sig_hash(ca_key))


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def st(data_dir: Path) -> Iterator[SignerStore]:
    store = SignerStore(data_dir, Config())
    yield store
    store.close()
