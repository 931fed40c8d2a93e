"""edge.est_codec: EST request bodies in, EST response bodies out (RFC 7030, RFC 8951).

Expectations come from elsewhere than the module under test: bodies are built here with
``base64``/``textwrap``, responses are read back with ``openssl``, cryptography, asn1crypto's
CMS classes and Python's ``email`` parser, and the CsrAttrs bytes are compared with the
worked example of RFC 7030 §4.5.2 / RFC 8951 §4.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import email
import email.policy
import functools
import inspect
import re
import shutil
import subprocess
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from asn1crypto import cms
from asn1crypto import core as asn1_core
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge import est_codec
from edge.est_codec import (
    EST_PKCS7_CONTENT_TYPE,
    EstBodyError,
    base64_body,
    certs_only,
    csrattrs_der,
    decode_csr,
    est_response_headers,
    serverkeygen_multipart,
)

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
PKCS10 = "application/pkcs10"

# The worked example of RFC 7030 §4.5.2 (re-explained in RFC 8951 §4): challengePassword,
# ecPublicKey with secp384r1, extensionRequest with macAddress, ecdsa-with-SHA384.
RFC7030_CSRATTRS_B64 = "MEEGCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiMBYGCSqGSIb3DQEJDjEJBgcrBgEBAQEWBggqhkjOPQQDAw=="


# ---------------------------------------------------------------------------- test PKI


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@functools.cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cn: str = "device-001") -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(cn))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{cn}.example.net")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


@functools.cache
def ec_csr_der() -> bytes:
    return make_csr(ec_key())


@functools.cache
def rsa_csr_der() -> bytes:
    return make_csr(rsa_key(), "rsa-device")


def make_cert(
    subject_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    cn: str,
    issuer_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    issuer_cn: str | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(issuer_cn or cn))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(issuer_key or subject_key, hashes.SHA256())
    )


@functools.cache
def ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    return key, make_cert(key, "Test EST CA")


def leaf(subject_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cn: str = "device-001") -> x509.Certificate:
    return make_cert(subject_key, cn, ca()[0], "Test EST CA")


def pkcs8(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def run_bash(script: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, timeout=60, check=False)


# ---------------------------------------------------------------------------- decode_csr: accepted bodies


def b64(der: bytes) -> str:
    return base64.b64encode(der).decode("ascii")


def wrapped(der: bytes, width: int, eol: str) -> bytes:
    return "".join(line + eol for line in textwrap.wrap(b64(der), width)).encode("ascii")


def with_spaces_and_tabs(der: bytes) -> bytes:
    text = b64(der)
    chunks = [text[i : i + 7] for i in range(0, len(text), 7)]
    return (" \t\r\n" + " \t".join(chunks) + "\t \r\n").encode("ascii")


def pem(der: bytes, label: str = "CERTIFICATE REQUEST", eol: str = "\n") -> bytes:
    lines = [f"-----BEGIN {label}-----", *textwrap.wrap(b64(der), 64), f"-----END {label}-----", ""]
    return eol.join(lines).encode("ascii")


ACCEPTED_SHAPES: dict[str, Callable[[bytes], bytes]] = {
    "base64 with CRLF every 64": lambda der: wrapped(der, 64, "\r\n"),
    "base64 with LF every 64 (PEM with the armour cut off)": lambda der: wrapped(der, 64, "\n"),
    "base64 with LF every 76": lambda der: base64.encodebytes(der),
    "base64 with spaces and tabs": with_spaces_and_tabs,
    "base64 on one line": lambda der: b64(der).encode("ascii"),
    "base64 on one line with a final CRLF": lambda der: b64(der).encode("ascii") + b"\r\n",
    "base64 without padding": lambda der: b64(der).rstrip("=").encode("ascii"),
    "PEM armour": pem,
    "PEM armour with CRLF": lambda der: pem(der, eol="\r\n"),
    "PEM armour after some text": lambda der: b"Certificate Request:\n    Data: ...\n" + pem(der),
    "NEW CERTIFICATE REQUEST armour": lambda der: pem(der, "NEW CERTIFICATE REQUEST"),
    "raw DER": lambda der: der,
}


@pytest.mark.parametrize("shape", ACCEPTED_SHAPES, ids=list(ACCEPTED_SHAPES))
@pytest.mark.parametrize("csr_der", [ec_csr_der, rsa_csr_der], ids=["ec", "rsa"])
def test_csr_body_shapes_decode_to_the_same_csr(shape: str, csr_der: Callable[[], bytes]) -> None:
    der = csr_der()
    body = ACCEPTED_SHAPES[shape](der)
    csr = decode_csr(body, PKCS10)
    assert csr.public_bytes(serialization.Encoding.DER) == der
    assert csr.is_signature_valid


def test_csr_made_by_openssl_req_decodes(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    # The Lamassu recipe: openssl req, then sed '/CERTIFICATE/d' to drop the armour lines.
    script = (
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout device.key"
        " -out device.csr -subj /CN=lamassu-device 2>/dev/null"
        " && sed '/CERTIFICATE/d' device.csr > device_enroll.csr"
    )
    assert run_bash(script, tmp_path).returncode == 0
    body = (tmp_path / "device_enroll.csr").read_bytes()
    assert b"-----" not in body
    csr = decode_csr(body, PKCS10)
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "lamassu-device"
    assert decode_csr((tmp_path / "device.csr").read_bytes(), PKCS10) == csr


@pytest.mark.parametrize("key", ["rsa:2048", "ec -pkeyopt ec_paramgen_curve:P-256"])
def test_csr_with_openssl_req_text_before_its_pem_decodes(tmp_path: Path, key: str) -> None:
    """`openssl req -text` writes the CSR decoded before its PEM: text, not a second CSR."""
    script = (
        f"openssl req -new -newkey {key} -nodes -keyout device.key -subj '/CN=dev-1/O=Example Org'"
        " -addext subjectAltName=DNS:dev-1.example -text -out device.csr 2>/dev/null"
    )
    assert run_bash(script, tmp_path).returncode == 0
    body = (tmp_path / "device.csr").read_bytes()
    assert body.index(b"-----BEGIN") > 200
    assert decode_csr(body, PKCS10).subject.rfc4514_string() == "O=Example Org,CN=dev-1"


def test_content_transfer_encoding_is_not_an_input() -> None:
    # RFC 8951 §3: the body is base64 whatever Content-Transfer-Encoding says, so the header
    # must not even reach the decoder.
    parameters = inspect.signature(decode_csr).parameters
    assert not [name for name in parameters if "transfer" in name.lower() or "encoding" in name.lower()]
    assert list(parameters)[:3] == ["body", "content_type", "max_bytes"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/pkcs10",
        "Application/PKCS10; charset=utf-8",
        "APPLICATION/PKCS10",
        " application/pkcs10 ; name=device.csr",
        "application/pkcs10;charset=us-ascii",
    ],
)
def test_pkcs10_content_types_are_accepted(content_type: str) -> None:
    assert (
        decode_csr(wrapped(ec_csr_der(), 64, "\r\n"), content_type).public_bytes(serialization.Encoding.DER)
        == ec_csr_der()
    )


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "   ",
        "application/json",
        "text/plain",
        "application/pkcs7-mime",
        "application/x-pkcs10",
        "application/pkcs10x",
        "application/octet-stream; x=application/pkcs10",
        "multipart/form-data; boundary=x",
    ],
)
def test_other_content_types_get_415(content_type: str | None) -> None:
    with pytest.raises(EstBodyError) as info:
        decode_csr(wrapped(ec_csr_der(), 64, "\r\n"), content_type)
    assert info.value.status == 415
    assert "application/pkcs10" in str(info.value)


def test_content_type_is_checked_before_the_body() -> None:
    with pytest.raises(EstBodyError) as info:
        decode_csr(b"not base64 at all!", "application/json")
    assert info.value.status == 415


def test_body_size_limit() -> None:
    body = wrapped(ec_csr_der(), 64, "\r\n")
    padded = body + b" " * (1000 - len(body))
    assert len(padded) == 1000
    assert decode_csr(padded, PKCS10, max_bytes=1000).public_bytes(serialization.Encoding.DER) == ec_csr_der()
    with pytest.raises(EstBodyError) as info:
        decode_csr(padded + b" ", PKCS10, max_bytes=1000)
    assert info.value.status == 413
    with pytest.raises(EstBodyError) as info:
        decode_csr(b"A" * 65537, PKCS10)  # the default cap is 64 KiB
    assert info.value.status == 413
    assert "65537" in str(info.value)


# ---------------------------------------------------------------------------- decode_csr: rejected bodies


def _tamper(der: bytes, index: int) -> bytes:
    out = bytearray(der)
    out[index] ^= 0x01
    return bytes(out)


def cert_der() -> bytes:
    return leaf(ec_key()).public_bytes(serialization.Encoding.DER)


REJECTED_BODIES: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "whitespace only": lambda: b" \r\n\t ",
    "garbage": lambda: b"this is not a CSR at all\x00\xff",
    "base64 with a bad character": lambda: b64(ec_csr_der()).replace("M", "*", 1).encode("ascii"),
    "base64 of a truncated DER CSR": lambda: wrapped(ec_csr_der()[:-20], 64, "\r\n"),
    "truncated raw DER": lambda: ec_csr_der()[:-20],
    "raw DER with trailing bytes": lambda: ec_csr_der() + b"\x00\x00",
    "base64 with trailing DER bytes": lambda: wrapped(ec_csr_der() + b"\x05\x00", 64, "\n"),
    "base64 of a certificate": lambda: wrapped(cert_der(), 64, "\r\n"),
    "base64 of text": lambda: base64.b64encode(b"hello, EST server"),
    "base64 of DER NULL": lambda: base64.b64encode(b"\x05\x00"),
    "base64 of an empty SEQUENCE": lambda: base64.b64encode(b"\x30\x00"),
    "PEM CERTIFICATE": lambda: pem(cert_der(), "CERTIFICATE"),
    "PEM without its END line": lambda: pem(ec_csr_der()).split(b"-----END")[0],
    "PEM with mismatched labels": lambda: pem(ec_csr_der()).replace(b"END CERTIFICATE", b"END NEW CERTIFICATE"),
    "PEM with headers": lambda: pem(ec_csr_der()).replace(b"-----\n", b"-----\nProc-Type: 4,ENCRYPTED\n\n", 1),
    "UTF-16 base64": lambda: b64(ec_csr_der()).encode("utf-16"),
    "two PEM CSRs": lambda: pem(ec_csr_der()) + pem(rsa_csr_der()),
    "base64 CSR then a PEM one": lambda: b64(rsa_csr_der()).encode() + b"\n" + pem(ec_csr_der()),
    "PEM CSR then a base64 one": lambda: pem(ec_csr_der()) + b64(rsa_csr_der()).encode() + b"\n",
}


@pytest.mark.parametrize("case", REJECTED_BODIES, ids=list(REJECTED_BODIES))
def test_unparsable_bodies_get_400(case: str) -> None:
    with pytest.raises(EstBodyError) as info:
        decode_csr(REJECTED_BODIES[case](), PKCS10)
    assert info.value.status == 400
    message = str(info.value)
    assert message
    assert "\n" not in message
    assert "\r" not in message


def _csr_with(oid: x509.ObjectIdentifier, value: str) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography warns even here; a device's CSR may carry such a name
        attribute = x509.NameAttribute(oid, value, _validate=False)
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([attribute]))
        .sign(ec_key(), hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


@pytest.mark.parametrize(
    ("oid", "value", "accepted"),
    [
        (NameOID.COMMON_NAME, "x" * 64, True),
        (NameOID.COMMON_NAME, "é" * 64, True),  # characters, not bytes (128 of them in UTF-8)
        (NameOID.COMMON_NAME, "x" * 65, False),
        (NameOID.ORGANIZATION_NAME, "o" * 65, False),
        (NameOID.SERIAL_NUMBER, "1" * 65, False),
        (NameOID.LOCALITY_NAME, "l" * 128, True),
        (NameOID.LOCALITY_NAME, "l" * 129, False),
    ],
    ids=["cn-64", "cn-64-two-byte", "cn-65", "o-65", "serial-65", "l-128", "l-129"],
)
def test_subject_attributes_past_rfc_5280s_bounds_get_400_and_no_warning(
    oid: x509.ObjectIdentifier, value: str, accepted: bool
) -> None:
    """RFC 5280 Appendix A's upper bounds, in characters; cryptography only warns (of bytes, for a CN)."""
    body = b64(_csr_with(oid, value)).encode()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            csr = decode_csr(body, PKCS10)
        except EstBodyError as exc:
            refused: EstBodyError | None = exc
        else:
            refused = None
    assert not seen  # nothing reaches the log
    if accepted:
        assert refused is None
        assert csr.public_bytes(serialization.Encoding.DER) == base64.b64decode(body)
    else:
        assert refused is not None and refused.status == 400
        assert "past RFC 5280's bound" in str(refused)


@pytest.mark.parametrize("csr_der", [ec_csr_der, rsa_csr_der], ids=["ec", "rsa"])
@pytest.mark.parametrize("where", ["last signature byte", "subject"])
def test_a_tampered_csr_still_decodes(csr_der: Callable[[], bytes], where: str) -> None:
    """The edge checks structure only; the signer worker refuses a bad signature (test_enroll)."""
    der = csr_der()
    if where == "last signature byte":
        tampered = _tamper(der, len(der) - 1)  # the signature BIT STRING ends the CSR
    else:
        cn = b"device-001" if b"device-001" in der else b"rsa-device"
        tampered = der.replace(cn, cn[:-1] + b"X", 1)
    assert tampered != der
    assert x509.load_der_x509_csr(tampered)  # still a well-formed CSR
    for body in (tampered, wrapped(tampered, 64, "\r\n")):
        csr = decode_csr(body, PKCS10)
        assert csr.public_bytes(serialization.Encoding.DER) == tampered
        assert not csr.is_signature_valid


def test_library_surprises_become_400(monkeypatch: pytest.MonkeyPatch) -> None:
    # decode_csr promises one error type: whatever cryptography raises must come out as a 400.
    def boom(*_args: object) -> None:
        raise RuntimeError("surprise\nfrom the library")

    monkeypatch.setattr(est_codec.x509, "load_der_x509_csr", boom)
    with pytest.raises(EstBodyError) as info:
        decode_csr(wrapped(ec_csr_der(), 64, "\r\n"), PKCS10)
    assert info.value.status == 400
    assert "surprise from the library" in str(info.value)


def test_est_body_error_is_one_line() -> None:
    error = EstBodyError(400, "first line\nsecond\r\nthird")
    assert str(error) == "first line second third"
    assert error.status == 400


CONTENT_TYPES = st.one_of(
    st.none(),
    st.sampled_from([PKCS10, "Application/PKCS10; charset=utf-8", "application/json"]),
    st.text(max_size=40),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=3000), content_type=CONTENT_TYPES, max_bytes=st.integers(0, 4000))
def test_fuzz_only_est_body_error_escapes(body: bytes, content_type: str | None, max_bytes: int) -> None:
    try:
        decode_csr(body, content_type, max_bytes)
    except EstBodyError as error:
        assert error.status in (400, 413, 415)
        assert str(error)
        assert "\n" not in str(error)


@st.composite
def mutated_csr_bodies(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(list(ACCEPTED_SHAPES.values())))
    der = draw(st.sampled_from([ec_csr_der, rsa_csr_der]))()
    body = bytearray(shape(der))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        index = draw(st.integers(0, len(body)))
        if operation == "flip" and index < len(body):
            body[index] ^= 1 << draw(st.integers(0, 7))
        elif operation == "delete" and index < len(body):
            del body[index]
        elif operation == "insert":
            body.insert(index, draw(st.integers(0, 255)))
        else:
            del body[index:]
    return bytes(body)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=mutated_csr_bodies())
def test_fuzz_mutated_csr_bodies_decode_or_raise_est_body_error(body: bytes) -> None:
    try:
        csr = decode_csr(body, PKCS10)
    except EstBodyError as error:
        assert error.status == 400
        assert "\n" not in str(error)
    else:
        # A CSR the edge lets through goes to a signer worker as its DER, which checks the signature:
        # it must re-encode, and the check must end in a verdict or in the errors the worker refuses
        # with 400 (signer.enroll.check_csr), never in something else.
        assert csr.public_bytes(serialization.Encoding.DER)
        with contextlib.suppress(ValueError, TypeError, UnsupportedAlgorithm):
            csr.is_signature_valid  # noqa: B018


@settings(max_examples=150, deadline=None)
@given(
    der_choice=st.sampled_from([ec_csr_der, rsa_csr_der]),
    cuts=st.lists(st.tuples(st.integers(0, 10_000), st.text(" \t\r\n", min_size=1, max_size=4)), max_size=30),
)
def test_fuzz_whitespace_anywhere_in_the_base64_is_ignored(
    der_choice: Callable[[], bytes], cuts: list[tuple[int, str]]
) -> None:
    der = der_choice()
    text = b64(der)
    for position, blanks in cuts:
        position %= len(text) + 1
        text = text[:position] + blanks + text[position:]
    assert decode_csr(text.encode("ascii"), PKCS10).public_bytes(serialization.Encoding.DER) == der


# ---------------------------------------------------------------------------- certs_only, base64_body, headers


def chain() -> list[x509.Certificate]:
    return [leaf(ec_key()), ca()[1]]


@needs_openssl
def test_certs_only_is_read_by_openssl(tmp_path: Path) -> None:
    certs = chain()
    (tmp_path / "certs.p7").write_bytes(certs_only(certs))
    result = run_bash("openssl pkcs7 -inform DER -in certs.p7 -print_certs", tmp_path)
    assert result.returncode == 0, result.stderr
    assert x509.load_pem_x509_certificates(result.stdout) == certs


def test_certs_only_is_read_by_cryptography_and_is_a_degenerate_signed_data() -> None:
    certs = chain()
    der = certs_only(certs)
    assert pkcs7.load_der_pkcs7_certificates(der) == certs
    info = cms.ContentInfo.load(der)
    assert info["content_type"].native == "signed_data"
    signed = info["content"]
    assert len(signed["signer_infos"]) == 0
    assert len(signed["digest_algorithms"]) == 0
    assert signed["encap_content_info"]["content_type"].native == "data"
    assert signed["encap_content_info"]["content"].native is None
    assert [c.chosen.dump() for c in signed["certificates"]] == [
        c.public_bytes(serialization.Encoding.DER) for c in certs
    ]


def test_certs_only_of_one_certificate() -> None:
    cert = leaf(ec_key())
    assert pkcs7.load_der_pkcs7_certificates(certs_only([cert])) == [cert]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=1000))
def test_base64_body_lines_and_round_trip(data: bytes) -> None:
    body = base64_body(data)
    assert base64.b64decode(body) == data
    if not data:
        assert body == b""
        return
    assert body.endswith(b"\n")
    assert b"\r" not in body
    lines = body.split(b"\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    assert all(len(line) == 64 for line in lines[:-1])
    assert 0 < len(lines[-1]) <= 64
    assert re.fullmatch(rb"[A-Za-z0-9+/=]+", b"".join(lines))


@needs_openssl
def test_base64_body_is_decoded_by_openssl_base64(tmp_path: Path) -> None:
    der = certs_only(chain())
    (tmp_path / "body.b64").write_bytes(base64_body(der))
    result = run_bash("openssl base64 -d -in body.b64", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == der


def test_est_response_headers() -> None:
    body = base64_body(certs_only(chain()))
    assert est_response_headers(body, EST_PKCS7_CONTENT_TYPE) == [
        (b"content-type", b"application/pkcs7-mime; smime-type=certs-only"),
        (b"content-transfer-encoding", b"base64"),
        (b"content-length", str(len(body)).encode()),
    ]
    assert est_response_headers(b"MAA=\n", "application/csrattrs") == [
        (b"content-type", b"application/csrattrs"),
        (b"content-transfer-encoding", b"base64"),
        (b"content-length", b"5"),
    ]


def test_multipart_response_headers_carry_no_transfer_encoding() -> None:
    # RFC 7030 §4.4.2 / RFC 2045 §6.4: only the parts are base64, never the multipart.
    body, content_type = serverkeygen_multipart(pkcs8(ec_key()), leaf(ec_key()))
    headers = dict(est_response_headers(body, content_type))
    assert headers == {
        b"content-type": b"multipart/mixed; boundary=estServerKeyGenBoundary",
        b"content-length": str(len(body)).encode(),
    }


def test_content_type_constants() -> None:
    assert EST_PKCS7_CONTENT_TYPE == "application/pkcs7-mime; smime-type=certs-only"
    assert est_codec.PKCS7_CONTENT_TYPE == "application/pkcs7-mime"
    assert est_codec.CSRATTRS_CONTENT_TYPE == "application/csrattrs"


# ---------------------------------------------------------------------------- serverkeygen multipart

KEY_KINDS = {
    "ec-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "rsa-3072": lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
}


@pytest.fixture(scope="module", params=list(KEY_KINDS))
def keygen_response(request: pytest.FixtureRequest) -> tuple[bytes, str, x509.Certificate, bytes]:
    key = KEY_KINDS[request.param]()
    cert = leaf(key, "keygen-device")
    body, content_type = serverkeygen_multipart(pkcs8(key), cert)
    return body, content_type, cert, pkcs8(key)


LAMASSU_CERT_PIPELINE = (
    "cat cert.p7 | sed -ne '/application\\/pkcs7-mime/,/-estServerKeyGenBoundary/p' | sed '/-/d' > crt.p7; "
    "openssl base64 -d -in crt.p7 | openssl pkcs7 -inform DER -print_certs"
)


@needs_openssl
def test_lamassu_sed_pipeline_extracts_the_certificate(
    keygen_response: tuple[bytes, str, x509.Certificate, bytes], tmp_path: Path
) -> None:
    body, _, cert, _ = keygen_response
    (tmp_path / "cert.p7").write_bytes(body)  # as `curl -o cert.p7` saves it
    result = run_bash(LAMASSU_CERT_PIPELINE, tmp_path)
    assert result.returncode == 0, result.stderr
    assert x509.load_pem_x509_certificates(result.stdout) == [cert]
    # What the recipe fed to `openssl base64 -d`: only base64 lines and the blank line.
    kept = (tmp_path / "crt.p7").read_bytes()
    assert b"-" not in kept
    assert b"Content" not in kept


@needs_openssl
def test_same_sed_recipe_extracts_the_key(
    keygen_response: tuple[bytes, str, x509.Certificate, bytes], tmp_path: Path
) -> None:
    body, _, cert, _ = keygen_response
    (tmp_path / "cert.p7").write_bytes(body)
    script = (
        "cat cert.p7 | sed -ne '/application\\/pkcs8/,/-estServerKeyGenBoundary/p' | sed '/-/d' > key.b64; "
        "openssl base64 -d -in key.b64 | openssl pkey -inform DER -pubout -outform PEM"
    )
    result = run_bash(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert serialization.load_pem_public_key(result.stdout) == cert.public_key()


def test_multipart_parses_with_python_email(keygen_response: tuple[bytes, str, x509.Certificate, bytes]) -> None:
    body, content_type, cert, key_der = keygen_response
    assert content_type == "multipart/mixed; boundary=estServerKeyGenBoundary"
    for policy in (email.policy.compat32, email.policy.HTTP):
        message = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=policy)
        assert message.is_multipart()
        assert not message.defects
        parts = message.get_payload()
        assert isinstance(parts, list)
        assert [part.get_content_type() for part in parts] == ["application/pkcs8", "application/pkcs7-mime"]
        key_part, cert_part = parts
        assert not key_part.defects
        assert not cert_part.defects
        assert key_part["Content-Transfer-Encoding"] == "base64"
        assert cert_part["Content-Transfer-Encoding"] == "base64"
        assert cert_part.get_param("smime-type") == "certs-only"
        key = serialization.load_der_private_key(key_part.get_payload(decode=True), password=None)
        assert key_part.get_payload(decode=True) == key_der
        assert key.public_key() == cert.public_key()
        assert pkcs7.load_der_pkcs7_certificates(cert_part.get_payload(decode=True)) == [cert]


def test_multipart_layout(keygen_response: tuple[bytes, str, x509.Certificate, bytes]) -> None:
    body, _, cert, key_der = keygen_response
    text = body.decode("ascii")
    # CRLF everywhere (RFC 2046), never a bare LF or CR.
    assert "\n" not in text.replace("\r\n", "")
    assert "\r" not in text.replace("\r\n", "")
    lines = text.split("\r\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    assert lines[0] == "--estServerKeyGenBoundary"
    assert lines[-1] == "--estServerKeyGenBoundary--"
    assert lines.count("--estServerKeyGenBoundary") == 2
    key_at = lines.index("Content-Type: application/pkcs8")
    cert_at = lines.index("Content-Type: application/pkcs7-mime; smime-type=certs-only")
    assert 0 < key_at < cert_at
    assert text.index("application/pkcs8") < text.index("application/pkcs7-mime")
    # Each part: its headers, a blank line, base64 lines of at most 64 columns.
    second = lines.index("--estServerKeyGenBoundary", 1)
    for start, end, der in ((1, second, key_der), (second + 1, len(lines) - 1, certs_only([cert]))):
        part = lines[start:end]
        assert part[1] == "Content-Transfer-Encoding: base64"
        assert part[2] == ""
        payload = part[3:]
        assert payload
        assert all(0 < len(line) <= 64 and "-" not in line for line in payload)
        assert base64.b64decode("".join(payload)) == der


def test_multipart_custom_boundary() -> None:
    key = ec_key()
    body, content_type = serverkeygen_multipart(pkcs8(key), leaf(key), boundary="est-server-boundary")
    assert content_type == "multipart/mixed; boundary=est-server-boundary"
    assert body.startswith(b"--est-server-boundary\r\n")
    assert body.endswith(b"\r\n--est-server-boundary--\r\n")
    with pytest.raises(ValueError):
        serverkeygen_multipart(pkcs8(key), leaf(key), boundary="bad\r\nboundary")


# ---------------------------------------------------------------------------- csrattrs


class _AnySequence(asn1_core.SequenceOf):
    _child_spec = asn1_core.Any


class _AnySet(asn1_core.SetOf):
    _child_spec = asn1_core.Any


def generic(der: bytes) -> object:
    """A schema-free reading: OIDs as dotted strings, SEQUENCEs as lists, SETs as sorted lists."""
    value = asn1_core.load(der)
    if isinstance(value, asn1_core.ObjectIdentifier):
        return value.dotted
    if value.tag == 16:
        return [generic(child.dump()) for child in _AnySequence.load(der)]
    if value.tag == 17:
        return sorted(str(generic(child.dump())) for child in _AnySet.load(der))
    raise AssertionError(f"unexpected {value!r}")


def test_csrattrs_reproduce_the_rfc_7030_example() -> None:
    expected = base64.b64decode(RFC7030_CSRATTRS_B64)
    built = csrattrs_der(
        ["challengePassword", "ecPublicKey:secp384r1", "extensionRequest:macAddress", "ecdsa-with-SHA384"]
    )
    assert built == expected
    assert generic(expected) == [
        "1.2.840.113549.1.9.7",
        ["1.2.840.10045.2.1", ["1.3.132.0.34"]],
        ["1.2.840.113549.1.9.14", ["1.3.6.1.1.1.1.22"]],
        "1.2.840.10045.4.3.3",
    ]


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        (["challengePassword"], ["1.2.840.113549.1.9.7"]),
        (
            ["extensionRequest", "serialNumber", "macAddress", "rsaEncryption"],
            ["1.2.840.113549.1.9.14", "2.5.4.5", "1.3.6.1.1.1.1.22", "1.2.840.113549.1.1.1"],
        ),
        (
            ["sha256WithRSAEncryption", "ecdsa-with-SHA256", "ecdsa-with-SHA384", "ecPublicKey"],
            ["1.2.840.113549.1.1.11", "1.2.840.10045.4.3.2", "1.2.840.10045.4.3.3", "1.2.840.10045.2.1"],
        ),
        (["ecPublicKey:secp256r1"], [["1.2.840.10045.2.1", ["1.2.840.10045.3.1.7"]]]),
        (["1.3.6.1.4.1.311.21.20", " 2.5.4.3 "], ["1.3.6.1.4.1.311.21.20", "2.5.4.3"]),
        (
            ["CHALLENGEPASSWORD", "ecpublickey:SECP384R1"],
            ["1.2.840.113549.1.9.7", ["1.2.840.10045.2.1", ["1.3.132.0.34"]]],
        ),
        (
            ["1.2.840.10045.2.1:1.3.132.0.34,secp256r1"],
            [["1.2.840.10045.2.1", ["1.2.840.10045.3.1.7", "1.3.132.0.34"]]],
        ),
    ],
)
def test_csrattrs_round_trip(attrs: list[str], expected: list[object]) -> None:
    der = csrattrs_der(attrs)
    assert der is not None
    assert generic(der) == expected
    # DER exactly: asn1crypto re-encodes what it parsed to the same bytes.
    assert asn1_core.load(der).dump(force=True) == der


@needs_openssl
def test_csrattrs_read_by_openssl_asn1parse(tmp_path: Path) -> None:
    der = csrattrs_der(["challengePassword", "ecPublicKey:secp384r1", "ecdsa-with-SHA256"])
    assert der is not None
    (tmp_path / "attrs.der").write_bytes(der)
    result = run_bash("openssl asn1parse -inform DER -in attrs.der", tmp_path)
    assert result.returncode == 0, result.stderr
    objects = re.findall(rb"OBJECT\s*:(\S+)", result.stdout)
    assert objects == [b"challengePassword", b"id-ecPublicKey", b"secp384r1", b"ecdsa-with-SHA256"]


def test_csrattrs_empty_is_none() -> None:
    assert csrattrs_der([]) is None


@pytest.mark.parametrize(
    "entry",
    [
        "fooBar",
        "",
        "  ",
        "challengePassword:",
        "ecPublicKey:secp999r1",
        "1.2.a",
        "3.1",
        "1.40",
        "1",
        "1..2",
        ".1.2",
        "1.02",
    ],
)
def test_csrattrs_unknown_or_malformed_entries_raise_value_error(entry: str) -> None:
    with pytest.raises(ValueError) as info:
        csrattrs_der(["challengePassword", entry])
    assert repr(entry) in str(info.value)  # the message names the offending config entry
