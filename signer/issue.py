"""`pki-edge issue`: an end-entity certificate for operators and tests, added to the inventory."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from contract.name_bounds import UB_COMMON_NAME
from contract.store import IssuerRecord
from signer.certs import make_end_entity_certificate, parse_san
from signer.inventory import add_certificates, issuing_refusal
from signer.keys import generate_key, write_new_file, write_private_key
from signer.registry import load_ca_key
from signer.state import SignerError, SignerStore


def issue_certificate(
    st: SignerStore,
    issuer: IssuerRecord,
    common_name: str,
    sans: Sequence[str],
    key_type: str,
    days: int,
    now: dt.datetime,
    ocsp_signing: bool = False,
) -> tuple[x509.Certificate, object]:
    cert, key = _make_certificate(st, issuer, common_name, sans, key_type, days, now, ocsp_signing)
    add_certificates(st, issuer, [cert], now=int(now.timestamp()))
    return cert, key


def _make_certificate(
    st: SignerStore,
    issuer: IssuerRecord,
    common_name: str,
    sans: Sequence[str],
    key_type: str,
    days: int,
    now: dt.datetime,
    ocsp_signing: bool,
) -> tuple[x509.Certificate, object]:
    if not 1 <= len(common_name) <= UB_COMMON_NAME:
        raise SignerError(f"--cn must be 1 to {UB_COMMON_NAME} characters (RFC 5280), not {len(common_name)}")
    ca = x509.load_der_x509_certificate(issuer.cert_der)
    if (refusal := issuing_refusal(st, issuer, int(now.timestamp()))) is not None:
        raise SignerError(refusal)
    key = generate_key(key_type)
    try:
        cert = make_end_entity_certificate(
            ca,
            load_ca_key(st.data_dir, issuer),
            key.public_key(),
            common_name,
            parse_san(sans),
            days,
            now,
            issuer.ocsp_url,
            ocsp_signing=ocsp_signing,
        )
    except ValueError as exc:  # cryptography's own checks (it bounds a commonName by its UTF-8 bytes)
        raise SignerError(f"cannot issue this certificate: {exc}") from None
    return cert, key


def issue_to_directory(
    st: SignerStore,
    issuer: IssuerRecord,
    common_name: str,
    sans: Sequence[str],
    key_type: str,
    days: int,
    out: Path,
    now: dt.datetime,
    ocsp_signing: bool = False,
) -> tuple[Path, Path]:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", common_name).strip("._") or "cert"
    cert_path, key_path = out / f"{stem}.pem", out / f"{stem}.key"
    if os.path.lexists(cert_path) or os.path.lexists(key_path):  # a dangling symlink too
        raise SignerError(f"{cert_path} or {key_path} already exists")
    # The files first, then the inventory: a failure (a full disk) leaves neither a serial nobody holds
    # nor a file that would refuse the retry.
    cert, key = _make_certificate(st, issuer, common_name, sans, key_type, days, now, ocsp_signing)
    out.mkdir(parents=True, exist_ok=True)
    write_private_key(key_path, key)  # type: ignore[arg-type]
    try:
        # Created, never opened as found: a symlink placed there (even dangling) is not followed (O_EXCL).
        try:
            fd = os.open(cert_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise SignerError(f"{cert_path} already exists") from None
        write_new_file(fd, cert_path, cert.public_bytes(Encoding.PEM))
        try:
            add_certificates(st, issuer, [cert], now=int(now.timestamp()))
        except BaseException:
            cert_path.unlink(missing_ok=True)
            raise
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    return cert_path, key_path
