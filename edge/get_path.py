"""Decode the OCSP request carried in a GET path (RFC 6960 Appendix A.1).

Works on the raw request path (ASGI ``raw_path``), never a normalised one, and
accepts what real clients send: percent-encoded base64, unencoded base64 whose
``/`` make extra path segments, ``+`` turned into a space, ``//`` inside the
base64, one extra leading slash, missing padding and the base64url alphabet.
"""

from __future__ import annotations

import binascii
from urllib.parse import unquote_to_bytes

from edge.ocsp_request import MalformedRequest

_URLSAFE_TO_STD = bytes.maketrans(b"-_ ", b"+/+")
_COMMON_ESCAPES = tuple(
    (b"%" + hexa, bytes.fromhex(hexa.decode())) for hexa in (b"2F", b"2f", b"2B", b"2b", b"3D", b"3d")
)


def strip_prefix(raw_path: bytes, prefixes: tuple[bytes, ...]) -> bytes | None:
    """The part of ``raw_path`` after the longest matching OCSP prefix, or None.

    ``prefixes`` are sorted longest first and include ``b""`` for the root.
    """
    for prefix in prefixes:
        if raw_path.startswith(prefix) and (len(raw_path) == len(prefix) or raw_path[len(prefix)] == 0x2F):
            return raw_path[len(prefix) + 1 :]
    return None


def decode_get_request(encoded: bytes, max_der_bytes: int) -> bytes:
    """The DER request from the path part after the prefix slash."""
    if encoded.startswith(b"/"):  # AIA URLs ending in "/" produce one extra slash
        encoded = encoded[1:]
    if len(encoded) > 3 * max_der_bytes:  # percent-encoding triples a byte at most
        raise MalformedRequest("request path too long")
    if b"%" not in encoded:
        # What most clients send: plain, padded standard base64; anything else fails strict
        # decoding and takes the tolerant way below.
        try:
            der = binascii.a2b_base64(encoded, strict_mode=True)
        except binascii.Error:
            pass
        else:
            if not der:
                raise MalformedRequest("empty request")
            if len(der) > max_der_bytes:
                raise MalformedRequest("request too large")
            return der
    else:
        # The three escapes base64 needs, directly; anything else through the general decoder.
        for escaped, plain in _COMMON_ESCAPES:
            encoded = encoded.replace(escaped, plain)
        if b"%" in encoded:
            encoded = unquote_to_bytes(encoded)
    encoded = encoded.translate(_URLSAFE_TO_STD).rstrip(b"=")
    if not encoded:
        raise MalformedRequest("empty request")
    try:
        der = binascii.a2b_base64(encoded + b"=" * (-len(encoded) % 4), strict_mode=True)
    except binascii.Error:
        raise MalformedRequest("bad base64") from None
    if len(der) > max_der_bytes:
        raise MalformedRequest("request too large")
    return der
