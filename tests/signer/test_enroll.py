"""signer.enroll: profile checks, the certificates built, durable issuance, and the three EST jobs.

Expectations are written from RFC 5280 / RFC 7030 and checked with cryptography, a DER walk
written here (independent of the module's asn1crypto reading) and the openssl CLI.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import shutil
import struct
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import ocsp
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from contract import store
from contract.config import CAProfile, Config, SignerConfig
from contract.jobs import EnrollJob, Issued, IssuedWithKey, ReenrollJob, Refused, ServerKeygenJob
from edge.ocsp_request import common_request
from edge.source import FreshnessPolicy, LmdbSource
from signer import enroll as enroll_module
from signer.enroll import (
    EnrollRefused,
    RequestedNames,
    build_certificate,
    check_csr,
    enroll,
    issue_and_store,
    reenroll,
    serverkeygen,
)
from signer.inventory import revoke
from signer.keys import SigningKey
from signer.ocsp_der import ResponseSigner
from signer.precompute import Precomputer
from signer.registry import add_ca, create_ca, load_ca_key, load_response_signer
from signer.state import SignerError, SignerStore
from tests.signer.conftest import PrivateKey, build_ca, build_delegate, build_leaf, key_pem, pem, pool_key, utc

T0 = 1780000000  # 2026-05-28T20:26:40Z
DAY = 86400
OCSP_URL = "http://ocsp.example.test/ca1"
OPENSSL = shutil.which("openssl")
CODE = {name: code for name, (code, _) in store.HASH_ALGORITHMS.items()}
CRYPTO_HASH = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


# ---------------------------------------------------------------------------- helpers


def der_children(data: bytes) -> list[bytes]:
    """The TLVs inside one DER constructed value (definite lengths only), each with its header."""
    assert data[0] & 0x20, "not a constructed value"
    _, start, end = _header(data, 0)
    assert end == len(data)
    out = []
    pos = start
    while pos < end:
        _, _, stop = _header(data, pos)
        out.append(data[pos:stop])
        pos = stop
    return out


def _header(data: bytes, pos: int) -> tuple[int, int, int]:
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    return tag, pos, pos + length


def content(tlv: bytes) -> bytes:
    _, start, end = _header(tlv, 0)
    return tlv[start:end]


def csr_subject_der(csr_der: bytes) -> bytes:
    return der_children(der_children(csr_der)[0])[1]  # version, subject, spki, [0] attributes


def cert_tbs(cert_der: bytes) -> list[bytes]:
    tbs = der_children(der_children(cert_der)[0])
    return tbs[1:] if tbs[0][0] == 0xA0 else tbs  # serial, sigalg, issuer, validity, subject, spki, ...


def cert_subject_der(cert_der: bytes) -> bytes:
    return cert_tbs(cert_der)[4]


def san_in(extensions: bytes) -> bytes | None:
    """The extnValue contents of the subjectAltName (2.5.29.17) in a SEQUENCE OF Extension."""
    for ext in der_children(extensions):
        parts = der_children(ext)  # extnID, [critical], extnValue
        if content(parts[0]) == bytes.fromhex("551d11"):
            return content(parts[-1])
    return None


def cert_san_value(cert_der: bytes) -> bytes | None:
    for field in cert_tbs(cert_der)[6:]:
        if field[0] == 0xA3:  # [3] EXPLICIT Extensions
            return san_in(der_children(field)[0])
    return None


def csr_san_value(csr_der: bytes) -> bytes | None:
    info = der_children(der_children(csr_der)[0])
    if len(info) < 4:
        return None
    for attribute in der_children(info[3]):  # [0] IMPLICIT SET OF Attribute
        oid, values = der_children(attribute)
        if content(oid) == bytes.fromhex("2a864886f70d01090e"):  # extensionRequest
            return san_in(der_children(values)[0])
    return None


def make_csr(
    key: Any = None,
    subject: x509.Name | None = None,
    sans: list[x509.GeneralName] | None = None,
    *,
    bad_signature: bool = False,
    extra: list[x509.ExtensionType] | None = None,
) -> bytes:
    key = key if key is not None else pool_key("ec-p256", 1)
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        subject if subject is not None else cn_name("device-1")
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for ext in extra or []:
        builder = builder.add_extension(ext, critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    der = builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)
    if bad_signature:
        der = der[:-1] + bytes((der[-1] ^ 0x01,))
    return der


def cn_name(*cns: str, extra: list[x509.NameAttribute] | None = None) -> x509.Name:
    return x509.Name([*(extra or []), *(x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in cns)])


def rich_subject() -> x509.Name:
    """Several string types and a multi-valued RDN: the copy must keep every byte."""
    return x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE")]),  # PrintableString
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bäckerei Ünsel")]),
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "fleet", _type=_ASN1Type.BMPString),
                    x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-0042"),
                ]
            ),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.COMMON_NAME, "device-7", _type=_ASN1Type.PrintableString)]
            ),
        ]
    )


RICH_SANS: list[x509.GeneralName] = [
    x509.DNSName("b.example.com"),
    x509.UniformResourceIdentifier("urn:dev:7"),
    x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
    x509.DNSName("a.example.com"),
    x509.IPAddress(ipaddress.ip_address("2001:db8::7")),
]


def dump_db(st: SignerStore, db: Any) -> dict[bytes, bytes]:
    with st.env.begin(db=db) as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor()}


def all_dbs(st: SignerStore) -> dict[str, dict[bytes, bytes]]:
    names = ("inventory", "responses", "schedule", "refresh", "pending", "meta", "issuers_db")
    return {n: dump_db(st, getattr(st, n)) for n in names}


def inv_key(issuer_number: int, serial: int) -> bytes:
    return struct.pack(">I", issuer_number) + serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True)


def inventory_record(st: SignerStore, issuer_number: int, serial: int) -> store.CertRecord | None:
    raw = dump_db(st, st.inventory).get(inv_key(issuer_number, serial))
    return store.CERT_DECODER.decode(raw) if raw is not None else None


def run_openssl(*args: str) -> subprocess.CompletedProcess[str]:
    if OPENSSL is None:
        pytest.fail("the openssl CLI is required (make test installs it)")
    return subprocess.run([OPENSSL, *args], capture_output=True, text=True, timeout=30, check=False)


@dataclass
class World:
    st: SignerStore
    data_dir: Path
    config: Config
    ca1: store.IssuerRecord
    ca2: store.IssuerRecord
    load_ca: Callable[[store.IssuerRecord], tuple[x509.Certificate, SigningKey, ResponseSigner]]

    def with_profile(self, ca: str = "ca1", **changes: Any) -> Config:
        self.config = msgspec.structs.replace(self.config, profiles={ca: CAProfile(**changes)})
        return self.config

    def enroll(self, csr_der: bytes, ca: str = "ca1", now: int = T0) -> Issued | Refused:
        return enroll(self.st, self.config, EnrollJob(ca, csr_der, "tester"), self.load_ca, now)

    def issued(self, csr_der: bytes, ca: str = "ca1", now: int = T0) -> x509.Certificate:
        result = self.enroll(csr_der, ca, now)
        assert isinstance(result, Issued), result
        return x509.load_der_x509_certificate(result.cert_der)

    def reenroll(self, csr_der: bytes, current: x509.Certificate | bytes, ca: str = "ca1", now: int = T0) -> Any:
        cur = current if isinstance(current, bytes) else current.public_bytes(serialization.Encoding.DER)
        return reenroll(self.st, self.config, ReenrollJob(ca, csr_der, cur), self.load_ca, now)

    def serverkeygen(self, csr_der: bytes, ca: str = "ca1", now: int = T0) -> IssuedWithKey | Refused:
        return serverkeygen(self.st, self.config, ServerKeygenJob(ca, csr_der, "tester"), self.load_ca, now)


@pytest.fixture
def world(st: SignerStore, data_dir: Path) -> World:
    ca1 = create_ca(st, "ca1", "ec-p256", 3650, None, OCSP_URL, utc(T0 - 10 * DAY))
    ca2 = create_ca(st, "ca2", "ec-p384", 3650, None, None, utc(T0 - 10 * DAY))
    loaded: dict[str, tuple[x509.Certificate, SigningKey, ResponseSigner]] = {}

    def load_ca(record: store.IssuerRecord) -> tuple[x509.Certificate, SigningKey, ResponseSigner]:
        if record.name not in loaded:
            loaded[record.name] = (
                x509.load_der_x509_certificate(record.cert_der),
                load_ca_key(data_dir, record),
                load_response_signer(data_dir, record),
            )
        return loaded[record.name]

    return World(st, data_dir, Config(), ca1, ca2, load_ca)


def issue_direct(world: World, csr_der: bytes, profile: CAProfile | None = None, ca: str = "ca1") -> x509.Certificate:
    record = world.st.issuer(ca)
    ca_cert, ca_key, _ = world.load_ca(record)
    csr = x509.load_der_x509_csr(csr_der)
    return build_certificate(csr, csr.public_key(), ca_cert, ca_key, profile or CAProfile(), record.ocsp_url, T0)


# ---------------------------------------------------------------------------- profile checks

PROFILE_CASES: list[tuple[str, dict[str, Any], Callable[[], bytes], str | None]] = [
    ("default accepts", {}, lambda: make_csr(), None),
    ("bad signature", {}, lambda: make_csr(bad_signature=True), "signature"),
    ("ec-p384 allowed", {}, lambda: make_csr(pool_key("ec-p384")), None),
    ("rsa-2048 allowed", {}, lambda: make_csr(pool_key("rsa-2048")), None),
    ("rsa-4096 allowed", {}, lambda: make_csr(rsa.generate_private_key(65537, 4096)), None),  # Lamassu's estclient's
    ("ec-p384 not in key_types", {"key_types": ["ec-p256"]}, lambda: make_csr(pool_key("ec-p384")), "ec-p384"),
    ("rsa-2048 not in key_types", {"key_types": ["ec-p256"]}, lambda: make_csr(pool_key("rsa-2048")), "rsa-2048"),
    ("ec-p521 unknown", {}, lambda: make_csr(ec.generate_private_key(ec.SECP521R1())), "secp521r1"),
    ("ed25519 unknown", {}, lambda: make_csr(ed25519.Ed25519PrivateKey.generate()), "key type"),
    ("rsa-1024 unknown", {}, lambda: make_csr(rsa.generate_private_key(65537, 1024)), "RSA 1024"),
    ("rsa-2048 with e = 3", {}, lambda: make_csr(rsa.generate_private_key(3, 2048)), "exponent below 65537"),
    ("no CN", {}, lambda: make_csr(subject=x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")])), "one"),
    ("empty subject", {}, lambda: make_csr(subject=x509.Name([])), "exactly one commonName"),
    ("two CNs", {}, lambda: make_csr(subject=cn_name("a", "b")), "exactly one commonName (it has 2)"),
    ("CN matches pattern", {"subject_cn_pattern": r"dev-\d+"}, lambda: make_csr(subject=cn_name("dev-12")), None),
    ("CN must fullmatch", {"subject_cn_pattern": r"dev-\d+"}, lambda: make_csr(subject=cn_name("dev-12x")), "dev-12x"),
    ("CN prefix only", {"subject_cn_pattern": "dev"}, lambda: make_csr(subject=cn_name("dev-1")), "commonName"),
    ("CN plus O accepted", {}, lambda: make_csr(subject=cn_name("d", extra=[_o("x")])), None),
    ("CN alone asked", {"subject_attributes": []}, lambda: make_csr(subject=cn_name("d", extra=[_o("x")])), "O is not"),
    ("O allowed", {"subject_attributes": ["O"]}, lambda: make_csr(subject=cn_name("d", extra=[_o("x")])), None),
    (
        "emailAddress by OID",
        {"subject_attributes": ["O"]},
        lambda: make_csr(subject=cn_name("d", extra=[x509.NameAttribute(NameOID.EMAIL_ADDRESS, "ceo@bank.example")])),
        "subject attribute 1.2.840.113549.1.9.1 is not allowed",
    ),
    ("DNS ok", {"san_dns_pattern": r"[a-z0-9-]+\.example\.com"}, lambda: make_csr(sans=_dns("a.example.com")), None),
    (
        "DNS fullmatch",
        {"san_dns_pattern": r"[a-z0-9-]+\.example\.com"},
        lambda: make_csr(sans=_dns("a.example.com.evil.net")),
        "DNS name 'a.example.com.evil.net'",
    ),
    (
        "second DNS refused",
        {"san_dns_pattern": r"[a-z]+\.example\.com"},
        lambda: make_csr(sans=[*_dns("a.example.com"), *_dns("b.example.org")]),
        "b.example.org",
    ),
    ("URI ok", {"san_uri_pattern": r"urn:dev:\d+"}, lambda: make_csr(sans=_uri("urn:dev:1")), None),
    ("URI refused", {"san_uri_pattern": r"urn:dev:\d+"}, lambda: make_csr(sans=_uri("https://x")), "URI"),
    ("IP allowed", {}, lambda: make_csr(sans=_ip("192.0.2.1")), None),
    ("IPv6 allowed", {}, lambda: make_csr(sans=_ip("2001:db8::1")), None),
    ("IP refused", {"allow_san_ip": False}, lambda: make_csr(sans=_ip("192.0.2.1")), "IP addresses"),
    ("email refused", {}, lambda: make_csr(sans=[x509.RFC822Name("a@example.com")]), "RFC822Name"),
    ("dirname refused", {}, lambda: make_csr(sans=[x509.DirectoryName(cn_name("x"))]), "DirectoryName"),
    (
        "othername refused",
        {},
        lambda: make_csr(sans=[x509.OtherName(x509.ObjectIdentifier("1.2.3"), b"\x05\x00")]),
        "Other",
    ),
    ("rid refused", {}, lambda: make_csr(sans=[x509.RegisteredID(x509.ObjectIdentifier("1.2.3"))]), "RegisteredID"),
    ("require_san without", {"require_san": True}, lambda: make_csr(), "requires a subjectAltName"),
    ("require_san with", {"require_san": True}, lambda: make_csr(sans=_dns("a.example.com")), None),
    ("other requested extensions ignored", {}, lambda: make_csr(extra=[x509.BasicConstraints(True, None)]), None),
    # What no profile may allow (an EST audit: the default patterns issued all of these).
    ("CN with NUL", {}, lambda: make_csr(subject=cn_name("evil\x00.example")), "has a control character"),
    ("CN with ESC", {}, lambda: make_csr(subject=cn_name("dev\x1b[31mred")), "has a control character"),
    ("CN with TAB", {}, lambda: make_csr(subject=cn_name("a\tb")), "has a control character"),
    ("O with DEL", {}, lambda: make_csr(subject=cn_name("d", extra=[_o("x\x7f")])), "subject attribute O"),
    ("DNS with NUL", {}, lambda: make_csr(sans=_dns("good.example\x00.evil.com")), "not a DNS name"),
    ("DNS with space", {}, lambda: make_csr(sans=_dns("bad name!")), "not a DNS name"),
    ("DNS underscore", {}, lambda: make_csr(sans=_dns("a_b.example")), "not a DNS name"),
    ("DNS hyphen first", {}, lambda: make_csr(sans=_dns("-a.example")), "not a DNS name"),
    ("DNS empty label", {}, lambda: make_csr(sans=_dns("a..example")), "not a DNS name"),
    ("DNS label of 64", {}, lambda: make_csr(sans=_dns("a" * 64 + ".example")), "not a DNS name"),
    ("DNS inner wildcard", {}, lambda: make_csr(sans=_dns("a.*.example")), "not a DNS name"),
    ("DNS wildcard first", {}, lambda: make_csr(sans=_dns("*.example.com")), None),
    ("DNS label of 63", {}, lambda: make_csr(sans=_dns("a" * 63 + ".example")), None),
    ("DNS one label", {}, lambda: make_csr(sans=_dns("device-1")), None),
    ("URI with space", {}, lambda: make_csr(sans=_uri("urn:a b")), "has a space or a control character"),
    ("URI with NUL", {}, lambda: make_csr(sans=_uri("https://a\x00.example")), "has a space or a control character"),
    (
        "101 SANs",
        {},
        lambda: make_csr(sans=[x509.DNSName(f"d{i}.example") for i in range(101)]),
        "the subjectAltName has 101 entries (at most 100)",
    ),
    ("100 SANs", {}, lambda: make_csr(sans=[x509.DNSName(f"d{i}.example") for i in range(100)]), None),
    (
        "17 subject attributes",
        {},
        lambda: make_csr(subject=cn_name("d", extra=[_o(f"o{i}") for i in range(16)])),
        "the subject has 17 attributes (at most 16)",
    ),
]


def _o(value: str) -> x509.NameAttribute:
    return x509.NameAttribute(NameOID.ORGANIZATION_NAME, value)


def _dns(value: str) -> list[x509.GeneralName]:
    return [x509.DNSName(value)]


def _uri(value: str) -> list[x509.GeneralName]:
    return [x509.UniformResourceIdentifier(value)]


def _ip(value: str) -> list[x509.GeneralName]:
    return [x509.IPAddress(ipaddress.ip_address(value))]


@pytest.mark.parametrize(
    ("changes", "make", "refusal"), [c[1:] for c in PROFILE_CASES], ids=[c[0] for c in PROFILE_CASES]
)
def test_check_csr(changes: dict[str, Any], make: Callable[[], bytes], refusal: str | None) -> None:
    csr = x509.load_der_x509_csr(make())
    profile = CAProfile(**changes)
    if refusal is None:
        check_csr(csr, profile)
        return
    with pytest.raises(EnrollRefused) as info:
        check_csr(csr, profile)
    assert info.value.status == 400
    assert refusal in info.value.message, info.value.message
    assert "\n" not in info.value.message


def test_refusals_stay_one_short_line(world: World) -> None:
    world.with_profile(subject_cn_pattern="device-[0-9]+", san_dns_pattern="[a-z.]+")
    result = world.enroll(make_csr(subject=cn_name("evil\r\nX-Injected: 1")))
    assert isinstance(result, Refused) and result.status == 400
    assert "\n" not in result.reason and "\r" not in result.reason
    result = world.enroll(make_csr(subject=cn_name("device-1"), sans=_dns("x\n" * 3000)))
    assert isinstance(result, Refused) and result.status == 400
    assert "\n" not in result.reason and len(result.reason) < 200
    result = world.enroll(make_csr(), ca="no\nsuch" + "y" * 5000)
    assert isinstance(result, Refused) and result.status == 404
    assert "\n" not in result.reason and len(result.reason) < 200


def test_bad_pattern_is_an_operator_error() -> None:
    with pytest.raises(SignerError, match="regular expression"):
        check_csr(x509.load_der_x509_csr(make_csr()), CAProfile(subject_cn_pattern="(unclosed"))


def test_patterns_compiled_once() -> None:
    enroll_module._pattern.cache_clear()
    profile = CAProfile(subject_cn_pattern=r"device-\d", san_dns_pattern=r"[a-z.]+")
    csr = x509.load_der_x509_csr(make_csr(sans=_dns("a.example.com")))
    for _ in range(5):
        check_csr(csr, profile)
    info = enroll_module._pattern.cache_info()
    assert info.misses == 2 and info.hits == 8


# ---------------------------------------------------------------------------- built certificates


def test_subject_and_san_copied_byte_for_byte(world: World) -> None:
    csr_der = make_csr(subject=rich_subject(), sans=RICH_SANS)
    cert = issue_direct(world, csr_der)
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    assert cert_subject_der(cert_der) == csr_subject_der(csr_der)
    # BMPString (0x1e) and PrintableString (0x13) kept, not turned into UTF8String.
    assert b"\x1e\x0a\x00f\x00l\x00e\x00e\x00t" in cert_subject_der(cert_der)
    assert b"\x13\x08device-7" in cert_subject_der(cert_der)
    san_value = cert_san_value(cert_der)
    assert san_value is not None and san_value == csr_san_value(csr_der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(san.value) == RICH_SANS  # order kept
    assert not san.critical


NAME_SHAPES: list[tuple[str, Callable[[], bytes]]] = [
    ("no SAN", lambda: make_csr()),
    ("rich subject and SANs", lambda: make_csr(subject=rich_subject(), sans=RICH_SANS)),
    (
        "SAN among other requested extensions",
        lambda: make_csr(
            sans=_dns("a.example.com"),
            extra=[x509.BasicConstraints(True, None), x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])],
        ),
    ),
    ("only other extensions", lambda: make_csr(extra=[x509.BasicConstraints(False, None)])),
    ("RSA key, long SAN", lambda: make_csr(pool_key("rsa-2048"), sans=_dns("x" * 60 + ".example.com") * 40)),
]


@pytest.mark.parametrize("make", [m for _, m in NAME_SHAPES], ids=[n for n, _ in NAME_SHAPES])
def test_names_read_as_signed(world: World, make: Callable[[], bytes]) -> None:
    """The module's DER reads of CSR and certificate agree with this file's own walk, byte for byte."""
    csr_der = make()
    names = enroll_module.requested_names(x509.load_der_x509_csr(csr_der))
    assert names.subject_der == csr_subject_der(csr_der)
    assert names.san_der == csr_san_value(csr_der)
    cert = issue_direct(world, csr_der)
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    assert enroll_module.certificate_names(cert) == (cert_subject_der(cert_der), cert_san_value(cert_der))
    assert enroll_module.certificate_names(cert) == (names.subject_der, names.san_der)


def test_names_of_a_version_1_certificate() -> None:
    """No [0] version field: the subject is the fifth element (a v1 certificate re-signed from a v3 one)."""
    key = pool_key("ec-p256", 53)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    v3 = build_ca(key, "old", utc(T0), utc(T0 + DAY)).public_bytes(serialization.Encoding.DER)
    tbs, algorithm, _ = der_children(v3)
    fields = der_children(tbs)[1:7]  # serial, signature, issuer, validity, subject, spki: no version, no extensions
    v1_tbs = _tlv(0x30, b"".join(fields))
    signature = key.sign(v1_tbs, ec.ECDSA(hashes.SHA256()))
    v1 = x509.load_der_x509_certificate(_tlv(0x30, v1_tbs + algorithm + _tlv(0x03, b"\x00" + signature)))
    assert v1.version == x509.Version.v1
    assert enroll_module.certificate_names(v1) == (fields[4], None)


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes((n,)) if n < 0x80 else bytes((0x81, n)) if n < 0x100 else b"\x82" + n.to_bytes(2, "big")
    return bytes((tag,)) + length + body


def test_hostile_der_in_names_is_a_value_error() -> None:
    """Every truncation and a trailing byte: the DER reads raise ValueError (a 400), never anything else."""
    csr_der = make_csr(subject=rich_subject(), sans=RICH_SANS)
    info = der_children(csr_der)[0]
    for cut in range(len(info)):
        with pytest.raises(ValueError):
            enroll_module._elements(info[:cut])
    with pytest.raises(ValueError):
        enroll_module._elements(info + b"\x00")
    extensions = der_children(der_children(der_children(der_children(info)[3])[0])[1])[0]
    for cut in range(len(extensions)):
        with pytest.raises(ValueError):
            enroll_module._san_der(extensions[:cut])


def test_extensions_and_fields(world: World) -> None:
    key = pool_key("ec-p256", 2)
    cert = issue_direct(world, make_csr(key, sans=_dns("d.example.com")))
    ca_cert = x509.load_der_x509_certificate(world.ca1.cert_der)
    assert cert.issuer == ca_cert.subject
    assert cert.version == x509.Version.v3
    assert 0 < cert.serial_number < 1 << 159
    assert cert.public_key() == key.public_key()
    ext = cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature and not ku.value.key_encipherment and not ku.value.key_cert_sign
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    aia = ext.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(d.access_method, d.access_location.value) for d in aia] == [(AuthorityInformationAccessOID.OCSP, OCSP_URL)]
    # No extension the CSR did not get from the profile (the CSR's own extensions are not copied).
    assert {e.oid for e in ext} == {
        x509.OID_BASIC_CONSTRAINTS,
        x509.OID_KEY_USAGE,
        x509.OID_EXTENDED_KEY_USAGE,
        x509.OID_SUBJECT_KEY_IDENTIFIER,
        x509.OID_AUTHORITY_KEY_IDENTIFIER,
        x509.OID_SUBJECT_ALTERNATIVE_NAME,
        x509.OID_AUTHORITY_INFORMATION_ACCESS,
    }
    assert cert.not_valid_before_utc == utc(T0 - 300)
    assert cert.not_valid_after_utc == utc(T0 - 300 + 365 * DAY)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(ca_cert)


def test_profile_usages_urls_and_validity(world: World) -> None:
    profile = CAProfile(
        validity_days=30,
        key_usage=["digital_signature", "key_encipherment", "key_agreement", "content_commitment", "data_encipherment"],
        extended_key_usage=["server_auth", "client_auth", "code_signing", "email_protection", "time_stamping"],
        ocsp_url="http://profile.example.test/ocsp",
        ca_issuers_url="http://profile.example.test/ca1.der",
    )
    cert = issue_direct(world, make_csr(), profile)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (ku.digital_signature, ku.key_encipherment, ku.key_agreement, ku.content_commitment) == (True,) * 4
    assert ku.data_encipherment and not ku.key_cert_sign and not ku.crl_sign
    assert ku.encipher_only is False and ku.decipher_only is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.CODE_SIGNING,
        ExtendedKeyUsageOID.EMAIL_PROTECTION,
        ExtendedKeyUsageOID.TIME_STAMPING,
    ]
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(d.access_method, d.access_location.value) for d in aia] == [
        (AuthorityInformationAccessOID.OCSP, "http://profile.example.test/ocsp"),
        (AuthorityInformationAccessOID.CA_ISSUERS, "http://profile.example.test/ca1.der"),
    ]
    assert cert.not_valid_after_utc == utc(T0 - 300 + 30 * DAY)


def test_ocsp_signing_eku_and_no_usages(world: World) -> None:
    cert = issue_direct(world, make_csr(), CAProfile(key_usage=[], extended_key_usage=["ocsp_signing"]))
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.KeyUsage)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    cert = issue_direct(world, make_csr(), CAProfile(extended_key_usage=[]))
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_no_aia_without_urls_and_caissuers_alone(world: World) -> None:
    cert = issue_direct(world, make_csr(), ca="ca2")  # ca2 has no OCSP URL in the registry
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    cert = issue_direct(world, make_csr(), CAProfile(ca_issuers_url="http://x.test/ca2.der"), ca="ca2")
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [d.access_method for d in aia] == [AuthorityInformationAccessOID.CA_ISSUERS]
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)  # P-384 CA key


def test_validity_capped_at_ca_not_after(world: World) -> None:
    short = create_ca(world.st, "short", "ec-p256", 20, None, None, utc(T0 - 10 * DAY))
    ca_cert = x509.load_der_x509_certificate(short.cert_der)
    cert = issue_direct(world, make_csr(), CAProfile(validity_days=365), ca="short")
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc
    assert cert.not_valid_before_utc == utc(T0 - 300)


def test_aki_is_the_ca_own_ski(world: World, tmp_path: Path) -> None:
    """An added CA whose SKI is not the SHA-1 of its key: the AKI must repeat that SKI, or chains break."""
    key = pool_key("ec-p256", 50)
    custom_ski = bytes(range(1, 21))
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "custom SKI CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(utc(T0 - DAY))
        .not_valid_after(utc(T0 + 900 * DAY))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(custom_ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    add_ca(world.st, "custom", pem(ca_cert), key_pem(key), None, None, None, utc(T0))
    cert = issue_direct(world, make_csr(), ca="custom")
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == custom_ski
    assert aki.key_identifier != x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    # A CA without any SKI: the AKI is derived from its key.
    bare_key = pool_key("ec-p256", 51)
    bare = build_ca(bare_key, "bare CA", utc(T0 - DAY), utc(T0 + 900 * DAY))
    add_ca(world.st, "bare", pem(bare), key_pem(bare_key), None, None, None, utc(T0))
    cert = issue_direct(world, make_csr(), ca="bare")
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == x509.SubjectKeyIdentifier.from_public_key(bare_key.public_key()).digest


def test_names_that_would_not_copy_exactly_are_refused(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # cryptography refuses non-DER names when parsing (e.g. an unsorted SET OF), so the
    # after-signing comparison is a second line of defence: force a difference to see it act.
    real = enroll_module.certificate_names
    monkeypatch.setattr(enroll_module, "certificate_names", lambda cert: (real(cert)[0] + b"x", real(cert)[1]))
    before = all_dbs(world.st)
    result = world.enroll(make_csr())
    assert isinstance(result, Refused) and result.status == 400 and "canonical DER" in result.reason
    assert all_dbs(world.st) == before


def hand_made_csr(*, der_order: bool) -> bytes:
    """A CSR with a multi-valued RDN, its SET OF in DER order (OU, CN) or not (CN before the shorter OU)."""

    key = pool_key("ec-p256", 52)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    cn = _tlv(0x30, _tlv(0x06, bytes.fromhex("550403")) + _tlv(0x0C, b"zz"))
    ou = _tlv(0x30, _tlv(0x06, bytes.fromhex("55040b")) + _tlv(0x0C, b"a"))
    info = _tlv(0x30, b"\x02\x01\x00" + _tlv(0x30, _tlv(0x31, ou + cn if der_order else cn + ou)) + spki + b"\xa0\x00")
    signature = key.sign(info, ec.ECDSA(hashes.SHA256()))
    algorithm = _tlv(0x30, _tlv(0x06, bytes.fromhex("2a8648ce3d040302")))
    return _tlv(0x30, info + algorithm + _tlv(0x03, b"\x00" + signature))


def test_non_der_subject_is_refused(world: World) -> None:
    assert world.enroll(hand_made_csr(der_order=False)) == Refused(400, "not a DER PKCS#10 certificate request")
    csr_der = hand_made_csr(der_order=True)  # the control: the same CSR in DER order is issued, bytes kept
    cert = world.issued(csr_der)
    assert cert_subject_der(cert.public_bytes(serialization.Encoding.DER)) == csr_subject_der(csr_der)


def test_unknown_usage_names_are_operator_errors(world: World) -> None:
    with pytest.raises(SignerError, match="key_usage"):
        issue_direct(world, make_csr(), CAProfile(key_usage=["key_cert_sign"]))
    with pytest.raises(SignerError, match="extended_key_usage"):
        issue_direct(world, make_csr(), CAProfile(extended_key_usage=["any"]))


def test_build_from_requested_names(world: World) -> None:
    ca_cert, ca_key, _ = world.load_ca(world.ca1)
    san = x509.SubjectAlternativeName(_dns("n.example.com"))
    names = RequestedNames.of(cn_name("named"), san)
    key = pool_key("ec-p384")
    cert = build_certificate(names, key.public_key(), ca_cert, ca_key, CAProfile(), None, T0)
    assert cert.subject == cn_name("named")
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == san
    assert cert.public_key() == key.public_key()


def test_openssl_verifies_chain_and_prints_extensions(world: World, tmp_path: Path) -> None:
    profile = CAProfile(
        extended_key_usage=["client_auth"], ca_issuers_url="http://ca.example.test/ca1.der", validity_days=90
    )
    cert = issue_direct(world, make_csr(subject=rich_subject(), sans=RICH_SANS), profile)
    ca_path, leaf_path = tmp_path / "ca.pem", tmp_path / "leaf.pem"
    ca_path.write_bytes(pem(x509.load_der_x509_certificate(world.ca1.cert_der)))
    leaf_path.write_bytes(pem(cert))
    verified = run_openssl(
        "verify", "-CAfile", str(ca_path), "-attime", str(T0), "-purpose", "sslclient", str(leaf_path)
    )
    assert verified.returncode == 0, verified.stderr + verified.stdout
    assert verified.stdout.strip().endswith(": OK")
    # The same certificate does not chain to another CA (the check can fail).
    other = tmp_path / "ca2.pem"
    other.write_bytes(pem(x509.load_der_x509_certificate(world.ca2.cert_der)))
    assert run_openssl("verify", "-CAfile", str(other), "-attime", str(T0), str(leaf_path)).returncode != 0
    text = run_openssl("x509", "-in", str(leaf_path), "-noout", "-text").stdout
    lines = [line.strip() for line in text.splitlines()]
    after = {line: lines[i + 1] for i, line in enumerate(lines[:-1])}
    assert after["X509v3 Basic Constraints: critical"] == "CA:FALSE"
    assert after["X509v3 Key Usage: critical"] == "Digital Signature"
    assert after["X509v3 Extended Key Usage:"] == "TLS Web Client Authentication"
    assert "X509v3 Subject Key Identifier:" in after and "X509v3 Authority Key Identifier:" in after
    assert after["X509v3 Subject Alternative Name:"] == (
        "DNS:b.example.com, URI:urn:dev:7, IP Address:192.0.2.7, DNS:a.example.com, IP Address:2001:DB8:0:0:0:0:0:7"
    )
    assert f"OCSP - URI:{OCSP_URL}" in lines
    assert "CA Issuers - URI:http://ca.example.test/ca1.der" in lines


# ---------------------------------------------------------------------------- issue_and_store


def ocsp_request(cert: x509.Certificate, ca_cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, ca_cert, algorithm)
    return builder.build().public_bytes(serialization.Encoding.DER)


def test_issue_and_store_writes_everything_in_one_go(world: World) -> None:
    cert = issue_direct(world, make_csr())
    ca_cert, _, signer = world.load_ca(world.ca1)
    before = all_dbs(world.st)
    issue_and_store(world.st, world.ca1, cert, signer, world.config, T0)
    after = all_dbs(world.st)
    key = inv_key(world.ca1.number, cert.serial_number)
    # Inventory: the certificate itself.
    record = inventory_record(world.st, world.ca1.number, cert.serial_number)
    assert record == store.CertRecord(
        int(cert.not_valid_after_utc.timestamp()), None, None, cert.public_bytes(serialization.Encoding.DER)
    )
    # Responses for the configured algorithms only, each good and for this serial.
    new_responses = {k: v for k, v in after["responses"].items() if k not in before["responses"]}
    assert set(new_responses) == {struct.pack(">IB", world.ca1.number, CODE[h]) + key[4:] for h in ("sha1", "sha256")}
    refresh_times = set()
    for raw_key, raw in new_responses.items():
        stored = store.RESPONSE_DECODER.decode(raw)
        response = ocsp.load_der_ocsp_response(stored.der)
        assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert response.serial_number == cert.serial_number
        code = raw_key[4]
        name = next(n for n, c in CODE.items() if c == code)
        assert isinstance(response.hash_algorithm, CRYPTO_HASH[name])
        assert response.produced_at_utc == utc(T0)
        assert response.this_update_utc == utc(T0 - world.config.signer.backdate_seconds)
        assert stored.revoked is False and stored.serve_until > T0 + 300 * DAY
        pub = ca_cert.public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        pub.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
        refresh_times.add(stored.refresh_at)
    # One schedule entry at the responses' refresh time, its refresh pointer, nothing pending.
    (refresh_at,) = refresh_times
    assert T0 < refresh_at < T0 + int(world.config.signer.validity_hours * 3600)
    assert set(after["schedule"]) - set(before["schedule"]) == {struct.pack(">Q", refresh_at) + key}
    assert after["refresh"][key] == struct.pack(">Q", refresh_at)
    assert after["pending"] == {}
    assert set(after["inventory"]) - set(before["inventory"]) == {key}


def test_first_ocsp_check_is_a_cache_hit_saying_good(world: World) -> None:
    result = world.enroll(make_csr())
    assert isinstance(result, Issued)
    cert = x509.load_der_x509_certificate(result.cert_der)
    ca_cert = x509.load_der_x509_certificate(world.ca1.cert_der)
    source = FreshnessPolicy(LmdbSource(lambda: world.st.env, logging.getLogger("t")))
    for algorithm in (hashes.SHA1(), hashes.SHA256()):
        common = common_request(ocsp_request(cert, ca_cert, algorithm))  # as the edge reads a request
        assert common is not None
        stored = source.response(*common, T0)  # raises NotFound on a miss
        response = ocsp.load_der_ocsp_response(stored.der)
        assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert response.serial_number == cert.serial_number
        assert isinstance(response.hash_algorithm, type(algorithm))


def test_issue_and_store_follows_configured_algorithms(world: World) -> None:
    world.config = msgspec.structs.replace(world.config, signer=SignerConfig(hash_algorithms=["sha256", "sha512"]))
    cert = world.issued(make_csr())
    codes = {k[4] for k in dump_db(world.st, world.st.responses)}
    assert codes == {CODE["sha256"], CODE["sha512"]}
    assert inventory_record(world.st, world.ca1.number, cert.serial_number) is not None


class Boom(RuntimeError):
    pass


def failing_signer(signer: ResponseSigner, monkeypatch: pytest.MonkeyPatch, fail_on_call: int) -> list[int]:
    calls: list[int] = []
    original = signer.sign

    def sign(*args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        if len(calls) == fail_on_call:
            raise Boom("signing failed")
        return original(*args, **kwargs)

    monkeypatch.setattr(signer, "sign", sign)
    return calls


def test_failure_midway_leaves_nothing_written(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.issued(make_csr())  # something already stored, so "nothing new" is meaningful
    cert = issue_direct(world, make_csr(pool_key("ec-p256", 3)))
    _, _, signer = world.load_ca(world.ca1)
    calls = failing_signer(signer, monkeypatch, fail_on_call=2)  # the sha256 response's signature
    before = all_dbs(world.st)
    with pytest.raises(Boom):
        issue_and_store(world.st, world.ca1, cert, signer, world.config, T0)
    assert len(calls) == 2
    assert all_dbs(world.st) == before
    # The enroll job fails the same way (a server fault, not a Refused) and writes nothing either.
    calls.clear()
    with pytest.raises(Boom):
        world.enroll(make_csr(pool_key("ec-p256", 4)))
    assert all_dbs(world.st) == before


def test_certificate_from_another_ca_is_not_stored(world: World) -> None:
    cert = issue_direct(world, make_csr(), ca="ca2")
    _, _, signer = world.load_ca(world.ca1)
    before = all_dbs(world.st)
    with pytest.raises(SignerError, match="did not issue"):
        issue_and_store(world.st, world.ca1, cert, signer, world.config, T0)
    assert all_dbs(world.st) == before


# ---------------------------------------------------------------------------- enroll


def test_enroll_issues_from_the_csr(world: World) -> None:
    key = pool_key("rsa-2048")
    cert = world.issued(make_csr(key, subject=rich_subject(), sans=RICH_SANS))
    assert cert.public_key() == key.public_key()
    assert cert.subject == rich_subject()
    cert.verify_directly_issued_by(x509.load_der_x509_certificate(world.ca1.cert_der))
    record = inventory_record(world.st, world.ca1.number, cert.serial_number)
    assert record is not None and record.cert_der == cert.public_bytes(serialization.Encoding.DER)


def test_two_enrollments_get_distinct_serials(world: World) -> None:
    a, b = world.issued(make_csr()), world.issued(make_csr())
    assert a.serial_number != b.serial_number


@pytest.mark.parametrize(
    "csr_der",
    [b"", b"\x30\x00", b"not der at all", bytes(range(256))],
    ids=["empty", "empty-sequence", "text", "bytes"],
)
def test_enroll_refuses_garbage(world: World, csr_der: bytes) -> None:
    before = all_dbs(world.st)
    for result in (world.enroll(csr_der), world.serverkeygen(csr_der)):
        assert isinstance(result, Refused) and result.status == 400
    assert all_dbs(world.st) == before


def test_enroll_refuses_a_certificate_instead_of_a_csr(world: World) -> None:
    result = world.enroll(world.ca1.cert_der)
    assert isinstance(result, Refused) and result.status == 400


def test_enroll_refusals_from_profile(world: World) -> None:
    world.with_profile(subject_cn_pattern=r"dev-\d+")
    before = all_dbs(world.st)
    result = world.enroll(make_csr(subject=cn_name("laptop")))
    assert result == Refused(400, "commonName 'laptop' is not allowed by this CA's profile")
    assert world.enroll(make_csr(bad_signature=True, subject=cn_name("dev-1"))) == Refused(
        400, "the CSR's signature does not verify with its public key"
    )
    assert all_dbs(world.st) == before
    # The profile belongs to ca1: ca2 keeps the defaults.
    assert isinstance(world.enroll(make_csr(subject=cn_name("laptop")), ca="ca2"), Issued)


def test_a_csr_signed_with_sha1_is_refused_for_what_it_is(world: World, tmp_path: Path) -> None:
    """cryptography verifies no SHA-1 signature (nor makes one): the refusal says why, not that the
    signature is bad. The CSR as an old device's openssl makes it."""
    key = tmp_path / "key.pem"
    key.write_bytes(
        pool_key("ec-p256", 1).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    made = subprocess.run(
        ["openssl", "req", "-new", "-key", str(key), "-subj", "/CN=device-1", "-sha1", "-outform", "DER"],
        capture_output=True,
        check=True,
        timeout=30,
    )
    sha1_csr = made.stdout
    before = all_dbs(world.st)
    assert world.enroll(sha1_csr) == Refused(400, "the CSR is signed with SHA1: sign it with SHA-256 or better")
    assert all_dbs(world.st) == before


def test_a_common_name_of_64_two_byte_characters_is_issued_without_a_warning(world: World) -> None:
    """RFC 5280 bounds characters; cryptography warns of a CN over 64 bytes (the edge checks bounds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        long_cn = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "é" * 64, _validate=False)])
    csr = make_csr(subject=long_cn)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = world.enroll(csr)
    assert isinstance(result, Issued), result
    assert not [w for w in seen if "length" in str(w.message)]
    issued = x509.load_der_x509_certificate(result.cert_der)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert issued.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "é" * 64


def test_unknown_ca_is_404(world: World) -> None:
    csr = make_csr()
    assert world.enroll(csr, ca="nope") == Refused(404, "unknown CA 'nope'")
    assert world.serverkeygen(csr, ca="nope") == Refused(404, "unknown CA 'nope'")
    cert = world.issued(csr)
    assert world.reenroll(csr, cert, ca="nope") == Refused(404, "unknown CA 'nope'")


def test_delegate_ca_cannot_issue(world: World) -> None:
    ca_key, responder_key = pool_key("ec-p256", 10), pool_key("ec-p256", 11)
    ca_cert = build_ca(ca_key, "outside CA", utc(T0 - DAY), utc(T0 + 900 * DAY))
    responder = build_delegate(ca_cert, ca_key, responder_key, utc(T0 - DAY), utc(T0 + 30 * DAY))
    add_ca(world.st, "outside", pem(ca_cert), None, pem(responder), key_pem(responder_key), None, utc(T0))
    before = all_dbs(world.st)
    for result in (world.enroll(make_csr(), ca="outside"), world.serverkeygen(make_csr(), ca="outside")):
        assert isinstance(result, Refused) and result.status == 403
        assert result.reason == "CA 'outside' was added without its key: it cannot issue certificates"
    assert all_dbs(world.st) == before


def test_expired_ca_cannot_issue(world: World) -> None:
    create_ca(world.st, "old", "ec-p256", 10, None, None, utc(T0 - 20 * DAY))
    result = world.enroll(make_csr(), ca="old")
    assert isinstance(result, Refused) and result.status == 403 and "expired" in result.reason


def test_a_revoked_ca_cannot_issue_nor_the_cas_under_it(world: World) -> None:
    """A sub-CA revoked in its parent's inventory (cACompromise, say): its certificates would chain to a
    revoked CA. Found by the audit: EST, `issue` and `ca create --parent` all issued on."""
    sub = create_ca(world.st, "sub", "ec-p256", 365, "ca1", None, utc(T0 - DAY))
    create_ca(world.st, "subsub", "ec-p256", 30, "sub", None, utc(T0 - DAY))
    assert isinstance(world.enroll(make_csr(), ca="subsub"), Issued)
    revoke(world.st, world.ca1, x509.load_der_x509_certificate(sub.cert_der).serial_number, 2, T0)
    before = all_dbs(world.st)
    for ca in ("sub", "subsub"):
        assert world.enroll(make_csr(), ca=ca) == Refused(
            403, f"CA {ca!r} is revoked (in CA 'ca1'): it cannot issue certificates"
        )
    assert all_dbs(world.st) == before
    assert isinstance(world.enroll(make_csr(), ca="ca1"), Issued)


# ---------------------------------------------------------------------------- reenroll

ORIGINAL_SANS: list[x509.GeneralName] = [x509.DNSName("d7.example.com"), x509.UniformResourceIdentifier("urn:dev:7")]


@pytest.fixture
def current(world: World) -> x509.Certificate:
    return world.issued(make_csr(pool_key("ec-p256", 20), subject=rich_subject(), sans=ORIGINAL_SANS))


def renewal_csr(key_index: int = 20, **changes: Any) -> bytes:
    args: dict[str, Any] = {"subject": rich_subject(), "sans": ORIGINAL_SANS, **changes}
    return make_csr(pool_key("ec-p256", key_index), args["subject"], args["sans"], bad_signature=args.get("bad", False))


def test_renewal_with_the_same_key(world: World, current: x509.Certificate) -> None:
    result = world.reenroll(renewal_csr(), current, now=T0 + 100)
    assert isinstance(result, Issued)
    new = x509.load_der_x509_certificate(result.cert_der)
    assert new.public_key() == current.public_key()
    assert new.serial_number != current.serial_number
    new_der = new.public_bytes(serialization.Encoding.DER)
    cur_der = current.public_bytes(serialization.Encoding.DER)
    assert cert_subject_der(new_der) == cert_subject_der(cur_der)
    assert cert_san_value(new_der) == cert_san_value(cur_der)
    assert new.not_valid_before_utc == utc(T0 + 100 - 300)
    new.verify_directly_issued_by(x509.load_der_x509_certificate(world.ca1.cert_der))
    # Default profile: the old certificate stays valid, nothing is queued.
    old = inventory_record(world.st, world.ca1.number, current.serial_number)
    assert old is not None and old.revoked_at is None
    assert dump_db(world.st, world.st.pending) == {}
    assert inventory_record(world.st, world.ca1.number, new.serial_number) is not None
    assert {k[5:] for k in dump_db(world.st, world.st.responses)} >= {inv_key(world.ca1.number, new.serial_number)[4:]}


def test_rekey_with_a_new_key(world: World, current: x509.Certificate) -> None:
    result = world.reenroll(renewal_csr(key_index=21), current)
    assert isinstance(result, Issued)
    new = x509.load_der_x509_certificate(result.cert_der)
    assert new.public_key() == pool_key("ec-p256", 21).public_key()
    assert new.public_key() != current.public_key()
    assert new.subject == current.subject


def test_renewal_without_san_on_both(world: World) -> None:
    cur = world.issued(make_csr(pool_key("ec-p256", 22), cn_name("plain")))
    result = world.reenroll(make_csr(pool_key("ec-p256", 22), cn_name("plain")), cur)
    assert isinstance(result, Issued)
    new = x509.load_der_x509_certificate(result.cert_der)
    with pytest.raises(x509.ExtensionNotFound):
        new.extensions.get_extension_for_class(x509.SubjectAlternativeName)


KEEP = "re-enroll must keep the subject and subjectAltName"
REENROLL_MISMATCHES: list[tuple[str, dict[str, Any]]] = [
    ("other CN", {"subject": cn_name("device-8")}),
    (
        "same attributes as UTF8String",  # equal to the eye, different bytes
        {
            "subject": x509.Name(
                [
                    x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE")]),
                    x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bäckerei Ünsel")]),
                    x509.RelativeDistinguishedName(
                        [
                            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "fleet"),
                            x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-0042"),
                        ]
                    ),
                    x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "device-7")]),
                ]
            )
        },
    ),
    ("SAN added", {"sans": [*ORIGINAL_SANS, x509.DNSName("extra.example.com")]}),
    ("SAN removed", {"sans": ORIGINAL_SANS[:1]}),
    ("SAN reordered", {"sans": list(reversed(ORIGINAL_SANS))}),
    ("SAN absent", {"sans": None}),
]


@pytest.mark.parametrize("changes", [c[1] for c in REENROLL_MISMATCHES], ids=[c[0] for c in REENROLL_MISMATCHES])
def test_reenroll_must_keep_subject_and_san(world: World, current: x509.Certificate, changes: dict[str, Any]) -> None:
    before = all_dbs(world.st)
    assert world.reenroll(renewal_csr(**changes), current) == Refused(403, KEEP)
    assert all_dbs(world.st) == before


def test_reenroll_refuses_revoked_current(world: World, current: x509.Certificate) -> None:
    revoke(world.st, world.ca1, current.serial_number, 1, T0 - 10)
    before = all_dbs(world.st)
    assert world.reenroll(renewal_csr(), current) == Refused(403, "the current certificate is revoked")
    assert all_dbs(world.st) == before


def test_reenroll_refuses_expired_and_not_yet_valid(world: World, current: x509.Certificate) -> None:
    expired_at = int(current.not_valid_after_utc.timestamp())
    result = world.reenroll(renewal_csr(), current, now=expired_at)
    assert isinstance(result, Refused) and result.status == 403 and "expired" in result.reason
    early = int(current.not_valid_before_utc.timestamp()) - 1
    result = world.reenroll(renewal_csr(), current, now=early)
    assert isinstance(result, Refused) and result.status == 403 and "not valid yet" in result.reason
    # One second before expiry still renews.
    assert isinstance(world.reenroll(renewal_csr(), current, now=expired_at - 1), Issued)


def test_reenroll_refuses_a_certificate_of_another_ca(world: World, current: x509.Certificate) -> None:
    result = world.reenroll(renewal_csr(), current, ca="ca2")
    assert isinstance(result, Refused) and result.status == 403 and "not issued by CA 'ca2'" in result.reason
    from_ca2 = world.issued(renewal_csr(), ca="ca2")
    result = world.reenroll(renewal_csr(), from_ca2, ca="ca1")
    assert isinstance(result, Refused) and result.status == 403 and "not issued by CA 'ca1'" in result.reason


def test_reenroll_refuses_forged_and_unknown_current(world: World, current: x509.Certificate) -> None:
    # Same issuer name, signed by another key: the signature check catches it.
    ca_cert = x509.load_der_x509_certificate(world.ca1.cert_der)
    forger = pool_key("ec-p256", 30)
    forged = build_leaf(ca_cert, forger, 12345, utc(T0 - DAY), utc(T0 + DAY), cn="device-7")
    result = world.reenroll(renewal_csr(), forged)
    assert isinstance(result, Refused) and result.status == 403 and "signature" in result.reason
    # Really issued by ca1 but never recorded: OCSP could not answer for it, so no renewal.
    _, ca_key, _ = world.load_ca(world.ca1)
    unrecorded = build_leaf(ca_cert, ca_key, 777, utc(T0 - DAY), utc(T0 + DAY), cn="plain")
    result = world.reenroll(make_csr(subject=cn_name("plain")), unrecorded)
    assert isinstance(result, Refused) and result.status == 403 and "not in the inventory" in result.reason
    result = world.reenroll(renewal_csr(), b"\x30\x03\x02\x01\x01")
    assert isinstance(result, Refused) and result.status == 403


def test_reenroll_checks_the_csr_too(world: World, current: x509.Certificate) -> None:
    result = world.reenroll(renewal_csr(bad=True), current)
    assert isinstance(result, Refused) and result.status == 400
    world.with_profile(key_types=["ec-p384"])
    result = world.reenroll(renewal_csr(), current)
    assert isinstance(result, Refused) and result.status == 400 and "ec-p256" in result.reason


class StepClock:
    def __init__(self, now: int) -> None:
        self.wall = now

    def now(self) -> int:
        return self.wall

    def monotonic(self) -> float:
        return 0.0


def test_revoke_superseded(world: World, current: x509.Certificate) -> None:
    world.with_profile(revoke_superseded=True)
    result = world.reenroll(renewal_csr(key_index=21), current, now=T0 + 50)
    assert isinstance(result, Issued)
    new = x509.load_der_x509_certificate(result.cert_der)
    old = inventory_record(world.st, world.ca1.number, current.serial_number)
    assert old is not None and (old.revoked_at, old.reason) == (T0 + 50, 4)
    assert old.cert_der == current.public_bytes(serialization.Encoding.DER)
    old_key = inv_key(world.ca1.number, current.serial_number)
    assert dump_db(world.st, world.st.pending) == {bytes((store.PRIORITY_REVOCATION,)) + old_key: b""}
    new_record = inventory_record(world.st, world.ca1.number, new.serial_number)
    assert new_record is not None and new_record.revoked_at is None
    # The background signer then publishes the revocation.
    clock = StepClock(T0 + 60)
    p = Precomputer(
        world.st,
        world.config.signer,
        lambda r: load_response_signer(world.data_dir, r),
        clock,  # type: ignore[arg-type]
        logging.getLogger("t"),
        random.Random(1),
    )
    p.reload_issuers()
    assert p.run_batch() == 1
    raw = dump_db(world.st, world.st.responses)[struct.pack(">IB", world.ca1.number, CODE["sha256"]) + old_key[4:]]
    response = ocsp.load_der_ocsp_response(store.RESPONSE_DECODER.decode(raw).der)
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason == x509.ReasonFlags.superseded
    # A second re-enroll with the now revoked certificate is refused.
    assert world.reenroll(renewal_csr(), current, now=T0 + 70) == Refused(403, "the current certificate is revoked")


def test_revoke_superseded_is_atomic_with_issuance(
    world: World, current: x509.Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.with_profile(revoke_superseded=True)
    _, _, signer = world.load_ca(world.ca1)
    failing_signer(signer, monkeypatch, fail_on_call=2)
    before = all_dbs(world.st)
    with pytest.raises(Boom):
        world.reenroll(renewal_csr(), current)
    assert all_dbs(world.st) == before
    old = inventory_record(world.st, world.ca1.number, current.serial_number)
    assert old is not None and old.revoked_at is None


# ---------------------------------------------------------------------------- serverkeygen


def private_key(der: bytes) -> PrivateKey:
    key = serialization.load_der_private_key(der, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return key


def test_serverkeygen_returns_a_matching_key(world: World) -> None:
    csr_key = pool_key("ec-p256", 40)
    csr_der = make_csr(csr_key, subject=rich_subject(), sans=RICH_SANS)
    result = world.serverkeygen(csr_der)
    assert isinstance(result, IssuedWithKey)
    cert = x509.load_der_x509_certificate(result.cert_der)
    key = private_key(result.key_pkcs8_der)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert cert.public_key() == key.public_key()
    assert cert.public_key() != csr_key.public_key()  # the CSR's key is ignored
    # PKCS#8, unencrypted: PrivateKeyInfo starts with version 0.
    assert result.key_pkcs8_der.startswith(b"\x30") and b"\x02\x01\x00" in result.key_pkcs8_der[:8]
    assert cert_subject_der(result.cert_der) == csr_subject_der(csr_der)
    assert cert_san_value(result.cert_der) == csr_san_value(csr_der)
    assert list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == RICH_SANS
    # Stored and answerable like any issued certificate.
    assert inventory_record(world.st, world.ca1.number, cert.serial_number) is not None
    responses = dump_db(world.st, world.st.responses)
    assert struct.pack(">IB", world.ca1.number, CODE["sha256"]) + inv_key(0, cert.serial_number)[4:] in responses
    # A signature made with the returned key verifies with the certificate.
    signature = key.sign(b"hello", ec.ECDSA(hashes.SHA256()))
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(signature, b"hello", ec.ECDSA(hashes.SHA256()))


def test_serverkeygen_ignores_csr_key_and_signature(world: World) -> None:
    for csr_der in (
        make_csr(bad_signature=True),
        make_csr(ed25519.Ed25519PrivateKey.generate()),
        make_csr(ec.generate_private_key(ec.SECP521R1())),
    ):
        result = world.serverkeygen(csr_der)
        assert isinstance(result, IssuedWithKey), result


def test_serverkeygen_key_type_from_profile(world: World) -> None:
    world.with_profile(serverkeygen_key_type="ec-p384", key_types=["ec-p256"])
    result = world.serverkeygen(make_csr())
    assert isinstance(result, IssuedWithKey)
    key = private_key(result.key_pkcs8_der)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    world.with_profile(serverkeygen_key_type="dsa-1024")
    with pytest.raises(SignerError, match="serverkeygen_key_type"):
        world.serverkeygen(make_csr())


def test_serverkeygen_still_applies_the_name_rules(world: World) -> None:
    world.with_profile(require_san=True, allow_san_ip=False)
    assert world.serverkeygen(make_csr()) == Refused(400, "this CA requires a subjectAltName")
    result = world.serverkeygen(make_csr(sans=_ip("192.0.2.1")))
    assert isinstance(result, Refused) and result.status == 400


def test_results_survive_the_job_codec(world: World) -> None:
    """What the handlers return is what the job transport encodes (tagged msgspec structs)."""
    from contract.jobs import REPLY_DECODER, REPLY_ENCODER, JobReply

    for result in (world.enroll(make_csr()), world.serverkeygen(make_csr()), world.enroll(b"")):
        assert REPLY_DECODER.decode(REPLY_ENCODER.encode(JobReply(1, result))).result == result
