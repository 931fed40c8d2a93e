"""(d) An external CA brought with a delegated OCSP responder, all made with the openssl CLI."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import keys as asn1_keys
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from tests.integration.conftest import Shared
from tests.integration.helpers import load_cert, ocsp_request_der, openssl, post_ocsp, wait_ocsp_status

OPENSSL_CNF = """\
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = placeholder
[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[ ocsp ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = OCSPSigning
[ noeku ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
[ leaf ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
"""


@dataclass
class ExternalPki:
    dir: Path
    ca_pem: Path
    responder_pem: Path
    responder_key: Path
    noeku_pem: Path
    noeku_key: Path
    other_responder_pem: Path
    other_responder_key: Path
    leaf_pem: Path


def _self_signed(work: Path, name: str, cn: str) -> tuple[Path, Path]:
    cert, key = work / f"{name}.pem", work / f"{name}.key"
    openssl(
        "req", "-x509", "-config", work / "openssl.cnf", "-extensions", "v3_ca", "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", cn,
    )  # fmt: skip
    return cert, key


def _issued(work: Path, name: str, cn: str, ca: tuple[Path, Path], section: str, serial: str) -> tuple[Path, Path]:
    cert, key, csr = work / f"{name}.pem", work / f"{name}.key", work / f"{name}.csr"
    openssl(
        "req", "-new", "-config", work / "openssl.cnf", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", key, "-out", csr, "-subj", cn,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", serial, "-days", "30",
        "-extfile", work / "openssl.cnf", "-extensions", section, "-out", cert,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def ext(tmp_path_factory: pytest.TempPathFactory) -> ExternalPki:
    work = tmp_path_factory.mktemp("delegated")
    (work / "openssl.cnf").write_text(OPENSSL_CNF)
    ca = _self_signed(work, "ca", "/CN=External CA/O=elsewhere")
    other = _self_signed(work, "other", "/CN=Other CA/O=elsewhere")
    responder = _issued(work, "responder", "/CN=External OCSP Responder", ca, "ocsp", "0x5001")
    noeku = _issued(work, "noeku", "/CN=Not a responder", ca, "noeku", "0x5002")
    foreign = _issued(work, "foreign", "/CN=Foreign responder", other, "ocsp", "0x5003")
    leaf = _issued(work, "leaf", "/CN=leaf.elsewhere.example", ca, "leaf", "0x7E57AB1E")
    return ExternalPki(work, ca[0], *responder, *noeku, *foreign, leaf[0])


def test_delegated_responder(shared: Shared, ext: ExternalPki) -> None:
    out = shared.run(
        "ca", "add", "ext", "--cert", ext.ca_pem, "--responder-cert", ext.responder_pem,
        "--responder-key", ext.responder_key,
    ).stdout  # fmt: skip
    assert "delegated responder" in out
    assert "added 1" in shared.run("import", "ext", "--cert", ext.leaf_pem).stdout
    ca, leaf, responder = load_cert(ext.ca_pem), load_cert(ext.leaf_pem), load_cert(ext.responder_pem)
    body = wait_ocsp_status(shared.base_url, ocsp_request_der(leaf, ca), "good")

    for digest in ([], ["-sha256"]):
        text = openssl(
            "ocsp", *digest, "-issuer", ext.ca_pem, "-cert", ext.leaf_pem, "-url", shared.base_url + "/ocsp",
            "-CAfile", ext.ca_pem,
        )  # fmt: skip
        assert "Response verify OK" in text
        assert f"{ext.leaf_pem}: good" in text

    resp = ocsp.load_der_ocsp_response(body)
    assert [c.public_bytes(serialization.Encoding.DER) for c in resp.certificates] == [
        responder.public_bytes(serialization.Encoding.DER)
    ]
    spki = responder.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_bits = bytes(asn1_keys.PublicKeyInfo.load(spki)["public_key"].contents[1:])
    assert resp.responder_key_hash == hashlib.sha1(key_bits).digest()
    assert post_ocsp(shared.base_url, ocsp_request_der(leaf, ca, "sha256")).status_code == 200

    # Revocation is signed by the delegate too.
    shared.run("revoke", "ext", "7E57AB1E", "--reason", "superseded")
    wait_ocsp_status(shared.base_url, ocsp_request_der(leaf, ca), "revoked")
    text = openssl(
        "ocsp", "-issuer", ext.ca_pem, "-cert", ext.leaf_pem, "-url", shared.base_url + "/ocsp", "-CAfile", ext.ca_pem
    )
    assert "Response verify OK" in text
    assert f"{ext.leaf_pem}: revoked" in text
    assert "Reason: superseded" in text


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("noeku", "OCSPSigning"),
        ("foreign", "not issued by this CA"),
        ("wrong-key", "does not match"),
        ("missing-key", "--responder-key"),
    ],
)
def test_unusable_responder_is_refused(shared: Shared, ext: ExternalPki, case: str, expected: str) -> None:
    name = f"bad-{case}"
    args: list[str | Path] = {
        "noeku": ["--responder-cert", ext.noeku_pem, "--responder-key", ext.noeku_key],
        "foreign": ["--responder-cert", ext.other_responder_pem, "--responder-key", ext.other_responder_key],
        "wrong-key": ["--responder-cert", ext.responder_pem, "--responder-key", ext.noeku_key],
        "missing-key": ["--responder-cert", ext.responder_pem],
    }[case]
    proc = shared.run("ca", "add", name, "--cert", ext.ca_pem, *args, check=False)
    assert proc.returncode == 2, proc
    assert proc.stderr.startswith("pki-edge: error:"), proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert name not in shared.run("ca", "list").stdout
