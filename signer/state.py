"""Signer-side access to the store: the only code that writes LMDB."""

from __future__ import annotations

import contextlib
import os
import re
import socket
from pathlib import Path
from typing import Any

import msgspec

from contract import store
from contract.config import HTTP_URL, Config
from contract.jobs import socket_path
from signer.keys import KeyError_, check_private_dir

# A CA name is also an EST label later: path-safe and never an EST operation name.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_RESERVED = {"cacerts", "simpleenroll", "simplereenroll", "serverkeygen", "csrattrs", "fullcmc"}
META_NEXT_ISSUER = b"next_issuer_number"


class SignerError(Exception):
    """An operator-facing failure: the message says what is wrong and what to do."""


def check_ca_name(name: str) -> None:
    if not _NAME.fullmatch(name) or name.lower() in _RESERVED:
        raise SignerError(
            f"invalid CA name {name!r}: use 1-64 letters, digits, '.', '_' or '-', not an EST operation name"
        )


def check_ocsp_url(url: str | None) -> None:
    """``--ocsp-url`` goes into the AIA of every certificate the CA issues: an http(s) URL or nothing."""
    if url is not None and not HTTP_URL.fullmatch(url):
        raise SignerError(f"invalid --ocsp-url {url[:80]!r}: an http:// or https:// URL without spaces")


def signer_dir(data_dir: Path) -> Path:
    """The signer's side of the data directory: keys live here, mode 0700."""
    path = data_dir / "signer"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return _private(path)


def _private(path: Path) -> Path:
    """``path``, a directory found this user's alone (signer.keys.check_private_dir); else SignerError."""
    try:
        check_private_dir(path)
    except KeyError_ as exc:
        raise SignerError(str(exc)) from None
    return path


def heartbeat_path(data_dir: Path) -> Path:
    """Touched by the signer's signing loop as it comes round; `up`'s watchdog reads its mtime."""
    return signer_dir(data_dir) / "alive"


def beat(path: Path) -> None:
    """Touch the heartbeat file; a data directory gone meanwhile is the signer's FilesWatch's to report."""
    with contextlib.suppress(OSError):
        path.touch()


def signer_listening(data_dir: Path) -> bool:
    """Whether a signer runs on ``data_dir``: its job server accepts a connection (a signer stops when
    its job server does). The connection is closed at once. No lock is tried: a signer starting at
    that instant would find it held and refuse to start."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(os.fspath(socket_path(data_dir)))
        except OSError:
            return False
    return True


def keys_dir(data_dir: Path) -> Path:
    """Where the keys are (made by write_private_key, mode 0700; one made otherwise is not trusted as found)."""
    keys = signer_dir(data_dir) / "keys"
    if keys.exists():
        _private(keys)
    return keys


def key_path(data_dir: Path, name: str, role: str = "ca") -> Path:
    return keys_dir(data_dir) / f"{name}.{role}.key"


class SignerStore:
    """The LMDB environment opened for writing, with its named databases."""

    def __init__(self, data_dir: Path, config: Config) -> None:
        self.data_dir = data_dir
        self.config = config
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o755)  # not group-writable whatever the umask
        self.env = store.open_env(data_dir, readonly=False, map_size=config.store.map_size_mb << 20)
        try:
            dbs = store.open_dbs(self.env, readonly=False)
        except store.StoreFormatError as exc:
            self.env.close()
            raise SignerError(str(exc)) from None
        self.issuers_db: Any = dbs[store.DB_ISSUERS]
        self.meta: Any = dbs[store.DB_META]
        self.inventory: Any = dbs[store.DB_INVENTORY]
        self.responses: Any = dbs[store.DB_RESPONSES]
        self.schedule: Any = dbs[store.DB_SCHEDULE]
        self.refresh: Any = dbs[store.DB_REFRESH]
        self.pending: Any = dbs[store.DB_PENDING]

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> SignerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def issuers(self) -> list[store.IssuerRecord]:
        with self.env.begin(db=self.issuers_db) as txn:
            return [store.ISSUER_DECODER.decode(v) for _, v in txn.cursor()]

    def registry_generation(self) -> int:
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(store.META_REGISTRY_GENERATION)
        return store.unpack_u64(raw) if raw else 0

    def issuer(self, name: str) -> store.IssuerRecord:
        with self.env.begin(db=self.issuers_db) as txn:
            raw = txn.get(name.encode())
        if raw is None:
            known = ", ".join(r.name for r in self.issuers()) or "none yet: run `pki-edge ca create NAME`"
            raise SignerError(f"unknown CA {name!r} (known: {known})")
        return store.ISSUER_DECODER.decode(raw)

    def add_issuer(self, record: store.IssuerRecord) -> store.IssuerRecord:
        """Register a new CA under the next issuer number and bump the registry generation."""
        with self.env.begin(write=True) as txn:
            if txn.get(record.name.encode(), db=self.issuers_db) is not None:
                raise SignerError(f"CA {record.name!r} already exists")
            raw = txn.get(META_NEXT_ISSUER, db=self.meta)
            number = store.unpack_u64(raw) if raw else 1
            txn.put(META_NEXT_ISSUER, store.pack_u64(number + 1), db=self.meta)
            record = msgspec.structs.replace(record, number=number)
            txn.put(record.name.encode(), store.ISSUER_ENCODER.encode(record), db=self.issuers_db)
            self._bump_generation(txn)
        return record

    def replace_issuer(self, was: store.IssuerRecord, record: store.IssuerRecord) -> None:
        """Write a changed record of a registered CA and bump the registry generation, provided it
        still is ``was``: the CLI and the signer's own upkeep may change one at the same time."""
        with self.env.begin(write=True) as txn:
            raw = txn.get(was.name.encode(), db=self.issuers_db)
            if raw is None or store.ISSUER_DECODER.decode(raw) != was:
                raise SignerError(f"CA {was.name!r} changed meanwhile: try again")
            txn.put(record.name.encode(), store.ISSUER_ENCODER.encode(record), db=self.issuers_db)
            self._bump_generation(txn)

    def _bump_generation(self, txn: Any) -> None:
        raw = txn.get(store.META_REGISTRY_GENERATION, db=self.meta)
        txn.put(store.META_REGISTRY_GENERATION, store.pack_u64((store.unpack_u64(raw) if raw else 0) + 1), db=self.meta)
