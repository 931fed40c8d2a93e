"""(a) `openssl ocsp` over POST against every OCSP prefix of a running `pki-edge up`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import Shared
from tests.integration.helpers import REVOKED_TIME_OPENSSL, make_ca, openssl, openssl_rc, write_pem

PREFIXES = ["/", "/ocsp", "/api/ocsp"]
DIGESTS = [[], ["-sha256"]]  # SHA-1 is openssl's default CertID hash


def _url(shared: Shared, prefix: str) -> str:
    return shared.base_url + prefix


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An issuer certificate that is not in the registry."""
    cert, _ = make_ca("Stranger CA")
    return write_pem(tmp_path_factory.mktemp("stranger") / "stranger.pem", cert)


@pytest.mark.parametrize("digest", DIGESTS, ids=["sha1", "sha256"])
@pytest.mark.parametrize("prefix", PREFIXES)
def test_good(shared: Shared, prefix: str, digest: list[str]) -> None:
    out = openssl(
        "ocsp", *digest, "-issuer", shared.ca_pem, "-cert", shared.good_pem,
        "-url", _url(shared, prefix), "-CAfile", shared.ca_pem,
    )  # fmt: skip
    assert "Response verify OK" in out
    assert f"{shared.good_pem}: good" in out
    assert "revoked" not in out


@pytest.mark.parametrize("digest", DIGESTS, ids=["sha1", "sha256"])
@pytest.mark.parametrize("prefix", PREFIXES)
def test_revoked(shared: Shared, prefix: str, digest: list[str]) -> None:
    out = openssl(
        "ocsp", *digest, "-issuer", shared.ca_pem, "-cert", shared.revoked_pem,
        "-url", _url(shared, prefix), "-CAfile", shared.ca_pem,
    )  # fmt: skip
    assert "Response verify OK" in out
    assert f"{shared.revoked_pem}: revoked" in out
    assert "Reason: keyCompromise" in out
    assert REVOKED_TIME_OPENSSL in out


@pytest.mark.parametrize("prefix", PREFIXES)
def test_unknown_serial_is_unauthorized(shared: Shared, prefix: str) -> None:
    rc, out = openssl_rc(
        "ocsp", "-issuer", shared.ca_pem, "-serial", "0xDEAD", "-url", _url(shared, prefix), "-CAfile", shared.ca_pem
    )
    assert "Responder Error: unauthorized (6)" in out
    assert rc != 0


@pytest.mark.parametrize("prefix", PREFIXES)
def test_unknown_issuer_is_unauthorized(shared: Shared, stranger: Path, prefix: str) -> None:
    rc, out = openssl_rc(
        "ocsp", "-issuer", stranger, "-serial", "0x1001", "-url", _url(shared, prefix), "-CAfile", stranger
    )
    assert "Responder Error: unauthorized (6)" in out
    assert rc != 0


def test_hash_algorithm_not_served_is_unauthorized(shared: Shared) -> None:
    """Only SHA-1 and SHA-256 CertIDs are signed by default: SHA-384 is not authoritative here."""
    _, out = openssl_rc(
        "ocsp", "-sha384", "-issuer", shared.ca_pem, "-cert", shared.good_pem,
        "-url", _url(shared, "/ocsp"), "-CAfile", shared.ca_pem,
    )  # fmt: skip
    assert "Responder Error: unauthorized (6)" in out
