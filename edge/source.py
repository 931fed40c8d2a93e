"""Where responses come from: the one-method ``Source`` seam.

The HTTP layer asks a ``Source`` for the stored response of one CertID, named by
its issuer part (``edge.ocsp_request.issuer_part``) and serial number, at the
answer's time, and gets a ``StoredResponse`` or one of the closed set of
``SourceError`` subclasses; ``edge.answer`` maps those to OCSP and HTTP statuses
in one place. Policies (staleness, expiry) are thin wrappers around the LMDB
source that judge by that time.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import lmdb
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from contract import chain, store
from contract.cert_id import issuer_part_encodings
from contract.store import StoredResponse
from edge import ocsp_request
from edge.later import AtEnd, End
from edge.ocsp_request import CertID

MAX_LMDB_KEY = 511  # LMDB's default key size limit
# How long the edge's read snapshot serves lookups: short beside the second a revocation may take to
# show (and the few milliseconds it takes the signer), long beside a loop turn, which at low load
# serves one request.
READ_SNAPSHOT_SECONDS = 0.01
_HASHLIB_NAMES = {"sha1": "sha1", "sha256": "sha256", "sha384": "sha384", "sha512": "sha512"}


class SourceError(Exception):
    """Base of the closed set of lookup failures."""


class NotFound(SourceError):
    """Unknown issuer, unknown serial, or a hash algorithm not served: not authoritative."""


class Stale(SourceError):
    """The stored response is at or past nextUpdate: never served."""


class Unavailable(SourceError):
    """The store cannot be read (not created yet, or failing)."""


class Source(Protocol):
    def response(self, issuer_part: bytes, serial_number: bytes, now: int) -> StoredResponse:
        """The stored response of the CertID whose fields before serialNumber are ``issuer_part`` (as encoded).

        ``now`` is the time of the answer (Unix seconds), read once by the answerer for every check
        of one request: policies judge by it, the store itself has no use for it.
        """
        ...


def issuer_hashes(cert_der: bytes, hash_name: str) -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) of a CA certificate for one hash algorithm.

    The name hash is over the DER subject; the key hash over the contents of the
    subjectPublicKey BIT STRING (not the SPKI, not the SKI) — RFC 6960 §4.1.1.
    """
    cert = asn1_x509.Certificate.load(cert_der)
    tbs = cert["tbs_certificate"]
    subject_der = tbs["subject"].dump()
    key_bits = tbs["subject_public_key_info"]["public_key"].contents[1:]  # drop unused-bits octet
    h = _HASHLIB_NAMES[hash_name]
    return hashlib.new(h, subject_der).digest(), hashlib.new(h, key_bits).digest()


def build_issuer_table(records: list[store.IssuerRecord]) -> dict[bytes, bytes]:
    """Map each encoding of a CertID's issuer part to the response-key prefix, for every algorithm."""
    table: dict[bytes, bytes] = {}
    for record in records:
        for name, (code, oid) in store.HASH_ALGORITHMS.items():
            name_hash, key_hash = issuer_hashes(record.cert_der, name)
            for encoding in issuer_part_encodings(oid, name_hash, key_hash):
                table[encoding] = store.response_prefix(record.number, code)
    return table


EnvOpener = Callable[[], lmdb.Environment | None]


def read_only_store(data_dir: Path, map_size: int) -> EnvOpener:
    """Opens the store read-only once the signer has created it (None until then)."""

    def opener() -> lmdb.Environment | None:
        if not (store.store_path(data_dir) / "data.mdb").exists():
            return None
        return store.open_env(data_dir, readonly=True, map_size=map_size)

    return opener


def at_once(end: End) -> None:
    """A read snapshot serves one lookup."""
    end()


class LmdbSource:
    """Reads the signer's LMDB store. One instance per worker process.

    ``end_of_read`` says how long one read transaction serves response lookups: the edge keeps one
    for ``READ_SNAPSHOT_SECONDS`` (a begin and an end cost more than the lookup itself), so a newly
    signed response (a revocation) is served that long after its commit at most.
    """

    def __init__(self, opener: EnvOpener, logger: logging.Logger, end_of_read: AtEnd = at_once) -> None:
        self._opener = opener
        self._logger = logger
        self._end_of_read = end_of_read
        self._read: lmdb.Transaction | None = None
        self._end_this_read = self._end_read  # bound once, not once per snapshot
        self._decode = store.RESPONSE_DECODER.decode
        self._read_failed = False
        self._follow_failed = False
        # A store of a later format (contract.store.FORMAT) was refused: no request opens it again, the
        # once-a-second follow_store does. The refusal last logged, so that it is said once.
        self._refused = False
        self._refusal_said = ""
        self._registry_listeners: list[Callable[[list[store.IssuerRecord]], None]] = []
        self._forget_store()

    def _forget_store(self) -> None:
        """No store open, and nothing read from one."""
        self._env: lmdb.Environment | None = None
        self._store_file = Path()
        self._store_identity: tuple[int, int] | None = None
        self._responses: Any = None
        self._issuers_db: Any = None
        self._meta: Any = None
        self._generation = -1
        self._table: dict[bytes, bytes] = {}
        self.issuers: dict[str, store.IssuerRecord] = {}
        self._dbs: dict[bytes, Any] = {}
        self._cas: list[tuple[int, bytes]] = []  # (number, certificate DER): paths for EST (contract.chain)
        self._ras: list[store.RaRecord] | None = None  # read once per registry generation

    def open(self) -> bool:
        """Open the store if it exists; True when open. Called at worker start and retried."""
        if self._env is not None:
            return True
        if self._refused:
            return False
        env = None
        try:
            env = self._opener()
            if env is None:
                return False
            dbs = store.open_dbs(env, readonly=True)
        except store.StoreFormatError as exc:
            assert env is not None
            env.close()
            self._refuse(exc)
            return False
        except lmdb.Error as exc:
            self._logger.warning("store not ready: %s", exc)
            return False
        self._env = env
        self._store_file = Path(env.path()) / "data.mdb"
        self._store_identity = store.file_identity(self._store_file)
        self._responses = dbs[store.DB_RESPONSES]
        self._issuers_db = dbs[store.DB_ISSUERS]
        self._meta = dbs[store.DB_META]
        self._dbs = dbs
        self.refresh_issuers()
        return True

    @property
    def refused(self) -> bool:
        """The store in the data directory is of a later format: nothing is read from it."""
        return self._refused

    @property
    def why_closed(self) -> str:
        """Why no store is open (/readyz)."""
        return self._refusal_said if self._refused else "store not created yet"

    @property
    def issuer_count(self) -> int:
        return len(self._table) // (2 * len(store.HASH_ALGORITHMS))  # two encodings per algorithm

    def refresh_issuers(self) -> bool:
        """Rebuild the issuer table if the registry changed; True if it did."""
        env = self._env
        if env is None:
            return False
        with self._begin() as txn:
            raw = txn.get(store.META_REGISTRY_GENERATION, db=self._meta)
            generation = store.unpack_u64(raw) if raw else 0
            if generation == self._generation:
                return False
            records = [store.ISSUER_DECODER.decode(v) for _, v in txn.cursor(db=self._issuers_db)]
        self._table = build_issuer_table(records)
        self.issuers = {record.name: record for record in records}
        self._cas = [(record.number, record.cert_der) for record in records]
        self._ras = None
        self._generation = generation
        self._logger.info("issuer registry generation %d: %d issuers", generation, len(records))
        for listener in self._registry_listeners:
            listener(records)
        return True

    def served_issuer_parts(self) -> list[bytes]:
        """Every issuer part (as a CertID encodes it) answered from this store's registry as last read."""
        return list(self._table)

    def on_registry_change(self, listener: Callable[[list[store.IssuerRecord]], None]) -> None:
        """Call ``listener`` with every CA record now (if open) and whenever the registry changes."""
        self._registry_listeners.append(listener)
        if self.issuers:
            listener(list(self.issuers.values()))

    # Reads for EST (authentication and status of certificates), through the same seam.

    def _get(self, db_name: bytes, key: bytes) -> bytes | None:
        if self._env is None and not self.open():
            raise Unavailable("store not created yet")
        assert self._env is not None
        if self._dbs[db_name] is None:  # an older store without this database: nothing in it
            return None
        with self._begin(db=self._dbs[db_name]) as txn:
            return txn.get(key)

    def registration_authorities(self) -> list[store.RaRecord]:
        """The registered RAs, read once per registry generation (adding or removing one bumps it).

        The same list object until then: callers may key their own derived state on it, and must
        not change it.
        """
        if self._env is None and not self.open():
            raise Unavailable("store not created yet")
        assert self._env is not None
        self.refresh_issuers()
        if self._ras is None:
            if self._dbs[store.DB_RAS] is None:
                self._ras = []
            else:
                with self._begin(db=self._dbs[store.DB_RAS]) as txn:
                    self._ras = [store.RA_DECODER.decode(value) for _, value in txn.cursor()]
        return self._ras

    def est_user(self, label: str, name: str) -> store.EstUserRecord | None:
        """The Basic credentials of ``name`` on ``label``; None for any name no key can hold."""
        if "\x00" in label or "\x00" in name:
            return None
        try:
            key = store.est_user_key(label, name)
        except UnicodeEncodeError:
            return None
        if len(key) > MAX_LMDB_KEY:
            return None
        raw = self._get(store.DB_EST_USERS, key)
        return store.EST_USER_DECODER.decode(raw) if raw is not None else None

    def is_revoked(self, cert: x509.Certificate) -> bool:
        """True when a registry CA that issued ``cert`` (by name and signature) has it revoked, or has
        revoked a CA on the way up from it: a path through a revoked CA is invalid (RFC 5280 §6.1.3)."""
        if not self.open():
            raise Unavailable("store not created yet")
        self.refresh_issuers()
        der = cert.public_bytes(serialization.Encoding.DER)
        return chain.revoking_ca(der, self._cas, self._revoked) is not None

    def _revoked(self, number: int, serial: int) -> bool:
        raw = self._get(store.DB_INVENTORY, store.inventory_key(number, store.serial_key(serial)))
        return raw is not None and store.CERT_DECODER.decode(raw).revoked_at is not None

    def cert_ref(self, cert_id: CertID) -> tuple[int, int] | None:
        """(issuer number, hash code) for a CertID's issuer and algorithm, if known."""
        prefix = self._table.get(ocsp_request.issuer_part(cert_id))
        if prefix is None:
            return None
        number, _ = store.split_inventory_key(prefix[:4])
        return number, prefix[4]

    def response(self, issuer_part: bytes, serial_number: bytes, now: int) -> StoredResponse:
        env = self._env
        if env is None:
            if not self.open():
                raise Unavailable("store not created yet")
            env = self._env
            assert env is not None
        try:
            prefix = self._table.get(issuer_part)
            # A CA added after start: the registry generation tells, at the price of one read.
            if prefix is None and (not self.refresh_issuers() or (prefix := self._table.get(issuer_part)) is None):
                raise NotFound("unknown issuer or hash algorithm")
            txn = self._read
            if txn is not None:
                value = txn.get(prefix + serial_number)
            else:
                txn = env.begin(db=self._responses)
                try:
                    value = txn.get(prefix + serial_number)
                finally:
                    self._read = txn
                    self._end_of_read(self._end_this_read)
        except lmdb.MapResizedError:
            if self._adopt_map_size():
                return self.response(issuer_part, serial_number, now)
            raise Unavailable("store read failed") from None
        except lmdb.Error as exc:  # a failing store is the server's fault: tryLater, never a malformed request
            if not self._read_failed:  # once: the answerer counts every one (ocsp_unavailable)
                self._read_failed = True
                self._logger.error("store read failed: %s", exc)
            raise Unavailable("store read failed") from None
        if value is None:
            raise NotFound("unknown serial or hash algorithm not served")
        return self._decode(value)

    def _begin(self, db: Any = None) -> Any:
        """A read transaction off the hot path, the store's growth past this mapping adopted."""
        assert self._env is not None
        try:
            return self._env.begin(db=db)
        except lmdb.MapResizedError:
            if not self._adopt_map_size():
                raise
            return self._env.begin(db=db)

    def _adopt_map_size(self) -> bool:
        """The signer has raised store.map_size_mb and the store grew past this worker's mapping (LMDB's
        MDB_MAP_RESIZED): map it at its new size. True when the mapping grew."""
        env = self._env
        assert env is not None
        before = env.info()["map_size"]
        self._end_read()  # no transaction may be open while the map changes
        env.set_mapsize(0)  # 0: the size the store now has
        after = env.info()["map_size"]
        self._logger.info(
            "the store grew past this worker's map: now mapped at %d MB, was %d MB", after >> 20, before >> 20
        )
        return after > before

    def _end_read(self) -> None:
        # Aborted, not committed: for a read, the same end at half the cost (py-lmdb 3.0).
        txn, self._read = self._read, None
        if txn is not None:
            txn.abort()

    def replaced(self) -> bool:
        """The store file was replaced or removed since this worker opened it (a restored backup, a
        removed data directory): what it serves is no longer the signer's. Off the hot path."""
        return self._env is not None and store.file_identity(self._store_file) != self._store_identity

    def _refuse(self, exc: store.StoreFormatError) -> None:
        """Serve nothing from a store of a later format (tryLater, /readyz 503) rather than misread it."""
        self._refused = True
        if str(exc) != self._refusal_said:
            self._refusal_said = str(exc)
            self._logger.error("store refused: %s; answering tryLater", exc)

    def _refuse_if_reformatted(self) -> None:
        """A later release's signer may rewrite the open store's format in place: stop reading it."""
        env = self._env
        if env is None:
            return
        with self._begin(db=self._meta) as txn:
            raw = txn.get(store.META_FORMAT)
        try:
            store.check_format(raw, env.path())
        except store.StoreFormatError as exc:
            self._end_read()
            env.close()
            self._forget_store()
            self._refuse(exc)
            for listener in self._registry_listeners:
                listener([])

    def follow_store(self) -> None:
        """Once a second (edge.app): a replaced store reopened, a registry change read, a format change
        refused. A failing store is said once and tried again at the next call."""
        try:
            if self._refused:
                self._refused = False
                if self.open():
                    self._logger.warning("the store now in the data directory has this release's format: serving it")
                    self._refusal_said = ""
            self.reopen_if_replaced()
            self._refuse_if_reformatted()
            self.refresh_issuers()
        except lmdb.Error as exc:
            if not self._follow_failed:
                self._logger.error("store check failed: %s", exc)
            self._follow_failed = True
        else:
            self._follow_failed = False

    def reopen_if_replaced(self) -> bool:
        """Serve the store now in the data directory if the one open was replaced or removed; True if
        it was. A removed one leaves the source closed (tryLater) until a store is there again.

        Without this a worker would serve the deleted file's responses, frozen, until restarted: a
        restored backup's revocations would never be seen, nor a new signer's refreshes.
        """
        if not self.replaced():
            return False
        self._end_read()
        assert self._env is not None
        self._env.close()
        self._forget_store()
        if self.open():
            self._logger.warning("the store was replaced in the data directory: serving the new one")
        else:
            self._logger.error("the store was removed from the data directory: answering tryLater until it is back")
            for listener in self._registry_listeners:
                listener([])
        return True

    def signer_backlog(self, now: int) -> store.Backlog | None:
        """How far behind the signer is (``contract.store.read_backlog``); None while no store is open."""
        if self._env is None:
            return None
        with self._begin() as txn:
            return store.read_backlog(txn, self._dbs[store.DB_PENDING], self._dbs[store.DB_SCHEDULE], now)

    def unsignable_cas(self) -> list[str]:
        """The CAs the signer cannot sign responses for now (contract.store.META_UNSIGNABLE)."""
        if self._env is None:
            return []
        with self._begin(db=self._meta) as txn:
            raw = txn.get(store.META_UNSIGNABLE)
        return raw.decode().split(",") if raw else []

    def newest_signed_at(self) -> int | None:
        if self._env is None:
            return None
        with self._begin(db=self._meta) as txn:
            raw = txn.get(store.META_LAST_SIGNED_AT)
        return store.unpack_u64(raw) if raw else None


class FreshnessPolicy:
    """Never serve a response at or past nextUpdate, nor one for a certificate past its grace."""

    def __init__(self, inner: Source) -> None:
        self._inner = inner

    def response(self, issuer_part: bytes, serial_number: bytes, now: int) -> StoredResponse:
        stored = self._inner.response(issuer_part, serial_number, now)
        if now >= stored.serve_until:
            raise NotFound("certificate expired past its grace period")
        if now >= stored.next_update:
            raise Stale("stored response is past nextUpdate")
        return stored
