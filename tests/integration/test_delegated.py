"""(d) An external CA brought with a delegated OCSP responder, all made with the openssl CLI."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
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


def _issue_and_check(shared: Shared, work: Path, ca: str, cn: str) -> ocsp.OCSPResponse:
    """Issue a certificate of ``ca``; its status once good, checked by `openssl ocsp` against the CA alone."""
    ca_pem = work / f"{ca}.pem"
    ca_pem.write_text(shared.run("ca", "show", ca).stdout)
    leaf_pem = Path(shared.run("issue", ca, "--cn", cn, "--out", work).stdout.splitlines()[0])
    body = wait_ocsp_status(shared.base_url, ocsp_request_der(load_cert(leaf_pem), load_cert(ca_pem)), "good")
    text = openssl("ocsp", "-issuer", ca_pem, "-cert", leaf_pem, "-url", shared.base_url + "/ocsp", "-CAfile", ca_pem)
    assert "Response verify OK" in text, text
    assert f"{leaf_pem}: good" in text
    return ocsp.load_der_ocsp_response(body)


def test_an_issuing_rsa_ca_with_a_minted_ec_responder(shared: Shared, tmp_path: Path) -> None:
    # An RSA CA keeps issuing with its key while a P-256 responder signs its OCSP (a signature many
    # times cheaper); `openssl ocsp` accepts the delegate with the CA as the only trust anchor.
    shared.run("ca", "create", "rsa-minted", "--key", "rsa-2048")
    out = shared.run("ca", "responder", "rsa-minted", "--mint").stdout
    assert "delegated responder O=pki-edge,CN=rsa-minted OCSP responder" in out and "renews it" in out
    listed = next(line for line in shared.run("ca", "list").stdout.splitlines() if line.startswith("rsa-minted\t"))
    assert "\tca+delegate\t" in listed and ", minted" in listed

    resp = _issue_and_check(shared, tmp_path, "rsa-minted", "minted.example")
    [responder] = resp.certificates
    assert responder.subject.rfc4514_string() == "O=pki-edge,CN=rsa-minted OCSP responder"
    assert isinstance(responder.public_key(), ec.EllipticCurvePublicKey)
    assert resp.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256

    # Removed: the CA's own RSA key signs the next certificate's responses, with no certificate in them.
    assert "its own key again" in shared.run("ca", "responder", "rsa-minted", "--remove").stdout
    resp = _issue_and_check(shared, tmp_path, "rsa-minted", "unminted.example")
    assert resp.certificates == []
    assert resp.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSA_WITH_SHA256
    ca = load_cert(tmp_path / "rsa-minted.pem")
    assert isinstance(ca.public_key(), rsa.RSAPublicKey)


def test_an_imported_ca_gets_a_successor_responder(shared: Shared, tmp_path: Path) -> None:
    (tmp_path / "openssl.cnf").write_text(OPENSSL_CNF)
    ca = _self_signed(tmp_path, "ca", "/CN=Second External CA/O=elsewhere")
    first = _issued(tmp_path, "first", "/CN=First OCSP Responder", ca, "ocsp", "0x6001")
    noeku = _issued(tmp_path, "noeku", "/CN=Not a responder", ca, "noeku", "0x6002")
    successor = _issued(tmp_path, "next", "/CN=Next OCSP Responder", ca, "ocsp", "0x6003")
    leaf_pem = _issued(tmp_path, "leaf", "/CN=leaf.second.example", ca, "leaf", "0x6004")[0]
    shared.run("ca", "add", "ext-next", "--cert", ca[0], "--responder-cert", first[0], "--responder-key", first[1])
    refused = shared.run(
        "ca", "responder", "ext-next", "--responder-cert", noeku[0], "--responder-key", noeku[1], check=False
    )
    assert refused.returncode == 2 and "OCSPSigning" in refused.stderr and "Traceback" not in refused.stderr
    out = shared.run("ca", "responder", "ext-next", "--responder-cert", successor[0], "--responder-key", successor[1])
    assert "CN=Next OCSP Responder" in out.stdout
    shared.run("import", "ext-next", "--cert", leaf_pem)
    body = wait_ocsp_status(shared.base_url, ocsp_request_der(load_cert(leaf_pem), load_cert(ca[0])), "good")
    assert [c.subject.rfc4514_string() for c in ocsp.load_der_ocsp_response(body).certificates] == [
        "CN=Next OCSP Responder"
    ]
    text = openssl("ocsp", "-issuer", ca[0], "-cert", leaf_pem, "-url", shared.base_url + "/ocsp", "-CAfile", ca[0])
    assert "Response verify OK" in text
    removed = shared.run("ca", "responder", "ext-next", "--remove", check=False)
    assert removed.returncode == 2 and "all that can sign" in removed.stderr
