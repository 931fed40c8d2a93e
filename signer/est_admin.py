"""EST authentication records, written by the signer: registration authorities and HTTP Basic users.

An RA is authenticated by its certificate (the edge compares DER) and may enroll for the CAs
listed in its record. An EST user is a label (a registry CA) + name + argon2id password hash.

Adding or removing an RA bumps the registry generation, so edges reload their RA directory
the same way they notice a new CA. Users are looked up per request and need no bump.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

from argon2 import PasswordHasher, Type
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from contract import store
from contract.chain import check_directly_issued
from contract.store import EstUserRecord, IssuerRecord, RaRecord
from signer.certs import load_certificate
from signer.state import SignerError, SignerStore

_RA_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_USER_NAME_MAX = 128
# With the longest name, "Basic base64(name:password)" stays within the edge's Authorization limit.
MAX_PASSWORD_BYTES = 1024


def _db(st: SignerStore, name: bytes) -> Any:
    """A named database of the store (SignerStore created it; opening it again gives the same handle)."""
    return st.env.open_db(name, create=True)


def check_ra_name(name: str) -> None:
    if not _RA_NAME.fullmatch(name):
        raise SignerError(f"invalid RA name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")


def check_user_name(name: str) -> None:
    """An HTTP Basic user-id: no ':' (RFC 7617 §2), no control characters (NUL separates the key)."""
    if not 1 <= len(name) <= _USER_NAME_MAX or ":" in name or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise SignerError(
            f"invalid EST user name {name!r}: use 1-{_USER_NAME_MAX} characters, no ':' and no control characters"
        )


def check_password(password: str) -> None:
    """An HTTP Basic password: text without control characters (RFC 7617 §2), that a client can send."""
    if not password:
        raise SignerError("the password is empty")
    if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        raise SignerError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in password):
        raise SignerError("the password has a control character (RFC 7617 allows none) or is not UTF-8 text")


def _registry_cas(st: SignerStore, cas: Sequence[str]) -> list[str]:
    """``cas`` without duplicates (order kept), every one a CA of the registry."""
    wanted = list(dict.fromkeys(c.strip() for c in cas if c.strip()))
    if not wanted:
        raise SignerError("give at least one CA the RA may enroll for (--cas CA1,CA2)")
    known = [r.name for r in st.issuers()]
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise SignerError(
            f"unknown CA{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in --cas "
            f"(known: {', '.join(known) or 'none yet: run `pki-edge ca create NAME`'})"
        )
    return wanted


def _check_tls_client(cert: x509.Certificate) -> None:
    """An RA authenticates as a TLS client with an end-entity certificate of its own, not a CA's."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            raise SignerError("the RA certificate is a CA certificate: an RA presents an end-entity certificate")
    except x509.ExtensionNotFound:
        pass
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usages:
        raise SignerError(
            "the RA certificate's extendedKeyUsage has no clientAuth: it cannot authenticate a TLS client"
        )


def _check_validity(cert: x509.Certificate, now: dt.datetime) -> None:
    if cert.not_valid_before_utc > now:
        raise SignerError(
            f"the RA certificate is not valid yet (notBefore {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ})"
        )
    if cert.not_valid_after_utc < now:
        raise SignerError(f"the RA certificate has expired (notAfter {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})")


def ra_issuer(
    st: SignerStore, cert: x509.Certificate, anchors: Sequence[x509.Certificate] = ()
) -> IssuerRecord | x509.Certificate:
    """The registry CA that issued ``cert`` directly, else the trust anchor that did; SignerError if none."""
    issuers = st.issuers()
    for record in issuers:
        if check_directly_issued(cert, x509.load_der_x509_certificate(record.cert_der)) is None:
            return record
    for anchor in anchors:
        if check_directly_issued(cert, anchor) is None:
            return anchor
    checked = ", ".join(r.name for r in issuers) or "none"
    extra = f" nor by any of {len(anchors)} trust anchors" if anchors else ""
    raise SignerError(
        f"the RA certificate (issuer {cert.issuer.rfc4514_string()!r}) was not issued by a CA of the registry "
        f"(checked: {checked}){extra}"
    )


def _revoked_in_inventory(st: SignerStore, issuer: IssuerRecord, cert: x509.Certificate) -> store.CertRecord | None:
    key = store.inventory_key(issuer.number, store.serial_key(cert.serial_number))
    with st.env.begin(db=st.inventory) as txn:
        raw = txn.get(key)
    record = store.CERT_DECODER.decode(raw) if raw is not None else None
    return record if record is not None and record.revoked_at is not None else None


def add_ra(
    st: SignerStore,
    name: str,
    cert_pem_or_der: bytes,
    cas: Sequence[str],
    now: dt.datetime,
    anchors: Sequence[x509.Certificate] | None = None,
) -> tuple[RaRecord, IssuerRecord | x509.Certificate]:
    """Register an RA; returns its record and what issued its certificate (a registry CA or an anchor).

    Refused: a bad or taken name, a certificate not issued directly by a registry CA (or one of
    ``anchors``), outside its validity at ``now``, revoked in its CA's inventory, already registered
    under another name, or ``cas`` naming a CA that is not in the registry.
    """
    check_ra_name(name)
    cert = load_certificate(cert_pem_or_der, "--cert")
    wanted = _registry_cas(st, cas)
    _check_validity(cert, now)
    _check_tls_client(cert)
    issuer = ra_issuer(st, cert, anchors or ())
    if isinstance(issuer, IssuerRecord) and (revoked := _revoked_in_inventory(st, issuer, cert)) is not None:
        assert revoked.revoked_at is not None
        when = dt.datetime.fromtimestamp(revoked.revoked_at, dt.UTC)
        raise SignerError(
            f"the RA certificate (serial {cert.serial_number:X}) was revoked by CA {issuer.name!r} "
            f"at {when:%Y-%m-%dT%H:%M:%SZ}"
        )
    der = cert.public_bytes(serialization.Encoding.DER)
    record = RaRecord(name=name, cert_der=der, cas=wanted, added_at=int(now.timestamp()))
    ras = _db(st, store.DB_RAS)
    with st.env.begin(write=True) as txn:
        if txn.get(name.encode(), db=ras) is not None:
            raise SignerError(f"RA {name!r} already exists (remove it first: `pki-edge ra remove {name}`)")
        for _, value in txn.cursor(db=ras):
            other = store.RA_DECODER.decode(value)
            if other.cert_der == der:
                raise SignerError(f"this certificate is already registered as RA {other.name!r}")
        txn.put(name.encode(), store.RA_ENCODER.encode(record), db=ras)
        st._bump_generation(txn)
    return record, issuer


def list_ras(st: SignerStore) -> list[RaRecord]:
    """Every RA, in name order."""
    with st.env.begin(db=_db(st, store.DB_RAS)) as txn:
        return [store.RA_DECODER.decode(v) for _, v in txn.cursor()]


def remove_ra(st: SignerStore, name: str) -> RaRecord:
    ras = _db(st, store.DB_RAS)
    with st.env.begin(write=True) as txn:
        raw = txn.get(name.encode(), db=ras)
        if raw is None:
            known = ", ".join(store.RA_DECODER.decode(v).name for _, v in txn.cursor(db=ras)) or "none"
            raise SignerError(f"unknown RA {name!r} (known: {known})")
        txn.delete(name.encode(), db=ras)
        st._bump_generation(txn)
    return store.RA_DECODER.decode(raw)


def check_est_label(st: SignerStore, label: str) -> None:
    known = [r.name for r in st.issuers()]
    if label not in known:
        raise SignerError(
            f"unknown EST label {label!r}: a label is a CA of the registry (known: {', '.join(known) or 'none'})"
        )


def check_est_user(st: SignerStore, label: str, name: str) -> bytes:
    """SignerError unless ``label`` is a registry CA and ``name`` a valid user name; returns the store key."""
    check_est_label(st, label)
    check_user_name(name)
    key = store.est_user_key(label, name)
    if len(key) > st.env.max_key_size():
        raise SignerError(f"EST user name {name!r} is too long")
    return key


def add_est_user(
    st: SignerStore,
    label: str,
    name: str,
    password: str,
    now: dt.datetime,
    hasher: PasswordHasher | None = None,
) -> tuple[EstUserRecord, bool]:
    """Store an argon2id hash of ``password`` for ``name`` under ``label`` (a registry CA).

    Returns the record and whether it replaced an existing user's password. ``hasher`` defaults
    to argon2-cffi's ``PasswordHasher()`` (argon2id, library defaults); tests pass a cheap one.
    """
    key = check_est_user(st, label, name)
    check_password(password)
    ph = hasher or PasswordHasher()
    if ph.type is not Type.ID:
        raise SignerError("EST passwords are hashed with argon2id only")
    record = EstUserRecord(label=label, name=name, password_hash=ph.hash(password), added_at=int(now.timestamp()))
    users = _db(st, store.DB_EST_USERS)
    with st.env.begin(write=True) as txn:
        replaced = txn.get(key, db=users) is not None
        txn.put(key, store.EST_USER_ENCODER.encode(record), db=users)
    return record, replaced


def list_est_users(st: SignerStore, label: str | None = None) -> list[EstUserRecord]:
    """Every EST user (of one label when given), in label then name order."""
    with st.env.begin(db=_db(st, store.DB_EST_USERS)) as txn:
        cursor = txn.cursor()
        if label is None:
            return [store.EST_USER_DECODER.decode(v) for _, v in cursor]
        check_est_label(st, label)  # as add and remove do: an empty list would hide a typo
        prefix = label.encode() + b"\x00"
        found = []
        if cursor.set_range(prefix):
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                found.append(store.EST_USER_DECODER.decode(value))
        return found


def remove_est_user(st: SignerStore, label: str, name: str) -> EstUserRecord:
    """Remove one user; works for a label whose CA is gone as well."""
    key = store.est_user_key(label, name)
    users = _db(st, store.DB_EST_USERS)
    if len(key) > st.env.max_key_size():
        raise SignerError(f"unknown EST user {name!r} for {label!r}")
    with st.env.begin(write=True) as txn:
        raw = txn.get(key, db=users)
        if raw is None:
            raise SignerError(f"unknown EST user {name!r} for {label!r} (see `pki-edge est user list`)")
        txn.delete(key, db=users)
    return store.EST_USER_DECODER.decode(raw)
