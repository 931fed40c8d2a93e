"""LMDB environment layout shared by the signer (the only writer) and the edge (reader).

One environment lives in ``DATA/store``. Its named databases:

``issuers``    issuer name (UTF-8)            -> IssuerRecord
``meta``       fixed keys (``META_*``)         -> small values
``inventory``  issuer number + serial key      -> CertRecord
``responses``  issuer number + alg + serial    -> StoredResponse
``schedule``   refresh time + issuer + serial  -> b"" (routine refresh order, oldest first)
``refresh``    issuer number + serial key      -> refresh time (to find the schedule entry again)
``pending``    priority + issuer + serial      -> b"" (revocations and new serials, ahead of refreshes)
``ras``        RA name (UTF-8)                 -> RaRecord (EST registration authorities)
``est_users``  label + NUL + user name         -> EstUserRecord (EST HTTP Basic credentials)

Keys are fixed-width big-endian so that LMDB's byte order is the logical order.
A serial key is the minimal two's-complement encoding of the serial's integer
value: padded encodings fold onto one key, negative serials stay distinct.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, Literal, NamedTuple

import lmdb
import msgspec

DB_ISSUERS = b"issuers"
DB_META = b"meta"
DB_INVENTORY = b"inventory"
DB_RESPONSES = b"responses"
DB_SCHEDULE = b"schedule"
DB_REFRESH = b"refresh"
DB_PENDING = b"pending"
DB_RAS = b"ras"
DB_EST_USERS = b"est_users"
ALL_DBS = (DB_ISSUERS, DB_META, DB_INVENTORY, DB_RESPONSES, DB_SCHEDULE, DB_REFRESH, DB_PENDING, DB_RAS, DB_EST_USERS)

META_REGISTRY_GENERATION = b"registry_generation"
META_LAST_SIGNED_AT = b"last_signed_at"
META_HASH_ALGORITHMS = b"hash_algorithms"  # what the signer signs for, comma-separated (signer.precompute)
# The CAs whose responses the signer cannot sign now (key not loadable, signing certificate not valid),
# comma-separated names (CA names hold no comma); absent when there are none.
META_UNSIGNABLE = b"unsignable"
# The layout version of the whole store (u64): raised by a release that lays out keys or records in a way
# an older one would misread. Each side refuses a store of a later format instead of guessing (an edge or
# a signer of an older release started on an upgraded data directory, a backup restored to an older host).
# Stores made before the key existed have format 1.
META_FORMAT = b"format"
FORMAT = 1

# Pending work priorities: lower sorts first and is signed first.
PRIORITY_REVOCATION = 0
PRIORITY_NEW = 1

# CertID hash algorithms: code stored in keys, name used in config, DER content of the OID.
HASH_ALGORITHMS: dict[str, tuple[int, bytes]] = {
    "sha1": (1, bytes.fromhex("2b0e03021a")),
    "sha256": (2, bytes.fromhex("608648016503040201")),
    "sha384": (3, bytes.fromhex("608648016503040202")),
    "sha512": (4, bytes.fromhex("608648016503040203")),
}
HashName = Literal["sha1", "sha256", "sha384", "sha512"]

# A response is served within this long of its producedAt: the signer commits a batch at most
# signer.batch_seconds (and a last chunk) after it began, the edge reads a commit 10 ms later at most.
# If-Modified-Since is judged by it (edge.answer.not_modified_since).
SERVED_WITHIN_SECONDS = 60
MAX_BATCH_SECONDS = SERVED_WITHIN_SECONDS / 2

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class IssuerRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One CA of the registry. The edge needs only ``number`` and ``cert_der``.

    Fields at their default are not written: a field added later then reaches an edge of an older
    version (which refuses unknown fields) only in the records that use it.
    """

    number: int
    name: str
    cert_der: bytes
    signing: Literal["ca", "delegate"]  # "ca": the signer holds the CA key (it may issue)
    responder_cert_der: bytes | None = None  # a delegated responder signs the CA's OCSP responses
    ocsp_url: str | None = None
    parent: str | None = None
    created_at: int = 0
    responder_minted: bool = False  # the signer issued the responder, and renews it


class CertRecord(msgspec.Struct, frozen=True, array_like=True):
    """Inventory entry of one issued certificate (``cert_der`` when it is known)."""

    not_after: int
    revoked_at: int | None = None
    reason: int | None = None
    cert_der: bytes | None = None


class StoredResponse(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A signed OCSPResponse and everything the edge needs to serve it without parsing it.

    Header values are stored ready to write (bytes), computed once at signing time. Not tracked by
    the garbage collector (``gc=False``: bytes, ints and a bool cannot make a cycle): the edge decodes
    one per request, and each tracked one would bring the next collection nearer.
    """

    der: bytes
    this_update: int
    next_update: int
    refresh_at: int
    serve_until: int
    etag: bytes
    last_modified: bytes  # producedAt (thisUpdate in responses stored before produced_at was recorded)
    expires: bytes
    revoked: bool
    # When it was signed (its producedAt, Unix seconds): what If-Modified-Since is judged by. 0 in a
    # response stored by a signer that did not record it (the field was added later, at the end).
    produced_at: int = 0


class RaRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A registration authority: its certificate authenticates it; it may enroll for ``cas`` only."""

    name: str
    cert_der: bytes
    cas: list[str]
    added_at: int = 0


class EstUserRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """HTTP Basic credentials for one EST label; ``password_hash`` is an argon2id PHC string."""

    label: str
    name: str
    password_hash: str
    added_at: int = 0


def est_user_key(label: str, name: str) -> bytes:
    return label.encode() + b"\x00" + name.encode()


RA_ENCODER = msgspec.msgpack.Encoder()
RA_DECODER = msgspec.msgpack.Decoder(RaRecord)
EST_USER_ENCODER = msgspec.msgpack.Encoder()
EST_USER_DECODER = msgspec.msgpack.Decoder(EstUserRecord)

ISSUER_ENCODER = msgspec.msgpack.Encoder()
ISSUER_DECODER = msgspec.msgpack.Decoder(IssuerRecord)
CERT_ENCODER = msgspec.msgpack.Encoder()
CERT_DECODER = msgspec.msgpack.Decoder(CertRecord)
RESPONSE_ENCODER = msgspec.msgpack.Encoder()
RESPONSE_DECODER = msgspec.msgpack.Decoder(StoredResponse)


def serial_key(serial: int) -> bytes:
    """Minimal two's-complement big-endian encoding of a serial (the DER INTEGER content)."""
    length = (serial + (serial < 0)).bit_length() // 8 + 1
    return serial.to_bytes(length, "big", signed=True)


def canonical_serial_key(content: bytes) -> bytes:
    """Fold a possibly padded INTEGER content onto its minimal encoding."""
    i = 0
    last = len(content) - 1
    while i < last:
        b, nxt = content[i], content[i + 1]
        if (b == 0 and nxt < 0x80) or (b == 0xFF and nxt >= 0x80):
            i += 1
        else:
            break
    return content[i:]


def serial_from_key(key: bytes) -> int:
    return int.from_bytes(key, "big", signed=True)


def issuer_prefix(number: int) -> bytes:
    return _U32.pack(number)


def response_prefix(issuer_number: int, hash_code: int) -> bytes:
    return _U32.pack(issuer_number) + bytes((hash_code,))


def inventory_key(issuer_number: int, serial_k: bytes) -> bytes:
    return _U32.pack(issuer_number) + serial_k


def response_key(issuer_number: int, hash_code: int, serial_k: bytes) -> bytes:
    return _U32.pack(issuer_number) + bytes((hash_code,)) + serial_k


def schedule_key(refresh_at: int, inv_key: bytes) -> bytes:
    return _U64.pack(refresh_at) + inv_key


def split_schedule_key(key: bytes) -> tuple[int, bytes]:
    return _U64.unpack_from(key)[0], key[8:]


def pending_key(priority: int, inv_key: bytes) -> bytes:
    return bytes((priority,)) + inv_key


def split_inventory_key(key: bytes) -> tuple[int, bytes]:
    return _U32.unpack_from(key)[0], key[4:]


class Backlog(NamedTuple):
    """How far behind the signer is, read from the store by the edge (/readyz) and the signer (its log)."""

    pending: int  # serials waiting for a first signing or a revocation
    overdue_seconds: int  # how late the oldest due routine refresh is; 0 when none is due


def read_backlog(txn: Any, pending_db: Any, schedule_db: Any, now: int) -> Backlog:
    """Two O(1) reads in ``txn``: the pending count and the schedule's first entry."""
    pending = int(txn.stat(pending_db)["entries"])
    cursor = txn.cursor(db=schedule_db)
    overdue = max(0, now - split_schedule_key(cursor.key())[0]) if cursor.first() else 0
    return Backlog(pending, overdue)


def pack_u64(value: int) -> bytes:
    return _U64.pack(value)


def unpack_u64(value: bytes) -> int:
    return int(_U64.unpack(value)[0])


def store_path(data_dir: Path) -> Path:
    return data_dir / "store"


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a file, None when it is gone: a store or lock file replaced under a running
    process (a restored backup) is another file at the same path, which that process never sees."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def open_env(data_dir: Path, *, readonly: bool, map_size: int) -> lmdb.Environment:
    """Open the store; writers create it. Readers never lock or write the file."""
    path = store_path(data_dir)
    if not readonly:
        path.mkdir(parents=True, exist_ok=True, mode=0o750)
    return lmdb.open(
        os.fspath(path),
        map_size=map_size,
        max_dbs=len(ALL_DBS),
        readonly=readonly,
        lock=True,
        # A crash never tears the store: each transaction is durable at commit.
        sync=True,
        metasync=True,
        max_readers=512,
    )


# Databases added after the first release: a reader of an older store sees them as empty
# until a signer-side command (which creates every database) has opened the store.
LATER_DBS = (DB_RAS, DB_EST_USERS)


class StoreFormatError(Exception):
    """The store was laid out by a later release than this one."""


def check_format(raw: bytes | None, path: str) -> None:
    """Refuse (StoreFormatError) a store whose META_FORMAT value is not this release's; absent is format 1."""
    found = FORMAT if raw is None else unpack_u64(raw) if len(raw) == _U64.size else -1
    if found == FORMAT:
        return
    if found < FORMAT:  # a format this release replaced, or an unreadable value: nothing to go by
        raise StoreFormatError(f"the store in {path} has format {raw!r}, which this release cannot read")
    raise StoreFormatError(
        f"the store in {path} has format {found}, written by a later pki-edge release; this one reads"
        f" format {FORMAT}: run that release (or restore a backup this one made)"
    )


def _open_meta(env: lmdb.Environment, *, readonly: bool) -> None:
    """Check the store's format (a writer records it where none is) before anything else is opened."""
    meta = env.open_db(DB_META, create=not readonly)
    with env.begin(db=meta, write=not readonly) as txn:
        raw = txn.get(META_FORMAT)
        check_format(raw, env.path())
        if raw is None and not readonly:
            txn.put(META_FORMAT, pack_u64(FORMAT))


def open_dbs(env: lmdb.Environment, *, readonly: bool) -> dict[bytes, Any]:
    """The named databases, once the store's format is known to be this release's (StoreFormatError)."""
    _open_meta(env, readonly=readonly)  # py-lmdb hands out one handle per name: opened again below
    if not readonly:
        return {name: env.open_db(name, create=True) for name in ALL_DBS}
    dbs: dict[bytes, Any] = {}
    for name in ALL_DBS:
        try:
            dbs[name] = env.open_db(name, create=False)
        except lmdb.NotFoundError:
            if name not in LATER_DBS:
                raise
            dbs[name] = None
    return dbs
