"""Why the OCSP hot path has its own DER reader: asn1crypto vs edge.ocsp_request.

Run: .venv/bin/python bench/bench_parse.py
Prints the cost of extracting the CertID fields from one request with each, and the ratio.
"""

from __future__ import annotations

import hashlib
import timeit

from asn1crypto import ocsp as asn1_ocsp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from edge.ocsp_request import parse_ocsp_request


def sample_request() -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        hashlib.sha256(b"name").digest(), hashlib.sha256(b"key").digest(), 0x1234567890ABCDEF1234, hashes.SHA256()
    )
    return builder.build().public_bytes(serialization.Encoding.DER)


def with_asn1crypto(der: bytes) -> tuple[str, bytes, bytes, int]:
    request = asn1_ocsp.OCSPRequest.load(der)
    cert_id = request["tbs_request"]["request_list"][0]["req_cert"]
    return (
        cert_id["hash_algorithm"]["algorithm"].dotted,
        cert_id["issuer_name_hash"].native,
        cert_id["issuer_key_hash"].native,
        cert_id["serial_number"].native,
    )


def main() -> None:
    der = sample_request()
    n = 20000
    ours = min(timeit.repeat(lambda: parse_ocsp_request(der), number=n, repeat=5)) / n
    theirs = min(timeit.repeat(lambda: with_asn1crypto(der), number=n, repeat=5)) / n
    print(f"edge.ocsp_request: {ours * 1e6:7.2f} µs/request")
    print(f"asn1crypto:        {theirs * 1e6:7.2f} µs/request")
    print(f"ratio asn1crypto / ours: {theirs / ours:.1f}x")


if __name__ == "__main__":
    main()
