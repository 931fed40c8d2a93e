"""Tests of the strict DER OCSPRequest reader (``edge.ocsp_request``).

Expectations never come from the reader itself: they are computed from the inputs, from
``cryptography`` / the ``openssl`` CLI that built the request, or from asn1crypto's parse.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import pytest
from asn1crypto import algos as asn1_algos
from asn1crypto import core as asn1_core
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp as x509_ocsp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from contract.cert_id import issuer_part_encodings
from contract.store import HASH_ALGORITHMS, serial_key
from edge.ocsp_request import (
    MAX_REQUEST_BYTES,
    CertID,
    MalformedRequest,
    OCSPRequestInfo,
    ServedRequests,
    _parse_single,
    common_request,
    issuer_part,
    parse_ocsp_request,
    parse_ocsp_request_general,
)
from tests.edge.conftest import (
    DER_NULL,
    DER_TRUE,
    HASHES,
    NONCE_OID,
    SHA1_OID,
    SHA256_OID,
    SHA512_OID,
    Pki,
    algorithm_identifier,
    cert_id,
    crypto_request_by_hash,
    extension,
    fake_hashes,
    integer,
    integer_content,
    nonce_extension,
    ocsp_request,
    octets,
    oid,
    oid_content,
    seq,
    simple_request,
    single_request,
    tlv,
)

HASH_OIDS = {"sha1": SHA1_OID, "sha256": SHA256_OID, "sha384": "2.16.840.1.101.3.4.2.2", "sha512": SHA512_OID}
ECDSA_SHA256_OID = "1.2.840.10045.4.3.2"

# --------------------------------------------------------------------------- the oracle


def dotted_from_content(content: bytes) -> str:
    """Dotted form of an OID's DER content (a second, independent decoder)."""
    arcs: list[int] = []
    value = 0
    for octet in content:
        value = (value << 7) | (octet & 0x7F)
        if not octet & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


class _OpaqueAny(asn1_core.Any):
    """Matches only its own explicit tag (asn1crypto lets a bare optional ``Any`` swallow any element)."""


class _Extension(asn1_core.Sequence):
    _fields: ClassVar[list[tuple[Any, ...]]] = [
        ("extn_id", asn1_core.ObjectIdentifier),
        ("critical", asn1_core.Boolean, {"default": False}),
        ("extn_value", asn1_core.OctetString),
    ]


class _Extensions(asn1_core.SequenceOf):
    _child_spec = _Extension


class _Request(asn1_core.Sequence):
    _fields: ClassVar[list[tuple[Any, ...]]] = [
        ("req_cert", asn1_ocsp.CertId),
        ("single_request_extensions", _Extensions, {"explicit": 0, "optional": True}),
    ]


class _Requests(asn1_core.SequenceOf):
    _child_spec = _Request


class _TBSRequest(asn1_core.Sequence):
    _fields: ClassVar[list[tuple[Any, ...]]] = [
        ("version", asn1_ocsp.Version, {"explicit": 0, "default": "v1"}),
        ("requestor_name", _OpaqueAny, {"explicit": 1, "optional": True}),
        ("request_list", _Requests),
        ("request_extensions", _Extensions, {"explicit": 2, "optional": True}),
    ]
    _spec_callbacks: ClassVar[dict[str, Any]] = {"requestor_name": lambda self: asn1_core.Any}


class _OCSPRequest(asn1_core.Sequence):
    """RFC 6960 OCSPRequest with what the edge does not interpret left opaque.

    The edge tolerates requestorName, optionalSignature and extension values without
    reading their insides; asn1crypto's full schema parses them (e.g. the nonce's inner
    OCTET STRING). A mutant the edge accepts must still match this schema exactly.
    """

    _fields: ClassVar[list[tuple[Any, ...]]] = [
        ("tbs_request", _TBSRequest),
        ("optional_signature", _OpaqueAny, {"explicit": 0, "optional": True}),
    ]
    _spec_callbacks: ClassVar[dict[str, Any]] = {"optional_signature": lambda self: asn1_core.Any}


Summary = tuple[list[tuple[str, bytes, bytes, bytes]], bool]


def asn1crypto_full(der: bytes) -> Summary:
    """(CertIDs, has nonce) from asn1crypto's own OCSPRequest, ``.native`` of the whole tbsRequest."""
    request = asn1_ocsp.OCSPRequest.load(der, strict=True)
    tbs = request["tbs_request"].native
    assert tbs["version"] == "v1"
    cert_ids = []
    for index, single in enumerate(tbs["request_list"]):
        req_cert = single["req_cert"]
        algorithm = request["tbs_request"]["request_list"][index]["req_cert"]["hash_algorithm"]["algorithm"]
        cert_ids.append(
            (
                algorithm.dotted,
                req_cert["issuer_name_hash"],
                req_cert["issuer_key_hash"],
                serial_key(req_cert["serial_number"]),
            )
        )
    has_nonce = any(ext["extn_id"] == "nonce" for ext in tbs["request_extensions"] or [])
    return cert_ids, has_nonce


def asn1crypto_opaque(der: bytes) -> Summary:
    """The same summary from the opaque schema, reading only the fields the edge interprets."""
    request = _OCSPRequest.load(der, strict=True)
    tbs = request["tbs_request"]
    _ = request["optional_signature"], tbs["requestor_name"]  # each must be one well-formed element
    assert tbs["version"].native == "v1"
    cert_ids = []
    for single in tbs["request_list"]:
        req_cert = single["req_cert"].native
        _ = single["single_request_extensions"].native
        cert_ids.append(
            (
                single["req_cert"]["hash_algorithm"]["algorithm"].dotted,
                req_cert["issuer_name_hash"],
                req_cert["issuer_key_hash"],
                serial_key(req_cert["serial_number"]),
            )
        )
    extensions = tbs["request_extensions"].native or []
    return cert_ids, any(ext["extn_id"] == NONCE_OID for ext in extensions)


def ours(info: OCSPRequestInfo) -> Summary:
    cert_ids = [
        (dotted_from_content(c.hash_algorithm), c.issuer_name_hash, c.issuer_key_hash, c.serial_number)
        for c in info.cert_ids
    ]
    return cert_ids, info.has_nonce


def assert_agrees_with_asn1crypto(der: bytes) -> None:
    info = parse_ocsp_request(der)
    assert ours(info) == asn1crypto_full(der)
    assert ours(info) == asn1crypto_opaque(der)


# ------------------------------------------------------------------ requests built by cryptography


def test_contract_hash_oids_are_the_digest_oids() -> None:
    for name, (_, content) in HASH_ALGORITHMS.items():
        assert content == asn1_algos.DigestAlgorithmId(name).contents
        assert content == oid_content(HASH_OIDS[name])


SERIALS = [
    1,
    127,
    128,
    255,
    256,
    0x1234,
    2**63,
    2**159 - 1,  # 20 octets, the RFC 5280 maximum
    0x8F << 144 | 0x1111,  # 19 value octets with the high bit set: 20 content octets
]


@pytest.mark.parametrize("nonce", [None, b"\x42" * 16, b"\x01" * 32], ids=["no-nonce", "nonce16", "nonce32"])
@pytest.mark.parametrize("serial", SERIALS, ids=hex)
@pytest.mark.parametrize("hash_name", list(HASHES))
def test_cryptography_request_by_hash(hash_name: str, serial: int, nonce: bytes | None) -> None:
    name_hash, key_hash = fake_hashes(hash_name, seed=serial.to_bytes(20, "big"))
    der = crypto_request_by_hash(name_hash, key_hash, serial, hash_name, nonce=nonce)

    info = parse_ocsp_request(der)

    assert info.cert_ids == (CertID(HASH_ALGORITHMS[hash_name][1], name_hash, key_hash, serial_key(serial)),)
    assert info.cert_ids[0].serial_number == integer_content(serial)
    assert info.has_nonce is (nonce is not None)
    assert_agrees_with_asn1crypto(der)
    loaded = x509_ocsp.load_der_ocsp_request(der)
    assert (loaded.issuer_name_hash, loaded.issuer_key_hash, loaded.serial_number) == (name_hash, key_hash, serial)


@pytest.mark.parametrize("with_nonce", [False, True], ids=["no-nonce", "nonce"])
@pytest.mark.parametrize("hash_name", ["sha1", "sha256", "sha384", "sha512"])
def test_cryptography_request_for_certificate(pki: Pki, hash_name: str, with_nonce: bool) -> None:
    builder = x509_ocsp.OCSPRequestBuilder().add_certificate(pki.leaf, pki.ca, HASHES[hash_name])
    if with_nonce:
        builder = builder.add_extension(x509.OCSPNonce(b"\x5a" * 20), critical=False)
    der = builder.build().public_bytes(serialization.Encoding.DER)

    info = parse_ocsp_request(der)

    name_hash, key_hash = pki.expected_hashes(hash_name)
    expected = CertID(HASH_ALGORITHMS[hash_name][1], name_hash, key_hash, serial_key(pki.leaf.serial_number))
    assert info == OCSPRequestInfo((expected,), with_nonce)
    assert len(info.cert_ids[0].serial_number) == 20  # the leaf's serial needs a 0x00 pad octet
    assert_agrees_with_asn1crypto(der)


# ------------------------------------------------------------------ requests made by `openssl ocsp`


@pytest.fixture(scope="module")
def pki_files(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return pki.write(tmp_path_factory.mktemp("pki"))


# (id, arguments after -issuer with {name} placeholders, certificates asked for, hash, nonce expected)
OPENSSL_CASES = [
    ("sha1-no-nonce", ["-cert", "{leaf}", "-no_nonce"], ["leaf"], "sha1", False),
    ("sha1-nonce", ["-cert", "{leaf}"], ["leaf"], "sha1", True),
    ("sha256-no-nonce", ["-sha256", "-cert", "{leaf}", "-no_nonce"], ["leaf"], "sha256", False),
    ("sha256-nonce", ["-sha256", "-cert", "{leaf}"], ["leaf"], "sha256", True),
    ("sha512-no-nonce", ["-sha512", "-cert", "{leaf}", "-no_nonce"], ["leaf"], "sha512", False),
    ("two-certificates", ["-cert", "{leaf}", "-cert", "{leaf2}"], ["leaf", "leaf2"], "sha1", True),
    ("serial-option", ["-serial", "0x1234", "-no_nonce"], ["leaf2"], "sha1", False),
    (
        "signed-with-requestor-name",
        ["-cert", "{leaf}", "-signer", "{leaf}", "-signkey", "{leaf_key}"],
        ["leaf"],
        "sha1",
        True,
    ),
]


@pytest.mark.parametrize(
    ("args", "certs", "hash_name", "nonce"), [c[1:] for c in OPENSSL_CASES], ids=[c[0] for c in OPENSSL_CASES]
)
def test_openssl_request(
    pki: Pki,
    pki_files: dict[str, Path],
    tmp_path: Path,
    args: list[str],
    certs: list[str],
    hash_name: str,
    nonce: bool,
) -> None:
    out = tmp_path / "req.der"
    command = ["openssl", "ocsp", "-issuer", str(pki_files["ca"])]
    command += [a.format(**{k: str(v) for k, v in pki_files.items()}) for a in args]
    command += ["-reqout", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    der = out.read_bytes()

    info = parse_ocsp_request(der)

    name_hash, key_hash = pki.expected_hashes(hash_name)
    serials = [getattr(pki, name).serial_number for name in certs]
    oid_der = HASH_ALGORITHMS[hash_name][1]
    assert info == OCSPRequestInfo(tuple(CertID(oid_der, name_hash, key_hash, serial_key(s)) for s in serials), nonce)
    assert ours(info) == asn1crypto_full(der)
    parsed = asn1_ocsp.OCSPRequest.load(der)
    if "-signer" in args:  # the case covers what it claims to
        assert parsed["optional_signature"].native is not None
        assert parsed["tbs_request"]["requestor_name"].native is not None


# ------------------------------------------------------------------ hand-built DER: accepted


SIGNATURE = seq(
    algorithm_identifier(ECDSA_SHA256_OID, b""),
    tlv(0x03, b"\x00" + seq(integer(2**255 - 19), integer(2**254 + 7))),
)
# A stand-in certificate: the edge never reads optionalSignature's insides.
SIGNATURE_WITH_CERTS = seq(
    algorithm_identifier(ECDSA_SHA256_OID, b""),
    tlv(0x03, b"\x00" + seq(integer(3), integer(4))),
    tlv(
        0xA0,
        seq(
            seq(seq(tlv(0xA0, integer(2)), integer(9)), algorithm_identifier(ECDSA_SHA256_OID, b""), tlv(0x03, b"\x00"))
        ),
    ),
)
DIRECTORY_NAME = asn1_x509.GeneralName(
    name="directory_name", value=asn1_x509.Name.build({"common_name": "requestor.example"})
).dump()
H1 = (b"\x11" * 20, b"\x22" * 20)
H256 = (b"\x33" * 32, b"\x44" * 32)
H512 = (b"\x55" * 64, b"\x66" * 64)


def expected_id(
    dotted: str = SHA1_OID, hashes: tuple[bytes, bytes] = H1, serial: int = 1
) -> tuple[str, bytes, bytes, bytes]:
    return dotted, hashes[0], hashes[1], integer_content(serial)


def three_cert_ids() -> bytes:
    return ocsp_request(
        [
            single_request(cert_id(serial_content=integer_content(10))),
            single_request(
                cert_id(
                    algorithm=algorithm_identifier(SHA256_OID),
                    name_hash=H256[0],
                    key_hash=H256[1],
                    serial_content=integer_content(2**100),
                )
            ),
            single_request(
                cert_id(
                    algorithm=algorithm_identifier(SHA512_OID, b""),
                    name_hash=H512[0],
                    key_hash=H512[1],
                    serial_content=integer_content(-5),
                )
            ),
        ]
    )


# (id, der, expected CertIDs as (dotted OID, name hash, key hash, serial content), has_nonce)
ACCEPTED = [
    ("minimal", simple_request(), [expected_id()], False),
    (
        "three-cert-ids",
        three_cert_ids(),
        [expected_id(serial=10), expected_id(SHA256_OID, H256, 2**100), expected_id(SHA512_OID, H512, -5)],
        False,
    ),
    ("version-v1", ocsp_request([single_request(cert_id())], version=integer(0)), [expected_id()], False),
    (
        "requestor-rfc822",
        ocsp_request([single_request(cert_id())], requestor=tlv(0x81, b"ops@example.org")),
        [expected_id()],
        False,
    ),
    (
        "version-and-requestor-directory-name",
        ocsp_request([single_request(cert_id())], version=integer(0), requestor=DIRECTORY_NAME),
        [expected_id()],
        False,
    ),
    ("optional-signature", ocsp_request([single_request(cert_id())], signature=SIGNATURE), [expected_id()], False),
    (
        "optional-signature-with-certs",
        ocsp_request(
            [single_request(cert_id())],
            requestor=DIRECTORY_NAME,
            extensions=[nonce_extension()],
            signature=SIGNATURE_WITH_CERTS,
        ),
        [expected_id()],
        True,
    ),
    (
        "single-request-extensions",
        ocsp_request([single_request(cert_id(), [extension("1.2.3.4", b"\x05\x00")])]),
        [expected_id()],
        False,
    ),
    (
        "nonce-only-in-single-request-extensions",  # RFC 8954: the nonce is a requestExtension
        ocsp_request([single_request(cert_id(), [nonce_extension()])]),
        [expected_id()],
        False,
    ),
    ("nonce", ocsp_request([single_request(cert_id())], extensions=[nonce_extension()]), [expected_id()], True),
    (
        "nonce-critical",
        ocsp_request([single_request(cert_id())], extensions=[extension(NONCE_OID, octets(b"\x01" * 32), DER_TRUE)]),
        [expected_id()],
        True,
    ),
    (
        "nonce-among-other-extensions",
        ocsp_request(
            [single_request(cert_id())],
            extensions=[
                extension("1.3.6.1.5.5.7.48.1.4", seq(oid("1.3.6.1.5.5.7.48.1.1"))),
                nonce_extension(b"\x07" * 128),  # 0x81 long-form lengths
            ],
        ),
        [expected_id()],
        True,
    ),
    (
        "other-extension-only",
        ocsp_request([single_request(cert_id())], extensions=[extension("1.2.3.4", b"")]),
        [expected_id()],
        False,
    ),
    ("params-absent", simple_request(algorithm=algorithm_identifier(SHA1_OID, b"")), [expected_id()], False),
    ("serial-0", simple_request(serial_content=b"\x00"), [expected_id(serial=0)], False),
    ("serial-minus-1", simple_request(serial_content=b"\xff"), [expected_id(serial=-1)], False),
    ("serial-255", simple_request(serial_content=b"\x00\xff"), [expected_id(serial=255)], False),
    ("serial-minus-129", simple_request(serial_content=b"\xff\x7f"), [expected_id(serial=-129)], False),
    (
        "serial-20-octets",
        simple_request(serial_content=b"\x7f" + b"\xa5" * 19),
        [expected_id(serial=int.from_bytes(b"\x7f" + b"\xa5" * 19, "big"))],
        False,
    ),
    (
        "serial-20-octets-high-bit",
        simple_request(serial_content=b"\x00" + b"\xa5" * 19),
        [expected_id(serial=int.from_bytes(b"\xa5" * 19, "big"))],
        False,
    ),
    (
        "serial-64-octets",
        simple_request(serial_content=b"\x01" * 64),
        [expected_id(serial=int.from_bytes(b"\x01" * 64, "big"))],
        False,
    ),
    (
        "hashes-of-64-octets",
        simple_request(algorithm=algorithm_identifier(SHA512_OID), name_hash=H512[0], key_hash=H512[1]),
        [expected_id(SHA512_OID, H512)],
        False,
    ),
]


@pytest.mark.parametrize(("der", "expected", "nonce"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_hand_built_request(der: bytes, expected: list[tuple[str, bytes, bytes, bytes]], nonce: bool) -> None:
    info = parse_ocsp_request(der)

    assert ours(info) == (expected, nonce)
    assert len(info.cert_ids) == len(expected)
    assert ours(info) == asn1crypto_full(der)  # the hand-built DER is valid for asn1crypto too
    assert ours(info) == asn1crypto_opaque(der)


def test_many_cert_ids_are_all_returned_in_order() -> None:
    serials = list(range(-20, 40))
    der = ocsp_request([single_request(cert_id(serial_content=integer_content(s))) for s in serials])

    info = parse_ocsp_request(der)

    assert [c.serial_number for c in info.cert_ids] == [integer_content(s) for s in serials]
    assert [c.serial_number for c in info.cert_ids] == [serial_key(s) for s in serials]


@pytest.mark.parametrize(
    ("padded", "value"),
    [
        (b"\x00\x01", 1),
        (b"\x00\x00\x00\x01", 1),
        (b"\x00\x7f", 127),
        (b"\x00\x00\x80", 128),
        (b"\x00\x00", 0),
        (b"\x00" * 10, 0),
        (b"\xff\xff", -1),
        (b"\xff\xff\x80", -128),
        (b"\xff\xff\x7f", -129),
        (b"\x00" * 44 + b"\x7f" + b"\xa5" * 19, int.from_bytes(b"\x7f" + b"\xa5" * 19, "big")),
    ],
    ids=lambda v: v.hex() if isinstance(v, bytes) else str(v),
)
def test_padded_serial_folds_onto_the_minimal_encoding(padded: bytes, value: int) -> None:
    minimal = integer_content(value)
    assert padded != minimal

    from_padded = parse_ocsp_request(simple_request(serial_content=padded)).cert_ids[0].serial_number
    from_minimal = parse_ocsp_request(simple_request(serial_content=minimal)).cert_ids[0].serial_number

    assert from_padded == from_minimal == minimal == serial_key(value)
    assert int.from_bytes(padded, "big", signed=True) == value


def test_negative_serial_is_distinct_from_its_unsigned_reading() -> None:
    minus_one = parse_ocsp_request(simple_request(serial_content=b"\xff")).cert_ids[0].serial_number
    two_five_five = parse_ocsp_request(simple_request(serial_content=b"\x00\xff")).cert_ids[0].serial_number

    assert minus_one != two_five_five
    assert (minus_one, two_five_five) == (serial_key(-1), serial_key(255))


def test_null_params_and_absent_params_give_the_same_cert_id() -> None:
    with_null = parse_ocsp_request(simple_request(algorithm=algorithm_identifier(SHA1_OID, DER_NULL)))
    without = parse_ocsp_request(simple_request(algorithm=algorithm_identifier(SHA1_OID, b"")))

    assert with_null == without
    assert with_null.cert_ids[0].hash_algorithm == HASH_ALGORITHMS["sha1"][1]


# ------------------------------------------------------------------ hand-built DER: rejected


def sized_request(total: int) -> bytes:
    """A valid request of exactly ``total`` bytes (a long nonce fills it up)."""
    for nonce_length in range(total, 0, -1):
        der = ocsp_request([single_request(cert_id())], extensions=[nonce_extension(b"\x5a" * nonce_length)])
        if len(der) == total:
            return der
    raise AssertionError(f"no request of {total} bytes")


def nested_sequences(depth: int) -> bytes:
    der = b""
    for _ in range(depth):
        der = seq(der)
    return der


def with_sha1_oid_tlv(oid_tlv: bytes) -> bytes:
    return simple_request(algorithm=seq(oid_tlv, DER_NULL))


SHA1_CONTENT = oid_content(SHA1_OID)
BASE = simple_request()
BASE_WITH_NONCE = ocsp_request([single_request(cert_id())], extensions=[nonce_extension()])
REQUEST = single_request(cert_id())


def retag(der: bytes, old_tag_and_len: bytes, new_tag: int) -> bytes:
    """Change the tag of the first element starting with ``old_tag_and_len`` (lengths unchanged)."""
    index = der.index(old_tag_and_len)
    return der[:index] + bytes((new_tag,)) + der[index + 1 :]


REJECTED = [
    ("empty", b""),
    ("one-byte", b"\x30"),
    ("empty-outer-sequence", b"\x30\x00"),
    ("empty-tbs-request", seq(seq())),
    ("trailing-zero-byte", BASE + b"\x00"),
    ("trailing-element", BASE + b"\x30\x00"),
    ("trailing-byte-with-nonce", BASE_WITH_NONCE + b"\xff"),
    ("outer-indefinite-length", b"\x30\x80" + BASE[2:] + b"\x00\x00"),
    ("cert-id-indefinite-length", ocsp_request([seq(b"\x30\x80" + cert_id()[2:] + b"\x00\x00")])),
    ("oid-length-0x81-0x05", with_sha1_oid_tlv(b"\x06\x81\x05" + SHA1_CONTENT)),
    ("oid-length-0x82-0x00-0x05", with_sha1_oid_tlv(b"\x06\x82\x00\x05" + SHA1_CONTENT)),
    ("oid-length-three-octets", with_sha1_oid_tlv(b"\x06\x83\x00\x00\x05" + SHA1_CONTENT)),
    (
        "nonce-length-0x82-0x00-0x80",
        ocsp_request([REQUEST], extensions=[seq(oid(NONCE_OID), b"\x04\x82\x00\x80" + octets(b"\x01" * 126))]),
    ),
    ("outer-length-past-the-end", b"\x30" + bytes((BASE[1] + 1,)) + BASE[2:]),
    ("outer-length-short", b"\x30" + bytes((BASE[1] - 1,)) + BASE[2:]),
    ("long-length-past-the-end", b"\x30\x82\x27\x10" + BASE[2:]),
    ("long-length-octets-missing", b"\x30\x82\x01"),
    ("serial-length-past-cert-id", simple_request(serial_content=b"\x01")[:-2] + b"\x05\x01"),
    ("outer-set", retag(BASE, BASE[:2], 0x31)),
    ("outer-context-0", retag(BASE, BASE[:2], 0xA0)),
    ("tbs-set", b"\x30" + BASE[1:2] + b"\x31" + BASE[3:]),
    ("request-list-set", retag(BASE, seq(REQUEST)[:2], 0x31)),
    ("request-set", retag(BASE, REQUEST[:2], 0x31)),
    ("cert-id-set", retag(BASE, cert_id()[:2], 0x31)),
    ("algorithm-set", retag(BASE, algorithm_identifier()[:2], 0x31)),
    ("hash-oid-as-octet-string", with_sha1_oid_tlv(b"\x04\x05" + SHA1_CONTENT)),
    ("name-hash-as-bit-string", retag(BASE, b"\x04\x14\x11", 0x03)),
    ("name-hash-constructed", retag(BASE, b"\x04\x14\x11", 0x24)),
    ("key-hash-as-utf8", retag(BASE, b"\x04\x14\x22", 0x0C)),
    ("serial-as-enumerated", retag(BASE, b"\x02\x01\x01", 0x0A)),
    ("high-tag-number", b"\x1f\x10" + BASE[1:]),
    ("empty-request-list", ocsp_request([])),
    ("empty-request", ocsp_request([seq()])),
    ("request-without-cert-id", ocsp_request([seq(octets(b"\x01"))])),
    ("cert-id-missing-serial", ocsp_request([seq(seq(algorithm_identifier(), octets(H1[0]), octets(H1[1])))])),
    (
        "cert-id-extra-field",
        ocsp_request([seq(seq(algorithm_identifier(), octets(H1[0]), octets(H1[1]), integer(1), integer(2)))]),
    ),
    ("request-extra-field", ocsp_request([seq(cert_id(), integer(0))])),
    ("request-extensions-wrong-tag", ocsp_request([seq(cert_id(), tlv(0xA1, seq(nonce_extension())))])),
    ("request-extensions-empty", ocsp_request([seq(cert_id(), tlv(0xA0, seq()))])),
    ("too-big", sized_request(MAX_REQUEST_BYTES + 1)),
    ("too-big-garbage", b"\x30\x82\x27\x11" + b"\x00" * 10001),
    (
        "critical-false-encoded",
        ocsp_request([REQUEST], extensions=[extension(NONCE_OID, octets(b"\x01"), b"\x01\x01\x00")]),
    ),
    (
        "critical-true-as-0x01",
        ocsp_request([REQUEST], extensions=[extension(NONCE_OID, octets(b"\x01"), b"\x01\x01\x01")]),
    ),
    (
        "critical-two-octets",
        ocsp_request([REQUEST], extensions=[extension(NONCE_OID, octets(b"\x01"), b"\x01\x02\xff\xff")]),
    ),
    (
        "critical-false-single-request",
        ocsp_request([single_request(cert_id(), [extension("1.2.3", b"", b"\x01\x01\x00")])]),
    ),
    ("extension-without-value", ocsp_request([REQUEST], extensions=[seq(oid(NONCE_OID))])),
    ("extension-value-not-octet-string", ocsp_request([REQUEST], extensions=[seq(oid(NONCE_OID), integer(5))])),
    ("extension-trailing-field", ocsp_request([REQUEST], extensions=[seq(oid(NONCE_OID), octets(b"\x01"), DER_NULL)])),
    ("extension-id-not-oid", ocsp_request([REQUEST], extensions=[seq(octets(b"\x2b"), octets(b"\x01"))])),
    ("extensions-empty", ocsp_request([REQUEST], extensions=[])),
    ("extensions-not-sequence", seq(seq(seq(REQUEST), tlv(0xA2, tlv(0x31, nonce_extension()))))),
    ("params-integer", simple_request(algorithm=algorithm_identifier(SHA1_OID, integer(0)))),
    ("params-null-with-content", simple_request(algorithm=algorithm_identifier(SHA1_OID, b"\x05\x01\x00"))),
    ("params-two-nulls", simple_request(algorithm=algorithm_identifier(SHA1_OID, DER_NULL + DER_NULL))),
    ("params-empty-sequence", simple_request(algorithm=algorithm_identifier(SHA1_OID, seq()))),
    ("params-oid", simple_request(algorithm=algorithm_identifier(SHA1_OID, oid("1.2.3")))),
    ("algorithm-without-oid", simple_request(algorithm=seq(DER_NULL))),
    ("algorithm-empty", simple_request(algorithm=seq())),
    ("oid-empty", with_sha1_oid_tlv(b"\x06\x00")),
    ("oid-unterminated", with_sha1_oid_tlv(b"\x06\x02\x2b\x8e")),
    ("oid-leading-0x80", with_sha1_oid_tlv(b"\x06\x06\x80" + SHA1_CONTENT)),
    ("oid-too-long", with_sha1_oid_tlv(tlv(0x06, b"\x2b" + b"\x01" * 40))),
    ("serial-zero-length", simple_request(serial_content=b"")),
    ("serial-65-octets", simple_request(serial_content=b"\x01" * 65)),
    ("name-hash-empty", simple_request(name_hash=b"")),
    ("key-hash-empty", simple_request(key_hash=b"")),
    ("name-hash-65-octets", simple_request(name_hash=b"\x01" * 65)),
    ("key-hash-65-octets", simple_request(key_hash=b"\x01" * 65)),
    ("version-v2", ocsp_request([REQUEST], version=integer(1))),
    ("version-minus-1", ocsp_request([REQUEST], version=integer(-1))),
    ("version-non-minimal-zero", ocsp_request([REQUEST], version=b"\x02\x02\x00\x00")),
    ("version-not-integer", ocsp_request([REQUEST], version=DER_NULL)),
    ("version-two-integers", ocsp_request([REQUEST], version=integer(0) + integer(0))),
    ("version-empty", ocsp_request([REQUEST], version=b"")),
    ("version-implicit", seq(seq(b"\x80\x01\x00", seq(REQUEST)))),
    ("requestor-empty", ocsp_request([REQUEST], requestor=b"")),
    ("requestor-two-elements", ocsp_request([REQUEST], requestor=tlv(0x81, b"a") + tlv(0x81, b"b"))),
    ("requestor-before-version", seq(seq(tlv(0xA1, tlv(0x81, b"a")), tlv(0xA0, integer(0)), seq(REQUEST)))),
    ("version-only", seq(seq(tlv(0xA0, integer(0))))),
    ("unknown-context-3-in-tbs", seq(seq(seq(REQUEST), tlv(0xA3, seq(nonce_extension()))))),
    ("extensions-twice", seq(seq(seq(REQUEST), tlv(0xA2, seq(nonce_extension())), tlv(0xA2, seq(nonce_extension()))))),
    ("two-request-lists", seq(seq(seq(REQUEST), seq(REQUEST)))),
    ("signature-empty", ocsp_request([REQUEST], signature=b"")),
    ("signature-two-elements", ocsp_request([REQUEST], signature=SIGNATURE + SIGNATURE)),
    ("signature-wrong-tag", seq(seq(seq(REQUEST)), tlv(0xA1, SIGNATURE))),
    ("signature-then-trailing", seq(seq(seq(REQUEST)), tlv(0xA0, SIGNATURE), DER_NULL)),
    ("deep-nesting-definite", nested_sequences(2000)),
    ("deep-nesting-indefinite", b"\x30\x80" * 4000),
    ("deep-nesting-in-request-list", seq(seq(seq(nested_sequences(1500))))),
    ("deep-nesting-as-algorithm", simple_request(algorithm=nested_sequences(1000))),
    ("all-zero", b"\x00" * 64),
    ("all-ones", b"\xff" * 64),
    # RFC 6960 §4.4: a critical extension not understood (anything but the nonce) is not ignored.
    ("critical-request-extension", ocsp_request([REQUEST], extensions=[extension("1.2.3.4", b"", DER_TRUE)])),
    (
        "critical-extension-beside-the-nonce",
        ocsp_request([REQUEST], extensions=[nonce_extension(), extension("1.3.6.1.5.5.7.48.1.4", b"", DER_TRUE)]),
    ),
    (
        "critical-single-request-extension",
        ocsp_request([single_request(cert_id(), [extension("1.2.3.4", b"\x05\x00", DER_TRUE)])]),
    ),
]


def test_a_certificate_is_not_a_request(pki: Pki) -> None:
    with pytest.raises(MalformedRequest):
        parse_ocsp_request(pki.leaf.public_bytes(serialization.Encoding.DER))


def test_sized_request_boundary_is_accepted() -> None:
    der = sized_request(MAX_REQUEST_BYTES)
    assert len(der) == MAX_REQUEST_BYTES
    assert parse_ocsp_request(der).has_nonce
    assert len(sized_request(MAX_REQUEST_BYTES + 1)) == MAX_REQUEST_BYTES + 1


@pytest.mark.parametrize("der", [c[1] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_rejected(der: bytes) -> None:
    with pytest.raises(MalformedRequest):
        parse_ocsp_request(der)


def test_rejection_cases_differ_from_an_accepted_neighbour() -> None:
    """The 0x81 / critical-flag / NULL rejections are not accidents: the DER form next to them parses."""
    assert parse_ocsp_request(with_sha1_oid_tlv(b"\x06\x05" + SHA1_CONTENT)) == parse_ocsp_request(BASE)
    long_nonce = ocsp_request([REQUEST], extensions=[seq(oid(NONCE_OID), b"\x04\x81\x80" + octets(b"\x01" * 126))])
    assert parse_ocsp_request(long_nonce).has_nonce
    critical = ocsp_request([REQUEST], extensions=[extension(NONCE_OID, octets(b"\x01"), DER_TRUE)])
    assert parse_ocsp_request(critical).has_nonce


def truncation_seeds() -> list[tuple[str, bytes]]:
    return [
        ("cryptography-sha1", crypto_request_by_hash(*fake_hashes("sha1"), 0x1234)),
        ("cryptography-sha256-nonce", crypto_request_by_hash(*fake_hashes("sha256"), 2**80, "sha256", b"\x01" * 32)),
        ("three-cert-ids", three_cert_ids()),
        (
            "everything",
            ocsp_request(
                [single_request(cert_id(), [extension(NONCE_OID, octets(b"\x05"), DER_TRUE)])],
                version=integer(0),
                requestor=DIRECTORY_NAME,
                extensions=[nonce_extension()],
                signature=SIGNATURE,
            ),
        ),
    ]


@pytest.mark.parametrize("der", [s[1] for s in truncation_seeds()], ids=[s[0] for s in truncation_seeds()])
def test_every_truncation_is_rejected(der: bytes) -> None:
    parse_ocsp_request(der)  # the whole request is valid
    for length in range(len(der)):
        with pytest.raises(MalformedRequest):
            parse_ocsp_request(der[:length])


@pytest.mark.parametrize("der", [s[1] for s in truncation_seeds()], ids=[s[0] for s in truncation_seeds()])
def test_every_appended_byte_is_rejected(der: bytes) -> None:
    for value in range(256):
        with pytest.raises(MalformedRequest):
            parse_ocsp_request(der + bytes((value,)))


# ------------------------------------------------------------------ known bugs


@pytest.mark.parametrize(
    "der",
    [
        with_sha1_oid_tlv(tlv(0x06, b"\x2b\x80\x0e\x03\x02\x1a")),
        ocsp_request([REQUEST], extensions=[seq(tlv(0x06, b"\x2b\x06\x01\x05\x05\x07\x30\x01\x80\x02"), octets(b""))]),
    ],
    ids=["hash-oid", "extension-oid"],
)
def test_non_minimal_oid_subidentifier_is_rejected(der: bytes) -> None:
    with pytest.raises(MalformedRequest):
        parse_ocsp_request(der)


# ------------------------------------------------------------------ properties


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_ever_raise_malformed_request(data: bytes) -> None:
    try:
        info = parse_ocsp_request(data)
    except MalformedRequest:
        return
    assert isinstance(info, OCSPRequestInfo)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_behind_a_valid_header_only_ever_raise_malformed_request(data: bytes) -> None:
    for prefix in (b"\x30" + bytes((len(data),)), b"\x30\x81" + bytes((len(data),)), b"\x30\x30\x30"):
        with contextlib.suppress(MalformedRequest):
            parse_ocsp_request(prefix + data)


MUTATION_SEEDS = [s[1] for s in truncation_seeds()] + [
    crypto_request_by_hash(*fake_hashes("sha512"), 255, "sha512", b"\xff" * 8),
    simple_request(serial_content=b"\x00\x00\x80", algorithm=algorithm_identifier(SHA1_OID, b"")),
]

MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**16), st.integers(0, 7)),
    st.tuples(st.just("insert"), st.integers(0, 2**16), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 2**16), st.just(0)),
    st.tuples(st.just("replace"), st.integers(0, 2**16), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 2**16), st.just(0)),
)


def mutate(seed: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(seed)
    for kind, where, value in mutations:
        position = where % (len(data) + 1)
        if kind == "insert":
            data.insert(position, value)
        elif kind == "truncate":
            del data[position:]
        elif position < len(data):
            if kind == "flip":
                data[position] ^= 1 << value
            elif kind == "replace":
                data[position] = value
            else:
                del data[position]
    return bytes(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(MUTATION_SEEDS))), st.lists(MUTATIONS, min_size=1, max_size=4))
def test_mutants_are_rejected_or_read_like_asn1crypto(seed_index: int, mutations: list[tuple[str, int, int]]) -> None:
    mutant = mutate(MUTATION_SEEDS[seed_index], mutations)
    try:
        info = parse_ocsp_request(mutant)
    except MalformedRequest:
        event("rejected")
        return
    try:
        theirs = asn1crypto_full(mutant)
        event("accepted: asn1crypto full schema agrees")
    except Exception:
        # Only what the edge deliberately leaves uninterpreted may differ (e.g. a nonce's inner TLV).
        theirs = asn1crypto_opaque(mutant)
        event("accepted: opaque schema")
    assert ours(info) == theirs


def test_the_oracles_see_a_difference() -> None:
    """The property above can fail: the asn1crypto summaries track every field we compare."""
    der = crypto_request_by_hash(*fake_hashes("sha256"), 77, "sha256", b"\x01" * 8)
    changed = der.replace(integer(77), integer(78))
    assert asn1crypto_full(der) != asn1crypto_full(changed)
    assert asn1crypto_opaque(der) != asn1crypto_opaque(changed)
    assert ours(parse_ocsp_request(der)) != asn1crypto_full(changed)


# The single-request fast path must never decide differently from the general walk.

SINGLE_SEEDS = [
    simple_request(),
    simple_request(serial_content=b"\x00\x00\x80", algorithm=algorithm_identifier(SHA1_OID, b"")),
    crypto_request_by_hash(*fake_hashes("sha256"), 2**159 + 1, "sha256", None),
    crypto_request_by_hash(*fake_hashes("sha1"), 0, "sha1", None),
]
LONG_FORM = crypto_request_by_hash(*fake_hashes("sha512"), 255, "sha512", None)  # over 129 bytes


@pytest.mark.parametrize("der", SINGLE_SEEDS)
def test_common_requests_take_the_fast_path(der: bytes) -> None:
    fast = _parse_single(der)
    assert fast is not None
    assert fast == parse_ocsp_request_general(der)


def test_requests_with_a_nonce_or_several_cert_ids_take_the_general_path() -> None:
    assert _parse_single(BASE_WITH_NONCE) is None
    assert _parse_single(ocsp_request([REQUEST, REQUEST])) is None
    assert _parse_single(LONG_FORM) is None
    assert parse_ocsp_request(LONG_FORM) == parse_ocsp_request_general(LONG_FORM)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(SINGLE_SEEDS) + 1)), st.lists(MUTATIONS, min_size=1, max_size=3))
def test_fast_path_agrees_with_the_general_parser(seed_index: int, mutations: list[tuple[str, int, int]]) -> None:
    mutant = mutate([*SINGLE_SEEDS, LONG_FORM][seed_index], mutations)
    fast = _parse_single(mutant)
    if fast is None:
        event("fast path declined")
        return
    event("fast path accepted")
    assert fast == parse_ocsp_request_general(mutant)


# common_request: the issuer part as sent, trusted only when it equals a known encoding.
KNOWN_PARTS = {
    encoding: cert_id[:3]
    for seed in [*SINGLE_SEEDS, LONG_FORM]
    for cert_id in parse_ocsp_request_general(seed).cert_ids
    for encoding in issuer_part_encodings(*cert_id[:3])
}


@pytest.mark.parametrize("der", SINGLE_SEEDS)
def test_common_request_gives_the_issuer_part_as_sent_and_the_serial_key(der: bytes) -> None:
    (cert_id,) = parse_ocsp_request_general(der).cert_ids
    common = common_request(der)
    assert common is not None
    part, serial_number = common
    assert part in issuer_part_encodings(*cert_id[:3])
    assert der.find(part) == 10  # as sent: right after the five SEQUENCE headers
    assert serial_number == cert_id.serial_number
    assert issuer_part(cert_id) == issuer_part_encodings(*cert_id[:3])[0]


def test_common_request_declines_other_shapes() -> None:
    assert common_request(BASE_WITH_NONCE) is None
    assert common_request(ocsp_request([REQUEST, REQUEST])) is None
    assert common_request(LONG_FORM) is None
    assert common_request(b"") is None


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(SINGLE_SEEDS) + 1)), st.lists(MUTATIONS, min_size=1, max_size=3))
def test_a_known_issuer_part_means_the_general_parser_reads_that_cert_id(
    seed_index: int, mutations: list[tuple[str, int, int]]
) -> None:
    mutant = mutate([*SINGLE_SEEDS, LONG_FORM][seed_index], mutations)
    common = common_request(mutant)
    if common is None or common[0] not in KNOWN_PARTS:
        event("declined or unknown issuer part")
        return
    event("known issuer part")
    part, serial_number = common
    assert parse_ocsp_request_general(mutant).cert_ids == (CertID(*KNOWN_PARTS[part], serial_number),)


@given(st.binary(max_size=119))
def test_common_request_never_raises(data: bytes) -> None:
    common_request(data)
    size = len(data) + 10  # random contents behind the five headers of their size
    common_request(bytes(b for n in range(2, 11, 2) for b in (0x30, (size - n) & 0xFF)) + data)


# ServedRequests: a served issuer's common request found by its beginning, read as common_request reads it.


def served(max_der_bytes: int = MAX_REQUEST_BYTES) -> ServedRequests:
    requests = ServedRequests(max_der_bytes)
    requests.serve_issuers(KNOWN_PARTS)
    return requests


@pytest.mark.parametrize(
    ("der", "read"),
    [
        (SINGLE_SEEDS[0], True),
        (SINGLE_SEEDS[1], False),  # padded serial number: common_request folds it
        (SINGLE_SEEDS[2], False),  # 21 octets: longer than RFC 5280 allows
        (SINGLE_SEEDS[3], True),  # serial number 0
        (crypto_request_by_hash(*fake_hashes("sha256"), 2**159 - 1, "sha256", None), True),  # 20 octets
        (simple_request(serial_content=b"\xff\x7f"), True),  # negative, minimal
        (crypto_request_by_hash(*fake_hashes("sha1"), 0x80, "sha1", None), True),  # 00 80: minimal
        (simple_request(serial_content=b"\xff\x80"), False),  # padded negative
        (simple_request(algorithm=algorithm_identifier(SHA1_OID, b"")), True),  # no NULL parameters
        (BASE_WITH_NONCE, False),
        (LONG_FORM, False),
        (simple_request(name_hash=b"\x33" * 20), False),  # an issuer not served
    ],
)
def test_served_requests_read_the_usual_requests_as_common_request_does(der: bytes, read: bool) -> None:
    assert served().read(der) == (common_request(der) if read else None)


def test_served_requests_follow_the_issuers_served_and_the_size_limit() -> None:
    der = SINGLE_SEEDS[0]
    requests = served()
    requests.serve_issuers([])
    assert requests.read(der) is None
    assert served(max_der_bytes=len(der)).read(der) is not None
    assert served(max_der_bytes=len(der) - 1).read(der) is None  # what the general way refuses as too large


@pytest.mark.parametrize("seed", [SINGLE_SEEDS[0], SINGLE_SEEDS[3], SINGLE_SEEDS[2][:-1]], ids=["1", "0", "20"])
def test_served_requests_read_no_request_with_one_byte_changed_otherwise(seed: bytes) -> None:
    """Every byte changed, dropped or doubled in turn: common_request's reading of it, or nothing."""
    requests = served()
    for at in range(len(seed)):
        for mutant in (
            *(seed[:at] + bytes((value,)) + seed[at + 1 :] for value in (0, 1, 0x7F, 0x80, 0xFF, seed[at] ^ 1)),
            seed[:at] + seed[at + 1 :],
            seed[:at] + seed[at : at + 1] + seed[at:],
        ):
            got = requests.read(mutant)
            if got is not None:
                assert got == common_request(mutant)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(SINGLE_SEEDS) + 1)), st.lists(MUTATIONS, min_size=1, max_size=3))
def test_served_requests_read_mutants_as_common_request_does(
    seed_index: int, mutations: list[tuple[str, int, int]]
) -> None:
    mutant = mutate([*SINGLE_SEEDS, LONG_FORM][seed_index], mutations)
    got = served().read(mutant)
    if got is None:
        event("not found")
        return
    event("found")
    assert got == common_request(mutant)
