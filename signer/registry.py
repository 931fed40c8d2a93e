"""The CA registry: creating and adding CAs, and loading what signs their OCSP responses."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
from pathlib import Path

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from contract.chain import check_directly_issued
from contract.store import IssuerRecord
from signer.certs import (
    load_certificate,
    make_ca_certificate,
    make_responder_certificate,
    renew_ca_certificate,
)
from signer.inventory import add_certificates, issuing_refusal, registry_parent
from signer.keys import KeyError_, SigningKey, generate_key, key_type_of, load_private_key, write_private_key
from signer.ocsp_der import ResponseSigner
from signer.state import SignerError, SignerStore, check_ca_name, check_ocsp_url, key_path


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
    check_ocsp_url(ocsp_url)
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
        parent = (x509.load_der_x509_certificate(parent_record.cert_der), _parent_key(store, parent_record, now))
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


def renew_ca(
    store: SignerStore, name: str, cert_data: bytes | None, days: int | None, now: dt.datetime
) -> tuple[IssuerRecord, x509.Certificate]:
    """Replace CA ``name``'s certificate by its renewal: the same subject and key (so the same key file,
    CertIDs and chains), valid now and ending later. ``cert_data``: the renewal, made elsewhere; without
    it one is made here for ``days``: self-signed for a root, else by its parent in the registry.
    A parent in the registry gets the new certificate in its inventory (its OCSP answers for it)."""
    record = store.issuer(name)
    current = x509.load_der_x509_certificate(record.cert_der)
    parent = registry_parent(store, record)
    if cert_data is not None:
        renewed = load_certificate(cert_data, "--cert")
    else:
        if record.signing != "ca":
            raise SignerError(f"CA {name!r} was added without its key: give its renewed certificate with --cert")
        key = load_ca_key(store.data_dir, record)
        signer = None
        if parent is not None:
            signer = (x509.load_der_x509_certificate(parent.cert_der), _parent_key(store, parent, now))
        elif check_directly_issued(current, current) is not None:
            raise SignerError(
                f"the issuer of CA {name!r} is not in the registry: give its renewed certificate with --cert"
            )
        renewed = renew_ca_certificate(current, key, 3650 if days is None else days, now, signer)
    _check_renewal(name, current, renewed, parent, now)
    updated = msgspec.structs.replace(record, cert_der=_der(renewed))
    store.replace_issuer(record, updated)
    if parent is not None:
        add_certificates(store, parent, [renewed], now=int(now.timestamp()))
    return updated, renewed


def _parent_key(store: SignerStore, parent: IssuerRecord, now: dt.datetime) -> SigningKey:
    """The key of a registry CA about to issue a CA certificate, if it may issue now."""
    if parent.signing != "ca":
        raise SignerError(f"CA {parent.name!r} was added without its key: it cannot issue certificates")
    if (refusal := issuing_refusal(store, parent, int(now.timestamp()))) is not None:
        raise SignerError(refusal)
    return load_ca_key(store.data_dir, parent)


def _check_renewal(
    name: str, current: x509.Certificate, renewed: x509.Certificate, parent: IssuerRecord | None, now: dt.datetime
) -> None:
    if not _is_ca(renewed):
        raise SignerError("--cert is not a CA certificate (basicConstraints cA is not true)")
    if renewed.subject.public_bytes() != current.subject.public_bytes() or _public_der(renewed) != _public_der(current):
        raise SignerError(f"--cert is not a renewal of CA {name!r}: its subject and public key must be the CA's")
    if not renewed.not_valid_before_utc <= now < renewed.not_valid_after_utc:
        raise SignerError("--cert is not valid now")
    if renewed.not_valid_after_utc <= current.not_valid_after_utc:
        raise SignerError(
            f"the renewal does not end later than CA {name!r}'s certificate does now"
            + (f" (it ends with its parent, CA {parent.name!r}: renew that one first)" if parent else "")
        )
    issuer = x509.load_der_x509_certificate(parent.cert_der) if parent is not None else None
    if issuer is None and renewed.issuer == renewed.subject:
        issuer = renewed  # self-signed: by the CA's own key
    if issuer is not None and (why := check_directly_issued(renewed, issuer)) is not None:
        raise SignerError(f"--cert was not issued by {'its parent CA' if parent else 'its own key'}: {why}")
    if issuer is None and renewed.issuer != current.issuer:
        raise SignerError("--cert has another issuer than the CA's certificate")


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
    check_ocsp_url(ocsp_url)
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
            path = key_path(store.data_dir, name)
        elif responder_cert_data is not None and responder_key_data is not None:
            responder, key = _given_responder(responder_cert_data, responder_key_data, cert, now)
            responder_der = _der(responder)
            signing = "delegate"
            path = responder_key_path(store.data_dir, name, responder_der)
        else:
            raise SignerError("give --key, or both --responder-cert and --responder-key")
    except KeyError_ as exc:
        raise SignerError(str(exc)) from None
    for other in store.issuers():
        known = x509.load_der_x509_certificate(other.cert_der)
        if known.subject.public_bytes() == cert.subject.public_bytes() and _public_der(known) == _public_der(cert):
            # A CertID names its issuer by these two hashes alone: the edge could not tell the CAs
            # apart, and would answer for one CA's serials from the other's inventory.
            raise SignerError(f"CA {other.name!r} has this subject and key already: OCSP could not tell them apart")
    write_private_key(path, key)
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


def ocsp_signer_valid(record: IssuerRecord, now: dt.datetime) -> bool:
    """Whether the certificate signing the CA's OCSP responses (its delegated responder, else the CA
    itself) is valid at ``now``: outside that, the signer signs none (signer.precompute)."""
    cert = x509.load_der_x509_certificate(record.responder_cert_der or record.cert_der)
    return cert.not_valid_before_utc <= now < cert.not_valid_after_utc


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


def responder_key_path(data_dir: Path, name: str, responder_cert_der: bytes) -> Path:
    """The key of one responder certificate: a file per certificate, so that a successor's key is
    on disk before the registry names it, and a crash in between leaves a usable pair either way."""
    return key_path(data_dir, name, "responder-" + hashlib.sha256(responder_cert_der).hexdigest()[:16])


def responder_key_file(data_dir: Path, name: str, responder_cert_der: bytes) -> Path:
    """The file holding a responder certificate's key: its own, else where `ca add` wrote it before keys
    were kept per certificate (``NAME.responder.key``), when that one is there."""
    path = responder_key_path(data_dir, name, responder_cert_der)
    legacy = key_path(data_dir, name, "responder")
    return legacy if not path.exists() and legacy.exists() else path


def load_response_signer(data_dir: Path, record: IssuerRecord) -> ResponseSigner:
    issuer = x509.load_der_x509_certificate(record.cert_der)
    if record.responder_cert_der is None:
        return ResponseSigner(issuer, load_ca_key(data_dir, record))
    path = responder_key_file(data_dir, record.name, record.responder_cert_der)
    key = load_private_key(path.read_bytes(), str(path))
    return ResponseSigner(issuer, key, x509.load_der_x509_certificate(record.responder_cert_der))


def set_responder(store: SignerStore, name: str, cert_data: bytes, key_data: bytes, now: dt.datetime) -> IssuerRecord:
    """Give a CA the delegated responder of ``cert_data`` (checked as `ca add` checks it), replacing any."""
    record = store.issuer(name)
    ca = x509.load_der_x509_certificate(record.cert_der)
    try:
        responder, key = _given_responder(cert_data, key_data, ca, now)
    except KeyError_ as exc:
        raise SignerError(str(exc)) from None
    return _install_responder(store, record, responder, key, minted=False)


def _given_responder(
    cert_data: bytes, key_data: bytes, ca: x509.Certificate, now: dt.datetime
) -> tuple[x509.Certificate, SigningKey]:
    """An operator's responder certificate and key, checked for ``ca`` (KeyError_ for an unreadable key)."""
    responder = load_certificate(cert_data, "--responder-cert")
    key = load_private_key(key_data, "--responder-key")
    check_responder(responder, ca, now)
    if _public_der(key) != _public_der(responder):
        raise SignerError("--responder-key does not match the public key of --responder-cert")
    return responder, key


def mint_responder(
    store: SignerStore, name: str, key_type: str, days: int, now: dt.datetime, validity_seconds: int
) -> IssuerRecord:
    """Issue a delegated responder with the CA's key; the signer renews it at half its lifetime."""
    record = store.issuer(name)
    if record.signing != "ca":
        raise SignerError(f"CA {name!r} was added without its key: give its responder with --responder-cert")
    least = math.ceil(2 * validity_seconds / 86400)
    if days < least:
        raise SignerError(f"--days must be at least {least}, twice the responses' validity, or they are cut short")
    ca = x509.load_der_x509_certificate(record.cert_der)
    if ca.not_valid_after_utc <= now:
        raise SignerError(f"CA {name!r} has expired")
    try:
        key = generate_key(key_type)
    except KeyError_ as exc:
        raise SignerError(str(exc)) from None
    cert = make_responder_certificate(name, ca, load_ca_key(store.data_dir, record), key, days, now)
    return _install_responder(store, record, cert, key, minted=True)


def remove_responder(store: SignerStore, name: str) -> IssuerRecord:
    """The CA's own key signs its OCSP responses again."""
    record = store.issuer(name)
    if record.responder_cert_der is None:
        raise SignerError(f"CA {name!r} has no delegated responder")
    if record.signing != "ca":
        raise SignerError(f"CA {name!r} was added without its key: its responder is all that can sign its OCSP")
    changed = msgspec.structs.replace(record, responder_cert_der=None, responder_minted=False)
    store.replace_issuer(record, changed)
    _remove_responder_key(store.data_dir, name, record.responder_cert_der)
    return changed


def renew_responders(store: SignerStore, now: dt.datetime, logger: logging.Logger) -> list[IssuerRecord]:
    """Renew each responder the signer minted once half its lifetime has passed (same key type and lifetime)."""
    renewed = []
    for record in store.issuers():
        if not record.responder_minted or record.responder_cert_der is None:
            continue
        cert = x509.load_der_x509_certificate(record.responder_cert_der)
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if now < start + (end - start) / 2:
            continue
        ca = x509.load_der_x509_certificate(record.cert_der)
        if ca.not_valid_after_utc <= now:
            continue  # nothing can be signed for an expired CA
        try:
            key = generate_key(key_type_of(cert.public_key()))  # type: ignore[arg-type]
            days = max(1, round((end - start) / dt.timedelta(days=1)))
            successor = make_responder_certificate(record.name, ca, load_ca_key(store.data_dir, record), key, days, now)
            renewed.append(_install_responder(store, record, successor, key, minted=True))
        except Exception as exc:  # one CA must not stop the others' renewal, nor the signer; retried next minute
            logger.error("CA %s: cannot renew its OCSP responder: %s", record.name, exc)
            continue
        logger.info("CA %s: OCSP responder renewed, valid until %s", record.name, successor.not_valid_after_utc)
    return renewed


def _install_responder(
    store: SignerStore, record: IssuerRecord, cert: x509.Certificate, key: SigningKey, *, minted: bool
) -> IssuerRecord:
    """The key on disk first, then the registry names the certificate, then the old key goes."""
    cert_der = _der(cert)
    path = responder_key_path(store.data_dir, record.name, cert_der)
    if not path.exists():
        write_private_key(path, key)
    elif _public_der(load_private_key(path.read_bytes(), str(path))) != _public_der(cert):
        raise SignerError(f"{path} holds another key than this responder certificate's")
    changed = msgspec.structs.replace(record, responder_cert_der=cert_der, responder_minted=minted)
    store.replace_issuer(record, changed)
    if record.responder_cert_der is not None and record.responder_cert_der != cert_der:
        _remove_responder_key(store.data_dir, record.name, record.responder_cert_der)
    return changed


def _remove_responder_key(data_dir: Path, name: str, responder_cert_der: bytes) -> None:
    responder_key_file(data_dir, name, responder_cert_der).unlink(missing_ok=True)
