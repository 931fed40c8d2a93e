"""EST issuance on the signer side: profile checks, certificate building, and durable issuance.

Signer worker processes (which hold the CA keys) run the three EST jobs here. A job's
result is always a ``contract.jobs`` result: a client's mistake becomes ``Refused`` with
the HTTP status the edge answers (as does a CA that cannot issue for now: 503), never an
exception. Exceptions that do escape are server-side faults (a bad profile in the configuration,
a key that cannot be read, the store failing) for the job server to log.

Issuance is one LMDB write transaction: the inventory entry and the certificate's signed
OCSP responses (every configured hash algorithm) with their schedule and refresh entries,
plus, on re-enroll with ``revoke_superseded``, the revocation of the old serial. When a
handler returns ``Issued`` the certificate is durable and its first OCSP check is a hit
that says good; when anything fails nothing at all is written.

The per-serial signing is the background signer's own code (``Precomputer.sign_serial``),
called inside this module's transaction rather than duplicated.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import logging
import random
import re
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
from asn1crypto import parser as der
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from contract import store
from contract.chain import check_directly_issued
from contract.config import KEY_USAGE_NAMES, CAProfile, Config
from contract.jobs import EnrollJob, Issued, IssuedWithKey, ReenrollJob, Refused, ServerKeygenJob
from contract.store import CertRecord, IssuerRecord
from signer.certs import control_character_in, dns_name_problem, uri_problem
from signer.inventory import issuing_refusal
from signer.keys import KeyError_, SigningKey, generate_key, signature_hash
from signer.ocsp_der import ResponseSigner
from signer.precompute import Clock, Precomputer
from signer.state import SignerError, SignerStore

LoadCA = Callable[[IssuerRecord], tuple[x509.Certificate, SigningKey, ResponseSigner]]

REASON_SUPERSEDED = 4  # RFC 5280 §5.3.1 CRLReason superseded
BACKDATE = dt.timedelta(minutes=5)  # tolerate clients' clock skew, as signer.certs does

KEY_USAGES = KEY_USAGE_NAMES
EXTENDED_KEY_USAGES: dict[str, x509.ObjectIdentifier] = {
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "time_stamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
}
_CURVES = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}
_RSA_SIZES = {2048: "rsa-2048", 3072: "rsa-3072", 4096: "rsa-4096"}

_logger = logging.getLogger("pki_edge.enroll")
_rng = random.Random()  # OCSP refresh jitter only


class EnrollRefused(Exception):
    """The request cannot be granted; ``status`` is the HTTP status (4xx, or 503 while the CA cannot
    issue for a time), the message one line for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestedNames(NamedTuple):
    """The subject and subjectAltName to issue for, with the DER they must be copied to exactly."""

    subject: x509.Name
    san: x509.SubjectAlternativeName | None
    subject_der: bytes
    san_der: bytes | None  # the extnValue contents (GeneralNames), None without a SAN

    @classmethod
    def of(cls, subject: x509.Name, san: x509.SubjectAlternativeName | None) -> RequestedNames:
        return cls(subject, san, subject.public_bytes(), san.public_bytes() if san is not None else None)


# ---------------------------------------------------------------------------- reading requests


def load_csr(der: bytes) -> x509.CertificateSigningRequest:
    try:
        return x509.load_der_x509_csr(der)
    except ValueError:
        raise EnrollRefused(400, "not a DER PKCS#10 certificate request") from None


def requested_names(csr: x509.CertificateSigningRequest) -> RequestedNames:
    """The CSR's subject and SAN (from its extensionRequest), as parsed objects and as their signed DER."""
    try:
        with warnings.catch_warnings():  # cryptography warns of a commonName over 64 bytes; the edge checks bounds
            warnings.simplefilter("ignore", UserWarning)
            subject = csr.subject
        try:
            san: x509.SubjectAlternativeName | None = csr.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
        except x509.ExtensionNotFound:
            san = None
        # CertificationRequestInfo ::= SEQUENCE { version, subject Name, subjectPKInfo, attributes [0] }
        info = _elements(csr.tbs_certrequest_bytes)
        subject_der = info[1][0]
        san_der = None
        for attribute, _, _ in _elements_of(info[3][2]) if len(info) > 3 else ():
            attribute_type, values = _elements(attribute)  # Attribute ::= SEQUENCE { type, values SET OF }
            if attribute_type[1:] == (_OID, _EXTENSION_REQUEST):
                for extensions, _, _ in _elements(values[0]):
                    san_der = _san_der(extensions) or san_der
    except (ValueError, TypeError, IndexError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise EnrollRefused(400, f"the CSR's subject or extensions cannot be read: {_one_line(exc)}") from None
    if san is not None and len(san) == 0:
        raise EnrollRefused(400, "the CSR's subjectAltName is empty")
    return RequestedNames(subject, san, subject_der, san_der if san is not None else None)


def certificate_names(cert: x509.Certificate) -> tuple[bytes, bytes | None]:
    """DER of a certificate's subject Name and of its SAN extnValue contents (None without one), as signed."""
    # TBSCertificate ::= SEQUENCE { version [0] DEFAULT v1, serialNumber, signature, issuer, validity,
    #     subject, subjectPublicKeyInfo, issuerUniqueID [1], subjectUniqueID [2], extensions [3] }
    tbs = _elements(cert.tbs_certificate_bytes)
    if tbs[0][1] == _VERSION_TAG:
        tbs = tbs[1:]  # absent in a version 1 certificate
    extensions = next((contents for _, tag, contents in tbs[6:] if tag == _EXTENSIONS_TAG), None)
    return tbs[4][0], _san_der(extensions) if extensions is not None else None


# (class, tag) pairs and OBJECT IDENTIFIER contents the two walks above compare with.
_OID = (0, 6)
_VERSION_TAG = (2, 0)  # [0] EXPLICIT
_EXTENSIONS_TAG = (2, 3)  # [3] EXPLICIT
_EXTENSION_REQUEST = bytes.fromhex("2a864886f70d01090e")  # 1.2.840.113549.1.9.14
_SUBJECT_ALT_NAME = bytes.fromhex("551d11")  # 2.5.29.17

DerElement = tuple[bytes, tuple[int, int], bytes]  # (whole encoding, (class, tag), contents)


def _elements(encoded: bytes) -> list[DerElement]:
    """The elements of one DER constructed value, with nothing after it.

    Headers are read by asn1crypto's DER parser: its object model (``TbsCertificate.load`` and
    field access) cost ~0.45 ms an enrollment, a fifth of the worker's time, for the two fields
    issuance compares.
    """
    return _elements_of(der.parse(encoded, strict=True)[4])


def _elements_of(contents: bytes) -> list[DerElement]:
    elements = []
    while contents:
        class_, _, tag, header, inner, trailer = der.parse(contents)
        size = len(header) + len(inner) + len(trailer)
        elements.append((contents[:size], (class_, tag), inner))
        contents = contents[size:]
    return elements


def _san_der(extensions: bytes) -> bytes | None:
    """The extnValue contents of the subjectAltName in a DER Extensions, None without one."""
    for _, _, extension in _elements(extensions):
        # Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
        class_, _, tag, _, oid, _ = der.parse(extension)
        if (class_, tag) == _OID and oid == _SUBJECT_ALT_NAME:
            return _elements_of(extension)[-1][2]
    return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _shown(value: str) -> str:
    """A client's value quoted for a one-line refusal (repr escapes line breaks), cut to a sane length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


# ---------------------------------------------------------------------------- profile checks


@functools.lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern[str]:
    """Each profile pattern compiled once per process (profiles are fixed for the worker's life)."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise SignerError(f"profile pattern {pattern!r} is not a valid regular expression: {exc}") from None


def key_type_name(public_key: object) -> str | None:
    """The profile name of a public key (ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096), None for others."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return _CURVES.get(public_key.curve.name)
    if isinstance(public_key, rsa.RSAPublicKey):
        return _RSA_SIZES.get(public_key.key_size)
    return None


def check_key(public_key: object, profile: CAProfile) -> None:
    name = key_type_name(public_key)
    if name is None or name not in profile.key_types:
        allowed = ", ".join(profile.key_types) or "none"
        raise EnrollRefused(400, f"key type {name or _describe_key(public_key)} is not allowed (allowed: {allowed})")
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.public_numbers().e < MIN_RSA_EXPONENT:
        # NIST SP 800-78 / 800-56B and most CA policies: a small exponent (3) invites padding attacks.
        raise EnrollRefused(400, f"an RSA public exponent below {MIN_RSA_EXPONENT} is not allowed")


MIN_RSA_EXPONENT = 65537


def _describe_key(public_key: object) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC {public_key.curve.name}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}"
    return type(public_key).__name__.removeprefix("_")


# Bounds on what one certificate names, whatever the profile: a CSR is otherwise bounded only by the
# body's size (1,000 SANs made a 14 kB certificate). Let's Encrypt's limit of names is 100 as well.
MAX_SAN_ENTRIES = 100
MAX_SUBJECT_ATTRIBUTES = 16


def check_name_syntax(names: RequestedNames) -> None:
    """What no profile may allow: control characters in a name (an embedded NUL ended names early in C
    clients, CVE-2009-2408; an escape sequence reaches logs and terminals), DNS names outside RFC 5280's
    preferred name syntax, and more names than any device needs."""
    if len(names.subject) > MAX_SUBJECT_ATTRIBUTES:
        raise EnrollRefused(400, f"the subject has {len(names.subject)} attributes (at most {MAX_SUBJECT_ATTRIBUTES})")
    for attribute in names.subject:
        if isinstance(attribute.value, str) and control_character_in(attribute.value):
            name = attribute.rfc4514_attribute_name
            raise EnrollRefused(400, f"subject attribute {name} {_shown(attribute.value)} has a control character")
    if names.san is None:
        return
    if len(names.san) > MAX_SAN_ENTRIES:
        raise EnrollRefused(400, f"the subjectAltName has {len(names.san)} entries (at most {MAX_SAN_ENTRIES})")
    for general_name in names.san:
        value = general_name.value
        if isinstance(general_name, x509.DNSName) and (problem := dns_name_problem(value)) is not None:
            raise EnrollRefused(400, f"DNS name {_shown(value)}: {problem}")
        if isinstance(general_name, x509.UniformResourceIdentifier) and (problem := uri_problem(value)) is not None:
            raise EnrollRefused(400, f"URI {_shown(value)} {problem}")


def check_names(names: RequestedNames, profile: CAProfile) -> None:
    """Subject: exactly one CN matching the profile; SAN: DNS, URI and (if allowed) IP entries matching theirs."""
    check_name_syntax(names)
    cns = names.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise EnrollRefused(400, f"the subject must have exactly one commonName (it has {len(cns)})")
    cn = cns[0].value
    if not isinstance(cn, str):
        raise EnrollRefused(400, "the commonName is not a string")
    if not _pattern(profile.subject_cn_pattern).fullmatch(cn):
        raise EnrollRefused(400, f"commonName {_shown(cn)} is not allowed by this CA's profile")
    if profile.subject_attributes is not None:
        allowed = {"CN", *profile.subject_attributes}
        for attribute in names.subject:
            if attribute.rfc4514_attribute_name not in allowed:
                name = attribute.rfc4514_attribute_name
                raise EnrollRefused(400, f"subject attribute {name} is not allowed by this CA's profile")
    if names.san is None:
        if profile.require_san:
            raise EnrollRefused(400, "this CA requires a subjectAltName")
        return
    for general_name in names.san:
        if isinstance(general_name, x509.DNSName):
            if not _pattern(profile.san_dns_pattern).fullmatch(general_name.value):
                raise EnrollRefused(400, f"DNS name {_shown(general_name.value)} is not allowed by this CA's profile")
        elif isinstance(general_name, x509.UniformResourceIdentifier):
            if not _pattern(profile.san_uri_pattern).fullmatch(general_name.value):
                raise EnrollRefused(400, f"URI {_shown(general_name.value)} is not allowed by this CA's profile")
        elif isinstance(general_name, x509.IPAddress):
            if not profile.allow_san_ip:
                raise EnrollRefused(400, "IP addresses in the subjectAltName are not allowed by this CA's profile")
            if not isinstance(general_name.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
                raise EnrollRefused(400, "an IP address in the subjectAltName must be an address, not a network")
        else:
            kind = type(general_name).__name__
            raise EnrollRefused(400, f"subjectAltName entries of type {kind} are not allowed (DNS, URI or IP only)")


def check_csr(csr: x509.CertificateSigningRequest, profile: CAProfile) -> RequestedNames:
    """Everything the profile asks of a CSR; raises EnrollRefused (400) with the first rule it breaks.

    Returns the requested names it checked, read once (the asn1crypto walk is not free).
    """
    try:
        valid = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise EnrollRefused(400, f"the CSR's key or signature cannot be read: {_one_line(exc)}") from None
    if not valid:
        algorithm = csr.signature_hash_algorithm
        if isinstance(algorithm, hashes.SHA1 | hashes.MD5):  # cryptography verifies no such signature
            raise EnrollRefused(400, f"the CSR is signed with {algorithm.name.upper()}: sign it with SHA-256 or better")
        raise EnrollRefused(400, "the CSR's signature does not verify with its public key")
    check_key(public_key, profile)
    names = requested_names(csr)
    check_names(names, profile)
    return names


# ---------------------------------------------------------------------------- building


def _key_usage(names: list[str]) -> x509.KeyUsage | None:
    unknown = [n for n in names if n not in KEY_USAGES]
    if unknown:
        raise SignerError(f"profile key_usage: unknown {unknown}, choose from {', '.join(KEY_USAGES)}")
    if not names:
        return None
    flags = {n: n in names for n in KEY_USAGES}
    return x509.KeyUsage(**flags, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)


def _extended_key_usage(names: list[str]) -> x509.ExtendedKeyUsage | None:
    unknown = [n for n in names if n not in EXTENDED_KEY_USAGES]
    if unknown:
        raise SignerError(
            f"profile extended_key_usage: unknown {unknown}, choose from {', '.join(EXTENDED_KEY_USAGES)}"
        )
    return x509.ExtendedKeyUsage([EXTENDED_KEY_USAGES[n] for n in names]) if names else None


def _authority_key_identifier(ca_cert: x509.Certificate, ca_key: SigningKey) -> x509.AuthorityKeyIdentifier:
    """The CA's own subjectKeyIdentifier when it has one (whatever method made it), else one from its key."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _aia(profile: CAProfile, ca_ocsp_url: str | None) -> x509.AuthorityInformationAccess | None:
    access = []
    if ocsp_url := profile.ocsp_url or ca_ocsp_url:
        access.append(
            x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))
        )
    if profile.ca_issuers_url:
        access.append(
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(profile.ca_issuers_url)
            )
        )
    return x509.AuthorityInformationAccess(access) if access else None


def build_certificate(
    csr_or_subject: x509.CertificateSigningRequest | RequestedNames,
    public_key: CertificatePublicKeyTypes,
    ca_cert: x509.Certificate,
    ca_key: SigningKey,
    profile: CAProfile,
    ca_ocsp_url: str | None,
    now: int,
) -> x509.Certificate:
    """An end-entity certificate for ``public_key`` with the request's subject and SAN copied byte for byte.

    Validity: ``profile.validity_days`` from five minutes before ``now``, capped at the CA's notAfter.
    Raises EnrollRefused (400) if the subject or SAN would not come out byte-identical, and
    SignerError for a profile naming unknown key usages.
    """
    names = csr_or_subject if isinstance(csr_or_subject, RequestedNames) else requested_names(csr_or_subject)
    if profile.validity_days <= 0:
        raise SignerError("profile validity_days must be positive")
    not_before = dt.datetime.fromtimestamp(now, dt.UTC) - BACKDATE
    not_after = min(not_before + dt.timedelta(days=profile.validity_days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(names.subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if key_usage := _key_usage(profile.key_usage):
        builder = builder.add_extension(key_usage, critical=True)
    if extended_key_usage := _extended_key_usage(profile.extended_key_usage):
        builder = builder.add_extension(extended_key_usage, critical=False)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    builder = builder.add_extension(_authority_key_identifier(ca_cert, ca_key), critical=False)
    if names.san is not None:
        builder = builder.add_extension(names.san, critical=False)
    if aia := _aia(profile, ca_ocsp_url):
        builder = builder.add_extension(aia, critical=False)
    cert = builder.sign(ca_key, signature_hash(ca_key))
    # The builder re-encodes parsed names; make sure that gave back exactly what was asked for.
    if certificate_names(cert) != (names.subject_der, names.san_der):
        raise EnrollRefused(400, "the CSR's subject or subjectAltName is not in canonical DER and cannot be copied")
    return cert


# ---------------------------------------------------------------------------- storing


def issue_and_store(
    st: SignerStore,
    issuer: IssuerRecord,
    cert: x509.Certificate,
    response_signer: ResponseSigner,
    config: Config,
    now: int,
    *,
    signed_here: bool = False,
) -> None:
    """Put ``cert`` in the inventory with its signed OCSP responses, in one transaction (durable on return).

    ``signed_here``: ``cert`` was just signed with the key loaded for ``issuer``, which the worker
    checked against the CA certificate when it loaded it (signer.worker.Worker.load_ca), so
    verifying the signature again would only cost time.
    """
    with st.env.begin(write=True) as txn:
        _store_issued(txn, st, issuer, cert, response_signer, config, now, signed_here=signed_here)


def _store_issued(
    txn: Any,
    st: SignerStore,
    issuer: IssuerRecord,
    cert: x509.Certificate,
    response_signer: ResponseSigner,
    config: Config,
    now: int,
    *,
    signed_here: bool = False,
) -> bytes:
    """Inside ``txn``: the inventory entry, responses, schedule and refresh entries; returns the inventory key."""
    if not signed_here:
        ca_cert = x509.load_der_x509_certificate(issuer.cert_der)
        if reason := check_directly_issued(cert, ca_cert):
            raise SignerError(f"refusing to store a certificate CA {issuer.name!r} did not issue: {reason}")
    serial_k = store.serial_key(cert.serial_number)
    inv_key = store.inventory_key(issuer.number, serial_k)
    if txn.get(inv_key, db=st.inventory) is not None:
        raise SignerError(f"serial {cert.serial_number:X} is already in the inventory of CA {issuer.name!r}")
    record = CertRecord(
        not_after=int(cert.not_valid_after_utc.timestamp()), cert_der=cert.public_bytes(serialization.Encoding.DER)
    )
    txn.put(inv_key, store.CERT_ENCODER.encode(record), db=st.inventory)
    _sign_responses(txn, st, issuer, inv_key, response_signer, config, now)
    for name in config.signer.hash_algorithms:
        code = store.HASH_ALGORITHMS[name][0]
        if txn.get(store.response_key(issuer.number, code, serial_k), db=st.responses) is None:
            raise SignerError(f"serial {cert.serial_number:X}: no {name} OCSP response was signed")
    return inv_key


def _sign_responses(
    txn: Any,
    st: SignerStore,
    issuer: IssuerRecord,
    inv_key: bytes,
    response_signer: ResponseSigner,
    config: Config,
    now: int,
) -> None:
    """Sign and store one serial's responses exactly as the background signer does (its own code)."""
    precomputer = Precomputer(st, config.signer, lambda record: response_signer, Clock(), _logger, _rng)
    precomputer.sign_serial(txn, inv_key, now, response_signer)


# ---------------------------------------------------------------------------- jobs


def _issuing_ca(
    st: SignerStore, name: str, load_ca: LoadCA, now: int
) -> tuple[IssuerRecord, x509.Certificate, SigningKey, ResponseSigner]:
    try:
        issuer = st.issuer(name)
    except SignerError:
        raise EnrollRefused(404, f"unknown CA {_shown(name)}") from None
    if issuer.signing != "ca":
        raise EnrollRefused(403, f"CA {name!r} was added without its key: it cannot issue certificates")
    ca_cert, ca_key, response_signer = load_ca(issuer)
    if (refusal := issuing_refusal(st, issuer, now)) is not None:
        raise EnrollRefused(403, refusal)
    if not response_signer.valid_at(now):
        # A certificate is answered only with its first OCSP responses stored (signer.precompute signs
        # none outside this validity): a 503 until the operator gives the CA a valid responder.
        raise EnrollRefused(
            503, f"CA {name!r} cannot issue for now: the certificate signing its OCSP responses is not valid"
        )
    return issuer, ca_cert, ca_key, response_signer


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


Outcome = Issued | IssuedWithKey | Refused  # what an issuing job answers
Stored = Outcome | Exception  # a job's outcome once stored, or why it could not be


class Signed(NamedTuple):
    """A certificate signed for a job, waiting for the write transaction that makes it durable.

    Everything slow (the CSR's signature check, the certificate's signature) is done before
    any transaction, so a batch of jobs holds the store's write lock only for their OCSP
    signatures and one commit.
    """

    job: str  # "enroll", "reenroll" or "serverkeygen", for the log line
    issuer: IssuerRecord
    cert: x509.Certificate
    response_signer: ResponseSigner
    result: Issued | IssuedWithKey
    requester: str
    replaces: x509.Certificate | None = None  # re-enroll: the current certificate
    revoke_replaced: bool = False


def enroll(st: SignerStore, config: Config, job: EnrollJob, load_ca: LoadCA, now: int) -> Outcome:
    """simpleenroll (RFC 7030 §4.2.1): the CSR's key, subject and SAN, from CA ``job.ca``."""
    return _store_one(st, config, sign_enroll(st, config, job, load_ca, now), now)


def reenroll(st: SignerStore, config: Config, job: ReenrollJob, load_ca: LoadCA, now: int) -> Outcome:
    """simplereenroll (RFC 7030 §4.2.2): renew (same key) or re-key ``job.current_cert_der``.

    The current certificate must come from CA ``job.ca``, be valid now and not revoked;
    the CSR's subject and SAN must be byte-identical to it. With ``revoke_superseded`` the
    old serial is revoked (superseded) in the transaction that stores the new certificate.
    """
    return _store_one(st, config, sign_reenroll(st, config, job, load_ca, now), now)


def serverkeygen(st: SignerStore, config: Config, job: ServerKeygenJob, load_ca: LoadCA, now: int) -> Outcome:
    """serverkeygen (RFC 7030 §4.4): a key of ``profile.serverkeygen_key_type``, returned as unencrypted PKCS#8 DER.

    The CSR gives subject and SAN only: its key and signature are ignored (§4.4.1), but it must parse.
    """
    return _store_one(st, config, sign_serverkeygen(st, config, job, load_ca, now), now)


def sign_enroll(st: SignerStore, config: Config, job: EnrollJob, load_ca: LoadCA, now: int) -> Signed | Refused:
    try:
        issuer, ca_cert, ca_key, response_signer = _issuing_ca(st, job.ca, load_ca, now)
        profile = config.profile(issuer.name)
        csr = load_csr(job.csr_der)
        names = check_csr(csr, profile)
        cert = build_certificate(names, csr.public_key(), ca_cert, ca_key, profile, issuer.ocsp_url, now)
    except EnrollRefused as exc:
        _logger.info("enroll refused (CA %s, %s): %d %s", job.ca, job.requester, exc.status, exc.message)
        return Refused(exc.status, exc.message)
    return Signed("enroll", issuer, cert, response_signer, Issued(_der(cert)), job.requester)


def sign_reenroll(st: SignerStore, config: Config, job: ReenrollJob, load_ca: LoadCA, now: int) -> Signed | Refused:
    try:
        issuer, ca_cert, ca_key, response_signer = _issuing_ca(st, job.ca, load_ca, now)
        profile = config.profile(issuer.name)
        csr = load_csr(job.csr_der)
        try:
            current = x509.load_der_x509_certificate(job.current_cert_der)
        except ValueError:
            raise EnrollRefused(403, "the current certificate cannot be parsed") from None
        _check_current(current, ca_cert, issuer.name, now)
        names = check_csr(csr, profile)
        try:
            current_names = certificate_names(current)
        except ValueError:
            raise EnrollRefused(403, "the current certificate's subject or extensions cannot be read") from None
        if (names.subject_der, names.san_der) != current_names:
            raise EnrollRefused(403, "re-enroll must keep the subject and subjectAltName")
        cert = build_certificate(names, csr.public_key(), ca_cert, ca_key, profile, issuer.ocsp_url, now)
    except EnrollRefused as exc:
        _logger.info("re-enroll refused (CA %s): %d %s", job.ca, exc.status, exc.message)
        return Refused(exc.status, exc.message)
    return Signed("reenroll", issuer, cert, response_signer, Issued(_der(cert)), "", current, profile.revoke_superseded)


def sign_serverkeygen(
    st: SignerStore, config: Config, job: ServerKeygenJob, load_ca: LoadCA, now: int
) -> Signed | Refused:
    try:
        issuer, ca_cert, ca_key, response_signer = _issuing_ca(st, job.ca, load_ca, now)
        profile = config.profile(issuer.name)
        names = requested_names(load_csr(job.csr_der))
        check_names(names, profile)
        try:
            key = generate_key(profile.serverkeygen_key_type)
        except KeyError_ as exc:
            raise SignerError(f"profile serverkeygen_key_type: {exc}") from None
        cert = build_certificate(names, key.public_key(), ca_cert, ca_key, profile, issuer.ocsp_url, now)
    except EnrollRefused as exc:
        _logger.info("serverkeygen refused (CA %s, %s): %d %s", job.ca, job.requester, exc.status, exc.message)
        return Refused(exc.status, exc.message)
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Signed("serverkeygen", issuer, cert, response_signer, IssuedWithKey(_der(cert), pkcs8), job.requester)


def store_signed(txn: Any, st: SignerStore, config: Config, signed: Signed, now: int) -> None:
    """Inside the write ``txn``: ``signed`` in the inventory with its OCSP responses.

    Raises EnrollRefused before writing anything when the job can no longer be granted (the
    current certificate of a re-enroll was revoked meanwhile: checked here, inside the write
    transaction, so a revocation cannot slip in between). Any other exception may leave
    writes behind in ``txn``: the caller must then abort it.
    """
    old_key = old = None
    if signed.replaces is not None:
        old_key = store.inventory_key(signed.issuer.number, store.serial_key(signed.replaces.serial_number))
        old = _check_not_revoked(txn, st, old_key, signed.issuer.name)
    _store_issued(txn, st, signed.issuer, signed.cert, signed.response_signer, config, now, signed_here=True)
    if old is not None and old_key is not None and signed.revoke_replaced:
        revoked = msgspec.structs.replace(old, revoked_at=now, reason=REASON_SUPERSEDED)
        txn.put(old_key, store.CERT_ENCODER.encode(revoked), db=st.inventory)
        txn.put(store.pending_key(store.PRIORITY_REVOCATION, old_key), b"", db=st.pending)


def store_batch(st: SignerStore, config: Config, batch: list[Signed], now: int) -> list[Stored]:
    """Store every certificate of ``batch`` in one write transaction: one commit, one fsync.

    Returns each job's result (Refused when ``store_signed`` refused it). When storing one of
    them fails otherwise, the shared transaction is dropped and each is stored on its own, so
    that one failure costs only its own job; that job's exception is raised in its place in
    the list (as the exception object), for the caller to report.
    """
    results: list[Stored] = []
    try:
        with st.env.begin(write=True) as txn:
            for signed in batch:
                try:
                    store_signed(txn, st, config, signed, now)
                except EnrollRefused as exc:
                    results.append(_refused(signed, exc))
                else:
                    results.append(signed.result)
    except Exception:
        if len(batch) == 1:
            raise
        _logger.warning("storing a batch of %d certificates failed: storing each on its own", len(batch))
        return [_store_alone(st, config, signed, now) for signed in batch]
    for signed, result in zip(batch, results, strict=True):
        if not isinstance(result, Refused):
            _log_issued(signed)
    return results


def _store_alone(st: SignerStore, config: Config, signed: Signed, now: int) -> Stored:
    try:
        with st.env.begin(write=True) as txn:
            store_signed(txn, st, config, signed, now)
    except EnrollRefused as exc:
        return _refused(signed, exc)
    except Exception as exc:
        return exc
    _log_issued(signed)
    return signed.result


def _store_one(st: SignerStore, config: Config, signed: Signed | Refused, now: int) -> Outcome:
    if isinstance(signed, Refused):
        return signed
    result = store_batch(st, config, [signed], now)[0]
    if isinstance(result, Exception):
        raise result
    return result


def _refused(signed: Signed, exc: EnrollRefused) -> Refused:
    _logger.info("%s refused (CA %s): %d %s", signed.job, signed.issuer.name, exc.status, exc.message)
    return Refused(exc.status, exc.message)


def _log_issued(signed: Signed) -> None:
    serial = signed.cert.serial_number
    if signed.replaces is None:
        _logger.info("CA %s issued serial %X to %s (%s)", signed.issuer.name, serial, signed.requester, signed.job)
        return
    kind = "renewal" if signed.replaces.public_key() == signed.cert.public_key() else "re-key"
    _logger.info(
        "CA %s issued serial %X replacing %X (%s)", signed.issuer.name, serial, signed.replaces.serial_number, kind
    )


def _check_current(current: x509.Certificate, ca_cert: x509.Certificate, ca_name: str, now: int) -> None:
    if reason := check_directly_issued(current, ca_cert):
        raise EnrollRefused(403, f"the current certificate was not issued by CA {ca_name!r} ({reason})")
    if current.not_valid_after_utc.timestamp() <= now:
        raise EnrollRefused(403, "the current certificate has expired: enroll again instead")
    if current.not_valid_before_utc.timestamp() > now:
        raise EnrollRefused(403, "the current certificate is not valid yet")


def _check_not_revoked(txn: Any, st: SignerStore, inv_key: bytes, ca_name: str) -> CertRecord:
    raw = txn.get(inv_key, db=st.inventory)
    if raw is None:
        raise EnrollRefused(403, f"the current certificate is not in the inventory of CA {ca_name!r}")
    record = store.CERT_DECODER.decode(raw)
    if record.revoked_at is not None:
        raise EnrollRefused(403, "the current certificate is revoked")
    return record
