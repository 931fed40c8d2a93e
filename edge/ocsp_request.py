"""Strict reader of DER OCSPRequests (RFC 6960 §4.1.1) for the hot path.

A deliberate exception to "use the libraries": asn1crypto costs far more per
request than the whole rest of the answer (see ``bench/bench_parse.py``). This
reader walks the fixed request schema only; everything it returns is checked
against asn1crypto in ``tests/edge/test_ocsp_request.py``.

Bytes in, an ``OCSPRequestInfo`` or a ``MalformedRequest`` out; nothing else
is raised. Bounded: the size is capped, the schema has a fixed depth, every
length must be exact DER (definite, minimal) and nothing may trail.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from contract.cert_id import issuer_part_encodings
from contract.store import canonical_serial_key

MAX_REQUEST_BYTES = 10000
MAX_HASH_BYTES = 64
MAX_SERIAL_BYTES = 64
MAX_OID_BYTES = 32
ID_PKIX_OCSP_NONCE = bytes.fromhex("2b0601050507300102")

_SEQUENCE = 0x30
_INTEGER = 0x02
_OCTET_STRING = 0x04
_NULL = 0x05
_OID = 0x06
_BOOLEAN = 0x01
_CTX0 = 0xA0
_CTX1 = 0xA1
_CTX2 = 0xA2


class MalformedRequest(Exception):
    """The bytes are not a well-formed DER OCSPRequest."""


class CertID(NamedTuple):
    hash_algorithm: bytes  # DER content of the hash algorithm's OID
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial_number: bytes  # minimal two's-complement INTEGER content (contract.store.serial_key)


class OCSPRequestInfo(NamedTuple):
    cert_ids: tuple[CertID, ...]
    has_nonce: bool


def _tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Read one tag-length header at ``pos``; return (tag, content start, content end)."""
    if end - pos < 2:
        raise MalformedRequest("truncated")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise MalformedRequest("high tag numbers are not used by OCSP")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0:
            raise MalformedRequest("indefinite length")
        if count > 2 or end - pos < count:
            raise MalformedRequest("length out of bounds")
        length = int.from_bytes(buf[pos : pos + count], "big")
        if buf[pos] == 0 or length < 0x80:
            raise MalformedRequest("non-minimal length")
        pos += count
    if end - pos < length:
        raise MalformedRequest("length past the end")
    return tag, pos, pos + length


def _expect(buf: bytes, pos: int, end: int, tag: int) -> tuple[int, int]:
    got, start, stop = _tlv(buf, pos, end)
    if got != tag:
        raise MalformedRequest(f"expected tag 0x{tag:02x}, got 0x{got:02x}")
    return start, stop


def _oid(buf: bytes, start: int, stop: int) -> bytes:
    content = buf[start:stop]
    if not content or len(content) > MAX_OID_BYTES or content[-1] & 0x80:
        raise MalformedRequest("bad object identifier")
    if 0x80 in content:  # rare: check that no subidentifier starts with a padding octet (X.690 §8.19.2)
        starts = True
        for octet in content:
            if starts and octet == 0x80:
                raise MalformedRequest("non-minimal object identifier")
            starts = octet < 0x80
    return content


def _cert_id(buf: bytes, pos: int, end: int) -> CertID:
    alg_start, alg_stop = _expect(buf, pos, end, _SEQUENCE)
    oid_start, oid_stop = _expect(buf, alg_start, alg_stop, _OID)
    hash_algorithm = _oid(buf, oid_start, oid_stop)
    if oid_stop != alg_stop:
        null_start, null_stop = _expect(buf, oid_stop, alg_stop, _NULL)
        if null_start != null_stop or null_stop != alg_stop:
            raise MalformedRequest("hash algorithm parameters must be NULL or absent")
    name_start, name_stop = _expect(buf, alg_stop, end, _OCTET_STRING)
    key_start, key_stop = _expect(buf, name_stop, end, _OCTET_STRING)
    serial_start, serial_stop = _expect(buf, key_stop, end, _INTEGER)
    if serial_stop != end:
        raise MalformedRequest("trailing bytes in CertID")
    if not (0 < name_stop - name_start <= MAX_HASH_BYTES and 0 < key_stop - key_start <= MAX_HASH_BYTES):
        raise MalformedRequest("bad hash length")
    if not 0 < serial_stop - serial_start <= MAX_SERIAL_BYTES:
        raise MalformedRequest("bad serial number length")
    return CertID(
        hash_algorithm,
        buf[name_start:name_stop],
        buf[key_start:key_stop],
        canonical_serial_key(buf[serial_start:serial_stop]),
    )


def _extensions_have_nonce(buf: bytes, pos: int, end: int) -> bool:
    """Walk ``Extensions ::= SEQUENCE SIZE (1..MAX) OF Extension``; True if one is the nonce.

    RFC 6960 §4.4: extensions are ignored, unless critical and not understood: a critical one other
    than the nonce (which is understood, and answered without, RFC 5019bis) is a malformed request.
    """
    start, stop = _expect(buf, pos, end, _SEQUENCE)
    if stop != end or start == stop:
        raise MalformedRequest("bad extensions")
    found = False
    pos = start
    while pos < stop:
        ext_start, ext_stop = _expect(buf, pos, stop, _SEQUENCE)
        oid_start, oid_stop = _expect(buf, ext_start, ext_stop, _OID)
        oid = _oid(buf, oid_start, oid_stop)
        inner = oid_stop
        tag, b_start, b_stop = _tlv(buf, inner, ext_stop)
        if tag == _BOOLEAN:
            # DER omits the DEFAULT FALSE, so an encoded critical flag must be TRUE (0xff).
            if b_stop - b_start != 1 or buf[b_start] != 0xFF:
                raise MalformedRequest("bad critical flag")
            if oid != ID_PKIX_OCSP_NONCE:
                raise MalformedRequest("critical extension not understood")
            inner = b_stop
        _, value_stop = _expect(buf, inner, ext_stop, _OCTET_STRING)
        if value_stop != ext_stop:
            raise MalformedRequest("trailing bytes in extension")
        found = found or oid == ID_PKIX_OCSP_NONCE
        pos = ext_stop
    return found


def _skip_explicit(buf: bytes, start: int, stop: int) -> None:
    """An EXPLICIT field we do not interpret must hold exactly one well-formed element."""
    _, _, inner_stop = _tlv(buf, start, stop)
    if inner_stop != stop:
        raise MalformedRequest("trailing bytes in tagged field")


def issuer_part(cert_id: CertID) -> bytes:
    """The issuer part of a parsed CertID (the NULL-parameters form, as OpenSSL sends it).

    Whatever the request, the parser reads one of :func:`issuer_part_encodings` and nothing else
    for the same (algorithm, name hash, key hash): the issuer part is as good a key as the three
    fields, and cheaper to take from a request (:func:`common_request`).
    """
    return issuer_part_encodings(cert_id.hash_algorithm, cert_id.issuer_name_hash, cert_id.issuer_key_hash)[0]


# The headers of a request of the RFC 5019 shape, by its size: OCSPRequest, TBSRequest, requestList,
# Request and CertID SEQUENCEs, each holding only the next (short-form lengths: 129 bytes at most).
_COMMON_HEADERS = {
    size: bytes(
        (_SEQUENCE, size - 2, _SEQUENCE, size - 4, _SEQUENCE, size - 6, _SEQUENCE, size - 8, _SEQUENCE, size - 10)
    )
    for size in range(20, 130)
}


def common_request(der: bytes) -> tuple[bytes, bytes] | None:
    """(issuer part, serial key) of the request shape almost every client sends, or None.

    One Request of one CertID, short-form lengths, no version, requestorName, extensions or
    signature. The issuer part (hashAlgorithm, issuerNameHash, issuerKeyHash as encoded) is
    located, not read: it is a real one only if it equals one of :func:`issuer_part_encodings`,
    and then the general parser reads this request as exactly that CertID (a property test
    checks it). None means "not this shape"; it never raises.
    """
    size = len(der)
    if der[:10] != _COMMON_HEADERS.get(size):
        return None
    # The two OCTET STRING tags are not checked here: a part equal to a real encoding has them
    # where these lengths put them, and any other part is looked up in vain (_parse_single checks).
    try:
        name = 12 + der[11]  # past the AlgorithmIdentifier
        key = name + 2 + der[name + 1]
        serial = key + 2 + der[key + 1]
        if der[serial] != _INTEGER:
            return None
        serial_len = der[serial + 1]
    except IndexError:
        return None
    if serial + 2 + serial_len != size or not 0 < serial_len <= MAX_SERIAL_BYTES:
        return None
    serial_number = der[serial + 2 :]
    if serial_len > 1 and serial_number[0] in (0, 0xFF):  # maybe padded: fold onto the minimal encoding
        serial_number = canonical_serial_key(serial_number)
    return der[10:serial], serial_number


# RFC 5280 §4.1.2.2: no longer than 20 octets. Longer serial numbers take the general way.
MAX_COMMON_SERIAL_BYTES = 20


def common_beginnings(issuer_parts: Iterable[bytes], max_der_bytes: int) -> Iterator[tuple[bytes, bytes, int]]:
    """(issuer part, beginning, serial length) of every request of the common shape of these issuers.

    Up to its serial number's content such a request is fixed by its issuer part and serial length:
    the headers (which hold its size), the issuer part, the INTEGER tag and length. Serial numbers of
    up to MAX_COMMON_SERIAL_BYTES octets, requests of up to ``max_der_bytes``.
    """
    for part in issuer_parts:
        for serial_length in range(1, MAX_COMMON_SERIAL_BYTES + 1):
            size = 10 + len(part) + 2 + serial_length
            headers = _COMMON_HEADERS.get(size)
            if headers is None or size > max_der_bytes:
                break
            yield part, headers + part + bytes((_INTEGER, serial_length)), serial_length


class ServedRequests:
    """The common request of a served issuer, found by its beginning: one dict lookup, nothing parsed."""

    def __init__(self, max_der_bytes: int) -> None:
        self._max = max_der_bytes
        self._parts: dict[bytes, bytes] = {}  # issuer part by beginning
        self._lengths: dict[int, tuple[int, ...]] = {}  # beginnings' lengths by request size

    def serve_issuers(self, issuer_parts: Iterable[bytes]) -> None:
        """The issuer parts (as encoded in a CertID) whose requests ``read`` finds."""
        parts: dict[bytes, bytes] = {}
        lengths: dict[int, set[int]] = {}
        for part, beginning, serial_length in common_beginnings(issuer_parts, self._max):
            parts[beginning] = part
            lengths.setdefault(len(beginning) + serial_length, set()).add(len(beginning))
        self._parts = parts
        # Longest first: the NULL-parameters form (what OpenSSL sends) when two forms give one size.
        self._lengths = {size: tuple(sorted(found, reverse=True)) for size, found in lengths.items()}

    def read(self, der: bytes) -> tuple[bytes, bytes] | None:
        """(issuer part, serial number) of a served issuer's request of the common shape, or None.

        None is "not found this way", never "malformed". Whatever this reads, :func:`common_request`
        reads alike (a property test checks it); padded serial numbers are left to it.
        """
        for length in self._lengths.get(len(der), ()):
            part = self._parts.get(der[:length])
            if part is not None:
                break
        else:
            return None
        serial_number = der[length:]
        if der[length - 1] != len(serial_number):  # the beginning of a request of another size
            return None
        first = serial_number[0]
        if (first == 0 or first == 0xFF) and len(serial_number) > 1 and (serial_number[1] < 0x80) == (first == 0):
            return None  # padded (00 before a byte below 0x80, FF before one from 0x80): common_request folds it
        return part, serial_number


# The AlgorithmIdentifier encodings of the hash algorithms served, by their length and bytes.
_COMMON_ALGORITHMS = {
    encoding[: encoding[1] + 2]: oid
    for oid in (
        bytes.fromhex("2b0e03021a"),
        bytes.fromhex("608648016503040201"),
        bytes.fromhex("608648016503040202"),
        bytes.fromhex("608648016503040203"),
    )
    for encoding in issuer_part_encodings(oid, b"", b"")
}


def _parse_single(der: bytes) -> OCSPRequestInfo | None:
    """The RFC 5019 shape read as a CertID, or None: the general parser then decides.

    Whatever this accepts, the general parser accepts with the same result (a property test checks it).
    """
    common = common_request(der)
    if common is None:
        return None
    part, serial_number = common
    oid = _COMMON_ALGORITHMS.get(part[: part[1] + 2])
    if oid is None:
        return None
    name = part[1] + 2
    name_len = part[name + 1]
    key = name + 2 + name_len
    key_len = part[key + 1]
    if part[name] != _OCTET_STRING or part[key] != _OCTET_STRING:
        return None
    if not (0 < name_len <= MAX_HASH_BYTES and 0 < key_len <= MAX_HASH_BYTES):
        return None
    return OCSPRequestInfo((CertID(oid, part[name + 2 : key], part[key + 2 :], serial_number),), False)


def parse_ocsp_request(der: bytes) -> OCSPRequestInfo:
    return _parse_single(der) or parse_ocsp_request_general(der)


def parse_ocsp_request_general(der: bytes) -> OCSPRequestInfo:
    """The whole schema: any number of CertIDs, optional fields, long-form lengths."""
    if len(der) > MAX_REQUEST_BYTES:
        raise MalformedRequest("request too large")
    req_start, req_stop = _expect(der, 0, len(der), _SEQUENCE)
    if req_stop != len(der):
        raise MalformedRequest("trailing bytes after the request")
    tbs_start, tbs_stop = _expect(der, req_start, req_stop, _SEQUENCE)
    if tbs_stop != req_stop:
        # optionalSignature [0] EXPLICIT Signature: tolerated, not verified (RFC 5019bis).
        tag, sig_start, sig_stop = _tlv(der, tbs_stop, req_stop)
        if tag != _CTX0 or sig_stop != req_stop:
            raise MalformedRequest("unexpected element after tbsRequest")
        _skip_explicit(der, sig_start, sig_stop)

    pos = tbs_start
    tag, start, stop = _tlv(der, pos, tbs_stop)
    if tag == _CTX0:  # version [0] EXPLICIT INTEGER: only v1 (0) exists
        v_start, v_stop = _expect(der, start, stop, _INTEGER)
        if v_stop != stop or der[v_start:v_stop] != b"\x00":
            raise MalformedRequest("unsupported version")
        pos = stop
        tag, start, stop = _tlv(der, pos, tbs_stop)
    if tag == _CTX1:  # requestorName: treated as absent (RFC 5019bis)
        _skip_explicit(der, start, stop)
        pos = stop
        tag, start, stop = _tlv(der, pos, tbs_stop)
    if tag != _SEQUENCE:
        raise MalformedRequest("missing requestList")

    cert_ids = []
    item = start
    while item < stop:
        r_start, r_stop = _expect(der, item, stop, _SEQUENCE)
        _, cid_start, cid_stop = _tlv(der, r_start, r_stop)
        if der[r_start] != _SEQUENCE:
            raise MalformedRequest("expected CertID")
        cert_ids.append(_cert_id(der, cid_start, cid_stop))
        if cid_stop != r_stop:  # singleRequestExtensions [0]: tolerated
            tag, ext_start, ext_stop = _tlv(der, cid_stop, r_stop)
            if tag != _CTX0 or ext_stop != r_stop:
                raise MalformedRequest("unexpected element in Request")
            _extensions_have_nonce(der, ext_start, ext_stop)
        item = r_stop
    if not cert_ids:
        raise MalformedRequest("empty requestList")

    has_nonce = False
    if stop != tbs_stop:
        tag, ext_start, ext_stop = _tlv(der, stop, tbs_stop)
        if tag != _CTX2 or ext_stop != tbs_stop:
            raise MalformedRequest("unexpected element in tbsRequest")
        has_nonce = _extensions_have_nonce(der, ext_start, ext_stop)
    return OCSPRequestInfo(tuple(cert_ids), has_nonce)
