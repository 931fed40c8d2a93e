"""Bodies of the EST endpoints (RFC 7030 with the RFC 8951 clarifications), without any I/O.

Requests: ``decode_csr`` turns a simpleenroll / simplereenroll / serverkeygen body into a
verified ``x509.CertificateSigningRequest`` or raises ``EstBodyError`` (and nothing else),
whose ``status`` is the HTTP status to answer (400, 413 or 415) and whose ``str()`` is a
one-line text/plain body.

Responses: ``certs_only`` (degenerate PKCS#7 SignedData), ``base64_body`` (wrapped at 64
columns: libest and ``openssl base64 -d`` need wrapped lines), ``est_response_headers``,
``serverkeygen_multipart`` and ``csrattrs_der`` (RFC 7030 §4.5.2 CsrAttrs, built with
asn1crypto).
"""

from __future__ import annotations

import base64
import binascii
import re
import warnings
from typing import Literal

from asn1crypto import core as asn1_core
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from contract.name_bounds import UPPER_BOUNDS

__all__ = [
    "CSRATTRS_CONTENT_TYPE",
    "CSRATTRS_NAMES",
    "EST_PKCS7_CONTENT_TYPE",
    "PKCS7_CONTENT_TYPE",
    "SERVERKEYGEN_BOUNDARY",
    "EstBodyError",
    "base64_body",
    "certs_only",
    "csrattrs_der",
    "decode_csr",
    "est_response_headers",
    "serverkeygen_multipart",
]

# Enroll / reenroll / serverkeygen certificate responses (RFC 7030 §4.2.3).
EST_PKCS7_CONTENT_TYPE = "application/pkcs7-mime; smime-type=certs-only"
# /cacerts may use the bare type (RFC 7030 §4.1.3).
PKCS7_CONTENT_TYPE = "application/pkcs7-mime"
CSRATTRS_CONTENT_TYPE = "application/csrattrs"
PKCS10_MEDIA_TYPE = "application/pkcs10"
# The boundary of the Protocols page, GlobalSign and the old lamassu-est; the sed recipes
# in Lamassu's documentation look for it.
SERVERKEYGEN_BOUNDARY = "estServerKeyGenBoundary"
DEFAULT_MAX_CSR_BYTES = 65536

_CRLF = "\r\n"
_LINE = 64
_WHITESPACE = b" \t\r\n"
_PEM = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END ([A-Z0-9 ]+)-----",
    re.DOTALL,
)
_PEM_CSR_LABELS = (b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST")
# A line of base64 as long as a DER CSR's shortest: text around a PEM block has spaces or colons.
_BASE64_LINE = re.compile(rb"[A-Za-z0-9+/=_-]{16,}")
_DETAIL_CHARS = 160


class EstBodyError(Exception):
    """An EST request body that cannot be served; ``status`` is 400, 413 or 415, ``str()`` one line."""

    status: int

    def __init__(self, status: Literal[400, 413, 415], message: str) -> None:
        self.status = status
        super().__init__(" ".join(message.split()))


# ---------------------------------------------------------------------------- requests


def decode_csr(
    body: bytes,
    content_type: str | None,
    max_bytes: int = DEFAULT_MAX_CSR_BYTES,
) -> x509.CertificateSigningRequest:
    """The PKCS#10 CSR of an EST request body, or ``EstBodyError``.

    ``content_type`` must be ``application/pkcs10`` (any case, parameters allowed), else 415;
    a body longer than ``max_bytes`` gives 413. The body is base64 of DER whatever the
    Content-Transfer-Encoding header says (RFC 8951 §3), with CR, LF, space and tab allowed
    anywhere and the padding optional; PEM armour (``CERTIFICATE REQUEST`` or ``NEW
    CERTIFICATE REQUEST``) and raw DER are accepted as well. Everything else gives 400.

    The CSR's signature is not checked here: the signer worker checks it (proof of possession)
    before it issues anything, and /serverkeygen ignores it (RFC 7030 §4.4.1).
    """
    _check_content_type(content_type)
    if len(body) > max_bytes:
        raise EstBodyError(413, f"request body of {len(body)} bytes exceeds the {max_bytes}-byte limit")
    try:
        der = _csr_der(bytes(body))
        return _load_csr(der)
    except EstBodyError:
        raise
    except Exception as exc:  # a library surprise must still be a 400, never a 500
        raise EstBodyError(400, f"malformed CSR: {_detail(exc)}") from exc


def _check_content_type(content_type: str | None) -> None:
    if content_type is None or not content_type.strip():
        raise EstBodyError(415, f"missing Content-Type; expected {PKCS10_MEDIA_TYPE}")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != PKCS10_MEDIA_TYPE:
        shown = media_type[:80].encode("ascii", "backslashreplace").decode("ascii")
        raise EstBodyError(415, f"unsupported Content-Type {shown!r}; expected {PKCS10_MEDIA_TYPE}")


def _csr_der(body: bytes) -> bytes:
    """The DER inside a body: raw DER, PEM armour or (the RFC form) whitespace-laden base64."""
    if not body.strip(_WHITESPACE):
        raise EstBodyError(400, "empty request body; expected a base64-encoded PKCS#10 CSR")
    # Raw DER starts with the SEQUENCE tag 0x30. That is also the base64 digit "0", but the
    # base64 of a DER SEQUENCE starts with "M", so nothing valid is lost by reading it as DER.
    if body[0] == 0x30:
        return body
    text = body
    if b"-----BEGIN" in body:
        text = _unarmour(body)
    return _base64_decode(text)


def _unarmour(body: bytes) -> bytes:
    match = _PEM.search(body)
    if match is None:
        raise EstBodyError(400, "PEM armour without a matching -----END----- line")
    begin, content, end = match.groups()
    if begin not in _PEM_CSR_LABELS:
        label = begin.decode("ascii")
        raise EstBodyError(400, f"PEM label {label!r} is not CERTIFICATE REQUEST or NEW CERTIFICATE REQUEST")
    if end != begin:
        raise EstBodyError(400, "PEM -----BEGIN----- and -----END----- labels differ")
    if b":" in content:
        raise EstBodyError(400, "PEM headers (encrypted or annotated PEM) are not supported in a CSR")
    # Text around the block is allowed (RFC 7468 §2: `openssl req -text` writes some); a second block,
    # or base64 beside the block, would be a second request.
    around = body[: match.start()] + b"\n" + body[match.end() :]
    if b"-----BEGIN" in around or any(_BASE64_LINE.fullmatch(line.strip(_WHITESPACE)) for line in around.splitlines()):
        raise EstBodyError(400, "more than one CSR in the body (PEM block, or base64 beside it)")
    return content


def _base64_decode(text: bytes) -> bytes:
    compact = text.translate(None, _WHITESPACE)
    if b"=" not in compact:
        compact += b"=" * (-len(compact) % 4)
    try:
        der = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EstBodyError(400, "request body is not base64 (RFC 4648) of a DER PKCS#10 CSR") from exc
    if not der:
        raise EstBodyError(400, "request body decodes to nothing; expected a PKCS#10 CSR")
    return der


def _load_csr(der: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError as exc:
        raise EstBodyError(400, f"body is not a DER PKCS#10 CSR: {_detail(exc)}") from exc
    # cryptography parses some fields lazily: touch them here so that callers never meet a
    # ValueError later on.
    try:
        with warnings.catch_warnings():
            # cryptography warns of a commonName over 64 bytes (not characters): bounds are checked below
            warnings.simplefilter("ignore", UserWarning)
            attributes = list(csr.subject)
        _ = list(csr.extensions)
        _ = list(csr.attributes)
    except Exception as exc:
        raise EstBodyError(400, f"CSR subject, attributes or extensions do not parse: {_detail(exc)}") from exc
    for attribute in attributes:
        name, bound = UPPER_BOUNDS.get(attribute.oid, ("", 0))
        if bound and len(attribute.value) > bound:
            raise EstBodyError(
                400, f"the CSR's {name} is {len(attribute.value)} characters, past RFC 5280's bound of {bound}"
            )
    return csr


def _detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


# ---------------------------------------------------------------------------- responses


def certs_only(certs: list[x509.Certificate]) -> bytes:
    """DER PKCS#7 certs-only (a degenerate SignedData); ``ValueError`` for an empty list."""
    return pkcs7.serialize_certificates(certs, Encoding.DER)


def base64_body(der: bytes) -> bytes:
    """Base64 of ``der`` in lines of at most 64 characters, each ending in LF (the last one too)."""
    return _wrapped_base64(der, "\n").encode("ascii")


def _wrapped_base64(data: bytes, eol: str) -> str:
    text = base64.b64encode(data).decode("ascii")
    return "".join(text[i : i + _LINE] + eol for i in range(0, len(text), _LINE))


def est_response_headers(body: bytes, content_type: str) -> list[tuple[bytes, bytes]]:
    """ASGI headers of an EST response body: content-type, content-transfer-encoding, content-length.

    ``Content-Transfer-Encoding: base64`` is sent for legacy clients (receivers ignore it per
    RFC 8951 §3), except on multipart bodies, which are not themselves base64: only their
    parts are (RFC 7030 §4.4.2, RFC 2045 §6.4).
    """
    headers = [(b"content-type", content_type.encode("latin-1"))]
    if not content_type.lstrip().lower().startswith("multipart/"):
        headers.append((b"content-transfer-encoding", b"base64"))
    headers.append((b"content-length", str(len(body)).encode("ascii")))
    return headers


def serverkeygen_multipart(
    key_pkcs8_der: bytes,
    cert: x509.Certificate,
    boundary: str = SERVERKEYGEN_BOUNDARY,
) -> tuple[bytes, str]:
    """The /serverkeygen response (RFC 7030 §4.4.2): ``(body, content_type)``.

    The ``application/pkcs8`` key part comes first, then the certs-only part holding the one
    certificate; both are base64 wrapped at 64 columns. Every line, base64 lines included,
    ends in CRLF, the canonical form of RFC 2045/2046; ``openssl base64 -d`` skips the CRs, so
    Lamassu's documented ``sed ... | sed '/-/d' | openssl base64 -d`` recipe works (tested).
    """
    if not boundary or len(boundary) > 70 or not re.fullmatch(r"[0-9A-Za-z'()+_,./:=?-]+", boundary):
        raise ValueError(f"invalid multipart boundary {boundary!r}")
    delimiter = f"--{boundary}"
    parts = (
        ("application/pkcs8", key_pkcs8_der),
        (EST_PKCS7_CONTENT_TYPE, certs_only([cert])),
    )
    text = "".join(
        f"{delimiter}{_CRLF}"
        f"Content-Type: {part_type}{_CRLF}"
        f"Content-Transfer-Encoding: base64{_CRLF}"
        f"{_CRLF}"
        f"{_wrapped_base64(content, _CRLF)}"
        for part_type, content in parts
    )
    text += f"{delimiter}--{_CRLF}"
    return text.encode("ascii"), f"multipart/mixed; boundary={boundary}"


# ---------------------------------------------------------------------------- /csrattrs

# Names accepted in ``csrattrs`` entries (case-insensitive), besides dotted OIDs.
CSRATTRS_NAMES: dict[str, str] = {
    "challengePassword": "1.2.840.113549.1.9.7",
    "extensionRequest": "1.2.840.113549.1.9.14",
    "ecPublicKey": "1.2.840.10045.2.1",
    "rsaEncryption": "1.2.840.113549.1.1.1",
    "sha256WithRSAEncryption": "1.2.840.113549.1.1.11",
    "sha384WithRSAEncryption": "1.2.840.113549.1.1.12",
    "ecdsa-with-SHA256": "1.2.840.10045.4.3.2",
    "ecdsa-with-SHA384": "1.2.840.10045.4.3.3",
    "serialNumber": "2.5.4.5",
    "macAddress": "1.3.6.1.1.1.1.22",
    # Attribute values, as in ``ecPublicKey:secp384r1``.
    "secp256r1": "1.2.840.10045.3.1.7",
    "secp384r1": "1.3.132.0.34",
    "secp521r1": "1.3.132.0.35",
}
_NAMES_FOLDED = {name.lower(): dotted for name, dotted in CSRATTRS_NAMES.items()}
_DOTTED_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


class _AttributeValues(asn1_core.SetOf):
    _child_spec = asn1_core.Any


class _Attribute(asn1_core.Sequence):
    _fields = [("type", asn1_core.ObjectIdentifier), ("values", _AttributeValues)]  # noqa: RUF012


class _AttrOrOID(asn1_core.Choice):
    _alternatives = [("oid", asn1_core.ObjectIdentifier), ("attribute", _Attribute)]  # noqa: RUF012


class _CsrAttrs(asn1_core.SequenceOf):
    _child_spec = _AttrOrOID


def csrattrs_der(attrs: list[str]) -> bytes | None:
    """DER ``CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID`` (RFC 7030 §4.5.2), None if empty.

    Each entry is a dotted OID or a name of ``CSRATTRS_NAMES`` (giving ``AttrOrOID.oid``), or
    ``TYPE:VALUE[,VALUE...]`` (giving ``AttrOrOID.attribute`` with the values as OIDs), e.g.
    ``ecPublicKey:secp384r1``. RFC 8951 §4's example is ``["challengePassword",
    "ecPublicKey:secp384r1", "extensionRequest:macAddress", "ecdsa-with-SHA384"]``.
    Unknown names and malformed entries raise ``ValueError`` (a configuration error).
    """
    if not attrs:
        return None
    items = []
    for entry in attrs:
        type_text, sep, values_text = entry.partition(":")
        attr_type = _csrattrs_oid(type_text, entry)
        if not sep:
            items.append(_AttrOrOID(name="oid", value=attr_type))
            continue
        values = [_csrattrs_oid(v, entry) for v in values_text.split(",")]
        attribute = _Attribute({"type": attr_type, "values": _AttributeValues(values)})
        items.append(_AttrOrOID(name="attribute", value=attribute))
    return bytes(_CsrAttrs(items).dump(force=True))


def _csrattrs_oid(text: str, entry: str) -> asn1_core.ObjectIdentifier:
    name = text.strip()
    dotted = _NAMES_FOLDED.get(name.lower())
    if dotted is None and not _DOTTED_OID.fullmatch(name):
        known = ", ".join(CSRATTRS_NAMES)
        raise ValueError(f"csrattrs entry {entry!r}: unknown name {name!r} (use a dotted OID or one of: {known})")
    try:
        return asn1_core.ObjectIdentifier(dotted or name)
    except ValueError as exc:  # e.g. 1.40: asn1crypto checks the arcs
        raise ValueError(f"csrattrs entry {entry!r}: {name!r} is not a valid OID ({_detail(exc)})") from exc
