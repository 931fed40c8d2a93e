"""The background signer: keeps a fresh signed response for every serial in LMDB.

Each batch is one write transaction: take pending work (revocations, then new
serials) and, with what room is left, routine refreshes that are due (oldest
first); sign; write responses, the new schedule entries and the removal of the
pending entries; commit. A crash at any instant leaves the previous batch
committed and this one untouched, so a restart redoes exactly the lost batch.
A batch is bounded in size and time so that a revocation never waits long.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any, NamedTuple

import lmdb

from contract import store
from contract.config import SignerConfig
from contract.store import IssuerRecord, StoredResponse
from signer.ocsp_der import CertStatus, ResponseSigner, generalized_time, status_and_times
from signer.state import SignerStore

SignerLoader = Callable[[IssuerRecord], ResponseSigner]
RETRY_UNSIGNABLE_SECONDS = 60
# After a batch did not fit in the store: serials are signed one a transaction this long, and the
# error that not even one fits is logged at most this often.
FULL_STORE_SECONDS = 60
# A store that cannot be written (a full disk, a failing fsync: LMDB says ENOSPC or EIO) is tried again
# this often; the edge serves what is stored meanwhile. These errors are not retried: the store itself
# is broken or another release's, and only a restart (up's service manager) can mend that.
WRITE_RETRY_SECONDS = 5.0
# A wall clock stepped back by more than this (against the monotonic one while running, against the
# store's newest signature at start) has every serial signed again: responses signed by the clock that
# ran ahead are dated in the future (a client rejects a thisUpdate ahead of its own clock, RFC 6960
# §4.2.2.1), and serials dropped as expired by it are valid again. Smaller steps are NTP's business.
CLOCK_STEP_SECONDS = 300
FATAL_STORE_ERRORS = (lmdb.PanicError, lmdb.CorruptedError, lmdb.InvalidError, lmdb.VersionMismatchError)
# A response cut short to its signing certificate is refreshed at refresh_fraction of what is left,
# but not sooner than this: without a successor certificate each refresh is cut shorter again, and
# halving down to a minute would re-sign a whole CA a dozen times in its signer's last hours.
MIN_CUT_SHORT_REFRESH_SECONDS = 900
EXPIRY_WARNING_INTERVAL_SECONDS = 3600
HEARTBEAT_SECONDS = 5.0
# The minute's report says the signer is behind when its oldest due refresh is this late (or more than
# a batch of serials waits): a minute of signing at most, so a short burst of work is not reported.
BEHIND_SECONDS = 60


class Clock:
    """Wall clock (whole seconds) and a monotonic one for batch deadlines; injected, faked in tests."""

    def now(self) -> int:
        return int(time.time())

    def monotonic(self) -> float:
        return time.monotonic()


MIN_RANDOM_SERIAL_OCTETS = 8
# Responses are signed back to back in chunks of about this many seconds, before any of them
# is stored: the signing code and its tables stay in the CPU's caches (a signature made between
# LMDB and Python work costs ~8% more, and the whole refresh ~20% more). The batch deadline is
# checked between chunks, so a batch overruns it by one chunk at most.
SIGN_CHUNK_SECONDS = 0.02
# Until a chunk has been timed: an RSA-2048 signature's order, so that the first chunk is short.
FIRST_SIGNATURE_SECONDS = 0.001


@functools.lru_cache(maxsize=1024)  # a batch shares its few thisUpdate/nextUpdate values
def http_date(unix: int) -> bytes:
    return formatdate(unix, usegmt=True).encode()


class _Puts(NamedTuple):
    """Puts through cursors of one write transaction: a third cheaper than txn.put(db=...)."""

    responses: Callable[[bytes, bytes], bool]
    schedule: Callable[[bytes, bytes], bool]
    refresh: Callable[[bytes, bytes], bool]

    @classmethod
    def of(cls, txn: Any, st: SignerStore) -> _Puts:
        return cls(*(txn.cursor(db=db).put for db in (st.responses, st.schedule, st.refresh)))


class _Times(NamedTuple):
    """What every response signed at one instant shares, encoded once per batch."""

    now: int
    this_update: int
    next_update: int
    produced_at: bytes  # DER GeneralizedTime
    good: bytes  # DER certStatus good, thisUpdate, nextUpdate
    last_modified: bytes
    expires: bytes


@functools.lru_cache(maxsize=64)  # a batch shares its few (times, certificate end) pairs
def _capped(times: _Times, next_update: int) -> _Times:
    """``times`` with nextUpdate brought forward to ``next_update``."""
    return times._replace(
        next_update=next_update,
        good=status_and_times(CertStatus(), times.this_update, next_update),
        expires=http_date(next_update),
    )


class _Unsigned(NamedTuple):
    """One response waiting for its signature in a chunk."""

    signer: ResponseSigner
    key: bytes  # in the responses table
    tbs: bytes  # the ResponseData to sign
    times: _Times
    refresh_at: int
    serve_until: int
    revoked: bool


class Precomputer:
    def __init__(
        self,
        st: SignerStore,
        config: SignerConfig,
        load_signer: SignerLoader,
        clock: Clock,
        logger: logging.Logger,
        rng: random.Random,
        every_minute: Callable[[int], object] = lambda now: None,
        heartbeat: Callable[[], object] = lambda: None,
    ) -> None:
        """``every_minute(now)``: upkeep run between batches (the signer renews the responders it minted).
        ``heartbeat()``: called as the loop comes round, at most every HEARTBEAT_SECONDS (or a quarter of
        signer.watchdog_seconds), for `up`'s watchdog."""
        self._every_minute = every_minute
        self._heartbeat = heartbeat
        watchdog = config.watchdog_seconds
        self._heartbeat_seconds = min(HEARTBEAT_SECONDS, watchdog / 4) if watchdog else HEARTBEAT_SECONDS
        self._st = st
        self._config = config
        self._load_signer = load_signer
        self._clock = clock
        self._logger = logger
        self._rng = rng
        self._codes = [store.HASH_ALGORITHMS[name][0] for name in config.hash_algorithms]
        self._signature_seconds = FIRST_SIGNATURE_SECONDS
        self._prefixes: dict[int, list[tuple[int, bytes]]] = {}
        # Responses for hash algorithms no longer configured are swept once, by the first batches,
        # instead of a delete per algorithm and serial at every refresh.
        self._unserved = [code for code, _ in store.HASH_ALGORITHMS.values() if code not in self._codes]
        self._sweep_unserved = bool(self._unserved)
        self._validity = int(config.validity_hours * 3600)
        # A serial is refreshed at refresh_fraction of its validity, up to jitter_fraction earlier.
        self._refresh_after = self._validity * config.refresh_fraction
        self._jitter = self._validity * config.jitter_fraction
        self._grace = int(config.expired_grace_hours * 3600)
        self._generation = -1
        self._signers: dict[int, ResponseSigner] = {}
        self._names: dict[int, str] = {}  # issuer number -> CA name, for the log
        self._expiry_warned: dict[int, int] = {}  # issuer number -> when its next warning is due
        self._unsignable_logged: set[int] = set()
        self._load_failed = False
        self._retry_load_at = 0
        self._full_until = 0.0  # while the store is full: one serial a transaction until then
        self._write_failed_said = -float(FULL_STORE_SECONDS)  # when the failing store was last logged
        self._write_failing = False
        self._full_logged_at = -float(FULL_STORE_SECONDS)
        self._signed = 0  # responses signed since the last minute's report
        self._unsignable_recorded: bytes | None = b"\x00"  # META_UNSIGNABLE as last written (not yet)
        self._behind = False
        self._clock_offset: float | None = None  # wall minus monotonic clock, at the last check

    def check_clock(self) -> int:
        """At start and once a minute: after a step back of the wall clock, queue every serial (see
        CLOCK_STEP_SECONDS). Returns how many serials were queued."""
        now = self._clock.now()
        offset = now - self._clock.monotonic()
        last = self._clock_offset
        if last is None:
            with self._st.env.begin(db=self._st.meta) as txn:
                raw = txn.get(store.META_LAST_SIGNED_AT)
            back = store.unpack_u64(raw) - now if raw else 0
        else:
            back = int(last - offset)
        if back > CLOCK_STEP_SECONDS:
            with self._st.env.begin(write=True) as txn:
                queued = self._queue_all(txn)
        # Only now: a store that could not be written keeps the step back for the next check.
        self._clock_offset = offset
        if back <= CLOCK_STEP_SECONDS:
            return 0
        self._logger.warning(
            "the clock went back %d s (responses were signed ahead of it): %d serials queued for signing"
            " again, revoked ones first, so that none is dated in the future",
            back,
            queued,
        )
        return queued

    def _queue_all(self, txn: Any) -> int:
        """Queue every serial of the inventory for signing, revoked ones as revocations (first)."""
        st, queued = self._st, 0
        for key, raw in txn.cursor(db=st.inventory):
            revoked = store.CERT_DECODER.decode(raw).revoked_at is not None
            priority = store.PRIORITY_REVOCATION if revoked else store.PRIORITY_NEW
            txn.put(store.pending_key(priority, key), b"", db=st.pending)
            queued += 1
        return queued

    def queue_added_hash_algorithms(self) -> int:
        """At start: when signer.hash_algorithms gained an algorithm, queue every serial for signing
        (revoked ones first, as revocations). Otherwise a client asking by that algorithm is answered
        unauthorized until each serial's next routine refresh, days away: a revoked certificate too.
        Returns how many serials were queued."""
        st = self._st
        configured = ",".join(sorted(self._config.hash_algorithms)).encode()
        with st.env.begin(write=True) as txn:
            recorded = txn.get(store.META_HASH_ALGORITHMS, db=st.meta)
            if recorded == configured:
                return 0
            txn.put(store.META_HASH_ALGORITHMS, configured, db=st.meta)
            if recorded is None or set(configured.split(b",")) <= set(recorded.split(b",")):
                return 0  # not recorded yet (a store of an older version), or one dropped: swept by the batches
            queued = self._queue_all(txn)  # in the transaction that records the set: a crash loses neither
        self._logger.info(
            "hash algorithms now %s (were %s): %d serials queued for signing, revoked ones first",
            configured.decode(),
            recorded.decode(),
            queued,
        )
        return queued

    def reload_issuers(self) -> None:
        """Load the signers when the registry changed, and retry a CA whose key failed to load."""
        generation = self._st.registry_generation()
        now = self._clock.now()
        if generation == self._generation and (not self._load_failed or now < self._retry_load_at):
            return
        signers = {}
        self._load_failed = False
        records = self._st.issuers()
        self._names = {record.number: record.name for record in records}
        for record in records:
            try:
                signers[record.number] = self._load_signer(record)
            except Exception as exc:  # one broken CA must not stop the others being refreshed
                self._load_failed = True
                self._logger.error("CA %s: cannot load its OCSP signing key: %s", record.name, exc)
        self._retry_load_at = now + RETRY_UNSIGNABLE_SECONDS
        self._signers = signers
        self._unsignable_logged = set()
        self._warn_of_expiring_signers(now)
        self._generation = generation
        self._logger.info("loaded %d OCSP signers (registry generation %d)", len(signers), generation)
        self.record_unsignable(now)

    def record_unsignable(self, now: int) -> None:
        """Write which CAs cannot be signed for now (META_UNSIGNABLE) when that changed: at each load and
        every minute (a signing certificate expires between loads). The edge's /readyz and `pki-edge
        status` show it: their serials wait, and neither the backlog nor the log of a busy signer tells."""
        names = sorted(
            name
            for number, name in self._names.items()
            if (signer := self._signers.get(number)) is None or not signer.valid_at(now)
        )
        value = ",".join(names).encode() or None
        if value == self._unsignable_recorded:
            return
        try:
            with self._st.env.begin(write=True, db=self._st.meta) as txn:
                if value is None:
                    txn.delete(store.META_UNSIGNABLE)
                else:
                    txn.put(store.META_UNSIGNABLE, value)
        except lmdb.MapFullError:
            return  # written once the store has room (step() says it is full)
        self._unsignable_recorded = value

    def _warn_of_expiring_signers(self, now: int) -> None:
        """Warn, at load and then hourly, of each certificate signing responses that expires within two
        validity periods: its responses are being cut short, and none is signed after it."""
        for number, signer in self._signers.items():
            if signer.valid_until - now >= 2 * self._validity or now < self._expiry_warned.get(number, 0):
                continue
            self._expiry_warned[number] = now + EXPIRY_WARNING_INTERVAL_SECONDS
            self._logger.warning(
                "issuer %d: the certificate signing its OCSP responses expires at %s: responses are cut short"
                " to it, and none is signed after it; give it a successor (pki-edge ca responder)",
                number,
                http_date(signer.valid_until).decode(),
            )

    def run_batch(self, limit: int | None = None) -> int:
        """Sign one batch (of ``limit`` serials, default batch_size); returns how many serials were
        handled (and stale responses swept); 0: nothing was due."""
        st = self._st
        now = self._clock.now()
        deadline = self._clock.monotonic() + self._config.batch_seconds
        limit = self._config.batch_size if limit is None else limit
        handled = 0
        times = self._times(now)
        with st.env.begin(write=True) as txn:
            puts = _Puts.of(txn, st)
            swept = self._sweep(txn, limit) if self._sweep_unserved else 0
            # (inventory key, pending key or None, schedule key or None)
            work: list[tuple[bytes, bytes | None, bytes | None]] = []
            for pending_key in txn.cursor(db=st.pending).iternext(values=False):
                work.append((pending_key[1:], pending_key, None))
                if len(work) >= limit:
                    break
            if len(work) < limit:
                for skey in txn.cursor(db=st.schedule).iternext(values=False):
                    refresh_at, inv_key = store.split_schedule_key(skey)
                    if refresh_at > now or len(work) >= limit:
                        break
                    work.append((inv_key, None, skey))
            done: set[bytes] = set()
            chunk: list[_Unsigned] = []
            for inv_key, pkey, due_key in work:
                if handled and self._clock.monotonic() > deadline:
                    break
                if inv_key in done:  # pending twice, or pending and due: one signing serves them all
                    if pkey is not None:
                        txn.delete(pkey, db=st.pending)
                    continue
                done.add(inv_key)
                self._prepare(txn, puts, times, chunk, inv_key, scheduled=due_key)
                if pkey is not None:
                    txn.delete(pkey, db=st.pending)
                handled += 1
                if len(chunk) * self._signature_seconds >= SIGN_CHUNK_SECONDS:
                    self._sign_and_put(puts, chunk)
                    chunk = []
            self._sign_and_put(puts, chunk)
            if handled:
                txn.put(store.META_LAST_SIGNED_AT, store.pack_u64(now), db=st.meta)
        return handled + swept

    def _sweep(self, txn: Any, limit: int) -> int:
        """Delete up to ``limit`` responses of hash algorithms no longer served; 0 once none are left."""
        cursor = txn.cursor(db=self._st.responses)
        deleted = 0
        for record in self._st.issuers():
            for code in self._unserved:
                prefix = store.response_prefix(record.number, code)
                if not cursor.set_range(prefix):
                    continue
                while deleted < limit and cursor.key().startswith(prefix):
                    if not cursor.delete():
                        break
                    deleted += 1
        if deleted < limit:
            self._sweep_unserved = False
        return deleted

    def sign_serial(self, txn: Any, inv_key: bytes, now: int, signer: ResponseSigner) -> None:
        """Inside the caller's write ``txn``: sign and store one serial's responses with ``signer``,
        with its schedule and refresh entries, exactly as a batch does (used at EST issuance)."""
        puts, times = _Puts.of(txn, self._st), self._times(now)
        chunk: list[_Unsigned] = []
        self._prepare(txn, puts, times, chunk, inv_key, signer)
        self._sign_and_put(puts, chunk)

    def _times(self, now: int) -> _Times:
        this_update = now - self._config.backdate_seconds
        next_update = this_update + self._validity
        return _Times(
            now,
            this_update,
            next_update,
            generalized_time(now),
            status_and_times(CertStatus(), this_update, next_update),
            http_date(now),  # Last-Modified: when it was made, not the backdated thisUpdate (README)
            http_date(next_update),
        )

    def _prepare(
        self,
        txn: Any,
        puts: _Puts,
        times: _Times,
        chunk: list[_Unsigned],
        inv_key: bytes,
        signer: ResponseSigner | None = None,
        scheduled: bytes | None = None,
    ) -> None:
        """Reschedule one serial and add its responses to ``chunk`` (or stop serving it).

        ``scheduled``: the serial's schedule key when the batch found it there (no lookup needed).
        """
        st = self._st
        now = times.now
        issuer_number, serial_k = store.split_inventory_key(inv_key)
        if scheduled is not None:
            txn.delete(scheduled, db=st.schedule)
        elif (old_refresh := txn.get(inv_key, db=st.refresh)) is not None:
            txn.delete(store.schedule_key(store.unpack_u64(old_refresh), inv_key), db=st.schedule)
        raw = txn.get(inv_key, db=st.inventory)
        record = store.CERT_DECODER.decode(raw) if raw is not None else None
        serve_until = record.not_after + self._grace if record is not None else 0
        if record is None or now >= serve_until:
            # Expired past its grace (or no longer in the inventory): stop serving it.
            for code, _ in store.HASH_ALGORITHMS.values():
                txn.delete(store.response_key(issuer_number, code, serial_k), db=st.responses)
            txn.delete(inv_key, db=st.refresh)
            return
        signer = signer or self._signers.get(issuer_number)
        if signer is None or not signer.valid_at(now):
            # The CA's key cannot be loaded now, or the certificate that signs its responses is
            # expired (or not valid yet): keep what is stored (the edge stops serving it at
            # nextUpdate) and retry later rather than block the other work.
            retry_at = now + RETRY_UNSIGNABLE_SECONDS
            txn.put(store.schedule_key(retry_at, inv_key), b"", db=st.schedule)
            txn.put(inv_key, store.pack_u64(retry_at), db=st.refresh)
            if issuer_number not in self._unsignable_logged:
                self._unsignable_logged.add(issuer_number)
                why = "no usable signer" if signer is None else "the certificate signing its responses is not valid now"
                name = self._names.get(issuer_number, "?")
                self._logger.error("CA %s (issuer %d): %s: its serials wait", name, issuer_number, why)
            return
        this_update = times.this_update
        refresh_at = this_update + int(self._refresh_after - self._spread(serial_k) * self._jitter)
        if signer.valid_until < times.next_update:
            # Cut short to the signing certificate: refreshed at the same fraction of what is left,
            # so that a successor certificate takes over before the response goes stale.
            times = _capped(times, signer.valid_until)
            cut = this_update + int((times.next_update - this_update) * self._config.refresh_fraction)
            # The quarter-hour floor never past the response's own end (a second before it): a successor
            # installed meanwhile signs it then, where it would go stale for up to the floor's length.
            refresh_at = min(max(min(refresh_at, cut), now + MIN_CUT_SHORT_REFRESH_SECONDS), times.next_update - 1)
        refresh_at = min(max(refresh_at, now + 1), serve_until)
        revoked_at = record.revoked_at
        revoked = revoked_at is not None
        if revoked_at is not None:
            if revoked_at > now:
                # Recorded by a command whose clock ran ahead of this one: a response signed now cannot
                # say the certificate was revoked later (a keyCompromise dated a day ahead would leave
                # that day's signatures looking valid). Said, and signed as revoked now.
                self._logger.warning(
                    "serial %X of issuer %d: revocation time %s is ahead of the signer's clock; signed as %s",
                    store.serial_from_key(serial_k),
                    issuer_number,
                    http_date(revoked_at).decode(),
                    http_date(now).decode(),
                )
                revoked_at = now
            if revoked_at > this_update:
                # The backdated thisUpdate (clients' clock skew) comes before the revocation, when this
                # status was not yet true (RFC 6960 §4.2.1: the time it is known to be correct at):
                # signed again once a backdated thisUpdate covers it, so that lasts an hour, not days.
                refresh_at = min(refresh_at, revoked_at + self._config.backdate_seconds)
            tail = status_and_times(CertStatus(revoked_at, record.reason), this_update, times.next_update)
        else:
            tail = times.good
        for code, prefix in self._response_prefixes(issuer_number):
            tbs = signer.response_data(code, serial_k, times.produced_at, tail)
            chunk.append(_Unsigned(signer, prefix + serial_k, tbs, times, refresh_at, serve_until, revoked))
        puts.schedule(store.schedule_key(refresh_at, inv_key), b"")
        puts.refresh(inv_key, store.pack_u64(refresh_at))

    def _sign_and_put(self, puts: _Puts, chunk: list[_Unsigned]) -> None:
        """Sign the chunk's responses back to back, then store them."""
        started = self._clock.monotonic()
        signatures = [unsigned.signer.sign(unsigned.tbs) for unsigned in chunk]
        self._signed += len(signatures)
        elapsed = self._clock.monotonic() - started
        if chunk and elapsed > 0:
            self._signature_seconds = elapsed / len(chunk)
        for (signer, key, tbs, times, refresh_at, serve_until, revoked), signature in zip(
            chunk, signatures, strict=True
        ):
            der, etag = signer.response(tbs, signature)
            stored = StoredResponse(
                der,
                times.this_update,
                times.next_update,
                refresh_at,
                serve_until,
                etag,
                times.last_modified,
                times.expires,
                revoked,
                times.now,
            )
            puts.responses(key, store.RESPONSE_ENCODER.encode(stored))

    def _response_prefixes(self, issuer_number: int) -> list[tuple[int, bytes]]:
        """(hash code, response key prefix) per served hash algorithm, made once per issuer."""
        prefixes = self._prefixes.get(issuer_number)
        if prefixes is None:
            prefixes = [(code, store.response_prefix(issuer_number, code)) for code in self._codes]
            self._prefixes[issuer_number] = prefixes
        return prefixes

    def _spread(self, serial_k: bytes) -> float:
        """Where in the jitter window a serial's refresh falls, in [0, 1).

        A serial of 8 octets or more is random (CA/Browser Forum BR 7.1: 64 bits from a CSPRNG),
        so its own position in the key space is a uniform spread, and one that keeps the serials
        refreshed together next to each other in the store: a batch then rewrites a few
        neighbouring pages instead of one page per response. Short serials (sequential ones of
        an imported legacy CA) get a random spread.
        """
        if len(serial_k) < MIN_RANDOM_SERIAL_OCTETS:
            return self._rng.random()
        start = 1 if serial_k[0] == 0 else 0  # the sign octet of a positive serial whose top bit is set
        return int.from_bytes(serial_k[start : start + 6], "big") / 2**48

    def run(self, stop: threading.Event) -> None:
        """Sign until ``stop`` is set; the batch under way is always finished and committed."""
        poll = self._config.poll_interval_ms / 1000
        next_minute = next_beat = 0.0
        while not stop.is_set():
            if self._clock.monotonic() >= next_beat:
                self._heartbeat()  # a signer waiting for a writable store is not a hung one
                next_beat = self._clock.monotonic() + self._heartbeat_seconds
            try:
                if self._clock.monotonic() >= next_minute:
                    next_minute = self._clock.monotonic() + 60
                    # Free reader slots of edge workers that died without closing them (kill -9),
                    # or LMDB could never reuse the pages they pin and the file would grow.
                    self._st.env.reader_check()
                    self.check_clock()
                    self._warn_of_expiring_signers(self._clock.now())
                    self._every_minute(self._clock.now())
                    self.record_unsignable(self._clock.now())
                    self.report_backlog()
                self.reload_issuers()
                idle = self.step() == 0
            except lmdb.Error as exc:
                if isinstance(exc, FATAL_STORE_ERRORS):
                    raise
                self._write_failed(exc)
                stop.wait(WRITE_RETRY_SECONDS)
                continue
            if self._write_failing:
                self._write_failing = False
                self._logger.info("the store is written again: signing goes on")
            if idle:
                stop.wait(poll)

    def _write_failed(self, exc: lmdb.Error) -> None:
        """A full disk or a failing fsync: said once a minute; the signer lives on (a crash would take
        `up`'s edge with it, and what is stored is still right to serve)."""
        self._write_failing = True
        now = self._clock.monotonic()
        if now >= self._write_failed_said + FULL_STORE_SECONDS:
            self._write_failed_said = now
            self._logger.error(
                "the store cannot be written (%s; is the disk full?): signing waits, tried again every %g s;"
                " the edge serves what is stored, and revocations are signed first once it can write",
                exc,
                WRITE_RETRY_SECONDS,
            )

    def report_backlog(self) -> None:
        """Once a minute: while the signer is behind, how much waits and how fast it goes (a large
        import, a full store, too little CPU); once when it has caught up."""
        st, now = self._st, self._clock.now()
        with st.env.begin() as txn:
            backlog = store.read_backlog(txn, st.pending, st.schedule, now)
        signed, self._signed = self._signed, 0
        behind = backlog.pending > self._config.batch_size or backlog.overdue_seconds >= BEHIND_SECONDS
        if behind:
            self._logger.warning(
                "behind: %d serials wait for a first signing or a revocation, the oldest due refresh is %d s late;"
                " %d responses signed since the last report",
                backlog.pending,
                backlog.overdue_seconds,
                signed,
            )
        elif self._behind:
            self._logger.info("caught up: %d responses signed since the last report", signed)
        self._behind = behind

    def step(self) -> int:
        """One batch, or while the store (or its disk) is full one serial at a time (revocations first):
        what does not fit waits, and the rest goes on (a crash would stop everything)."""
        if self._clock.monotonic() < self._full_until:
            return self._one_at_a_time()
        try:
            return self.run_batch()
        except lmdb.MapFullError:
            self._full_until = self._clock.monotonic() + FULL_STORE_SECONDS
            return self._one_at_a_time()
        except FATAL_STORE_ERRORS:
            raise
        except lmdb.Error:
            # A full disk: the store file cannot grow, but one serial (a revocation first) may fit in
            # the pages it frees. If not even that, run() says so and waits.
            self._full_until = self._clock.monotonic() + FULL_STORE_SECONDS
            return self.run_batch(limit=1)

    def _one_at_a_time(self) -> int:
        try:
            return self.run_batch(limit=1)
        except lmdb.MapFullError:
            now = self._clock.monotonic()
            if now >= self._full_logged_at + FULL_STORE_SECONDS:
                self._full_logged_at = now
                self._logger.error(
                    "the store is full (store.map_size_mb = %d): serials wait to be signed, revocations"
                    " tried first, one at a time; raise store.map_size_mb (address space, not disk) and"
                    " restart the signer, or free disk space",
                    self._st.config.store.map_size_mb,
                )
            self._full_until = now + FULL_STORE_SECONDS
            return 0
