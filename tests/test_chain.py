"""Paths through the registry's CAs (``contract.chain``): who issued a certificate, and a revocation on
any path up from it (RFC 5280 §6.1.3)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from contract.chain import check_directly_issued, issued, revoking_ca, serial_number

NOW = dt.datetime.now(dt.UTC)
Key = ec.EllipticCurvePrivateKey


def _cert(cn: str, key: Key, issuer: tuple[str, Key] | None, serial: int) -> x509.Certificate:
    issuer_cn, signing_key = issuer or (cn, key)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signing_key, hashes.SHA256())
    )


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


KEYS = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("root", "other-root", "sub", "leaf")}
ROOT = _cert("root", KEYS["root"], None, 1)
OTHER_ROOT = _cert("other-root", KEYS["other-root"], None, 2)
SUB = _cert("sub", KEYS["sub"], ("root", KEYS["root"]), 10)
SUB_CROSS = _cert("sub", KEYS["sub"], ("other-root", KEYS["other-root"]), 20)  # the same CA, cross-certified
LEAF = _cert("leaf", KEYS["leaf"], ("sub", KEYS["sub"]), 100)
CAS = [(1, _der(ROOT)), (2, _der(OTHER_ROOT)), (3, _der(SUB)), (4, _der(SUB_CROSS))]


def test_who_issued_a_certificate_is_its_issuer_name_and_signature() -> None:
    assert check_directly_issued(SUB, ROOT) is None
    assert check_directly_issued(SUB, OTHER_ROOT) == "issuer name differs from the CA's subject"
    impostor = _cert("root", ec.generate_private_key(ec.SECP256R1()), None, 3)  # root's name, another key
    assert check_directly_issued(SUB, impostor) == "signature does not verify with the CA's key"
    assert issued(_der(SUB), _der(ROOT)) and not issued(_der(SUB), _der(impostor))
    assert not issued(_der(ROOT), _der(ROOT))  # a self-signed certificate issues no path
    assert issued(_der(LEAF), _der(SUB)) and issued(_der(LEAF), _der(SUB_CROSS))  # same subject and key
    assert serial_number(_der(LEAF)) == 100


def test_a_revocation_anywhere_up_any_path_is_found_and_by_whom() -> None:
    def revoking(revoked: set[tuple[int, int]]) -> int | None:
        asked: list[tuple[int, int]] = []

        def lookup(number: int, serial: int) -> bool:
            asked.append((number, serial))
            return (number, serial) in revoked

        found = revoking_ca(_der(LEAF), CAS, lookup)
        assert len(asked) == len(set(asked)), asked  # each CA's inventory read once per certificate
        return found

    assert revoking(set()) is None
    assert revoking({(3, 100)}) == 3  # the leaf, by the sub-CA
    assert revoking({(4, 100)}) == 4  # by the sub-CA's cross-certified certificate
    # The sub-CA revoked by either root: taken, though the other path is intact (stricter than "some
    # valid path": whoever issued a CA may have revoked it for a reason that holds for all its paths).
    assert revoking({(1, 10)}) == 1
    assert revoking({(2, 20)}) == 2
    assert revoking({(1, 20), (2, 10)}) is None  # serials revoked by CAs that did not issue them
    assert revoking_ca(_der(ROOT), CAS, lambda number, serial: True) is None  # nothing above a root
