"""Certificate paths through the registry's CAs, one walk for both sides.

Who issued a certificate is its issuer name and its signature; a path through a CA that its own issuer
has revoked is invalid (RFC 5280 §6.1.3). The edge asks it of an EST client's certificate, the signer of
a CA before it issues with it; each reads the revocations from the store in its own way (``Revoked``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature

# Pairs of certificates checked once each (a signature check costs more than an EST request's other
# work), and their serial numbers: bounded, as clients bring certificates without end.
MAX_REMEMBERED = 4096

Revoked = Callable[[int, int], bool]  # (CA number, serial number): revoked in that CA's inventory


def check_directly_issued(cert: x509.Certificate, ca: x509.Certificate) -> str | None:
    """None if ``ca`` issued ``cert`` (name and signature), else the reason it did not."""
    if cert.issuer != ca.subject:
        return "issuer name differs from the CA's subject"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "signature does not verify with the CA's key"
    return None


@functools.lru_cache(maxsize=MAX_REMEMBERED)
def issued(cert_der: bytes, ca_der: bytes) -> bool:
    """Whether the CA of ``ca_der`` issued ``cert_der`` (never a certificate itself)."""
    if cert_der == ca_der:
        return False
    cert, ca = x509.load_der_x509_certificate(cert_der), x509.load_der_x509_certificate(ca_der)
    return check_directly_issued(cert, ca) is None


@functools.lru_cache(maxsize=MAX_REMEMBERED)
def serial_number(cert_der: bytes) -> int:
    return x509.load_der_x509_certificate(cert_der).serial_number


def revoking_ca(cert_der: bytes, cas: Sequence[tuple[int, bytes]], revoked: Revoked) -> int | None:
    """The number of a CA of ``cas`` (number, certificate DER) that has revoked ``cert_der``, or a CA on
    a path up from it; None when none has. Every path is followed (a CA may have several issuers), and
    a revocation on any of them is taken, not only when every path has one."""
    seen: set[int] = set()
    pending = [cert_der]
    while pending:
        current = pending.pop()
        for number, ca_der in cas:
            if not issued(current, ca_der):
                continue
            if revoked(number, serial_number(current)):
                return number
            if number not in seen:
                seen.add(number)
                pending.append(ca_der)
    return None
