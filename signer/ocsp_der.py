"""Build signed OCSP responses around the signature, with no per-response ASN.1 objects.

Everything constant for an issuer (ResponderID, signature algorithm, the
CertID prefix per hash algorithm, the delegated certificate) is encoded once;
per response only the times, status and serial are encoded and the TBS bytes
signed. Every byte is checked against cryptography's parser and `openssl ocsp`
in tests/signer/test_ocsp_der.py.

Shape (RFC 6960 §4.2.1 with the RFC 5019bis profile): BasicOCSPResponse,
ResponderID byKey, one SingleResponse, no nonce, no extensions, nextUpdate
always present, GeneralizedTime in whole seconds.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import time
from collections.abc import Sequence
from typing import NamedTuple

from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from contract.cert_id import issuer_part_encodings
from contract.store import HASH_ALGORITHMS
from signer.keys import SigningKey, signature_hash, signer_for


def der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:  # the common cases first: this runs a dozen times per response
        return bytes((tag, n)) + content
    if n < 0x100:
        return bytes((tag, 0x81, n)) + content
    return bytes((tag,)) + der_length(n) + content


@functools.lru_cache(maxsize=4096)  # a batch signs many responses with the same few times
def generalized_time(unix: int) -> bytes:
    return tlv(0x18, time.strftime("%Y%m%d%H%M%SZ", time.gmtime(unix)).encode())


ETAG_SIGNATURE_OCTETS = 16
_GOOD = b"\x80\x00"
_OID_BASIC = tlv(0x06, bytes.fromhex("2b0601050507300101"))  # id-pkix-ocsp-basic
_SUCCESSFUL = b"\x0a\x01\x00"
_SIG_ALGORITHMS = {
    ("ec", "sha256"): tlv(0x30, tlv(0x06, bytes.fromhex("2a8648ce3d040302"))),
    ("ec", "sha384"): tlv(0x30, tlv(0x06, bytes.fromhex("2a8648ce3d040303"))),
    ("rsa", "sha256"): tlv(0x30, tlv(0x06, bytes.fromhex("2a864886f70d01010b")) + b"\x05\x00"),
    ("rsa", "sha384"): tlv(0x30, tlv(0x06, bytes.fromhex("2a864886f70d01010c")) + b"\x05\x00"),
}


class CertStatus(NamedTuple):
    revoked_at: int | None = None
    reason: int | None = None  # CRLReason code; None leaves revocationReason out

    def encode(self) -> bytes:
        if self.revoked_at is None:
            return _GOOD
        info = generalized_time(self.revoked_at)
        if self.reason is not None:
            info += tlv(0xA0, b"\x0a\x01" + bytes((self.reason,)))
        return tlv(0xA1, info)


class ResponseSigner:
    """Signs OCSP responses for one issuer, with the CA key or a delegated responder's key."""

    def __init__(
        self,
        issuer_cert: x509.Certificate,
        key: SigningKey,
        responder_cert: x509.Certificate | None = None,
    ) -> None:
        signer_cert = responder_cert or issuer_cert
        if signer_cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
            raise ValueError("the signing key does not match the responder certificate")
        # No response signed here may outlive the certificate that vouches for its signature (a
        # client rejects it once that certificate has expired, RFC 6960 §4.2.2.2): the signer caps
        # nextUpdate at valid_until and signs nothing outside these bounds.
        self.valid_from = int(signer_cert.not_valid_before_utc.timestamp())
        self.valid_until = int(signer_cert.not_valid_after_utc.timestamp())
        self._key = key
        self._hash = signature_hash(key)
        self._sign = signer_for(key, self._hash)
        family = "ec" if isinstance(key, ec.EllipticCurvePrivateKey) else "rsa"
        self._sig_alg = _SIG_ALGORITHMS[(family, self._hash.name)]
        # ResponderID byKey: SHA-1 of the responder's subjectPublicKey BIT STRING contents.
        self._responder_id = tlv(0xA2, tlv(0x04, hashlib.sha1(_public_key_bits(signer_cert)).digest()))
        self._certs = b""
        self._tbs_shapes: dict[tuple[int, int, int], tuple[bytes, bytes]] = {}
        self._wraps: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        if responder_cert is not None:
            cert_der = responder_cert.public_bytes(serialization.Encoding.DER)
            self._certs = tlv(0xA0, tlv(0x30, cert_der))
        self._certs_tag = hashlib.sha256(self._certs).hexdigest()[:8].encode() if self._certs else b""
        subject = issuer_cert.subject.public_bytes()
        key_bits = _public_key_bits(issuer_cert)
        self.cert_id_prefixes: dict[int, bytes] = {}
        for name, (code, oid) in HASH_ALGORITHMS.items():
            name_hash = hashlib.new(name, subject).digest()
            key_hash = hashlib.new(name, key_bits).digest()
            self.cert_id_prefixes[code] = issuer_part_encodings(oid, name_hash, key_hash)[0]  # with NULL

    def valid_at(self, now: int) -> bool:
        """Whether responses may be signed at ``now`` (Unix seconds): inside the signing certificate's validity."""
        return self.valid_from <= now < self.valid_until

    def sign_response(
        self,
        hash_code: int,
        serial: bytes,
        status: CertStatus,
        produced_at: int,
        this_update: int,
        next_update: int,
    ) -> bytes:
        """One DER OCSPResponse; ``serial`` is the minimal INTEGER content (contract.store.serial_key).

        The three steps below in one call; the background signer calls them apart, to sign a
        chunk's ResponseData back to back (signer.precompute).
        """
        tbs = self.response_data(
            hash_code, serial, generalized_time(produced_at), status_and_times(status, this_update, next_update)
        )
        return self.response(tbs, self.sign(tbs))[0]

    def response_data(self, hash_code: int, serial: bytes, produced_at: bytes, tail: bytes) -> bytes:
        """The DER ResponseData to sign, from the encoded producedAt (``generalized_time``) and
        ``tail`` (``status_and_times``): the background signer encodes those once per batch."""
        parts = self._tbs_shapes.get((hash_code, len(serial), len(tail)))
        if parts is None:
            parts = self._tbs_shapes[(hash_code, len(serial), len(tail))] = self._tbs_parts(
                hash_code, len(serial), len(tail)
            )
        return b"".join((parts[0], produced_at, parts[1], serial, tail))

    def sign(self, tbs: bytes) -> bytes:
        """The signature of a ResponseData."""
        return self._sign(tbs)

    def response(self, tbs: bytes, signature: bytes) -> tuple[bytes, bytes]:
        """The DER OCSPResponse around a signed ResponseData, and its ETag.

        The last octets of the signature change whenever the signed data does (ECDSA draws a
        fresh k per signature; an RSA signature is a permutation of the data's digest), and the
        certificates' tag covers the one part outside the signature: a strong ETag, no hashing.
        """
        etag = b'"%s%s"' % (self._certs_tag, binascii.hexlify(signature[-ETAG_SIGNATURE_OCTETS:]))
        return self._wrapped(tbs, signature), etag

    def _tbs_parts(self, hash_code: int, serial_length: int, tail_length: int) -> tuple[bytes, bytes]:
        """The ResponseData bytes around producedAt and the serial, for one shape of response.

        Every length in the DER depends only on the serial's and the status's lengths, so a batch
        encodes these headers once instead of a dozen TLVs per response (what sign_multi_response
        still does, as the reference: a test checks both give the same bytes).
        """
        produced_gap = generalized_time(0)  # every GeneralizedTime here has the same length
        cert_id = tlv(0x30, self.cert_id_prefixes[hash_code] + tlv(0x02, b"\x00" * serial_length))
        content = self._responder_id + produced_gap + tlv(0x30, tlv(0x30, cert_id + b"\x00" * tail_length))
        tbs = tlv(0x30, content)
        produced_at = len(tbs) - len(content) + len(self._responder_id)
        serial_at = len(tbs) - tail_length - serial_length
        return tbs[:produced_at], tbs[produced_at + len(produced_gap) : serial_at]

    def sign_multi_response(
        self,
        singles: Sequence[tuple[int, bytes, CertStatus]],
        produced_at: int,
        this_update: int,
        next_update: int,
    ) -> bytes:
        """One response with a SingleResponse per (hash code, serial, status), in request order
        (RFC 6960 §4.2.2.3), for live-signed requests carrying several CertIDs of this issuer."""
        body = b"".join(
            tlv(
                0x30,
                tlv(0x30, self.cert_id_prefixes[code] + tlv(0x02, serial))
                + status_and_times(status, this_update, next_update),
            )
            for code, serial, status in singles
        )
        return self._signed(tlv(0x30, self._responder_id + generalized_time(produced_at) + tlv(0x30, body)))

    def _signed(self, tbs: bytes) -> bytes:
        """The OCSPResponse around a signed ResponseData."""
        return self._wrapped(tbs, self._sign(tbs))

    def _wrapped(self, tbs: bytes, signature: bytes) -> bytes:
        wrap = self._wraps.get((len(tbs), len(signature)))  # ECDSA signatures vary by a byte or two
        if wrap is None:
            wrap = self._wraps[(len(tbs), len(signature))] = self._wrap(len(tbs), len(signature))
        return b"".join((wrap[0], tbs, wrap[1], signature, self._certs))

    def _wrap(self, tbs_length: int, signature_length: int) -> tuple[bytes, bytes]:
        """The OCSPResponse bytes before the ResponseData and between it and the signature value."""
        tbs_gap, signature_gap = b"\x00" * tbs_length, b"\x00" * signature_length
        bit_string = tlv(0x03, b"\x00" + signature_gap)
        basic = tlv(0x30, tbs_gap + self._sig_alg + bit_string + self._certs)
        whole = tlv(0x30, _SUCCESSFUL + tlv(0xA0, tlv(0x30, _OID_BASIC + tlv(0x04, basic))))
        tbs_at = len(whole) - len(basic) + (len(basic) - len(tbs_gap + self._sig_alg + bit_string + self._certs))
        signature_at = tbs_at + tbs_length + len(self._sig_alg) + len(bit_string) - signature_length
        return whole[:tbs_at], whole[tbs_at + tbs_length : signature_at]


@functools.lru_cache(maxsize=1024)  # the same few per batch: good, or revoked at one time
def status_and_times(status: CertStatus, this_update: int, next_update: int) -> bytes:
    """certStatus, thisUpdate and nextUpdate of a SingleResponse, encoded."""
    return status.encode() + generalized_time(this_update) + tlv(0xA0, generalized_time(next_update))


def _public_key_bits(cert: x509.Certificate) -> bytes:
    """Contents of the subjectPublicKey BIT STRING (without the unused-bits octet)."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bytes(asn1_keys.PublicKeyInfo.load(spki)["public_key"].contents[1:])
