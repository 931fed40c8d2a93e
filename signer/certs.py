"""Certificates the signer makes: CA certificates and end-entity certificates."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from contract.config import MAX_VALIDITY_DAYS
from signer.keys import SigningKey, signature_hash
from signer.state import SignerError

# RFC 5280 §4.2.1.6: a dNSName in the preferred name syntax (RFC 1034 §3.5, RFC 1123 §2.1: letters,
# digits and hyphens, labels of 1 to 63, no hyphen at either end), 253 octets at most; a wildcard only
# as the whole leftmost label, as TLS clients read it (RFC 6125 §6.4.3).
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# C0 controls and DEL: an embedded NUL ended names early in C clients (CVE-2009-2408); none is printable.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def dns_name_problem(name: str) -> str | None:
    """Why ``name`` is no dNSName a certificate may carry, or None."""
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
    if not labels or len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        return "not a DNS name (letters, digits and hyphens in dot-separated labels; '*.' first at most)"
    return None


def control_character_in(value: str) -> bool:
    return _CONTROL.search(value) is not None


def uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be a uniformResourceIdentifier here (what a profile's pattern may not allow)."""
    if control_character_in(uri) or " " in uri:
        return "has a space or a control character"
    return None


def parse_san(values: Sequence[str]) -> list[x509.GeneralName]:
    """``DNS:name``, ``URI:uri``, ``IP:addr`` (as openssl writes them)."""
    names: list[x509.GeneralName] = []
    for value in values:
        kind, _, text = value.partition(":")
        kind = kind.strip().upper()
        if not text:
            raise SignerError(f"--san {value!r}: expected DNS:…, URI:… or IP:…")
        if kind == "DNS":
            if (problem := dns_name_problem(text)) is not None:
                raise SignerError(f"--san {value!r}: {problem}")
            names.append(x509.DNSName(text))
        elif kind == "URI":
            if (problem := uri_problem(text)) is not None:
                raise SignerError(f"--san {value!r}: {problem}")
            names.append(x509.UniformResourceIdentifier(text))
        elif kind == "IP":
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(text)))
            except ValueError:
                raise SignerError(f"--san {value!r}: not an IP address") from None
        else:
            raise SignerError(f"--san {value!r}: expected DNS:…, URI:… or IP:…")
    return names


def _validity(days: int, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    if not 0 < days <= MAX_VALIDITY_DAYS:
        raise SignerError(f"--days must be between 1 and {MAX_VALIDITY_DAYS} (a century)")
    start = now.replace(microsecond=0) - dt.timedelta(minutes=5)  # tolerate clients' clock skew
    return start, start + dt.timedelta(days=days)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """digitalSignature for everyone (OCSP signing by the CA key, device TLS); keyCertSign and cRLSign for CAs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _aia(ocsp_url: str | None) -> list[x509.AccessDescription]:
    if not ocsp_url:
        return []
    return [x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))]


def _ca_builder(
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    key: SigningKey,
    days: int,
    now: dt.datetime,
    parent: tuple[x509.Certificate, SigningKey] | None,
) -> tuple[x509.CertificateBuilder, SigningKey]:
    """A CA certificate's builder but for its extensions (validity from ``now``, never past ``parent``'s
    end; a new serial), and the key that signs it: ``key`` for a self-signed root, else the parent's."""
    not_before, not_after = _validity(days, now)
    issuer_cert, issuer_key = parent if parent else (None, key)
    if issuer_cert is not None and not_after > issuer_cert.not_valid_after_utc:
        not_after = issuer_cert.not_valid_after_utc
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    return builder, issuer_key


def renew_ca_certificate(
    current: x509.Certificate,
    key: SigningKey,
    days: int,
    now: dt.datetime,
    parent: tuple[x509.Certificate, SigningKey] | None = None,
) -> x509.Certificate:
    """``current`` again, for ``days`` from ``now`` (capped at ``parent``'s notAfter), with a new serial:
    its subject, key and extensions kept, so that certificates it issued chain to either and OCSP
    CertIDs stay the same. Self-signed by ``key``, or issued by ``parent`` (certificate, key), which
    issued ``current`` (its authorityKeyIdentifier then still holds)."""
    builder, issuer_key = _ca_builder(current.subject, current.public_key(), key, days, now, parent)
    for extension in current.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(issuer_key, signature_hash(issuer_key))


def make_ca_certificate(
    name: str,
    key: SigningKey,
    days: int,
    now: dt.datetime,
    parent: tuple[x509.Certificate, SigningKey] | None = None,
    parent_ocsp_url: str | None = None,
) -> x509.Certificate:
    """A self-signed root, or an intermediate issued by ``parent`` (certificate, key).

    An intermediate's AIA points at its parent's responder, which answers for it.
    """
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pki-edge")]
    )
    builder, issuer_key = _ca_builder(subject, key.public_key(), key, days, now, parent)
    issuer_cert = parent[0] if parent else None
    builder = (
        builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        if aia := _aia(parent_ocsp_url):
            builder = builder.add_extension(x509.AuthorityInformationAccess(aia), critical=False)
    return builder.sign(issuer_key, signature_hash(issuer_key))


def make_responder_certificate(
    ca_name: str, ca_cert: x509.Certificate, ca_key: SigningKey, key: SigningKey, days: int, now: dt.datetime
) -> x509.Certificate:
    """A delegated OCSP responder issued by the CA (RFC 6960 §4.2.2.2), never outliving it.

    id-pkix-ocsp-nocheck (§4.2.2.2.1): clients do not ask for its own status, which is why it is
    short-lived and renewed by the signer.
    """
    not_before, not_after = _validity(days, now)
    not_after = min(not_after, ca_cert.not_valid_after_utc)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{ca_name} OCSP responder"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pki-edge"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, signature_hash(ca_key))
    )


def make_end_entity_certificate(
    ca_cert: x509.Certificate,
    ca_key: SigningKey,
    public_key: object,
    common_name: str,
    sans: Sequence[x509.GeneralName],
    days: int,
    now: dt.datetime,
    ocsp_url: str | None,
    serial: int | None = None,
    ocsp_signing: bool = False,
) -> x509.Certificate:
    """``ocsp_signing``: id-kp-OCSPSigning beside clientAuth and serverAuth, so that the certificate may
    also be the CA's delegated OCSP responder (RFC 6960 §4.2.2.2): the edge's TLS certificate signing its
    OCSP, as Lamassu's gateway certificate does (README, "Lamassu")."""
    not_before, not_after = _validity(days, now)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    if ocsp_signing:
        usages.append(ExtendedKeyUsageOID.OCSP_SIGNING)
    if not_after > ca_cert.not_valid_after_utc:
        not_after = ca_cert.not_valid_after_utc
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if aia := _aia(ocsp_url):
        builder = builder.add_extension(x509.AuthorityInformationAccess(aia), critical=False)
    return builder.sign(ca_key, signature_hash(ca_key))


def load_certificate(data: bytes, source: str) -> x509.Certificate:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise SignerError(f"{source}: not an X.509 certificate ({exc})") from None
