"""Private keys: generation, loading, and writing with owner-only permissions.

Only signer-side code imports this module; the edge never sees a key.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyError_(Exception):
    """A key could not be generated, loaded or written (message is for the operator)."""


def generate_key(key_type: str) -> SigningKey:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type.startswith("rsa-") and key_type in KEY_TYPES:
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise KeyError_(f"unknown key type {key_type!r}: choose one of {', '.join(KEY_TYPES)}")


def key_type_of(key: SigningKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> str:
    """The KEY_TYPES name of a key (what generate_key makes of it)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"ec-p{key.curve.key_size}"
    return f"rsa-{key.key_size}"


def signature_hash(key: SigningKey) -> hashes.SHA256 | hashes.SHA384:
    """SHA-384 for P-384 keys, SHA-256 otherwise (RFC 6960 §4.3: clients SHALL do RSA-SHA256)."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def sign(key: SigningKey, data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
    return signer_for(key, algorithm)(data)


def signer_for(key: SigningKey, algorithm: hashes.HashAlgorithm) -> Callable[[bytes], bytes]:
    """A one-argument signing function, its algorithm objects made once rather than per signature
    (positional: keyword arguments through functools.partial cost a microsecond per signature)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        ec_sign, ecdsa = key.sign, ec.ECDSA(algorithm)
        return lambda data: ec_sign(data, ecdsa)
    rsa_sign, pkcs1 = key.sign, padding.PKCS1v15()
    return lambda data: rsa_sign(data, pkcs1, algorithm)


def check_private_dir(path: Path) -> None:
    """A directory for keys (or the signer's socket) must be this user's and closed to everyone else. One
    that already existed is not trusted as found: another user owning it, or allowed into it, could take
    or replace what is put there (a key file is 0600, yet can be moved out of a directory one may write)."""
    st = os.stat(path)
    if st.st_uid != os.geteuid():
        raise KeyError_(f"{path} belongs to another user (uid {st.st_uid}): chown it to this one, or start afresh")
    if st.st_mode & 0o077:
        raise KeyError_(f"{path} is open to other users (mode {st.st_mode & 0o777:o}): chmod 700 {path}")


def write_private_key(path: Path, key: SigningKey) -> None:
    """Write PKCS#8 PEM, mode 0600, refusing to overwrite an existing key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyError_(f"{path} already exists; refusing to overwrite a private key") from None
    write_new_file(fd, path, pem)


def write_new_file(fd: int, path: Path, data: bytes) -> None:
    """Write and fsync a file just created (O_EXCL) at ``path``; on failure (a full disk) it is removed,
    so that a retry is not refused by an empty file left where the key or certificate was to be."""
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def load_private_key(pem_or_der: bytes, source: str) -> SigningKey:
    try:
        if b"-----BEGIN" in pem_or_der:
            key = serialization.load_pem_private_key(pem_or_der, password=None)
        else:
            key = serialization.load_der_private_key(pem_or_der, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyError_(f"{source}: not an unencrypted private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise KeyError_(f"{source}: only EC and RSA keys are supported")
    return key
