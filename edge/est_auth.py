"""EST client authentication on the edge: forwarded client certificates, HTTP Basic, RAs.

Pure functions plus small read-only store readers that take an ``lmdb.Environment`` and a
database handle (the HTTP layer passes its source's environment). Nothing here writes the
store and nothing imports the signer.

Forwarded client certificates (XFCC, ``X-SSL-Client-Cert``, RFC 9440 ``Client-Cert``) are
honoured only from configured proxy addresses, and a certificate from the TLS handshake itself
always wins over a forwarded one. A malformed header from a trusted proxy raises
``ForwardedCertError`` (one error type, with the header and the reason to log); the caller
treats the request as carrying no client certificate.

HTTP Basic passwords are argon2id hashes verified with argon2-cffi: each verification costs
what the hash's parameters say (library defaults: 64 MiB and tens of milliseconds), so call
``verify_basic`` off the event loop and behind the rate limit.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import Argon2Error, InvalidHashError
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from contract.config import ConfigError
from contract.store import EstUserRecord, RaRecord

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
UserLookup = Callable[[str, str], EstUserRecord | None]
RevocationCheck = Callable[[x509.Certificate], bool]

# A certificate with a post-quantum key and signature stays well below this, even URL-encoded.
MAX_FORWARDED_BYTES = 65536
MAX_AUTHORIZATION_BYTES = 4096

# Header names as ASGI gives them (lower case), in the order they are consulted.
CLIENT_CERT = b"client-cert"  # RFC 9440: sf-binary ``:BASE64DER:``
XFCC = b"x-forwarded-client-cert"  # Envoy: ``By=…;Hash=…;Cert="<url-encoded PEM>"``, elements comma-separated
X_SSL_CLIENT_CERT = b"x-ssl-client-cert"  # nginx ``$ssl_client_escaped_cert``: URL-encoded PEM

_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)
_WHITESPACE = re.compile(r"\s+")
_SF_BINARY = re.compile(rb":([A-Za-z0-9+/=]*):")


# ------------------------------------------------------------------ trusted proxies


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The proxy addresses whose forwarded client-certificate headers are believed."""

    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedProxies:
        """Addresses or CIDRs, IPv4 or IPv6 (``est.trusted_proxies``); host bits of a CIDR are ignored."""
        networks = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ConfigError(f"est.trusted_proxies: {entry!r} is not an IP address or CIDR") from None
        return cls(tuple(networks))

    def trusts(self, peer_ip: str | None) -> bool:
        """True when ``peer_ip`` (the TCP peer, e.g. ASGI ``scope["client"][0]``) is a trusted proxy."""
        if not peer_ip or not self.networks:
            return False
        try:
            address = ipaddress.ip_address(peer_ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d
        return any(address in network for network in self.networks)


# ------------------------------------------------------------------ forwarded certificates


class ForwardedCertError(ValueError):
    """A trusted proxy sent a client-certificate header that cannot be read."""

    def __init__(self, header: bytes, reason: str) -> None:
        self.header = header.decode("latin-1")
        self.reason = reason
        super().__init__(f"{self.header}: {reason}")


def _load_der(der: bytes, header: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise ForwardedCertError(header, f"not a DER certificate ({exc})") from None


def _b64decode(data: bytes | str, header: bytes) -> bytes:
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    if b"=" not in data:
        data += b"=" * (-len(data) % 4)  # unpadded base64 is tolerated (RFC 8941 §4.2.7)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ForwardedCertError(header, "invalid base64") from None


def parse_client_cert(value: bytes) -> x509.Certificate:
    """RFC 9440 ``Client-Cert``: a structured-field byte sequence ``:BASE64DER:`` (parameters ignored)."""
    value = value.strip(b" \t")
    match = _SF_BINARY.match(value)
    if match is None or (value[match.end() :] and not value[match.end() :].startswith(b";")):
        raise ForwardedCertError(CLIENT_CERT, "not a structured-field byte sequence (:base64:)")
    return _load_der(_b64decode(match.group(1), CLIENT_CERT), CLIENT_CERT)


def parse_pem_value(value: str, header: bytes) -> x509.Certificate:
    """A URL-encoded PEM certificate (the first one, if several), also raw PEM with spaces or tabs
    instead of newlines, or bare base64 DER."""
    try:
        text = urllib.parse.unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise ForwardedCertError(header, "invalid URL encoding") from None
    match = _PEM_CERT.search(text)
    if match is not None:
        body = match.group(1)
    elif "-----BEGIN" in text:
        raise ForwardedCertError(header, "no complete PEM CERTIFICATE block")
    else:
        body = text
    body = _WHITESPACE.sub("", body)
    if not body:
        raise ForwardedCertError(header, "empty certificate")
    return _load_der(_b64decode(body, header), header)


def xfcc_elements(value: str) -> list[dict[str, str]]:
    """Envoy's ``x-forwarded-client-cert``: comma-separated elements of ``;``-separated ``Key=Value``
    pairs; values may be double-quoted (with ``\\`` escapes). Keys are returned in lower case and
    the first of repeated keys (``DNS``, ``URI``) is kept."""
    elements: list[dict[str, str]] = []
    pairs: dict[str, str] = {}
    key: str | None = None
    buf: list[str] = []
    quoted = in_quotes = escaped = False

    def end_pair() -> None:
        nonlocal key, quoted
        text = "".join(buf)
        if key is None:
            if text.strip():
                raise ForwardedCertError(XFCC, f"{text.strip()[:40]!r} is not Key=Value")
        else:
            pairs.setdefault(key.strip().lower(), text if quoted else text.strip())
        key, quoted = None, False
        buf.clear()

    for ch in value:
        if in_quotes:
            if escaped:
                buf.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_quotes = False
            else:
                buf.append(ch)
        elif ch == '"':
            in_quotes = quoted = True
        elif ch == "=" and key is None:
            key = "".join(buf)
            buf.clear()
            if not key.strip():
                raise ForwardedCertError(XFCC, "empty key")
        elif ch == ";":
            end_pair()
        elif ch == ",":
            end_pair()
            if pairs:
                elements.append(pairs)
            pairs = {}
        else:
            buf.append(ch)
    if in_quotes:
        raise ForwardedCertError(XFCC, "unterminated quoted value")
    end_pair()
    if pairs:
        elements.append(pairs)
    return elements


def parse_xfcc(value: bytes) -> x509.Certificate | None:
    """The certificate of the last XFCC element, the one the nearest proxy added (Envoy appends its own
    to what came in); None when it carries no ``Cert``. Earlier elements came from the client's side."""
    elements = xfcc_elements(value.decode("latin-1"))
    cert = elements[-1].get("cert") if elements else None
    return parse_pem_value(cert, XFCC) if cert else None


def client_cert_from_forwarded(
    headers: Sequence[tuple[bytes, bytes]], peer_ip: str | None, trusted: TrustedProxies, header: bytes
) -> x509.Certificate | None:
    """The client certificate a trusted proxy forwarded in ``header`` (``est.client_cert_header``), or None.

    From an untrusted peer nothing is read (None). Only the one header the proxy is configured to set is
    read: a proxy passes on what it does not set, so a client could send another one itself, with
    anybody's certificate (certificates are public). An XFCC header gives its last element's ``Cert``
    (None without one). A header that cannot be read raises ``ForwardedCertError`` (log it; treat the
    request as carrying no certificate). Repeated XFCC headers are one comma-separated list; other
    headers must appear once.
    """
    if not trusted.trusts(peer_ip):
        return None
    found = [value for name, value in headers if name.lower() == header and value.strip()]
    if not found:
        return None
    if sum(len(v) for v in found) > MAX_FORWARDED_BYTES:
        raise ForwardedCertError(header, "too long")
    if header == XFCC:
        return parse_xfcc(b",".join(found))
    if len(found) > 1:
        raise ForwardedCertError(header, "repeated header")
    if header == CLIENT_CERT:
        return parse_client_cert(found[0])
    return parse_pem_value(found[0].decode("latin-1").strip(), header)


def choose_client_cert(tls_cert_der: bytes | None, forwarded: x509.Certificate | None) -> x509.Certificate | None:
    """The certificate of the TLS handshake when there is one (even if unreadable: then None), else
    the forwarded one."""
    if tls_cert_der:
        try:
            return x509.load_der_x509_certificate(tls_cert_der)
        except ValueError:
            return None
    return forwarded


# ------------------------------------------------------------------ HTTP Basic


_DUMMY_HASHES: dict[tuple[Any, ...], str] = {}


def _dummy_hash(hasher: PasswordHasher) -> str:
    """A hash with the hasher's parameters, verified for unknown users so they cost what known ones do."""
    params = (hasher.time_cost, hasher.memory_cost, hasher.parallelism, hasher.hash_len, hasher.salt_len, hasher.type)
    cached = _DUMMY_HASHES.get(params)
    if cached is None:
        cached = _DUMMY_HASHES[params] = hasher.hash(b"pki-edge: no such user")
    return cached


def parse_basic(header_value: bytes) -> tuple[str, bytes] | None:
    """(user, password) from ``Basic base64(user:password)``, or None for anything else.

    The user-id must be UTF-8 (RFC 7617 §2.1); the password is kept as bytes.
    """
    if len(header_value) > MAX_AUTHORIZATION_BYTES:
        return None
    parts = header_value.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != b"basic":
        return None
    token = parts[1].strip()
    if not token or any(c in token for c in b" \t"):
        return None
    if b"=" not in token:
        token += b"=" * (-len(token) % 4)
    try:
        decoded = base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep or not user:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def verify_basic(
    header_value: bytes, label: str, lookup: UserLookup, hasher: PasswordHasher | None = None
) -> str | None:
    """The user name when ``Authorization: Basic …`` holds a valid user and password for ``label``.

    Never raises on a malformed header or a bad stored hash (None); errors of ``lookup`` itself
    (the store) propagate. ``hasher`` only matters for unknown users, who are checked against a
    dummy hash of the same cost so timing does not tell which users exist.
    """
    parsed = parse_basic(header_value)
    if parsed is None:
        return None
    user, password = parsed
    ph = hasher or PasswordHasher()
    record = lookup(label, user)
    try:
        if record is None or record.label != label or record.name != user:
            ph.verify(_dummy_hash(ph), password)
            return None
        ph.verify(record.password_hash, password)
    except (Argon2Error, InvalidHashError):
        return None
    return user


# ------------------------------------------------------------------ registration authorities


@dataclass(frozen=True, slots=True)
class RaDecision:
    """``authenticated``: the certificate is a registered RA's, valid now and not revoked.
    ``authorised``: also allowed to enroll for the label. ``ra`` names the matched RA (even when
    refused); ``reason`` says why not (None when authorised). Not authenticated → 401/403 per the
    HTTP layer's policy; authenticated but not authorised → 403."""

    authenticated: bool
    authorised: bool
    ra: str | None = None
    reason: str | None = None


class RaDirectory:
    """The registered RAs, matched by the exact DER of the presented certificate."""

    def __init__(self, records: Iterable[RaRecord]) -> None:
        self._by_der: dict[bytes, RaRecord] = {}
        for record in records:
            self._by_der.setdefault(record.cert_der, record)

    def __len__(self) -> int:
        return len(self._by_der)

    def find(self, cert: x509.Certificate) -> RaRecord | None:
        return self._by_der.get(cert.public_bytes(serialization.Encoding.DER))

    def authorise(self, cert: x509.Certificate, label: str, now: datetime, is_revoked: RevocationCheck) -> RaDecision:
        """Decide for a client certificate (``now`` timezone-aware); ``is_revoked`` is called only
        for a registered RA certificate within its validity."""
        record = self.find(cert)
        if record is None:
            return RaDecision(False, False, None, "the certificate is not a registered RA certificate")
        if now < cert.not_valid_before_utc:
            return RaDecision(False, False, record.name, f"RA {record.name}: certificate not valid yet")
        if now > cert.not_valid_after_utc:
            return RaDecision(False, False, record.name, f"RA {record.name}: certificate expired")
        if is_revoked(cert):
            return RaDecision(False, False, record.name, f"RA {record.name}: certificate revoked")
        if label not in record.cas:
            return RaDecision(
                True,
                False,
                record.name,
                f"RA {record.name} may not enroll for {label!r} (only {', '.join(record.cas)})",
            )
        return RaDecision(True, True, record.name)
