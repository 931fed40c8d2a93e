"""The certificate inventory: adding, importing and revoking serials.

Every change that alters what OCSP must say is written together with a
``pending`` entry in one transaction, so the signer picks it up ahead of
routine refreshes and a crash can never separate the two.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from contract import chain, store
from contract.chain import check_directly_issued
from contract.store import CertRecord, IssuerRecord
from signer import key_order
from signer.state import SignerError, SignerStore

BATCH = 10000
# Called with ("read", rows) every BATCH rows read and sorted, then ("written", entries) after each batch.
Progress = Callable[[str, int], None]

# RFC 5280 §5.3.1 CRLReason codes, with the spellings openssl's index.txt uses.
REASONS: dict[str, int] = {
    "unspecified": 0,
    "keycompromise": 1,
    "cacompromise": 2,
    "affiliationchanged": 3,
    "superseded": 4,
    "cessationofoperation": 5,
    "certificatehold": 6,
    "removefromcrl": 8,
    "privilegewithdrawn": 9,
    "aacompromise": 10,
}
_CANONICAL_REASON_NAMES = {
    0: "unspecified",
    1: "keyCompromise",
    2: "cACompromise",
    3: "affiliationChanged",
    4: "superseded",
    5: "cessationOfOperation",
    6: "certificateHold",
    8: "removeFromCRL",
    9: "privilegeWithdrawn",
    10: "aACompromise",
}


_OPENSSL_REASONS = {"keyTime": "keyCompromise", "CAkeyTime": "cACompromise", "holdInstruction": "certificateHold"}


class ImportReport(msgspec.Struct):
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: dict[str, int] = msgspec.field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def summary(self) -> str:
        text = f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}"
        rejected = sum(self.rejected.values())
        if rejected:
            reasons = "; ".join(f"{n} {why}" for why, n in sorted(self.rejected.items()))
            text += f", rejected {rejected} ({reasons})"
        return text


def reason_code(name: str) -> int:
    code = REASONS.get(name.replace("_", "").replace("-", "").lower())
    if code is None:
        raise SignerError(f"unknown revocation reason {name!r}: one of {', '.join(_CANONICAL_REASON_NAMES.values())}")
    return code


def revocation_reason(name: str) -> int:
    """A reason a revocation may carry: removeFromCRL says "no longer revoked" (delta CRLs, RFC 5280 §5.3.1)."""
    code = REASONS.get(name.replace("_", "").replace("-", "").lower())
    if code is None:
        names = ", ".join(n for c, n in _CANONICAL_REASON_NAMES.items() if c != REMOVE_FROM_CRL)
        raise SignerError(f"unknown revocation reason {name!r}: one of {names}")
    if code == REMOVE_FROM_CRL:
        raise SignerError("removeFromCRL is not a revocation reason: it takes a certificate off a delta CRL")
    return code


KEY_COMPROMISE = 1
REMOVE_FROM_CRL = 8
# Revocation times are written as GeneralizedTime: four-digit years; and a revocation is a fact, not a
# plan (a time ahead of the signer's clock would be signed as it is). A minute of clock skew is allowed.
EARLIEST_REVOCATION = int(dt.datetime(1950, 1, 1, tzinfo=dt.UTC).timestamp())
REVOCATION_SKEW_SECONDS = 60


def check_revocation_time(when: int, now: int) -> int:
    if when < EARLIEST_REVOCATION:
        raise SignerError("--time is before 1950: not a revocation time")
    if when > now + REVOCATION_SKEW_SECONDS:
        raise SignerError("--time is in the future: a revocation is recorded once it has happened")
    return when


def reason_name(code: int | None) -> str:
    """The reason as RFC 5280 spells it; "none" for a revocation without a reason code."""
    return "none" if code is None else _CANONICAL_REASON_NAMES.get(code, str(code))


_HEX_DIGITS = re.compile(r"[0-9a-f]+")


def parse_serial(text: str) -> int:
    """Hexadecimal as ``openssl x509 -noout -serial`` prints it; case, colons, ``serial=`` and 0x tolerated."""
    cleaned = text.strip().lower().removeprefix("serial=").replace(":", "")
    negative = cleaned.startswith("-")
    cleaned = cleaned.removeprefix("-").removeprefix("0x")
    if not cleaned or len(cleaned) > 128 or not _HEX_DIGITS.fullmatch(cleaned):
        raise SignerError(f"invalid serial {text!r}: expected hexadecimal, e.g. 1A2B or 1a:2b")
    value = int(cleaned, 16)
    return -value if negative else value


def parse_time(text: str) -> int:
    """Unix seconds, or an ISO 8601 time (UTC when no offset is given)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SignerError(f"invalid time {text!r}: use ISO 8601 (2026-01-31T12:00:00Z) or Unix seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp())


class Entry(NamedTuple):
    serial: int
    record: CertRecord


CONFLICTING_REVOCATION = "revocation other than the one recorded (kept; only keyCompromise may replace a reason)"


class RevocationConflict(Exception):
    """An imported revocation that contradicts the recorded one: a revocation is never moved."""


def _merge(old: CertRecord | None, new: CertRecord) -> CertRecord | None:
    """The record to write, or None when nothing changes.

    Revocations follow `revoke`'s rules: one is never undone (a row saying valid leaves it) nor moved;
    the same one again changes nothing (without a reason too); keyCompromise at the same time replaces
    the reason; any other time or reason raises RevocationConflict.
    """
    if old is None:
        return new
    revoked_at, reason = new.revoked_at, new.reason
    if old.revoked_at is not None:
        if revoked_at is None or (revoked_at == old.revoked_at and reason in (None, old.reason)):
            revoked_at, reason = old.revoked_at, old.reason
        elif revoked_at != old.revoked_at or reason != KEY_COMPROMISE:
            raise RevocationConflict
    merged = CertRecord(
        # A certificate's own notAfter is the fact; an index row's (no certificate) does not override it.
        not_after=old.not_after if old.cert_der and not new.cert_der else new.not_after,
        revoked_at=revoked_at,
        reason=reason,
        cert_der=new.cert_der or old.cert_der,
    )
    return None if merged == old else merged


def write_entries(
    st: SignerStore, issuer: IssuerRecord, entries: Iterable[Entry], report: ImportReport, progress: Progress | None
) -> ImportReport:
    """Write entries in batched transactions, in serial order; each changed serial is queued for signing.

    Entries for one serial are applied in the order given (``signer.key_order`` sorts stably).
    """
    done = 0
    batch: list[key_order.Pair] = []

    def flush() -> None:
        with st.env.begin(write=True) as txn:
            for serial_k, raw_record in batch:
                key = store.inventory_key(issuer.number, serial_k)
                raw = txn.get(key, db=st.inventory)
                old = store.CERT_DECODER.decode(raw) if raw is not None else None
                try:
                    merged = _merge(old, store.CERT_DECODER.decode(raw_record))
                except RevocationConflict:
                    report.reject(CONFLICTING_REVOCATION)
                    continue
                if merged is None:
                    report.unchanged += 1
                    continue
                txn.put(key, store.CERT_ENCODER.encode(merged), db=st.inventory)
                if merged.revoked_at is not None and (
                    old is None or (old.revoked_at, old.reason) != (merged.revoked_at, merged.reason)
                ):
                    _queue_revocation(txn, st, key)  # newly revoked, or its reason now keyCompromise
                else:
                    txn.put(store.pending_key(store.PRIORITY_NEW, key), b"", db=st.pending)
                if old is None:
                    report.added += 1
                else:
                    report.updated += 1

    def keyed() -> Iterator[key_order.Pair]:
        for read, entry in enumerate(entries, 1):
            yield store.serial_key(entry.serial), store.CERT_ENCODER.encode(entry.record)
            if progress and read % BATCH == 0:
                progress("read", read)

    for pair in key_order.in_key_order(keyed()):
        batch.append(pair)
        if len(batch) >= BATCH:
            flush()
            done += len(batch)
            batch.clear()
            if progress:
                progress("written", done)
    if batch:
        flush()
        done += len(batch)
        if progress:
            progress("written", done)
    return report


def add_certificates(
    st: SignerStore,
    issuer: IssuerRecord,
    certs: Iterable[x509.Certificate],
    now: int,
    progress: Progress | None = None,
    report: ImportReport | None = None,
) -> ImportReport:
    """Add certificates issued by ``issuer``; those it did not issue are rejected with the reason.

    ``report``: the one ``read_certificates`` counts unreadable files and blocks in, to carry on.
    """
    ca = x509.load_der_x509_certificate(issuer.cert_der)
    report = ImportReport() if report is None else report

    def accepted() -> Iterator[Entry]:
        for cert in certs:
            if reason := check_directly_issued(cert, ca):
                report.reject(reason)
                continue
            if cert.serial_number < 0:
                report.reject("negative serial number")
                continue
            der = cert.public_bytes(serialization.Encoding.DER)
            yield Entry(cert.serial_number, CertRecord(int(cert.not_valid_after_utc.timestamp()), cert_der=der))

    return write_entries(st, issuer, accepted(), report, progress)


def read_certificates(paths: Iterable[Path], report: ImportReport) -> Iterator[x509.Certificate]:
    """Certificates from PEM bundles or DER files, or every such file in a directory.

    A bundle's blocks are read one by one: one that does not parse is counted, not the end of its file.
    """
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            data = file.read_bytes()
            if b"-----BEGIN CERTIFICATE-----" not in data:
                try:
                    yield x509.load_der_x509_certificate(data)
                except ValueError:
                    report.reject("not a certificate file")
                continue
            blocks = _PEM_CERTIFICATE.findall(data)
            for _ in range(data.count(b"-----BEGIN CERTIFICATE-----") - len(blocks)):  # one without its END
                report.reject("unreadable PEM certificate block")
            for block in blocks:
                try:
                    yield x509.load_pem_x509_certificate(block)
                except ValueError:
                    report.reject("unreadable PEM certificate block")


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)


def _index_time(text: str) -> int:
    """index.txt times are UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ)."""
    digits = text[:-1]
    if text[-1:] != "Z" or not (digits.isascii() and digits.isdigit()) or len(text) not in (13, 15):
        raise ValueError(text)
    if len(digits) == 12:
        year = int(digits[:2])
        digits = ("19" if year >= 50 else "20") + digits
    # Read by slices, not strptime: strptime was half of a large import's time. datetime() refuses
    # what does not exist (month 13, February 30, second 60) as strptime did.
    when = dt.datetime(
        int(digits[:4]),
        int(digits[4:6]),
        int(digits[6:8]),
        int(digits[8:10]),
        int(digits[10:12]),
        int(digits[12:14]),
        tzinfo=dt.UTC,
    )
    return int(when.timestamp())


def parse_openssl_index(lines: Iterable[str], report: ImportReport, now: int) -> Iterator[Entry]:
    """Rows of an OpenSSL CA database (tab-separated).

    ``V|R|E``, expiry, ``revocation[,reason]`` (empty unless R), serial (hex), file name, subject DN.
    A revocation must carry a revocation reason (not removeFromCRL) and a time before ``now`` (as
    `revoke` asks), or its row is rejected.
    """
    for line in lines:
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 6 or fields[0] not in ("V", "R", "E"):
            report.reject("malformed index line")
            continue
        flag, expiry, revocation, serial_text = fields[0], fields[1], fields[2], fields[3]
        try:
            not_after = _index_time(expiry)
            serial = parse_serial(serial_text)
        except (ValueError, SignerError):
            report.reject("malformed index line")
            continue
        revoked_at = reason = None
        if flag == "R":
            # "date[,reason[,argument]]"; openssl writes keyTime, CAkeyTime and holdInstruction
            # (followed by a compromise time or hold instruction) for the -crl_* options.
            when, _, why = revocation.partition(",")
            why = why.partition(",")[0]
            try:
                revoked_at = _index_time(when)
                reason = reason_code(_OPENSSL_REASONS.get(why, why)) if why else None
            except (ValueError, SignerError):
                report.reject("malformed revocation field")
                continue
            if reason == REMOVE_FROM_CRL:
                report.reject("removeFromCRL revocation (not a revocation reason)")
                continue
            if not _revocation_time_ok(revoked_at, now, report):
                continue
        elif revocation:
            report.reject("revocation field on a row not marked R")
            continue
        yield Entry(serial, CertRecord(not_after, revoked_at, reason))


def _revocation_time_ok(when: int, now: int, report: ImportReport) -> bool:
    """An imported revocation time as `revoke --time` takes one (check_revocation_time), or rejected."""
    try:
        check_revocation_time(when, now)
    except SignerError:
        report.reject("revocation time in the future" if when > now else "revocation time before 1950")
        return False
    return True


def import_openssl_index(
    st: SignerStore, issuer: IssuerRecord, path: Path, progress: Progress | None, now: int
) -> ImportReport:
    report = ImportReport()
    with path.open(encoding="utf-8", errors="replace") as lines:
        return write_entries(st, issuer, parse_openssl_index(lines, report, now), report, progress)


def import_crl(st: SignerStore, issuer: IssuerRecord, path: Path, progress: Progress | None, now: int) -> ImportReport:
    """Mark the serials of a CRL signed by ``issuer`` revoked; serials not in the inventory are rejected."""
    data = path.read_bytes()
    try:
        crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise SignerError(f"{path}: not a CRL ({exc})") from None
    ca = x509.load_der_x509_certificate(issuer.cert_der)
    if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        raise SignerError(f"{path}: this CRL was not signed by CA {issuer.name!r}")
    report = ImportReport()

    def entries() -> Iterator[Entry]:
        with st.env.begin(db=st.inventory) as txn:
            for revoked in crl:
                key = store.inventory_key(issuer.number, store.serial_key(revoked.serial_number))
                raw = txn.get(key)
                if raw is None:
                    report.reject("serial not in the inventory (import its certificate or index first)")
                    continue
                old = store.CERT_DECODER.decode(raw)
                try:
                    flag = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
                    code: int | None = reason_code(flag.name)
                except x509.ExtensionNotFound:
                    code = None
                if code == REMOVE_FROM_CRL:  # a delta CRL taking it off: never a revocation
                    report.reject("removeFromCRL entry (not a revocation)")
                    continue
                when = int(revoked.revocation_date_utc.timestamp())
                if not _revocation_time_ok(when, now, report):
                    continue
                yield Entry(revoked.serial_number, msgspec.structs.replace(old, revoked_at=when, reason=code))

    return write_entries(st, issuer, list(entries()), report, progress)


class Revoked(NamedTuple):
    record: CertRecord
    # "revoked" (newly), "reason" (keyCompromise replaced the reason of an earlier revocation) or
    # "already" (revoked before as asked: nothing changed).
    change: str


def revoke(
    st: SignerStore, issuer: IssuerRecord, serial: int, reason: int | None, when: int, *, when_given: bool = True
) -> Revoked:
    """Mark one serial revoked; durable when this returns (the transaction is synced).

    A revocation is never moved nor undone: revoking again changes nothing, and asking for another
    time or reason is an error, except that keyCompromise may replace the reason (its time kept), as
    CAs do when a key compromise comes to light later. ``when_given``: False when ``when`` is only the
    default (now), which then matches any earlier revocation time.
    """
    key = store.inventory_key(issuer.number, store.serial_key(serial))
    with st.env.begin(write=True) as txn:
        raw = txn.get(key, db=st.inventory)
        if raw is None:
            raise SignerError(f"serial {serial:X} is not in the inventory of CA {issuer.name!r}")
        old = store.CERT_DECODER.decode(raw)
        if old.revoked_at is not None and not when_given:
            when = old.revoked_at  # the default time matches the recorded one
        try:
            record = _merge(old, msgspec.structs.replace(old, revoked_at=when, reason=reason))
        except RevocationConflict:
            raise SignerError(
                f"serial {serial:X} was revoked at {iso_time(old.revoked_at or 0)} (reason {reason_name(old.reason)}):"
                " a revocation is not changed, except its reason to keyCompromise"
            ) from None
        if record is None:
            return Revoked(old, "already")
        change = "revoked" if old.revoked_at is None else "reason"
        txn.put(key, store.CERT_ENCODER.encode(record), db=st.inventory)
        _queue_revocation(txn, st, key)
    return Revoked(record, change)


def _queue_revocation(txn: Any, st: SignerStore, key: bytes) -> None:
    """Sign ``key`` ahead of everything new; a first signing still queued is that one (not twice)."""
    txn.delete(store.pending_key(store.PRIORITY_NEW, key), db=st.pending)
    txn.put(store.pending_key(store.PRIORITY_REVOCATION, key), b"", db=st.pending)


def iso_time(unix: int) -> str:
    """Unix seconds as the CLI prints times (ISO 8601, UTC)."""
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ResponseStatus(NamedTuple):
    hash_algorithm: str
    this_update: int
    next_update: int
    refresh_at: int
    revoked: bool


def status(st: SignerStore, issuer: IssuerRecord, serial: int) -> tuple[CertRecord, list[ResponseStatus], bool]:
    """The inventory entry, its cached responses, and whether a re-sign is pending."""
    serial_k = store.serial_key(serial)
    key = store.inventory_key(issuer.number, serial_k)
    with st.env.begin() as txn:
        raw = txn.get(key, db=st.inventory)
        if raw is None:
            raise SignerError(f"serial {serial:X} is not in the inventory of CA {issuer.name!r}")
        responses = []
        for name, (code, _) in store.HASH_ALGORITHMS.items():
            value = txn.get(store.response_key(issuer.number, code, serial_k), db=st.responses)
            if value is not None:
                r = store.RESPONSE_DECODER.decode(value)
                responses.append(ResponseStatus(name, r.this_update, r.next_update, r.refresh_at, r.revoked))
        pending = any(
            txn.get(store.pending_key(p, key), db=st.pending) is not None
            for p in (store.PRIORITY_REVOCATION, store.PRIORITY_NEW)
        )
    return store.CERT_DECODER.decode(raw), responses, pending


class Overview(NamedTuple):
    """The store at a glance (``pki-edge status`` without a serial): counts are O(1) reads."""

    cas: list[str]
    serials: int  # inventory entries, every CA
    responses: int  # cached signed responses, every CA and hash algorithm
    backlog: store.Backlog
    unsignable: list[str]  # CAs the signer cannot sign for now (as it last recorded)
    last_signed_at: int | None
    store_bytes: int  # the store file's high-water mark (LMDB reuses freed pages below it)
    map_bytes: int


def overview(st: SignerStore, now: int) -> Overview:
    with st.env.begin() as txn:
        serials = int(txn.stat(st.inventory)["entries"])
        responses = int(txn.stat(st.responses)["entries"])
        backlog = store.read_backlog(txn, st.pending, st.schedule, now)
        raw = txn.get(store.META_LAST_SIGNED_AT, db=st.meta)
        unsignable = txn.get(store.META_UNSIGNABLE, db=st.meta)
    return Overview(
        [record.name for record in st.issuers()],
        serials,
        responses,
        backlog,
        unsignable.decode().split(",") if unsignable else [],
        store.unpack_u64(raw) if raw else None,
        *store_fill(st),
    )


def store_fill(st: SignerStore) -> tuple[int, int]:
    """(the store file's high-water mark, its map size) in bytes: the signer cannot sign past the map."""
    info, page = st.env.info(), st.env.stat()["psize"]
    return (info["last_pgno"] + 1) * page, info["map_size"]


def registry_parent(st: SignerStore, record: IssuerRecord) -> IssuerRecord | None:
    """The registry CA that issued CA ``record``'s certificate (name and signature), if any."""
    return next(
        (p for p in st.issuers() if p.number != record.number and chain.issued(record.cert_der, p.cert_der)), None
    )


def issuing_refusal(st: SignerStore, record: IssuerRecord, now: int) -> str | None:
    """Why CA ``record`` may not issue now (its certificate expired, or revoked up its chain), or None."""
    if x509.load_der_x509_certificate(record.cert_der).not_valid_after_utc.timestamp() <= now:
        return f"CA {record.name!r} has expired: it cannot issue certificates"
    if (revoker := revoked_by(st, record)) is not None:
        return f"CA {record.name!r} is revoked (in CA {revoker.name!r}): it cannot issue certificates"
    return None


def revoked_by(st: SignerStore, record: IssuerRecord) -> IssuerRecord | None:
    """The registry CA that revoked CA ``record``'s certificate, or an ancestor's; None when none did.

    A revoked CA issues nothing, and neither do the CAs under it (a certificate chaining to a revoked
    CA is refused by every client that checks). Each call reads the inventory (a revocation is a fact
    of the moment); the signatures are checked once per pair (contract.chain, as the edge's EST check).
    """
    issuers = {other.number: other for other in st.issuers() if other.number != record.number}
    with st.env.begin(db=st.inventory) as txn:

        def revoked(number: int, serial: int) -> bool:
            raw = txn.get(store.inventory_key(number, store.serial_key(serial)))
            return raw is not None and store.CERT_DECODER.decode(raw).revoked_at is not None

        cas = [(number, other.cert_der) for number, other in issuers.items()]
        number = chain.revoking_ca(record.cert_der, cas, revoked)
    return None if number is None else issuers[number]
