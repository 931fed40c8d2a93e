"""Fixtures for the micro benchmarks: a small real store, signed by the signer code."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from contract.config import Config
from edge.source import issuer_hashes
from signer.registry import create_ca
from signer.state import SignerStore
from tests.signed_store import add_devices, drain

SERIALS = range(1, 201)
MicroStore = tuple[SignerStore, x509.Certificate]


@pytest.fixture(scope="session")
def micro_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MicroStore]:
    """A signer store with 200 signed serials; yields (store, CA certificate)."""
    data = tmp_path_factory.mktemp("micro")
    config = Config()
    st = SignerStore(data, config)
    now = dt.datetime.now(dt.UTC)
    issuer = create_ca(st, "bench", "ec-p256", 30, None, None, now)
    add_devices(st, issuer, SERIALS, now)
    drain(st)
    ca = x509.load_der_x509_certificate(issuer.cert_der)
    yield st, ca
    st.close()


def ocsp_request(ca: x509.Certificate, serial: int) -> bytes:
    name_hash, key_hash = issuer_hashes(ca.public_bytes(serialization.Encoding.DER), "sha1")
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash, key_hash, serial, hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)
