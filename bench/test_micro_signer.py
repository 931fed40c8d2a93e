"""Signer micro benchmarks: one response built and signed, against the raw signature alone and
against cryptography's OCSPResponseBuilder (the library path signer/ocsp_der.py replaces)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from pytest_benchmark.fixture import BenchmarkFixture

from contract.store import serial_key
from signer.certs import make_ca_certificate
from signer.keys import SigningKey, generate_key, sign, signature_hash
from signer.ocsp_der import CertStatus, ResponseSigner

SERIAL = 0x1234567890
Responder = tuple[SigningKey, x509.Certificate, ResponseSigner]


@pytest.fixture(scope="module", params=["ec-p256", "ec-p384", "rsa-2048"])
def responder(request: pytest.FixtureRequest) -> Responder:
    key = generate_key(request.param)
    ca = make_ca_certificate("bench " + request.param, key, 30, dt.datetime.now(dt.UTC))
    return key, ca, ResponseSigner(ca, key)


def test_raw_sign(benchmark: BenchmarkFixture, responder: Responder) -> None:
    key, _, _ = responder
    tbs = b"\x30" * 200  # about the size of a ResponseData
    assert benchmark(sign, key, tbs, signature_hash(key))


def test_build_and_sign_response(benchmark: BenchmarkFixture, responder: Responder) -> None:
    _, _, signer = responder
    now = int(time.time())
    der = benchmark(signer.sign_response, 2, serial_key(SERIAL), CertStatus(), now, now - 3600, now + 86400)
    assert ocsp.load_der_ocsp_response(der).serial_number == SERIAL


def test_cryptography_builder_reference(benchmark: BenchmarkFixture, responder: Responder) -> None:
    key, ca, _ = responder
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def build() -> bytes:
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                b"\x00" * 32,
                b"\x00" * 32,
                SERIAL,
                hashes.SHA256(),
                ocsp.OCSPCertStatus.GOOD,
                now,
                now + dt.timedelta(days=1),
                None,
                None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, ca)
        )
        return builder.sign(key, signature_hash(key)).public_bytes(serialization.Encoding.DER)

    assert ocsp.load_der_ocsp_response(benchmark(build)).serial_number == SERIAL
