"""The DER of a CertID's issuer part, shared by the signer (which writes it into every response)
and the edge (which finds served issuers by it in requests).

A CertID (RFC 6960 §4.1.1) is ``SEQUENCE { hashAlgorithm, issuerNameHash, issuerKeyHash,
serialNumber }``; its issuer part is the DER of the first three fields, as they appear in it.
"""

from __future__ import annotations


def issuer_part_encodings(
    hash_algorithm: bytes, issuer_name_hash: bytes, issuer_key_hash: bytes
) -> tuple[bytes, bytes]:
    """The two DER encodings of an issuer part: hashAlgorithm with NULL parameters, then without.

    Both are DER (RFC 5754 allows either for the SHA-2 family; OpenSSL sends NULL); any other
    parameters are malformed. ``hash_algorithm`` is the OID's content octets. Lengths are
    short-form: OIDs of the hash algorithms and hashes of 64 octets at most.
    """
    hashes = bytes((0x04, len(issuer_name_hash))) + issuer_name_hash
    hashes += bytes((0x04, len(issuer_key_hash))) + issuer_key_hash
    oid = bytes((0x06, len(hash_algorithm))) + hash_algorithm
    return (
        bytes((0x30, len(oid) + 2)) + oid + b"\x05\x00" + hashes,
        bytes((0x30, len(oid))) + oid + hashes,
    )
