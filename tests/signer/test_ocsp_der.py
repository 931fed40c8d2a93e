"""signer.ocsp_der: every field of the hand-built DER checked with cryptography, asn1crypto and `openssl ocsp`."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import core as asn1_core
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import SignatureAlgorithmOID

from contract.store import HASH_ALGORITHMS, serial_key
from signer.ocsp_der import (
    ETAG_SIGNATURE_OCTETS,
    CertStatus,
    ResponseSigner,
    der_length,
    generalized_time,
    status_and_times,
    tlv,
)
from tests.signer.conftest import PrivateKey, build_ca, build_delegate, build_leaf, pool_key, utc

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048")
MODES = ("ca", "delegate")
SERIALS = (0, 1, 127, 128, 2**159 + 1)
CRYPTO_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(),
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}
EXPECTED_SIG_OID = {
    "ec-p256": SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    "ec-p384": SignatureAlgorithmOID.ECDSA_WITH_SHA384,
    "rsa-2048": SignatureAlgorithmOID.RSA_WITH_SHA256,
}
EXPECTED_SIG_HASH: dict[str, hashes.HashAlgorithm] = {
    "ec-p256": hashes.SHA256(),
    "ec-p384": hashes.SHA384(),
    "rsa-2048": hashes.SHA256(),
}
# (revoked_at offset from produced_at, CRLReason code) — None: good
STATUSES = {
    "good": None,
    "revoked-keyCompromise": (-3 * 86400, 1),
    "revoked-no-reason": (-3 * 86400, None),
}
REASON_FLAGS = {
    0: x509.ReasonFlags.unspecified,
    1: x509.ReasonFlags.key_compromise,
    2: x509.ReasonFlags.ca_compromise,
    3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
    6: x509.ReasonFlags.certificate_hold,
    8: x509.ReasonFlags.remove_from_crl,
    9: x509.ReasonFlags.privilege_withdrawn,
    10: x509.ReasonFlags.aa_compromise,
}
OPENSSL_REASON_TEXT = {1: "keyCompromise"}

# Fixed times for the parse checks (2026-03-01T12:00:00Z).
PRODUCED = 1772366400
THIS_UPDATE = PRODUCED - 3600
NEXT_UPDATE = THIS_UPDATE + 7 * 86400


@dataclass
class Pki:
    kind: str
    ca_key: PrivateKey
    ca_cert: x509.Certificate
    delegate_key: PrivateKey
    delegate_cert: x509.Certificate
    leaf: x509.Certificate  # any certificate of the CA, to let cryptography compute CertID hashes

    def signer(self, mode: str) -> ResponseSigner:
        if mode == "ca":
            return ResponseSigner(self.ca_cert, self.ca_key)
        return ResponseSigner(self.ca_cert, self.delegate_key, self.delegate_cert)

    def responder(self, mode: str) -> tuple[x509.Certificate, PrivateKey]:
        return (self.ca_cert, self.ca_key) if mode == "ca" else (self.delegate_cert, self.delegate_key)


@pytest.fixture(scope="module")
def pkis() -> dict[str, Pki]:
    # Valid around both the fixed times above and the real clock (for openssl, which checks validity).
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime.now(dt.UTC) + dt.timedelta(days=3650)
    out = {}
    for kind in KEY_TYPES:
        ca_key = pool_key(kind, 0)
        delegate_key = pool_key(kind, 1)
        ca_cert = build_ca(ca_key, f"Test CA {kind}", start, end)
        delegate = build_delegate(ca_cert, ca_key, delegate_key, start, end)
        leaf = build_leaf(ca_cert, ca_key, 4242, start, end)
        out[kind] = Pki(kind, ca_key, ca_cert, delegate_key, delegate, leaf)
    return out


def expected_cert_id_hashes(pki: Pki, hash_name: str) -> tuple[bytes, bytes]:
    request = ocsp.OCSPRequestBuilder().add_certificate(pki.leaf, pki.ca_cert, CRYPTO_HASHES[hash_name]).build()
    return request.issuer_name_hash, request.issuer_key_hash


def spk_sha1(cert: x509.Certificate) -> bytes:
    """SHA-1 of the subjectPublicKey BIT STRING contents, computed from the public key's own encoding."""
    public = cert.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        bits = public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    else:
        bits = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    digest = hashlib.sha1(bits).digest()
    # Cross-check with RFC 5280 method 1 key identifier as cryptography computes it.
    assert digest == x509.SubjectKeyIdentifier.from_public_key(public).digest
    return digest


def verify_signature(cert: x509.Certificate, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm) -> None:
    public = cert.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, data, ec.ECDSA(algorithm))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(signature, data, padding.PKCS1v15(), algorithm)


def gen_time_text(unix: int) -> bytes:
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y%m%d%H%M%SZ").encode()


def check_response(
    der: bytes,
    pki: Pki,
    mode: str,
    serial: int,
    hash_name: str,
    revoked_at: int | None,
    reason: int | None,
    produced: int,
    this_update: int,
    next_update: int,
) -> None:
    resp = ocsp.load_der_ocsp_response(der)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert len(list(resp.responses)) == 1
    assert resp.serial_number == serial
    assert isinstance(resp.hash_algorithm, type(CRYPTO_HASHES[hash_name]))
    name_hash, key_hash = expected_cert_id_hashes(pki, hash_name)
    assert resp.issuer_name_hash == name_hash
    assert resp.issuer_key_hash == key_hash
    if revoked_at is None:
        assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert resp.revocation_time_utc is None
        assert resp.revocation_reason is None
    else:
        assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert resp.revocation_time_utc == utc(revoked_at)
        assert resp.revocation_reason == (REASON_FLAGS[reason] if reason is not None else None)
    assert resp.produced_at_utc == utc(produced)
    assert resp.this_update_utc == utc(this_update)
    assert resp.next_update_utc == utc(next_update)
    responder_cert, _ = pki.responder(mode)
    assert resp.responder_name is None
    assert resp.responder_key_hash == spk_sha1(responder_cert)
    if mode == "ca":
        assert resp.certificates == []
    else:
        assert [c.public_bytes(serialization.Encoding.DER) for c in resp.certificates] == [
            pki.delegate_cert.public_bytes(serialization.Encoding.DER)
        ]
    assert len(resp.extensions) == 0
    assert len(resp.single_extensions) == 0
    assert resp.signature_algorithm_oid == EXPECTED_SIG_OID[pki.kind]
    verify_signature(responder_cert, resp.signature, resp.tbs_response_bytes, EXPECTED_SIG_HASH[pki.kind])
    # The signature covers exactly the TBS bytes: a flipped bit must break it.
    tampered = bytearray(resp.tbs_response_bytes)
    tampered[-1] ^= 1
    with pytest.raises(InvalidSignature):
        verify_signature(responder_cert, resp.signature, bytes(tampered), EXPECTED_SIG_HASH[pki.kind])

    # DER is canonical: asn1crypto re-encodes every value to the same bytes.
    parsed = asn1_ocsp.OCSPResponse.load(der)
    assert parsed.dump(force=True) == der
    assert parsed["response_bytes"]["response_type"].native == "basic_ocsp_response"
    basic = parsed["response_bytes"]["response"].parsed
    tbs = basic["tbs_response_data"]
    # version DEFAULT v1 is left out: the TBS SEQUENCE starts with the [2] byKey ResponderID.
    assert asn1_core.load(resp.tbs_response_bytes).contents[0] == 0xA2
    assert tbs["responder_id"].name == "by_key"
    assert tbs["response_extensions"].native is None
    # Whole-second GeneralizedTime (RFC 5280 profile), never UTCTime, never fractions.
    single = tbs["responses"][0]
    assert tbs["produced_at"].contents == gen_time_text(produced)
    assert single["this_update"].contents == gen_time_text(this_update)
    assert single["next_update"].contents == gen_time_text(next_update)
    assert (
        single["cert_id"]["hash_algorithm"]["algorithm"].dotted
        == asn1_core.ObjectIdentifier.load(tlv(0x06, HASH_ALGORITHMS[hash_name][1])).dotted
    )
    # AlgorithmIdentifier parameters: NULL for the CertID hash.
    assert single["cert_id"]["hash_algorithm"]["parameters"].dump() == b"\x05\x00"
    # signatureAlgorithm: NULL parameters for RSA, absent for ECDSA (RFC 5754 / RFC 4055).
    sig_body = asn1_core.ObjectIdentifier(EXPECTED_SIG_OID[pki.kind].dotted_string).dump()
    if pki.kind.startswith("rsa"):
        sig_body += b"\x05\x00"
    assert basic["signature_algorithm"].dump() == bytes((0x30, len(sig_body))) + sig_body
    if revoked_at is not None:
        revoked_info = single["cert_status"].chosen
        assert revoked_info["revocation_time"].contents == gen_time_text(revoked_at)


@pytest.mark.parametrize("status_name", list(STATUSES))
@pytest.mark.parametrize("hash_name", ["sha1", "sha256"])
@pytest.mark.parametrize("serial", SERIALS, ids=lambda s: f"serial{s if s < 1000 else '2^159+1'}")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KEY_TYPES)
def test_response_fields(
    pkis: dict[str, Pki], kind: str, mode: str, serial: int, hash_name: str, status_name: str
) -> None:
    pki = pkis[kind]
    spec = STATUSES[status_name]
    revoked_at = PRODUCED + spec[0] if spec else None
    reason = spec[1] if spec else None
    der = pki.signer(mode).sign_response(
        HASH_ALGORITHMS[hash_name][0],
        serial_key(serial),
        CertStatus(revoked_at, reason),
        PRODUCED,
        THIS_UPDATE,
        NEXT_UPDATE,
    )
    check_response(der, pki, mode, serial, hash_name, revoked_at, reason, PRODUCED, THIS_UPDATE, NEXT_UPDATE)


@pytest.mark.parametrize("hash_name", ["sha384", "sha512"])
@pytest.mark.parametrize("kind", KEY_TYPES)
def test_longer_cert_id_hashes(pkis: dict[str, Pki], kind: str, hash_name: str) -> None:
    pki = pkis[kind]
    der = pki.signer("ca").sign_response(
        HASH_ALGORITHMS[hash_name][0], serial_key(0x1234), CertStatus(), PRODUCED, THIS_UPDATE, NEXT_UPDATE
    )
    check_response(der, pki, "ca", 0x1234, hash_name, None, None, PRODUCED, THIS_UPDATE, NEXT_UPDATE)


@pytest.mark.parametrize("reason", sorted(REASON_FLAGS))
def test_every_crl_reason(pkis: dict[str, Pki], reason: int) -> None:
    pki = pkis["ec-p256"]
    revoked_at = PRODUCED - 10
    der = pki.signer("delegate").sign_response(
        HASH_ALGORITHMS["sha1"][0], serial_key(77), CertStatus(revoked_at, reason), PRODUCED, THIS_UPDATE, NEXT_UPDATE
    )
    check_response(der, pki, "delegate", 77, "sha1", revoked_at, reason, PRODUCED, THIS_UPDATE, NEXT_UPDATE)


@pytest.mark.parametrize(
    "when",
    [
        0,  # 1970
        946684799,  # 1999-12-31T23:59:59Z
        2524608000,  # 2050-01-01: still GeneralizedTime
        4102444799,  # 2099-12-31T23:59:59Z
    ],
)
def test_times_across_the_utctime_boundaries(pkis: dict[str, Pki], when: int) -> None:
    pki = pkis["ec-p256"]
    der = pki.signer("ca").sign_response(
        HASH_ALGORITHMS["sha256"][0], serial_key(5), CertStatus(when, 4), when + 2, when + 1, when + 3
    )
    check_response(der, pki, "ca", 5, "sha256", when, 4, when + 2, when + 1, when + 3)


def test_signer_refuses_a_key_that_does_not_match(pkis: dict[str, Pki]) -> None:
    pki = pkis["ec-p256"]
    with pytest.raises(ValueError, match="does not match"):
        ResponseSigner(pki.ca_cert, pki.delegate_key)
    with pytest.raises(ValueError, match="does not match"):
        ResponseSigner(pki.ca_cert, pki.ca_key, pki.delegate_cert)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KEY_TYPES)
def test_etag_is_the_signature_tail_and_the_certificates_tag(pkis: dict[str, Pki], kind: str, mode: str) -> None:
    pki = pkis[kind]
    signer = pki.signer(mode)
    (first, etag), (second, second_etag) = sign_good(signer), sign_good(signer)
    signature = ocsp.load_der_ocsp_response(first).signature
    assert etag.startswith(b'"') and etag.endswith(signature[-ETAG_SIGNATURE_OCTETS:].hex().encode() + b'"')
    assert len(etag) == 2 + 2 * ETAG_SIGNATURE_OCTETS + (0 if mode == "ca" else 8)  # + the certificates' tag
    if kind.startswith("rsa"):  # deterministic: the same bytes, so the same ETag
        assert first == second and second_etag == etag
    else:  # a fresh k per signature: other bytes, another ETag
        assert first != second and second_etag != etag
    # The same response sent with another responder certificate is another representation.
    if mode == "delegate":
        cert = pki.delegate_cert
        other_cert = build_delegate(
            pki.ca_cert, pki.ca_key, pki.delegate_key, cert.not_valid_before_utc, cert.not_valid_after_utc, cn="other"
        )
        assert sign_good(ResponseSigner(pki.ca_cert, pki.delegate_key, other_cert))[1][1:9] != etag[1:9]


def sign_good(signer: ResponseSigner) -> tuple[bytes, bytes]:
    tbs = signer.response_data(2, serial_key(5), generalized_time(PRODUCED), status_and_times(CertStatus(), 1, 2))
    return signer.response(tbs, signer.sign(tbs))


def test_response_data_sign_and_response_equal_sign_response(pkis: dict[str, Pki]) -> None:
    signer = pkis["rsa-2048"].signer("delegate")  # deterministic signatures: comparable bytes
    status = CertStatus(THIS_UPDATE - 60, 1)
    der = signer.sign_response(1, serial_key(77), status, PRODUCED, THIS_UPDATE, NEXT_UPDATE)
    tail = status_and_times(status, THIS_UPDATE, NEXT_UPDATE)
    tbs = signer.response_data(1, serial_key(77), generalized_time(PRODUCED), tail)
    assert signer.response(tbs, signer.sign(tbs))[0] == der


# ---------------------------------------------------------------------------- openssl ocsp

OPENSSL = shutil.which("openssl")


@pytest.fixture(scope="module")
def openssl_files(pkis: dict[str, Pki], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("openssl")
    out = {}
    for kind, pki in pkis.items():
        (base / f"{kind}-ca.pem").write_bytes(pki.ca_cert.public_bytes(serialization.Encoding.PEM))
        (base / f"{kind}-delegate.pem").write_bytes(pki.delegate_cert.public_bytes(serialization.Encoding.PEM))
        out[kind] = base
    return out


@pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
@pytest.mark.parametrize("status_name", list(STATUSES))
@pytest.mark.parametrize("hash_name", ["sha1", "sha256"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KEY_TYPES)
def test_openssl_verifies(
    pkis: dict[str, Pki],
    openssl_files: dict[str, Path],
    tmp_path: Path,
    kind: str,
    mode: str,
    hash_name: str,
    status_name: str,
) -> None:
    assert OPENSSL is not None
    pki = pkis[kind]
    base = openssl_files[kind]
    # openssl checks the status times against the real clock.
    now = int(time.time())
    spec = STATUSES[status_name]
    revoked_at = now + spec[0] if spec else None
    reason = spec[1] if spec else None
    serial = SERIALS[(KEY_TYPES.index(kind) * 7 + len(status_name) + len(hash_name)) % len(SERIALS)]
    der = pki.signer(mode).sign_response(
        HASH_ALGORITHMS[hash_name][0], serial_key(serial), CertStatus(revoked_at, reason), now, now - 3600, now + 86400
    )
    resp_path = tmp_path / "resp.der"
    resp_path.write_bytes(der)
    ca_pem = str(base / f"{kind}-ca.pem")
    cmd = [OPENSSL, "ocsp", "-respin", str(resp_path), "-issuer", ca_pem, "-CAfile", ca_pem, "-resp_text"]
    cmd += [f"-{hash_name}", "-serial", hex(serial)]
    if mode == "delegate":
        cmd += ["-VAfile", str(base / f"{kind}-delegate.pem")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Response verify OK" in output, output
    assert f"Hash Algorithm: {hash_name}" in output
    # The line "<serial>: <status>" appears only when openssl's own CertID matches the response's.
    if revoked_at is None:
        assert "Cert Status: good" in output
        assert f"{hex(serial)}: good" in output, output
    else:
        assert "Cert Status: revoked" in output
        assert f"{hex(serial)}: revoked" in output, output
        if reason is not None:
            assert f"Reason: {OPENSSL_REASON_TEXT[reason]}" in output
        else:
            assert "Reason:" not in output
    assert "WARNING: Status times invalid" not in output


@pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
def test_openssl_delegate_from_embedded_certificate(
    pkis: dict[str, Pki], openssl_files: dict[str, Path], tmp_path: Path
) -> None:
    """Without -VAfile openssl must find the delegate in the response's certs and chain it to the CA."""
    assert OPENSSL is not None
    pki = pkis["ec-p384"]
    now = int(time.time())
    der = pki.signer("delegate").sign_response(
        HASH_ALGORITHMS["sha1"][0], serial_key(128), CertStatus(), now, now - 60, now + 3600
    )
    (tmp_path / "resp.der").write_bytes(der)
    ca_pem = str(openssl_files["ec-p384"] / "ec-p384-ca.pem")
    proc = subprocess.run(
        [
            OPENSSL,
            "ocsp",
            "-respin",
            str(tmp_path / "resp.der"),
            "-issuer",
            ca_pem,
            "-CAfile",
            ca_pem,
            "-serial",
            "128",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Response verify OK" in proc.stderr
    assert "128: good" in proc.stdout


@pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
def test_openssl_rejects_a_response_for_another_issuer(
    pkis: dict[str, Pki], openssl_files: dict[str, Path], tmp_path: Path
) -> None:
    """Control: the openssl check can fail (another CA's certificate as -issuer finds no status)."""
    assert OPENSSL is not None
    now = int(time.time())
    der = (
        pkis["ec-p256"]
        .signer("ca")
        .sign_response(HASH_ALGORITHMS["sha1"][0], serial_key(1), CertStatus(), now, now - 60, now + 3600)
    )
    (tmp_path / "resp.der").write_bytes(der)
    other = str(openssl_files["rsa-2048"] / "rsa-2048-ca.pem")
    proc = subprocess.run(
        [OPENSSL, "ocsp", "-respin", str(tmp_path / "resp.der"), "-issuer", other, "-CAfile", other, "-serial", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "1: good" not in proc.stdout


# ---------------------------------------------------------------------------- DER primitives


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x81\x80"),
        (255, b"\x81\xff"),
        (256, b"\x82\x01\x00"),
        (65535, b"\x82\xff\xff"),
        (65536, b"\x83\x01\x00\x00"),
    ],
)
def test_der_length(length: int, expected: bytes) -> None:
    assert der_length(length) == expected
    content = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    assert len(content) == length
    encoded = tlv(0x04, content)
    assert encoded == asn1_core.OctetString(content).dump()
    assert encoded == b"\x04" + expected + content
    reparsed = asn1_core.OctetString.load(encoded)
    assert reparsed.native == content


@pytest.mark.parametrize("unix", [0, 1, 951782400, 1772366400, 2147483648, 2524608000, 253402300799])
def test_generalized_time_matches_asn1crypto(unix: int) -> None:
    when = dt.datetime.fromtimestamp(unix, dt.UTC)
    assert generalized_time(unix) == asn1_core.GeneralizedTime(when).dump()
    assert generalized_time(unix)[2:] == gen_time_text(unix)


@pytest.mark.parametrize("serial", [0, 1, 127, 128, 255, 256, 32767, 32768, 2**159 + 1, 2**160 - 1, -1, -128, -129])
def test_serial_integer_encoding(serial: int) -> None:
    assert tlv(0x02, serial_key(serial)) == asn1_core.Integer(serial).dump()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("status_name", list(STATUSES))
@pytest.mark.parametrize("serial", (*SERIALS, 2**63, 2**127 + 5, 2**1000 + 3), ids=lambda s: f"bits{s.bit_length()}")
@pytest.mark.parametrize("hash_name", ["sha1", "sha256", "sha384", "sha512"])
def test_templated_response_equals_the_tlv_built_one(
    pkis: dict[str, Pki], hash_name: str, serial: int, status_name: str, mode: str
) -> None:
    """sign_response fills templates made once per shape; sign_multi_response builds every TLV.

    RSA PKCS#1 v1.5 signatures are deterministic, so the two must be the very same bytes, whatever
    the lengths (serials from 1 to 126 octets, statuses of every length, both signers).
    """
    signer = pkis["rsa-2048"].signer(mode)
    code = HASH_ALGORITHMS[hash_name][0]
    revoked = STATUSES[status_name]
    status = CertStatus() if revoked is None else CertStatus(PRODUCED + revoked[0], revoked[1])
    key = serial_key(serial)
    templated = signer.sign_response(code, key, status, PRODUCED, THIS_UPDATE, NEXT_UPDATE)
    again = signer.sign_response(code, key, status, PRODUCED + 86400, THIS_UPDATE, NEXT_UPDATE)  # template reused
    built = signer.sign_multi_response([(code, key, status)], PRODUCED, THIS_UPDATE, NEXT_UPDATE)
    assert templated == built
    assert again == signer.sign_multi_response([(code, key, status)], PRODUCED + 86400, THIS_UPDATE, NEXT_UPDATE)
