"""Decode the OCSP request carried in a GET path (RFC 6960 Appendix A.1).

Works on the raw request path (ASGI ``raw_path``), never a normalised one, and
accepts what real clients send: percent-encoded base64, unencoded base64 whose
``/`` make extra path segments, ``+`` turned into a space, ``//`` inside the
base64, one extra leading slash, missing padding and the base64url alphabet.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

from edge.ocsp_request import MalformedRequest, common_beginnings

_URLSAFE_TO_STD = bytes.maketrans(b"-_ ", b"+/+")
# Searched with an int and compared by slices: `bytes in bytes` first fails as an integer, and
# bytes.startswith parses its arguments as a tuple (both slow on the hot path, Python 3.11).
_PERCENT = ord("%")
_SLASH = ord("/")
# What the quick way knows of a request's beginning by its base64 (cut at a multiple of three bytes):
# the issuer part it holds, the beginning's bytes after the cut, and the serial number's length.
_Known = tuple[bytes, bytes, int]


class GetPaths:
    """The OCSP prefixes of GET paths, and the request a path carries; built once per app."""

    def __init__(self, prefixes: Iterable[bytes], max_der_bytes: int) -> None:
        given = tuple(prefixes)
        self.prefixes = (*sorted(given, key=len, reverse=True), b"")  # longest first, root last
        # The byte after the first slash of each prefix: a path whose own differs can only be under
        # the root, the way most AIA URLs are, and need not be compared with each prefix.
        # A second slash is one too: the decoder drops one extra slash, the quick way does not.
        self._initials = frozenset({_SLASH, *(prefix[1] for prefix in given if len(prefix) > 1)})
        self._max = max_der_bytes
        self._known: dict[bytes, _Known] = {}
        self._key_lengths: dict[int, tuple[int, ...]] = {}  # by the encoded request's length

    def serve_issuers(self, issuer_parts: Iterable[bytes]) -> None:
        """The issuer parts (as encoded in a CertID) whose requests ``common_request`` reads."""
        known: dict[bytes, _Known] = {}
        key_lengths: dict[int, set[int]] = {}
        for part, beginning, serial_length in common_beginnings(issuer_parts, self._max):
            cut = len(beginning) // 3 * 3  # base64 writes three bytes as four characters
            key = binascii.b2a_base64(beginning[:cut], newline=False)
            known[key] = (part, beginning[cut:], serial_length)
            key_lengths.setdefault(-(-(len(beginning) + serial_length) // 3) * 4, set()).add(len(key))
        # Longest first: the NULL-parameters form (what OpenSSL sends) when two forms share a length.
        self._known = known
        self._key_lengths = {length: tuple(sorted(keys, reverse=True)) for length, keys in key_lengths.items()}

    def common_request(self, raw_path: bytes) -> tuple[bytes, bytes] | None:
        """(issuer part, serial number) of a GET path carrying a served issuer's common request, or None.

        The common shape (``edge.ocsp_request.common_request``) in padded standard base64, raw or
        with the three usual escapes, under any prefix. The base64 of such a request's beginning
        (``edge.ocsp_request.common_beginnings``, cut at a multiple of three bytes) is found with
        one dict lookup a length, and only the rest is decoded. None is "not found this way", never
        "malformed": ``der`` decides then. Whatever this reads, ``der`` and ``common_request`` read
        alike (a property test checks it).
        """
        encoded = self._encoded(raw_path)
        if encoded is None:
            return None
        if _PERCENT in encoded:  # as _decode does; any other escape fails the strict decoding below
            encoded = encoded.replace(b"%2F", b"/").replace(b"%2B", b"+").replace(b"%3D", b"=")
        known = self._known
        for length in self._key_lengths.get(len(encoded), ()):
            found = known.get(encoded[:length])
            if found is not None:
                break
        else:
            return None
        part, rest, serial_length = found
        try:
            tail = binascii.a2b_base64(encoded[length:], strict_mode=True)
        except binascii.Error:
            return None
        cut = len(rest)
        if len(tail) != cut + serial_length or tail[:cut] != rest:
            return None
        serial_number = tail[cut:]
        first = serial_number[0]
        if (first == 0 or first == 0xFF) and serial_length > 1 and (serial_number[1] < 0x80) == (first == 0):
            return None  # padded (00 before a byte below 0x80, FF before one from 0x80): the general way folds it
        return part, serial_number

    def der(self, raw_path: bytes) -> bytes:
        """The DER request of a GET path, or MalformedRequest (no OCSP prefix matches too)."""
        encoded = self._encoded(raw_path)
        if encoded is None:
            raise MalformedRequest("not under an OCSP prefix")
        return _decode(encoded, self._max)

    def _encoded(self, raw_path: bytes) -> bytes | None:
        """What a path holds after its OCSP prefix's slash and one extra slash, or None: no prefix matches."""
        if len(raw_path) > 1 and raw_path[1] not in self._initials and raw_path[0] == _SLASH:
            return raw_path[1:]
        encoded = strip_prefix(raw_path, self.prefixes)
        if encoded is not None and encoded[:1] == b"/":  # AIA URLs ending in "/" produce one extra slash
            return encoded[1:]
        return encoded


def strip_prefix(raw_path: bytes, prefixes: tuple[bytes, ...]) -> bytes | None:
    """The part of ``raw_path`` after the longest matching OCSP prefix, or None.

    ``prefixes`` are sorted longest first and include ``b""`` for the root.
    """
    for prefix in prefixes:
        end = len(prefix)
        if raw_path[:end] == prefix and (len(raw_path) == end or raw_path[end] == _SLASH):
            return raw_path[end + 1 :]
    return None


def decode_get_request(encoded: bytes, max_der_bytes: int) -> bytes:
    """The DER request from the path part after the prefix slash."""
    if encoded[:1] == b"/":  # AIA URLs ending in "/" produce one extra slash
        encoded = encoded[1:]
    return _decode(encoded, max_der_bytes)


def _decode(encoded: bytes, max_der_bytes: int) -> bytes:
    if len(encoded) > 3 * max_der_bytes:  # percent-encoding triples a byte at most
        raise MalformedRequest("request path too long")
    if _PERCENT in encoded:
        # The three escapes base64 needs, as most clients write them; anything else through the
        # general decoder.
        encoded = encoded.replace(b"%2F", b"/").replace(b"%2B", b"+").replace(b"%3D", b"=")
        if _PERCENT in encoded:
            encoded = unquote_to_bytes(encoded)
    try:
        # What most clients send: padded standard base64. Whatever strict decoding accepts, the
        # tolerant way would read the same; whatever it refuses takes the tolerant way.
        der = binascii.a2b_base64(encoded, strict_mode=True)
    except binascii.Error:
        der = _decode_tolerantly(encoded)
    if not der:
        raise MalformedRequest("empty request")
    if len(der) > max_der_bytes:
        raise MalformedRequest("request too large")
    return der


def _decode_tolerantly(encoded: bytes) -> bytes:
    """The base64url alphabet, ``+`` turned into a space, missing or partial padding."""
    encoded = encoded.translate(_URLSAFE_TO_STD).rstrip(b"=")
    if not encoded:
        raise MalformedRequest("empty request")
    try:
        return binascii.a2b_base64(encoded + b"=" * (-len(encoded) % 4), strict_mode=True)
    except binascii.Error:
        raise MalformedRequest("bad base64") from None
