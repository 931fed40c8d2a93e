"""signer.registry: creating and adding CAs, delegated responders, and what is (not) written on refusal."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import stat
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from contract.store import IssuerRecord
from signer.inventory import status
from signer.registry import (
    add_ca,
    check_responder,
    create_ca,
    load_response_signer,
    mint_responder,
    remove_responder,
    renew_ca,
    renew_responders,
    set_responder,
)
from signer.state import SignerError, SignerStore
from tests.signer.conftest import PrivateKey, build_ca, build_delegate, build_leaf, key_pem, name, pem, pool_key

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
START = NOW - dt.timedelta(days=1)
END = NOW + dt.timedelta(days=365)


def keys_dir(data_dir: Path) -> Path:
    return data_dir / "signer" / "keys"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def public_der(obj: x509.Certificate | PrivateKey) -> bytes:
    return obj.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def responder_key_file(data_dir: Path, name: str, responder: x509.Certificate | bytes) -> Path:
    """The file the key of ``responder`` is kept in: one per certificate, named by its SHA-256."""
    der = responder if isinstance(responder, bytes) else responder.public_bytes(serialization.Encoding.DER)
    return keys_dir(data_dir) / f"{name}.responder-{hashlib.sha256(der).hexdigest()[:16]}.key"


def load_key(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return key


# ---------------------------------------------------------------------------- create_ca


@pytest.mark.parametrize(
    ("key_type", "check"),
    [
        ("ec-p256", lambda k: isinstance(k, ec.EllipticCurvePrivateKey) and k.curve.name == "secp256r1"),
        ("ec-p384", lambda k: isinstance(k, ec.EllipticCurvePrivateKey) and k.curve.name == "secp384r1"),
        ("rsa-2048", lambda k: isinstance(k, rsa.RSAPrivateKey) and k.key_size == 2048),
    ],
)
def test_create_self_signed_ca(st: SignerStore, data_dir: Path, key_type: str, check: object) -> None:
    generation = st.registry_generation()
    record = create_ca(st, "Root-1", key_type, 30, None, "http://ocsp.example/root", NOW)
    assert record.number == 1
    assert (record.name, record.signing, record.parent, record.ocsp_url) == (
        "Root-1",
        "ca",
        None,
        "http://ocsp.example/root",
    )
    assert record.responder_cert_der is None
    assert record.created_at == int(NOW.timestamp())
    assert st.issuer("Root-1") == record
    assert st.issuers() == [record]
    assert st.registry_generation() == generation + 1

    cert = x509.load_der_x509_certificate(record.cert_der)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Root-1"
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert cert.not_valid_before_utc <= NOW < cert.not_valid_after_utc
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc) == dt.timedelta(days=30)

    path = keys_dir(data_dir) / "Root-1.ca.key"
    assert path.is_file()
    assert mode(path) == 0o600
    assert mode(keys_dir(data_dir)) & 0o077 == 0
    assert mode(data_dir / "signer") & 0o077 == 0
    key = load_key(path)
    assert check(key)  # type: ignore[operator]
    assert public_der(key) == public_der(cert)
    assert list(keys_dir(data_dir).iterdir()) == [path]
    # What the precomputer loads signs with that key.
    assert load_response_signer(data_dir, record) is not None


def test_create_intermediate(st: SignerStore, data_dir: Path) -> None:
    root = create_ca(st, "root", "ec-p256", 30, None, "http://ocsp.example/root", NOW)
    sub = create_ca(st, "sub", "ec-p384", 3650, "root", "http://ocsp.example/sub", NOW)
    assert (sub.number, sub.parent, sub.signing) == (2, "root", "ca")
    root_cert = x509.load_der_x509_certificate(root.cert_der)
    sub_cert = x509.load_der_x509_certificate(sub.cert_der)
    assert sub_cert.issuer == root_cert.subject
    assert sub_cert.subject != root_cert.subject
    sub_cert.verify_directly_issued_by(root_cert)
    with pytest.raises(Exception):  # noqa: B017 - not self-signed
        sub_cert.verify_directly_issued_by(sub_cert)
    assert sub_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # Never outlives its parent.
    assert sub_cert.not_valid_after_utc <= root_cert.not_valid_after_utc
    # Its AIA points at the parent's responder, which answers for it.
    aia = sub_cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    ocsp_urls = [d.access_location.value for d in aia if d.access_method == AuthorityInformationAccessOID.OCSP]
    assert ocsp_urls == ["http://ocsp.example/root"]
    aki = sub_cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == x509.SubjectKeyIdentifier.from_public_key(root_cert.public_key()).digest

    # The parent's inventory holds the intermediate, queued for signing.
    record, responses, pending = status(st, root, sub_cert.serial_number)
    assert record.cert_der == sub.cert_der
    assert record.not_after == int(sub_cert.not_valid_after_utc.timestamp())
    assert record.revoked_at is None
    assert responses == []
    assert pending is True
    with pytest.raises(SignerError):
        status(st, sub, sub_cert.serial_number)  # not in its own inventory

    sub_key_path = keys_dir(data_dir) / "sub.ca.key"
    assert mode(sub_key_path) == 0o600
    assert public_der(load_key(sub_key_path)) == public_der(sub_cert)
    assert isinstance(load_key(sub_key_path), ec.EllipticCurvePrivateKey)


def test_create_ca_under_an_unknown_parent(st: SignerStore, data_dir: Path) -> None:
    with pytest.raises(SignerError, match="unknown CA 'nope'"):
        create_ca(st, "sub", "ec-p256", 30, "nope", None, NOW)
    assert st.issuers() == []
    assert not (keys_dir(data_dir) / "sub.ca.key").exists()


def test_create_ca_unknown_key_type(st: SignerStore, data_dir: Path) -> None:
    with pytest.raises(SignerError, match="unknown key type"):
        create_ca(st, "x", "dsa-1024", 30, None, None, NOW)
    assert st.issuers() == []


def test_create_ca_duplicate_name(st: SignerStore, data_dir: Path) -> None:
    first = create_ca(st, "dup", "ec-p256", 30, None, None, NOW)
    key_bytes = (keys_dir(data_dir) / "dup.ca.key").read_bytes()
    with pytest.raises(SignerError, match="already exists"):
        create_ca(st, "dup", "ec-p256", 30, None, None, NOW)
    assert st.issuers() == [first]
    assert (keys_dir(data_dir) / "dup.ca.key").read_bytes() == key_bytes  # the key is never overwritten


@pytest.mark.parametrize(
    "bad",
    ["", "cacerts", "CACerts", "simpleenroll", "fullcmc", "a/b", "../x", ".hidden", "-x", "a b", "x" * 65, "é"],
)
def test_create_ca_invalid_names(st: SignerStore, data_dir: Path, bad: str) -> None:
    with pytest.raises(SignerError, match="invalid CA name"):
        create_ca(st, bad, "ec-p256", 30, None, None, NOW)
    assert st.issuers() == []
    assert not keys_dir(data_dir).exists() or list(keys_dir(data_dir).iterdir()) == []


@pytest.mark.parametrize("good", ["a", "x" * 64, "A.b_c-1", "9lives"])
def test_create_ca_valid_names(st: SignerStore, good: str) -> None:
    assert create_ca(st, good, "ec-p256", 1, None, None, NOW).name == good


def test_create_ca_invalid_days(st: SignerStore) -> None:
    with pytest.raises(SignerError, match="--days"):
        create_ca(st, "zero", "ec-p256", 0, None, None, NOW)


# ---------------------------------------------------------------------------- add_ca


@pytest.fixture(scope="module")
def external_ca() -> tuple[x509.Certificate, PrivateKey]:
    key = pool_key("ec-p256", 30)
    return build_ca(key, "External CA", START, END), key


@pytest.fixture(scope="module")
def other_ca() -> tuple[x509.Certificate, PrivateKey]:
    key = pool_key("ec-p256", 31)
    return build_ca(key, "Other CA", START, END), key


def test_add_ca_with_its_key(
    st: SignerStore,
    data_dir: Path,
    external_ca: tuple[x509.Certificate, PrivateKey],
    other_ca: tuple[x509.Certificate, PrivateKey],
) -> None:
    cert, key = external_ca
    record = add_ca(st, "ext", pem(cert), key_pem(key), None, None, "http://ocsp.example/ext", NOW)
    assert (record.number, record.signing, record.responder_cert_der, record.ocsp_url) == (
        1,
        "ca",
        None,
        "http://ocsp.example/ext",
    )
    assert record.cert_der == cert.public_bytes(serialization.Encoding.DER)
    path = keys_dir(data_dir) / "ext.ca.key"
    assert mode(path) == 0o600
    assert public_der(load_key(path)) == public_der(key)
    # DER input is accepted too.
    other, other_key = other_ca
    der_key = other_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    record2 = add_ca(st, "other-der", other.public_bytes(serialization.Encoding.DER), der_key, None, None, None, NOW)
    assert record2.number == 2


def test_add_ca_key_does_not_match(
    st: SignerStore, data_dir: Path, external_ca: tuple[x509.Certificate, PrivateKey]
) -> None:
    cert, _ = external_ca
    with pytest.raises(SignerError, match="--key does not match"):
        add_ca(st, "ext", pem(cert), key_pem(pool_key("ec-p256", 32)), None, None, None, NOW)
    assert st.issuers() == []
    assert not (keys_dir(data_dir) / "ext.ca.key").exists()


def test_add_ca_garbage_inputs(st: SignerStore, external_ca: tuple[x509.Certificate, PrivateKey]) -> None:
    cert, key = external_ca
    with pytest.raises(SignerError, match=r"not an X\.509 certificate"):
        add_ca(st, "ext", b"not a cert", key_pem(key), None, None, None, NOW)
    with pytest.raises(SignerError, match="--key"):
        add_ca(
            st,
            "ext",
            pem(cert),
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            None,
            None,
            None,
            NOW,
        )
    with pytest.raises(SignerError, match="give --key"):
        add_ca(st, "ext", pem(cert), None, None, None, None, NOW)
    with pytest.raises(SignerError, match="give --key"):
        add_ca(st, "ext", pem(cert), None, pem(cert), None, None, NOW)
    assert st.issuers() == []


def test_add_ca_duplicate_and_invalid_name(st: SignerStore, external_ca: tuple[x509.Certificate, PrivateKey]) -> None:
    cert, key = external_ca
    add_ca(st, "ext", pem(cert), key_pem(key), None, None, None, NOW)
    with pytest.raises(SignerError, match="already exists"):
        add_ca(st, "ext", pem(cert), key_pem(key), None, None, None, NOW)
    with pytest.raises(SignerError, match="invalid CA name"):
        add_ca(st, "cacerts", pem(cert), key_pem(key), None, None, None, NOW)


@pytest.mark.parametrize("basic_constraints", [True, False], ids=["ca-false", "no-basic-constraints"])
def test_add_ca_refuses_a_non_ca_certificate(st: SignerStore, data_dir: Path, basic_constraints: bool) -> None:
    key = pool_key("ec-p256", 33)
    cert = build_ca(key, "Not a CA", START, END, ca=False, basic_constraints=basic_constraints)
    with pytest.raises(SignerError, match="not a CA certificate"):
        add_ca(st, "leafy", pem(cert), key_pem(key), None, None, None, NOW)
    assert st.issuers() == []
    assert not (keys_dir(data_dir) / "leafy.ca.key").exists()


def test_add_ca_with_delegated_responder(
    st: SignerStore, data_dir: Path, external_ca: tuple[x509.Certificate, PrivateKey]
) -> None:
    cert, ca_key = external_ca
    responder_key = pool_key("ec-p256", 34)
    delegate = build_delegate(cert, ca_key, responder_key, START, END)
    record = add_ca(st, "ext", pem(cert), None, pem(delegate), key_pem(responder_key), None, NOW)
    assert record.signing == "delegate"
    assert record.responder_cert_der == delegate.public_bytes(serialization.Encoding.DER)
    assert record.cert_der == cert.public_bytes(serialization.Encoding.DER)
    path = responder_key_file(data_dir, "ext", delegate)
    assert mode(path) == 0o600
    assert public_der(load_key(path)) == public_der(responder_key)
    assert not (keys_dir(data_dir) / "ext.ca.key").exists()  # the CA's key never comes here
    # Such a CA cannot issue or parent: the registry has no key for it.
    with pytest.raises(SignerError, match="without its key"):
        create_ca(st, "child", "ec-p256", 30, "ext", None, NOW)


def test_add_ca_delegate_without_nocheck_is_accepted(
    st: SignerStore, external_ca: tuple[x509.Certificate, PrivateKey]
) -> None:
    cert, ca_key = external_ca
    responder_key = pool_key("ec-p256", 35)
    delegate = build_delegate(cert, ca_key, responder_key, START, END, nocheck=False)
    second_key = pool_key("ec-p256", 39)
    second = build_ca(second_key, "Second External CA", START, END)
    eku_many = build_delegate(
        second,
        second_key,
        responder_key,
        START,
        END,
        eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.OCSP_SIGNING],
    )
    assert add_ca(st, "a", pem(cert), None, pem(delegate), key_pem(responder_key), None, NOW).signing == "delegate"
    assert add_ca(st, "b", pem(second), None, pem(eku_many), key_pem(responder_key), None, NOW).signing == "delegate"


def _impostor_ca(cert: x509.Certificate, key: PrivateKey) -> x509.Certificate:
    """A CA certificate with the same subject as ``cert`` but another key."""
    return (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START)
        .not_valid_after(END)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-eku", "lacks the id-kp-OCSPSigning"),
        ("wrong-eku", "lacks the id-kp-OCSPSigning"),
        ("other-ca", "not issued by this CA: issuer name differs"),
        ("same-name-other-key", "not issued by this CA: signature does not verify"),
        ("expired", "has expired"),
        ("key-mismatch", "--responder-key does not match"),
    ],
)
def test_add_ca_refuses_bad_delegates(
    st: SignerStore,
    data_dir: Path,
    external_ca: tuple[x509.Certificate, PrivateKey],
    other_ca: tuple[x509.Certificate, PrivateKey],
    case: str,
    message: str,
) -> None:
    cert, ca_key = external_ca
    responder_key = pool_key("ec-p256", 36)
    given_key = responder_key
    if case == "no-eku":
        delegate = build_delegate(cert, ca_key, responder_key, START, END, eku=[])
    elif case == "wrong-eku":
        delegate = build_delegate(cert, ca_key, responder_key, START, END, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    elif case == "other-ca":
        delegate = build_delegate(other_ca[0], other_ca[1], responder_key, START, END)
    elif case == "same-name-other-key":
        impostor_key = pool_key("ec-p256", 37)
        delegate = build_delegate(_impostor_ca(cert, impostor_key), impostor_key, responder_key, START, END)
    elif case == "expired":
        delegate = build_delegate(cert, ca_key, responder_key, NOW - dt.timedelta(days=30), NOW - dt.timedelta(days=1))
    else:
        delegate = build_delegate(cert, ca_key, responder_key, START, END)
        given_key = pool_key("ec-p256", 38)
    with pytest.raises(SignerError, match=message):
        add_ca(st, "ext", pem(cert), None, pem(delegate), key_pem(given_key), None, NOW)
    assert st.issuers() == []
    assert not keys_dir(data_dir).exists() or list(keys_dir(data_dir).iterdir()) == []


def test_check_responder_expiry_boundary(external_ca: tuple[x509.Certificate, PrivateKey]) -> None:
    cert, ca_key = external_ca
    end = NOW + dt.timedelta(hours=1)
    delegate = build_delegate(cert, ca_key, pool_key("ec-p256", 39), START, end)
    check_responder(delegate, cert, end - dt.timedelta(seconds=1))
    with pytest.raises(SignerError, match="expired"):
        check_responder(delegate, cert, end)


def test_responder_cert_signed_by_ca_must_be_direct(
    st: SignerStore, external_ca: tuple[x509.Certificate, PrivateKey]
) -> None:
    """A responder issued by an intermediate of the CA is not a delegate of the CA itself."""
    cert, ca_key = external_ca
    inter_key = pool_key("ec-p256", 40)
    intermediate = build_ca(inter_key, "Intermediate", START, END, issuer=(cert, ca_key))
    responder_key = pool_key("ec-p256", 41)
    delegate = build_delegate(intermediate, inter_key, responder_key, START, END)
    with pytest.raises(SignerError, match="not issued by this CA"):
        add_ca(st, "ext", pem(cert), None, pem(delegate), key_pem(responder_key), None, NOW)


def test_issuer_records_round_trip(st: SignerStore, external_ca: tuple[x509.Certificate, PrivateKey]) -> None:
    cert, key = external_ca
    a = create_ca(st, "a", "ec-p256", 30, None, None, NOW)
    b = add_ca(st, "b", pem(cert), key_pem(key), None, None, None, NOW)
    assert [r.number for r in (a, b)] == [1, 2]
    assert sorted(st.issuers(), key=lambda r: r.number) == [a, b]
    assert isinstance(st.issuer("b"), IssuerRecord)
    with pytest.raises(SignerError, match="unknown CA 'c'"):
        st.issuer("c")
    leaf = build_leaf(cert, key, 5, START, END)
    assert leaf.issuer == name("External CA")


@pytest.mark.parametrize("bad", ["root\n", "cacerts\n"])
def test_create_ca_refuses_a_trailing_newline(st: SignerStore, data_dir: Path, bad: str) -> None:
    with pytest.raises(SignerError, match="invalid CA name"):
        create_ca(st, bad, "ec-p256", 30, None, None, NOW)
    assert st.issuers() == []


# ---------------------------------------------------------------------------- a CA's responder over time

WEEK = 7 * 86400  # the responses' validity in these tests


def add_delegated_ext(st: SignerStore, external_ca: tuple[x509.Certificate, PrivateKey]) -> x509.Certificate:
    """external_ca added as "ext", without its key, with a delegate; the delegate."""
    cert, ca_key = external_ca
    delegate = build_delegate(cert, ca_key, pool_key("ec-p256", 34), START, END)
    add_ca(st, "ext", pem(cert), None, pem(delegate), key_pem(pool_key("ec-p256", 34)), None, NOW)
    return delegate


def test_a_responder_added_before_keys_were_kept_per_certificate_still_loads(
    st: SignerStore, data_dir: Path, external_ca: tuple[x509.Certificate, PrivateKey]
) -> None:
    delegate = add_delegated_ext(st, external_ca)
    record = st.issuer("ext")
    responder_key_file(data_dir, "ext", delegate).rename(keys_dir(data_dir) / "ext.responder.key")
    assert load_response_signer(data_dir, record).valid_until == int(END.timestamp())
    # Replacing it removes the old file wherever it is.
    successor_key = pool_key("ec-p256", 36)
    successor = build_delegate(*external_ca, successor_key, START, END, cn="successor")
    set_responder(st, "ext", pem(successor), key_pem(successor_key), NOW)
    assert sorted(p.name for p in keys_dir(data_dir).iterdir()) == [responder_key_file(data_dir, "ext", successor).name]


def test_mint_responder_issues_a_delegate_with_the_ca_key(st: SignerStore, data_dir: Path) -> None:
    record = create_ca(st, "rsa", "rsa-2048", 3650, None, None, NOW)
    generation = st.registry_generation()
    minted = mint_responder(st, "rsa", "ec-p256", 30, NOW, WEEK)
    assert st.registry_generation() == generation + 1  # signer and workers reload what signs
    assert minted.responder_minted and minted.signing == "ca"  # it still issues
    assert st.issuer("rsa") == minted
    ca = x509.load_der_x509_certificate(record.cert_der)
    assert minted.responder_cert_der is not None
    responder = x509.load_der_x509_certificate(minted.responder_cert_der)
    check_responder(responder, ca, NOW)  # issued by the CA, id-kp-OCSPSigning, valid now
    assert responder.extensions.get_extension_for_class(x509.OCSPNoCheck).critical is False
    usage = responder.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert responder.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert responder.not_valid_after_utc - responder.not_valid_before_utc == dt.timedelta(days=30)
    public = responder.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    assert mode(responder_key_file(data_dir, "rsa", responder)) == 0o600
    signer = load_response_signer(data_dir, minted)
    assert signer.valid_until == int(responder.not_valid_after_utc.timestamp())


def test_mint_responder_refusals(st: SignerStore, external_ca: tuple[x509.Certificate, PrivateKey]) -> None:
    create_ca(st, "ca", "ec-p256", 3650, None, None, NOW)
    with pytest.raises(SignerError, match="at least 14"):
        mint_responder(st, "ca", "ec-p256", 13, NOW, WEEK)
    with pytest.raises(SignerError, match="unknown key type"):
        mint_responder(st, "ca", "dsa-1024", 30, NOW, WEEK)
    with pytest.raises(SignerError, match="unknown CA"):
        mint_responder(st, "nope", "ec-p256", 30, NOW, WEEK)
    add_delegated_ext(st, external_ca)
    with pytest.raises(SignerError, match="without its key"):
        mint_responder(st, "ext", "ec-p256", 30, NOW, WEEK)
    assert st.issuer("ca").responder_cert_der is None


def test_set_responder_checks_it_as_add_does(
    st: SignerStore,
    data_dir: Path,
    external_ca: tuple[x509.Certificate, PrivateKey],
    other_ca: tuple[x509.Certificate, PrivateKey],
) -> None:
    cert, ca_key = external_ca
    add_ca(st, "ext", pem(cert), key_pem(ca_key), None, None, None, NOW)
    responder_key = pool_key("ec-p256", 34)
    foreign = build_delegate(other_ca[0], other_ca[1], responder_key, START, END)
    noeku = build_delegate(cert, ca_key, responder_key, START, END, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    good = build_delegate(cert, ca_key, responder_key, START, END)
    for bad, key, message in [
        (foreign, responder_key, "not issued by this CA"),
        (noeku, responder_key, "OCSPSigning"),
        (good, pool_key("ec-p256", 35), "does not match"),
    ]:
        with pytest.raises(SignerError, match=message):
            set_responder(st, "ext", pem(bad), key_pem(key), NOW)
    assert st.issuer("ext").responder_cert_der is None
    assert sorted(p.name for p in keys_dir(data_dir).iterdir()) == ["ext.ca.key"]  # nothing written for them
    changed = set_responder(st, "ext", pem(good), key_pem(responder_key), NOW)
    assert changed.signing == "ca" and not changed.responder_minted
    assert load_response_signer(data_dir, changed).valid_until == int(END.timestamp())


def test_remove_responder(st: SignerStore, data_dir: Path, external_ca: tuple[x509.Certificate, PrivateKey]) -> None:
    create_ca(st, "ca", "ec-p256", 3650, None, None, NOW)
    with pytest.raises(SignerError, match="has no delegated responder"):
        remove_responder(st, "ca")
    minted = mint_responder(st, "ca", "ec-p256", 30, NOW, WEEK)
    assert minted.responder_cert_der is not None
    removed = remove_responder(st, "ca")
    assert removed.responder_cert_der is None and not removed.responder_minted
    assert not responder_key_file(data_dir, "ca", minted.responder_cert_der).exists()
    signer = load_response_signer(data_dir, removed)  # the CA's own key again
    ca = x509.load_der_x509_certificate(removed.cert_der)
    assert signer.valid_until == int(ca.not_valid_after_utc.timestamp())
    add_delegated_ext(st, external_ca)
    with pytest.raises(SignerError, match="all that can sign"):
        remove_responder(st, "ext")


def test_minted_responders_are_renewed_at_half_their_lifetime(
    st: SignerStore, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    create_ca(st, "ca", "rsa-2048", 3650, None, None, NOW)
    create_ca(st, "plain", "ec-p256", 3650, None, None, NOW)  # no responder: nothing to renew
    first = mint_responder(st, "ca", "ec-p384", 30, NOW, WEEK)
    assert first.responder_cert_der is not None
    old = x509.load_der_x509_certificate(first.responder_cert_der)
    logger = logging.getLogger("test")
    half = old.not_valid_before_utc + dt.timedelta(days=15)
    assert renew_responders(st, half - dt.timedelta(seconds=1), logger) == []
    [renewed] = renew_responders(st, half, logger)
    assert renewed == st.issuer("ca") and renewed.responder_minted
    assert renewed.responder_cert_der is not None
    new = x509.load_der_x509_certificate(renewed.responder_cert_der)
    assert new.serial_number != old.serial_number
    assert new.not_valid_after_utc - new.not_valid_before_utc == dt.timedelta(days=30)  # same lifetime
    assert new.not_valid_before_utc == half - dt.timedelta(minutes=5)
    public = new.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"  # same key type
    assert not responder_key_file(data_dir, "ca", old).exists()
    assert load_response_signer(data_dir, renewed).valid_until == int(new.not_valid_after_utc.timestamp())
    assert renew_responders(st, half, logger) == []  # the successor is young
    # A responder given by the operator is theirs to renew.
    responder_key = pool_key("ec-p256", 37)
    ca_cert = x509.load_der_x509_certificate(renewed.cert_der)
    ca_key = load_key(keys_dir(data_dir) / "ca.ca.key")
    given = build_delegate(ca_cert, ca_key, responder_key, START, START + dt.timedelta(days=2))
    set_responder(st, "ca", pem(given), key_pem(responder_key), NOW)
    assert renew_responders(st, NOW + dt.timedelta(days=1), logger) == []


def test_a_renewal_that_fails_is_logged_and_others_go_on(
    st: SignerStore, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    create_ca(st, "a", "ec-p256", 3650, None, None, NOW)
    create_ca(st, "b", "ec-p256", 3650, None, None, NOW)
    mint_responder(st, "a", "ec-p256", 30, NOW, WEEK)
    mint_responder(st, "b", "ec-p256", 30, NOW, WEEK)
    (keys_dir(data_dir) / "a.ca.key").unlink()  # the CA key is gone
    with caplog.at_level(logging.ERROR):
        renewed = renew_responders(st, NOW + dt.timedelta(days=16), logging.getLogger("test"))
    assert [r.name for r in renewed] == ["b"]
    assert "CA a: cannot renew its OCSP responder" in caplog.text


def test_a_record_changed_meanwhile_is_not_overwritten(st: SignerStore) -> None:
    # The CLI and the signer's renewal may both change a CA: the second to write, on a stale read, is refused.
    record = create_ca(st, "ca", "ec-p256", 3650, None, None, NOW)
    minted = mint_responder(st, "ca", "ec-p256", 30, NOW, WEEK)
    generation = st.registry_generation()
    with pytest.raises(SignerError, match="changed meanwhile"):
        st.replace_issuer(record, msgspec.structs.replace(record, ocsp_url="http://stale.example/"))
    assert st.issuer("ca") == minted
    assert st.registry_generation() == generation


def test_a_ca_already_registered_under_another_name_is_refused(
    st: SignerStore, data_dir: Path, external_ca: tuple[x509.Certificate, PrivateKey]
) -> None:
    # Same subject and key: every CertID would name both, and one CA's revocations could be answered
    # from the other's inventory.
    cert, key = external_ca
    add_ca(st, "ext", pem(cert), key_pem(key), None, None, None, NOW)
    reissued = build_ca(key, "External CA", START, END + dt.timedelta(days=1))  # a new certificate, same name and key
    for again in (cert, reissued):
        with pytest.raises(SignerError, match="'ext' has this subject and key already"):
            add_ca(st, "ext-again", pem(again), key_pem(key), None, None, None, NOW)
    created = create_ca(st, "made", "ec-p256", 30, None, None, NOW)
    with pytest.raises(SignerError, match="'made' has this subject and key already"):
        add_ca(
            st, "made-again", created.cert_der, (keys_dir(data_dir) / "made.ca.key").read_bytes(), None, None, None, NOW
        )
    assert [r.name for r in st.issuers()] == ["ext", "made"]
    assert sorted(p.name for p in keys_dir(data_dir).iterdir()) == ["ext.ca.key", "made.ca.key"]
    # The same subject with another key is another CA.
    other = build_ca(pool_key("ec-p256", 38), "External CA", START, END)
    add_ca(st, "ext-other-key", pem(other), key_pem(pool_key("ec-p256", 38)), None, None, None, NOW)


class _IssuerRecordBeforeResponders(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """contract.store.IssuerRecord as an edge of the version before `ca responder` decodes it."""

    number: int
    name: str
    cert_der: bytes
    signing: str
    responder_cert_der: bytes | None = None
    ocsp_url: str | None = None
    parent: str | None = None
    created_at: int = 0


def test_records_without_a_minted_responder_still_decode_on_an_older_edge(st: SignerStore) -> None:
    # An edge refuses unknown fields: the new field is written only in the records that use it, so an
    # edge upgraded after its signer keeps reading every other CA.
    create_ca(st, "plain", "ec-p256", 3650, None, None, NOW)
    create_ca(st, "minted", "ec-p256", 3650, None, None, NOW)
    mint_responder(st, "minted", "ec-p256", 30, NOW, WEEK)
    old = msgspec.msgpack.Decoder(_IssuerRecordBeforeResponders)
    with st.env.begin(db=st.issuers_db) as txn:
        raw = {bytes(k): bytes(v) for k, v in txn.cursor()}
    assert old.decode(raw[b"plain"]).name == "plain"
    with pytest.raises(msgspec.ValidationError, match="responder_minted"):
        old.decode(raw[b"minted"])


# ---------------------------------------------------------------------------- renewal


def test_renewing_a_root_and_its_sub_ca_keeps_subject_key_and_chains(st: SignerStore, data_dir: Path) -> None:
    """Found by the audit: a CA near its notAfter could not be given a renewed certificate at all."""
    root = create_ca(st, "root", "ec-p256", 1, None, None, NOW)
    sub = create_ca(st, "sub", "ec-p256", 1, "root", None, NOW)
    sub_cert = x509.load_der_x509_certificate(sub.cert_der)
    sub_key = load_key(keys_dir(data_dir) / "sub.ca.key")
    leaf = build_leaf(sub_cert, sub_key, 7, NOW - dt.timedelta(hours=1), NOW + dt.timedelta(hours=12))
    with pytest.raises(SignerError, match="ends with its parent, CA 'root': renew that one first"):
        renew_ca(st, "sub", None, 30, NOW)
    new_root, root_cert = renew_ca(st, "root", None, 30, NOW)
    new_sub, renewed = renew_ca(st, "sub", None, 30, NOW)
    assert (new_root.number, new_sub.number) == (root.number, sub.number)
    for old, new in ((x509.load_der_x509_certificate(root.cert_der), root_cert), (sub_cert, renewed)):
        assert new.subject == old.subject and public_der(new) == public_der(old)
        assert list(new.extensions) == list(old.extensions) and new.serial_number != old.serial_number
        assert new.not_valid_after_utc == NOW - dt.timedelta(minutes=5) + dt.timedelta(days=30)
    root_cert.verify_directly_issued_by(root_cert)
    renewed.verify_directly_issued_by(root_cert)
    leaf.verify_directly_issued_by(renewed)  # what the old certificate issued chains to the new one
    assert st.issuer("sub").cert_der == renewed.public_bytes(serialization.Encoding.DER)
    assert status(st, new_root, renewed.serial_number)[0].cert_der == new_sub.cert_der  # the parent answers for it


def test_a_renewal_made_elsewhere_is_checked(st: SignerStore, data_dir: Path) -> None:
    ca_key, other_key = pool_key("ec-p256", 31), pool_key("ec-p256", 32)
    current = build_ca(ca_key, "Imported CA", NOW - dt.timedelta(days=300), NOW + dt.timedelta(days=5))
    add_ca(st, "imported", pem(current), key_pem(ca_key), None, None, None, NOW)

    def renewal(key: PrivateKey = ca_key, cn: str = "Imported CA", days: int = 400, start_days: int = -1) -> bytes:
        start = NOW + dt.timedelta(days=start_days)
        return pem(build_ca(key, cn, start, start + dt.timedelta(days=days)))

    refused = {
        "another key": (renewal(key=other_key), "its subject and public key must be the CA's"),
        "another subject": (renewal(cn="Other"), "its subject and public key must be the CA's"),
        "not yet valid": (renewal(start_days=2), "not valid now"),
        "ending sooner": (renewal(days=3), "does not end later"),
        "not a CA": (pem(build_ca(ca_key, "Imported CA", NOW, NOW + dt.timedelta(days=400), ca=False)), "not a CA"),
    }
    for label, (data, said) in refused.items():
        with pytest.raises(SignerError, match=said):
            renew_ca(st, "imported", data, None, NOW)
        assert st.issuer("imported").cert_der == current.public_bytes(serialization.Encoding.DER), label
    given = renewal()
    record, renewed = renew_ca(st, "imported", given, None, NOW)
    assert renewed.public_bytes(serialization.Encoding.PEM) == given
    assert load_response_signer(data_dir, record).valid_until == int(renewed.not_valid_after_utc.timestamp())


def test_a_ca_without_its_key_or_its_issuer_needs_the_renewal_given(st: SignerStore) -> None:
    ca_key, responder_key, parent_key = pool_key("ec-p256", 33), pool_key("ec-p256", 34), pool_key("ec-p256", 35)
    ca = build_ca(ca_key, "Keyless CA", NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=400))
    responder = build_delegate(ca, ca_key, responder_key, NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=30))
    add_ca(st, "keyless", pem(ca), None, pem(responder), key_pem(responder_key), None, NOW)
    with pytest.raises(SignerError, match="added without its key: give its renewed certificate with --cert"):
        renew_ca(st, "keyless", None, 30, NOW)
    parent = build_ca(parent_key, "Outside Root", NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=900))
    inter = build_ca(
        ca_key, "Outside Inter", NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=9), issuer=(parent, parent_key)
    )
    add_ca(st, "inter", pem(inter), key_pem(ca_key), None, None, None, NOW)
    with pytest.raises(
        SignerError, match="the issuer of CA 'inter' is not in the registry: give its renewed certificate"
    ):
        renew_ca(st, "inter", None, 30, NOW)
