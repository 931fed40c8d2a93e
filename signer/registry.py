"""The CA registry: creating and adding CAs, and loading what signs their OCSP responses."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from contract.store import IssuerRecord
from signer.certs import check_directly_issued, load_certificate, make_ca_certificate
from signer.inventory import add_certificates
from signer.keys import KeyError_, SigningKey, generate_key, load_private_key, write_private_key
from signer.ocsp_der import ResponseSigner
from signer.state import SignerError, SignerStore, check_ca_name, key_path


def _public_der(obj: x509.Certificate | SigningKey) -> bytes:
    public = obj.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def create_ca(
    store: SignerStore,
    name: str,
    key_type: str,
    days: int,
    parent_name: str | None,
    ocsp_url: str | None,
    now: dt.datetime,
) -> IssuerRecord:
    check_ca_name(name)
    if any(r.name == name for r in store.issuers()):
        raise SignerError(f"CA {name!r} already exists")
    try:
        key = generate_key(key_type)
    except KeyError_ as exc:
        raise SignerError(str(exc)) from None
    parent = None
    parent_record = None
    if parent_name is not None:
        parent_record = store.issuer(parent_name)
        parent = (x509.load_der_x509_certificate(parent_record.cert_der), load_ca_key(store.data_dir, parent_record))
    cert = make_ca_certificate(
        name, key, days, now, parent, parent_ocsp_url=parent_record.ocsp_url if parent_record else None
    )
    write_private_key(key_path(store.data_dir, name), key)
    record = store.add_issuer(
        IssuerRecord(
            number=0,
            name=name,
            cert_der=_der(cert),
            signing="ca",
            ocsp_url=ocsp_url,
            parent=parent_name,
            created_at=int(now.timestamp()),
        )
    )
    if parent_record is not None:
        # The parent's responder answers for its intermediate.
        add_certificates(store, parent_record, [cert], now=int(now.timestamp()))
    return record


def add_ca(
    store: SignerStore,
    name: str,
    cert_data: bytes,
    key_data: bytes | None,
    responder_cert_data: bytes | None,
    responder_key_data: bytes | None,
    ocsp_url: str | None,
    now: dt.datetime,
) -> IssuerRecord:
    """Bring an existing CA; its OCSP is signed by its own key or by a delegated responder."""
    check_ca_name(name)
    if any(r.name == name for r in store.issuers()):
        raise SignerError(f"CA {name!r} already exists")
    cert = load_certificate(cert_data, "--cert")
    if not _is_ca(cert):
        raise SignerError("--cert is not a CA certificate (basicConstraints cA is not true)")
    responder_der = None
    try:
        if key_data is not None:
            key = load_private_key(key_data, "--key")
            if _public_der(key) != _public_der(cert):
                raise SignerError("--key does not match the public key of --cert")
            signing = "ca"
            role = "ca"
        elif responder_cert_data is not None and responder_key_data is not None:
            responder = load_certificate(responder_cert_data, "--responder-cert")
            key = load_private_key(responder_key_data, "--responder-key")
            check_responder(responder, cert, now)
            if _public_der(key) != _public_der(responder):
                raise SignerError("--responder-key does not match the public key of --responder-cert")
            responder_der = _der(responder)
            signing = "delegate"
            role = "responder"
        else:
            raise SignerError("give --key, or both --responder-cert and --responder-key")
    except KeyError_ as exc:
        raise SignerError(str(exc)) from None
    write_private_key(key_path(store.data_dir, name, role), key)
    return store.add_issuer(
        IssuerRecord(
            number=0,
            name=name,
            cert_der=_der(cert),
            signing=signing,  # type: ignore[arg-type]
            responder_cert_der=responder_der,
            ocsp_url=ocsp_url,
            created_at=int(now.timestamp()),
        )
    )


def check_responder(responder: x509.Certificate, ca: x509.Certificate, now: dt.datetime) -> None:
    """RFC 6960 §4.2.2.2: a delegate is issued directly by the CA and carries id-kp-OCSPSigning."""
    if reason := check_directly_issued(responder, ca):
        raise SignerError(f"--responder-cert was not issued by this CA: {reason}")
    try:
        eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise SignerError("--responder-cert lacks the id-kp-OCSPSigning extended key usage")
    if responder.not_valid_after_utc <= now:
        raise SignerError("--responder-cert has expired")
    if responder.not_valid_before_utc > now:
        raise SignerError("--responder-cert is not valid yet")


def load_ca_key(data_dir: Path, record: IssuerRecord) -> SigningKey:
    if record.signing != "ca":
        raise SignerError(f"CA {record.name!r} was added without its key: it cannot issue certificates here")
    path = key_path(data_dir, record.name, "ca")
    return load_private_key(path.read_bytes(), str(path))


def load_response_signer(data_dir: Path, record: IssuerRecord) -> ResponseSigner:
    issuer = x509.load_der_x509_certificate(record.cert_der)
    if record.signing == "ca":
        return ResponseSigner(issuer, load_ca_key(data_dir, record))
    assert record.responder_cert_der is not None
    path = key_path(data_dir, record.name, "responder")
    key = load_private_key(path.read_bytes(), str(path))
    return ResponseSigner(issuer, key, x509.load_der_x509_certificate(record.responder_cert_der))
