"""signer.precompute: what a batch writes, in which order, when it re-signs, purges and how it fails."""

from __future__ import annotations

import itertools
import logging
import random
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from contract import store
from contract.config import Config, SignerConfig, StoreConfig
from contract.store import CertRecord, StoredResponse
from signer.inventory import Entry, ImportReport, add_certificates, revoke, write_entries
from signer.ocsp_der import ETAG_SIGNATURE_OCTETS, ResponseSigner
from signer.precompute import (
    BEHIND_SECONDS,
    FIRST_SIGNATURE_SECONDS,
    MIN_CUT_SHORT_REFRESH_SECONDS,
    SIGN_CHUNK_SECONDS,
    Precomputer,
)
from signer.registry import add_ca, create_ca, load_response_signer, mint_responder, renew_responders, set_responder
from signer.state import SignerStore, key_path
from tests.signer.conftest import PrivateKey, build_ca, build_delegate, build_leaf, key_pem, pem, pool_key, utc

T0 = 1780000000  # 2026-05-28T20:26:40Z
DAY = 86400
CODE = {name: code for name, (code, _) in store.HASH_ALGORITHMS.items()}
CRYPTO_HASH = {1: hashes.SHA1, 2: hashes.SHA256, 3: hashes.SHA384, 4: hashes.SHA512}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def imf_fixdate(unix: int) -> bytes:
    """RFC 9110 IMF-fixdate, built by hand (no locale, no email.utils)."""
    d = utc(unix)
    text = f"{_DAYS[d.weekday()]}, {d.day:02d} {_MONTHS[d.month - 1]} {d.year} {d:%H:%M:%S} GMT"
    return text.encode()


def minimal_integer(serial: int) -> bytes:
    return serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True)


def inv_key(issuer_number: int, serial: int) -> bytes:
    return struct.pack(">I", issuer_number) + minimal_integer(serial)


class FakeClock:
    """Wall clock you set; monotonic clock that moves ``step`` seconds each time it is read."""

    def __init__(self, now: int) -> None:
        self.wall = now
        self.mono = 1000.0
        self.step = 0.0

    def now(self) -> int:
        return self.wall

    def monotonic(self) -> float:
        self.mono += self.step
        return self.mono


@dataclass
class Setup:
    st: SignerStore
    data_dir: Path
    issuer: store.IssuerRecord
    ca_cert: x509.Certificate
    ca_key: PrivateKey
    clock: FakeClock

    def precomputer(
        self,
        config: SignerConfig | None = None,
        every_minute: Callable[[int], object] = lambda now: None,
        **changes: Any,
    ) -> Precomputer:
        cfg = msgspec.structs.replace(config or self.st.config.signer, **changes)
        p = Precomputer(
            self.st,
            cfg,
            lambda r: load_response_signer(self.data_dir, r),
            self.clock,  # type: ignore[arg-type]
            logging.getLogger("test"),
            random.Random(1),
            every_minute=every_minute,
        )
        p.reload_issuers()
        return p

    def add(self, serials: list[int], not_after: int | None = None) -> list[x509.Certificate]:
        end = utc(not_after) if not_after is not None else utc(T0 + 90 * DAY)
        certs = [build_leaf(self.ca_cert, self.ca_key, s, utc(T0 - DAY), end) for s in serials]
        add_certificates(self.st, self.issuer, certs, now=T0)
        return certs


@pytest.fixture
def setup(st: SignerStore, data_dir: Path) -> Setup:
    issuer = create_ca(st, "ca1", "ec-p256", 3650, None, None, utc(T0 - 10 * DAY))
    ca_cert = x509.load_der_x509_certificate(issuer.cert_der)
    ca_key: PrivateKey = serialization.load_pem_private_key(key_path(data_dir, "ca1").read_bytes(), None)  # type: ignore[assignment]
    return Setup(st, data_dir, issuer, ca_cert, ca_key, FakeClock(T0))


def run_all(p: Precomputer, limit: int = 500) -> list[int]:
    counts: list[int] = []
    for _ in range(limit):
        n = p.run_batch()
        if n == 0:
            return counts
        counts.append(n)
    raise AssertionError("run_batch never reached 0")


def responses(st: SignerStore) -> dict[tuple[int, int, int], StoredResponse]:
    out = {}
    with st.env.begin(db=st.responses) as txn:
        for key, value in txn.cursor():
            issuer, code = struct.unpack(">IB", key[:5])
            out[(issuer, code, int.from_bytes(key[5:], "big", signed=True))] = store.RESPONSE_DECODER.decode(value)
    return out


def dump_db(st: SignerStore, db: Any) -> dict[bytes, bytes]:
    with st.env.begin(db=db) as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor()}


def schedule(st: SignerStore) -> list[tuple[int, bytes]]:
    with st.env.begin(db=st.schedule) as txn:
        return [(struct.unpack(">Q", k[:8])[0], bytes(k[8:])) for k, _ in txn.cursor()]


def all_dbs(st: SignerStore) -> dict[str, dict[bytes, bytes]]:
    return {
        "responses": dump_db(st, st.responses),
        "pending": dump_db(st, st.pending),
        "schedule": dump_db(st, st.schedule),
        "refresh": dump_db(st, st.refresh),
        "inventory": dump_db(st, st.inventory),
        "meta": dump_db(st, st.meta),
    }


def check_stored(
    stored: StoredResponse,
    *,
    serial: int,
    code: int,
    now: int,
    config: SignerConfig,
    not_after: int,
    responder: x509.Certificate,
    revoked_at: int | None = None,
    reason: int | None = None,
) -> None:
    validity = int(config.validity_hours * 3600)
    this_update = now - config.backdate_seconds
    assert stored.this_update == this_update
    assert stored.next_update == this_update + validity
    low = this_update + validity * (config.refresh_fraction - config.jitter_fraction)
    high = this_update + validity * config.refresh_fraction
    serve_until = not_after + int(config.expired_grace_hours * 3600)
    assert stored.serve_until == serve_until
    if revoked_at is not None and revoked_at > this_update:
        # Signed again once a backdated thisUpdate covers the revocation (RFC 6960 §4.2.1).
        assert stored.refresh_at == min(revoked_at + config.backdate_seconds, serve_until)
    elif high < serve_until:
        assert low <= stored.refresh_at <= high
    else:
        assert stored.refresh_at == serve_until or low <= stored.refresh_at <= serve_until
    assert stored.refresh_at > now
    assert stored.last_modified == imf_fixdate(now)  # producedAt, not the backdated thisUpdate
    assert stored.expires == imf_fixdate(this_update + validity)
    assert stored.revoked is (revoked_at is not None)

    resp = ocsp.load_der_ocsp_response(stored.der)
    assert stored.etag.endswith(resp.signature[-ETAG_SIGNATURE_OCTETS:].hex().encode() + b'"')
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert resp.serial_number == serial
    assert isinstance(resp.hash_algorithm, CRYPTO_HASH[code])
    assert resp.produced_at_utc == utc(now)
    assert stored.produced_at == now
    assert resp.this_update_utc == utc(this_update)
    assert resp.next_update_utc == utc(this_update + validity)
    if revoked_at is None:
        assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
    else:
        assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert resp.revocation_time_utc == utc(revoked_at)
        if reason is None:
            assert resp.revocation_reason is None
        else:
            assert resp.revocation_reason is not None
    public = responder.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))


# ---------------------------------------------------------------------------- first signing


def test_signs_every_serial_for_every_algorithm(setup: Setup) -> None:
    serials = [*range(1, 31), 127, 128, 2**159 - 1]
    certs = setup.add(serials)
    # Serial 0 and an index-style revoked entry (no certificate): only via the inventory.
    write_entries(
        setup.st,
        setup.issuer,
        [Entry(0, CertRecord(T0 + 30 * DAY)), Entry(0xABC, CertRecord(T0 + 30 * DAY, T0 - 5 * DAY, 1))],
        ImportReport(),
        None,
    )
    revoke(setup.st, setup.issuer, 5, None, T0 - 60)
    not_after = {c.serial_number: int(c.not_valid_after_utc.timestamp()) for c in certs}
    not_after |= {0: T0 + 30 * DAY, 0xABC: T0 + 30 * DAY}
    revoked = {5: (T0 - 60, None), 0xABC: (T0 - 5 * DAY, 1)}

    p = setup.precomputer()
    counts = run_all(p)
    # Serial 5 has two pending entries (new, then revoked): signing it twice is allowed, not more.
    assert sum(counts) in (len(not_after), len(not_after) + 1)
    config = setup.st.config.signer
    assert config.hash_algorithms == ["sha1", "sha256"]
    got = responses(setup.st)
    n = setup.issuer.number
    assert set(got) == {(n, CODE[h], s) for s in not_after for h in ("sha1", "sha256")}
    for (_, code, serial), stored in got.items():
        revoked_at, reason = revoked.get(serial, (None, None))
        check_stored(
            stored,
            serial=serial,
            code=code,
            now=T0,
            config=config,
            not_after=not_after[serial],
            responder=setup.ca_cert,
            revoked_at=revoked_at,
            reason=reason,
        )
    for serial in not_after:  # one refresh time per serial, shared by its algorithms
        assert got[(n, 1, serial)].refresh_at == got[(n, 2, serial)].refresh_at

    assert dump_db(setup.st, setup.st.pending) == {}
    sched = schedule(setup.st)
    assert len(sched) == len(not_after)
    assert sorted(sched) == sorted((got[(n, 1, s)].refresh_at, inv_key(n, s)) for s in not_after)
    refresh = dump_db(setup.st, setup.st.refresh)
    assert refresh == {inv_key(n, s): struct.pack(">Q", got[(n, 1, s)].refresh_at) for s in not_after}
    assert dump_db(setup.st, setup.st.meta)[store.META_LAST_SIGNED_AT] == struct.pack(">Q", T0)
    # Nothing more to do until the first refresh is due.
    assert p.run_batch() == 0


def test_delegated_responder_signs(st: SignerStore, data_dir: Path) -> None:
    start, end = utc(T0 - 10 * DAY), utc(T0 + 400 * DAY)
    ca_key, delegate_key = pool_key("ec-p256", 20), pool_key("ec-p256", 21)
    ca_cert = build_ca(ca_key, "Delegating CA", start, end)
    delegate = build_delegate(ca_cert, ca_key, delegate_key, start, end)
    issuer = add_ca(st, "deleg", pem(ca_cert), None, pem(delegate), key_pem(delegate_key), None, utc(T0))
    leaf = build_leaf(ca_cert, ca_key, 9, start, utc(T0 + 30 * DAY))
    add_certificates(st, issuer, [leaf], now=T0)
    setup = Setup(st, data_dir, issuer, ca_cert, ca_key, FakeClock(T0))
    run_all(setup.precomputer())
    got = responses(st)
    assert set(got) == {(issuer.number, 1, 9), (issuer.number, 2, 9)}
    for (_, code, _), stored in got.items():
        check_stored(
            stored,
            serial=9,
            code=code,
            now=T0,
            config=st.config.signer,
            not_after=T0 + 30 * DAY,
            responder=delegate,
        )
        certs = ocsp.load_der_ocsp_response(stored.der).certificates
        assert [c.public_bytes(serialization.Encoding.DER) for c in certs] == [
            delegate.public_bytes(serialization.Encoding.DER)
        ]


def add_delegated(
    setup: Setup, delegate_from: int, delegate_until: int, added_at: int = T0
) -> tuple[store.IssuerRecord, x509.Certificate]:
    """A CA beside setup's, whose OCSP a delegate valid [delegate_from, delegate_until) signs; serial 9 in it."""
    ca_key, delegate_key = pool_key("ec-p256", 20), pool_key("ec-p256", 21)
    ca_cert = build_ca(ca_key, "Delegating CA", utc(T0 - 10 * DAY), utc(T0 + 400 * DAY))
    delegate = build_delegate(ca_cert, ca_key, delegate_key, utc(delegate_from), utc(delegate_until))
    issuer = add_ca(setup.st, "deleg", pem(ca_cert), None, pem(delegate), key_pem(delegate_key), None, utc(added_at))
    add_certificates(setup.st, issuer, [build_leaf(ca_cert, ca_key, 9, utc(T0 - DAY), utc(T0 + 30 * DAY))], now=T0)
    return issuer, delegate


def test_responses_never_outlive_the_responder_certificate(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    until = T0 + 2 * DAY  # the validity is 7 days
    issuer, delegate = add_delegated(setup, T0 - 10 * DAY, until)
    setup.add([1])
    with caplog.at_level(logging.WARNING):
        run_all(setup.precomputer())
    assert f"issuer {issuer.number}: the certificate signing its OCSP responses expires" in caplog.text
    got = responses(setup.st)
    this_update = T0 - setup.st.config.signer.backdate_seconds
    for code in (1, 2):
        stored = got[(issuer.number, code, 9)]
        assert stored.next_update == until
        assert stored.expires == imf_fixdate(until)
        assert stored.refresh_at == this_update + (until - this_update) // 2  # refresh_fraction 0.5 of what is left
        resp = ocsp.load_der_ocsp_response(stored.der)
        assert resp.next_update_utc == utc(until)
        assert resp.this_update_utc == utc(this_update)
        public = delegate.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
        # The other CA, signing with its own key, keeps the whole validity.
        assert got[(setup.issuer.number, code, 1)].next_update == this_update + 7 * DAY


def test_a_response_cut_short_is_not_refreshed_again_within_a_quarter_hour(setup: Setup) -> None:
    # Without a successor each refresh is cut shorter: halving what is left down to nothing would
    # re-sign the CA over and over in its responder's last minutes.
    issuer, _ = add_delegated(setup, T0 - 10 * DAY, T0 + 1200)
    run_all(setup.precomputer())
    stored = responses(setup.st)[(issuer.number, 1, 9)]
    assert stored.next_update == T0 + 1200
    assert stored.refresh_at == T0 + MIN_CUT_SHORT_REFRESH_SECONDS == T0 + 900


def test_a_response_cut_short_to_its_last_minutes_is_refreshed_before_it_ends(setup: Setup) -> None:
    """The audit's outage: a responder ending in 3 minutes cut a response to it and planned its refresh a
    quarter hour later; a successor installed at once then waited for that refresh, the edge answering
    tryLater for 12 minutes. The refresh is now a second before the response ends; the successor signs
    it then, and until one exists it is retried every minute (as any unsignable serial)."""
    issuer, _ = add_delegated(setup, T0 - 10 * DAY, T0 + 180)
    run_all(setup.precomputer())
    stored = responses(setup.st)[(issuer.number, 1, 9)]
    assert (stored.next_update, stored.refresh_at) == (T0 + 180, T0 + 179)
    ca_key, successor_key = pool_key("ec-p256", 20), pool_key("ec-p256", 22)
    ca_cert = x509.load_der_x509_certificate(issuer.cert_der)
    successor = build_delegate(ca_cert, ca_key, successor_key, utc(T0 - DAY), utc(T0 + 30 * DAY))
    set_responder(setup.st, issuer.name, pem(successor), key_pem(successor_key), utc(T0))  # installed at once
    p = setup.precomputer()
    setup.clock.wall = T0 + 178
    assert run_all(p) == []  # nothing due yet: the response still serves
    setup.clock.wall = T0 + 180
    p.record_unsignable(T0 + 180)  # the old responder's end: the successor signs, nothing unsignable
    with setup.st.env.begin(db=setup.st.meta) as txn:
        assert txn.get(store.META_UNSIGNABLE) is None
    setup.clock.wall = T0 + 178
    setup.clock.wall = T0 + 179
    run_all(p)
    renewed = responses(setup.st)[(issuer.number, 1, 9)]
    assert renewed.next_update == T0 + 179 - 3600 + 7 * DAY  # a whole validity, signed before it went stale


@pytest.mark.parametrize(
    ("delegate_from", "delegate_until", "added_at"),
    [(T0 - 10 * DAY, T0, T0 - DAY), (T0 + DAY, T0 + 30 * DAY, T0 + DAY)],
    ids=["expired", "not-yet-valid"],
)
def test_nothing_is_signed_by_a_responder_certificate_not_valid_now(
    setup: Setup, caplog: pytest.LogCaptureFixture, delegate_from: int, delegate_until: int, added_at: int
) -> None:
    issuer, _ = add_delegated(setup, delegate_from, delegate_until, added_at)
    setup.add([1])
    with caplog.at_level(logging.ERROR):
        run_all(setup.precomputer())
    got = responses(setup.st)
    assert {(n, s) for n, _, s in got} == {(setup.issuer.number, 1)}  # the other CA is signed all the same
    assert (
        caplog.text.count(
            f"CA {issuer.name} (issuer {issuer.number}): the certificate signing its responses is not valid now"
        )
        == 1
    )
    assert (T0 + 60, inv_key(issuer.number, 9)) in schedule(setup.st)  # retried later, not dropped
    with setup.st.env.begin(db=setup.st.meta) as txn:
        assert txn.get(store.META_UNSIGNABLE) == b"deleg"  # for /readyz and `pki-edge status`


def test_a_renewed_responder_takes_over_before_the_responses_go_stale(setup: Setup) -> None:
    week = 7 * DAY
    minted = mint_responder(setup.st, "ca1", "ec-p256", 15, utc(T0), week)
    assert minted.responder_cert_der is not None
    first = x509.load_der_x509_certificate(minted.responder_cert_der)
    until = int(first.not_valid_after_utc.timestamp())
    setup.add([1])
    setup.clock.wall = T0 + 10 * DAY  # five days of the responder left: responses are cut short
    run_all(setup.precomputer())
    n = setup.issuer.number
    capped = responses(setup.st)[(n, 1, 1)]
    assert capped.next_update == until
    # The signer's upkeep renews the responder (past half its lifetime); the refresh, due before the
    # capped response goes stale, is signed by the successor, for the whole validity again.
    setup.clock.wall = capped.refresh_at
    [renewed] = renew_responders(setup.st, utc(setup.clock.wall), logging.getLogger("test"))
    assert renewed.responder_cert_der is not None
    run_all(setup.precomputer())
    stored = responses(setup.st)[(n, 1, 1)]
    assert stored.next_update == setup.clock.wall - 3600 + week < capped.next_update + week
    assert stored.next_update > until
    certs = ocsp.load_der_ocsp_response(stored.der).certificates
    assert [c.public_bytes(serialization.Encoding.DER) for c in certs] == [renewed.responder_cert_der]


def test_an_expiring_signing_certificate_is_warned_of_at_load_and_then_hourly(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    # A signer runs for months without reloading: the warning cannot wait for the next load.
    issuer, _ = add_delegated(setup, T0 - 10 * DAY, T0 + 20 * DAY)  # validity 7 days: warned after T0 + 6 days
    warning = f"issuer {issuer.number}: the certificate signing its OCSP responses expires at"
    stop = threading.Event()
    p = setup.precomputer(every_minute=lambda now: stop.set())  # one turn of the loop per run()
    counts = []
    with caplog.at_level(logging.WARNING):
        for wall in (T0, T0 + 6 * DAY, T0 + 6 * DAY + 1, T0 + 6 * DAY + 1800, T0 + 6 * DAY + 3601):
            setup.clock.wall = wall
            stop.clear()
            p.run(stop)
            counts.append(caplog.text.count(warning))
    assert counts == [0, 0, 1, 1, 2]


def test_the_run_loop_does_its_upkeep_between_batches(setup: Setup) -> None:
    stop = threading.Event()
    calls: list[int] = []

    def upkeep(now: int) -> None:
        calls.append(now)
        stop.set()  # the loop still finishes this turn's batch

    p = setup.precomputer(every_minute=upkeep)
    setup.add([1])
    p.run(stop)
    assert calls == [T0]
    assert (setup.issuer.number, 1, 1) in responses(setup.st)


def test_the_minute_report_says_when_the_signer_is_behind_and_when_it_caught_up(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.add(list(range(1, 8)))
    p = setup.precomputer(batch_size=2)
    with caplog.at_level(logging.INFO, logger="test"):
        p.report_backlog()  # seven serials wait, more than a batch
        assert p.run_batch() == 2
        p.report_backlog()  # five: still behind
        run_all(p)
        p.report_backlog()
        p.report_backlog()  # caught up is said once
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("behind", "caught"))]
    assert said == [
        "behind: 7 serials wait for a first signing or a revocation, the oldest due refresh is 0 s late;"
        " 0 responses signed since the last report",
        "behind: 5 serials wait for a first signing or a revocation, the oldest due refresh is 0 s late;"
        " 4 responses signed since the last report",
        "caught up: 10 responses signed since the last report",
    ]
    first_refresh = min(refresh_at for refresh_at, _ in schedule(setup.st))
    setup.clock.wall = first_refresh + BEHIND_SECONDS  # a stopped signer's refreshes, a minute late
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="test"):
        p.report_backlog()
    late = f"the oldest due refresh is {BEHIND_SECONDS} s late"
    said = caplog.records[-1].getMessage()
    assert said.startswith(f"behind: 0 serials wait for a first signing or a revocation, {late}")


def test_an_added_hash_algorithm_is_signed_at_once_revoked_serials_first(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    """The audit: sha1 dropped, then added back; a revoked certificate asked by SHA-1 was answered
    unauthorized (soft-fail clients accept it) until its next routine refresh, days later."""
    setup.add([1, 2, 3])
    n = setup.issuer.number
    p256 = setup.precomputer(hash_algorithms=["sha256"])
    assert p256.queue_added_hash_algorithms() == 0  # first record of the set
    run_all(p256)
    revoke(setup.st, setup.issuer, 2, 1, T0)
    run_all(p256)
    assert {(code, serial) for _, code, serial in responses(setup.st)} == {(2, 1), (2, 2), (2, 3)}
    both = setup.precomputer(hash_algorithms=["sha1", "sha256"])
    with caplog.at_level(logging.INFO, logger="test"):
        assert both.queue_added_hash_algorithms() == 3
    assert (
        "hash algorithms now sha1,sha256 (were sha256): 3 serials queued for signing, revoked ones first" in caplog.text
    )
    assert both.queue_added_hash_algorithms() == 0  # recorded: once
    assert both.run_batch(limit=1) == 1  # the revoked serial first
    got = responses(setup.st)
    assert got[(n, 1, 2)].revoked and (n, 1, 1) not in got
    run_all(both)
    assert {(code, serial) for _, code, serial in responses(setup.st)} == {(c, s) for c in (1, 2) for s in (1, 2, 3)}
    assert setup.precomputer(hash_algorithms=["sha256"]).queue_added_hash_algorithms() == 0  # dropped: swept


# ---------------------------------------------------------------------------- order of work


def test_revocation_goes_ahead_of_due_refreshes(setup: Setup) -> None:
    serials = list(range(1, 21))
    setup.add(serials)
    run_all(setup.precomputer())
    n = setup.issuer.number
    first = responses(setup.st)
    by_refresh = sorted(serials, key=lambda s: first[(n, 1, s)].refresh_at)
    latest = by_refresh[-1]  # would be refreshed last of all

    t1 = max(r.refresh_at for r in first.values()) + 10
    setup.clock.wall = t1
    revoke(setup.st, setup.issuer, latest, 1, t1 - 5)
    p = setup.precomputer(batch_size=1)
    assert p.run_batch() == 1
    now = responses(setup.st)
    assert now[(n, 1, latest)].revoked and now[(n, 2, latest)].revoked
    assert now[(n, 1, latest)].this_update == t1 - 3600
    assert all(now[k] == first[k] for k in first if k[2] != latest)
    assert dump_db(setup.st, setup.st.pending) == {}

    # Then routine refreshes, oldest first.
    p5 = setup.precomputer(batch_size=5)
    assert p5.run_batch() == 5
    now = responses(setup.st)
    refreshed = {s for s in serials if now[(n, 1, s)].this_update == t1 - 3600}
    assert refreshed == {latest, *by_refresh[:5]}
    assert sum(run_all(p5)) == 14
    assert all(r.this_update == t1 - 3600 for r in responses(setup.st).values())


def test_revocation_goes_ahead_of_new_serials(setup: Setup) -> None:
    setup.add([1])
    run_all(setup.precomputer())
    setup.add(list(range(100, 110)))  # ten new serials pending (PRIORITY_NEW)
    revoke(setup.st, setup.issuer, 1, 4, T0)
    p = setup.precomputer(batch_size=1)
    assert p.run_batch() == 1
    got = responses(setup.st)
    n = setup.issuer.number
    assert got[(n, 1, 1)].revoked
    assert not any((n, 1, s) in got for s in range(100, 110))
    assert run_all(p) == [1] * 10


def test_a_serial_revoked_before_its_first_signing_is_signed_once(setup: Setup) -> None:
    """Its first signing still queued (PRIORITY_NEW) when it is revoked: one signing, revoked, not two."""
    setup.add([1, 2, 3])
    revoke(setup.st, setup.issuer, 2, 1, T0)
    assert len(dump_db(setup.st, setup.st.pending)) == 3  # 2's first signing is its revocation's
    assert run_all(setup.precomputer(batch_size=1)) == [1, 1, 1]
    assert responses(setup.st)[(setup.issuer.number, 1, 2)].revoked
    assert dump_db(setup.st, setup.st.pending) == {}


def test_a_serial_queued_twice_is_signed_once_and_leaves_nothing_pending(setup: Setup) -> None:
    """Both pending keys of one serial (as a store written before revocations replaced a queued first
    signing has them) are taken by its one signing, in the same batch."""
    setup.add([7])
    key = store.inventory_key(setup.issuer.number, store.serial_key(7))
    with setup.st.env.begin(write=True) as txn:
        txn.put(store.pending_key(store.PRIORITY_REVOCATION, key), b"", db=setup.st.pending)
    assert run_all(setup.precomputer()) == [1]
    assert dump_db(setup.st, setup.st.pending) == {}


def test_a_full_store_signs_one_serial_at_a_time_revocations_first(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch that does not fit (lmdb.MapFullError) is not the signer's end: serials are signed one a
    transaction, a revocation ahead of the rest, and the operator is told once a minute."""
    with SignerStore(data_dir, Config(store=StoreConfig(map_size_mb=1))) as st:
        issuer = create_ca(st, "ca1", "ec-p256", 3650, None, None, utc(T0 - 10 * DAY))
        ca_cert = x509.load_der_x509_certificate(issuer.cert_der)
        ca_key: PrivateKey = serialization.load_pem_private_key(key_path(data_dir, "ca1").read_bytes(), None)  # type: ignore[assignment]
        setup = Setup(st, data_dir, issuer, ca_cert, ca_key, FakeClock(T0))
        setup.add(list(range(1, 1501)))
        p = setup.precomputer()
        steps = [p.step() for _ in range(400)]
        assert steps[0] == 1 and 0 in steps  # the first batch did not fit; then one by one until none fits
        signed = len(responses(st)) // 2
        assert 50 < signed < 1500
        assert steps.count(1) == signed
        full = [r for r in caplog.records if "the store is full (store.map_size_mb = 1)" in r.getMessage()]
        assert len(full) == 1 and full[0].levelno == logging.ERROR  # once a minute, not once a step
        revoke(st, issuer, 1, 1, T0)
        assert p.step() == 1
        assert responses(st)[(issuer.number, 1, 1)].revoked and responses(st)[(issuer.number, 2, 1)].revoked


def test_batch_size_bounds_a_batch(setup: Setup) -> None:
    setup.add(list(range(1, 8)))
    assert run_all(setup.precomputer(batch_size=3)) == [3, 3, 1]


def test_batch_time_bound(setup: Setup) -> None:
    setup.add(list(range(1, 6)))
    setup.clock.step = 0.5  # every read of the monotonic clock is later than the previous one
    p = setup.precomputer(batch_seconds=0.0)
    assert run_all(p) == [1, 1, 1, 1, 1]
    assert len(responses(setup.st)) == 10


def test_batch_time_bound_not_hit_with_a_still_clock(setup: Setup) -> None:
    setup.add(list(range(1, 6)))
    setup.clock.step = 0.0
    assert run_all(setup.precomputer(batch_seconds=0.0)) == [5]


def test_batch_time_bound_allows_some(setup: Setup) -> None:
    setup.add(list(range(1, 11)))
    setup.clock.step = 1.0
    # First batch: the first read (m) sets the deadline m + 3.5; the reads before items 2, 3, 4
    # (m+1, m+2, m+3) are within it, the one before item 5 (m+4) is not; the chunk of 4 serials is
    # then signed between two reads (1 s: 1/8 s per signature). From then on a chunk is one serial
    # (2 x 1/8 s passes SIGN_CHUNK_SECONDS), its signing reads the clock twice, and a batch holds 2.
    p = setup.precomputer(batch_seconds=3.5)
    counts = run_all(p)
    assert sum(counts) == 10
    assert counts == [4, 2, 2, 2]


def test_responses_are_signed_back_to_back_in_chunks(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    setup.add(list(range(1, 26)))
    setup.clock.step = 0.0  # no signing time measured: chunks of SIGN_CHUNK_SECONDS / FIRST_SIGNATURE_SECONDS
    events: list[str] = []
    sign, response = ResponseSigner.sign, ResponseSigner.response

    def logged_sign(self: ResponseSigner, tbs: bytes) -> bytes:
        events.append("sign")
        return sign(self, tbs)

    def logged_response(self: ResponseSigner, tbs: bytes, signature: bytes) -> tuple[bytes, bytes]:
        events.append("store")
        return response(self, tbs, signature)

    monkeypatch.setattr(ResponseSigner, "sign", logged_sign)
    monkeypatch.setattr(ResponseSigner, "response", logged_response)
    assert run_all(setup.precomputer()) == [25]
    per_chunk = round(SIGN_CHUNK_SECONDS / FIRST_SIGNATURE_SECONDS)  # responses: 10 serials x 2
    runs = [(name, len(list(group))) for name, group in itertools.groupby(events)]
    assert runs == [("sign", per_chunk), ("store", per_chunk)] * 2 + [("sign", 10), ("store", 10)]
    assert len(responses(setup.st)) == 50


# ---------------------------------------------------------------------------- time


def test_resigns_when_refresh_is_due(setup: Setup) -> None:
    serials = list(range(1, 41))
    setup.add(serials)
    p = setup.precomputer()
    run_all(p)
    n = setup.issuer.number
    first = responses(setup.st)
    earliest = min(r.refresh_at for r in first.values())

    setup.clock.wall = earliest - 1
    assert p.run_batch() == 0
    assert responses(setup.st) == first

    setup.clock.wall = earliest
    due = {s for s in serials if first[(n, 1, s)].refresh_at <= earliest}
    assert p.run_batch() == len(due)
    second = responses(setup.st)
    for s in serials:
        changed = second[(n, 1, s)].this_update != first[(n, 1, s)].this_update
        assert changed is (s in due)
    for s in due:
        for code in (1, 2):
            check_stored(
                second[(n, code, s)],
                serial=s,
                code=code,
                now=earliest,
                config=setup.st.config.signer,
                not_after=T0 + 90 * DAY,
                responder=setup.ca_cert,
            )

    t1 = max(r.refresh_at for r in first.values()) + 1
    setup.clock.wall = t1
    run_all(p)
    third = responses(setup.st)
    assert all(third[(n, 1, s)].this_update == t1 - 3600 for s in serials if s not in due)
    sched = schedule(setup.st)
    assert len(sched) == len(serials)
    assert sorted(sched) == sorted((third[(n, 1, s)].refresh_at, inv_key(n, s)) for s in serials)
    assert all(at > t1 for at, _ in sched)


def test_expired_serials_are_purged_after_grace(setup: Setup) -> None:
    short_end = T0 + 10 * DAY
    setup.add([1, 2, 3], not_after=short_end)
    setup.add([50])  # control: valid for 90 days
    p = setup.precomputer()
    run_all(p)
    n = setup.issuer.number
    serve_until = short_end + 24 * 3600
    last_refresh_at = {}
    for _ in range(50):
        sched = schedule(setup.st)
        upcoming = [at for at, key in sched if key != inv_key(n, 50)]
        if not upcoming:
            break
        setup.clock.wall = min(upcoming)
        run_all(p)
        got = responses(setup.st)
        for s in (1, 2, 3):
            if (n, 1, s) in got:
                assert setup.clock.wall < serve_until
                assert got[(n, 1, s)].serve_until == serve_until
                assert got[(n, 1, s)].refresh_at <= serve_until
                last_refresh_at[s] = got[(n, 1, s)].refresh_at
    else:
        raise AssertionError("never purged")
    assert setup.clock.wall == serve_until
    # The last planned refresh is exactly the end of the grace period (clamped), where the purge happens.
    assert last_refresh_at == {1: serve_until, 2: serve_until, 3: serve_until}
    got = responses(setup.st)
    for s in (1, 2, 3):
        for code in range(1, 5):
            assert (n, code, s) not in got  # the edge finds nothing for them
    assert (n, 1, 50) in got and (n, 2, 50) in got
    assert set(dump_db(setup.st, setup.st.refresh)) == {inv_key(n, 50)}
    assert [key for _, key in schedule(setup.st)] == [inv_key(n, 50)]
    # The inventory keeps them.
    assert {inv_key(n, s) for s in (1, 2, 3, 50)} <= set(dump_db(setup.st, setup.st.inventory))


def test_purge_when_jumping_past_grace(setup: Setup) -> None:
    setup.add([7], not_after=T0 + DAY)
    p = setup.precomputer()
    run_all(p)
    n = setup.issuer.number
    stored = responses(setup.st)[(n, 1, 7)]
    # serve_until is before the earliest jittered refresh: the refresh is planned at serve_until.
    assert stored.serve_until == T0 + 2 * DAY
    assert stored.refresh_at == T0 + 2 * DAY
    setup.clock.wall = T0 + 2 * DAY - 1
    assert p.run_batch() == 0
    setup.clock.wall = T0 + 30 * DAY
    assert p.run_batch() == 1
    assert responses(setup.st) == {}
    assert schedule(setup.st) == []
    assert dump_db(setup.st, setup.st.refresh) == {}
    assert p.run_batch() == 0


def test_a_serial_added_after_its_grace_is_never_served(setup: Setup) -> None:
    write_entries(setup.st, setup.issuer, [Entry(8, CertRecord(T0 - 2 * DAY))], ImportReport(), None)
    assert run_all(setup.precomputer()) == [1]
    assert responses(setup.st) == {}
    assert schedule(setup.st) == []
    assert dump_db(setup.st, setup.st.pending) == {}


def test_refresh_times_are_spread(setup: Setup) -> None:
    serials = list(range(1, 201))
    setup.add(serials)
    run_all(setup.precomputer())
    n = setup.issuer.number
    got = responses(setup.st)
    times = [got[(n, 1, s)].refresh_at for s in serials]
    config = setup.st.config.signer
    validity = config.validity_hours * 3600
    this_update = T0 - config.backdate_seconds
    window = validity * config.jitter_fraction
    low = this_update + validity * (config.refresh_fraction - config.jitter_fraction)
    high = this_update + validity * config.refresh_fraction
    assert all(low <= t <= high for t in times)
    assert len(set(times)) > 150
    assert max(times) - min(times) > 0.8 * window
    # Roughly uniform: each quarter of the window gets a fair share.
    quarters = [0, 0, 0, 0]
    for t in times:
        quarters[min(3, int((t - low) / window * 4))] += 1
    assert min(quarters) >= 25, quarters


def test_random_serials_spread_by_their_place_in_the_store(setup: Setup) -> None:
    """Serials of 8+ octets (random, as CAs must issue them) take their jitter from their own value:
    still uniform over the window, and serials next to each other in the store come due together,
    so a refresh batch rewrites neighbouring pages."""
    rng = random.Random(7)
    serials = [rng.getrandbits(128) | 1 << 64 for _ in range(200)]  # 9 to 17 octets
    setup.add(serials)
    run_all(setup.precomputer())
    n = setup.issuer.number
    got = responses(setup.st)
    config = setup.st.config.signer
    validity = config.validity_hours * 3600
    window = validity * config.jitter_fraction
    low = T0 - config.backdate_seconds + validity * (config.refresh_fraction - config.jitter_fraction)
    times = {s: got[(n, 1, s)].refresh_at for s in serials}
    quarters = [0, 0, 0, 0]
    for t in times.values():
        quarters[min(3, int((t - low) / window * 4))] += 1
    assert min(quarters) >= 25, quarters
    # In store (key) order the refresh times only go down within each run of equal sign octet
    # (jitter grows with the key): neighbours in the store are neighbours in time.
    in_store_order = sorted(serials, key=store.serial_key)
    descending = sum(times[a] >= times[b] for a, b in itertools.pairwise(in_store_order))
    assert descending >= len(serials) - 2, descending


# ---------------------------------------------------------------------------- configuration changes


def test_removed_hash_algorithm_is_swept_at_once_and_added_one_signed_at_next_resign(setup: Setup) -> None:
    setup.add([1, 2, 3])
    run_all(setup.precomputer())
    n = setup.issuer.number
    assert set(responses(setup.st)) == {(n, c, s) for c in (1, 2) for s in (1, 2, 3)}
    config = msgspec.structs.replace(setup.st.config.signer, hash_algorithms=["sha256", "sha384"], batch_size=2)
    p = setup.precomputer(config)
    # Nothing is due yet: the first batches only sweep SHA-1 (two per batch here); SHA-256 stays.
    assert [p.run_batch() for _ in range(3)] == [2, 1, 0]
    assert set(responses(setup.st)) == {(n, 2, s) for s in (1, 2, 3)}
    setup.clock.wall = max(r.refresh_at for r in responses(setup.st).values())
    run_all(p)
    got = responses(setup.st)
    assert set(got) == {(n, c, s) for c in (2, 3) for s in (1, 2, 3)}
    for (_, code, serial), stored in got.items():
        check_stored(
            stored,
            serial=serial,
            code=code,
            now=setup.clock.wall,
            config=config,
            not_after=T0 + 90 * DAY,
            responder=setup.ca_cert,
        )


def test_config_changes_apply_to_new_times(setup: Setup) -> None:
    setup.add([1])
    p = setup.precomputer(validity_hours=10.0, backdate_seconds=0, refresh_fraction=0.8, jitter_fraction=0.0)
    run_all(p)
    stored = responses(setup.st)[(setup.issuer.number, 1, 1)]
    assert (stored.this_update, stored.next_update, stored.refresh_at) == (T0, T0 + 36000, T0 + 28800)
    assert stored.expires == imf_fixdate(T0 + 36000)


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize("fail_after", [0, 1, 7])
def test_failed_batch_writes_nothing(setup: Setup, monkeypatch: pytest.MonkeyPatch, fail_after: int) -> None:
    setup.add(list(range(1, 11)))
    p = setup.precomputer()
    run_all(p)
    t1 = max(r.refresh_at for r in responses(setup.st).values()) + 1
    setup.clock.wall = t1
    for s in (2, 4, 6):
        revoke(setup.st, setup.issuer, s, 1, t1 - 10)
    setup.add([100, 101])
    before = all_dbs(setup.st)
    assert len(before["pending"]) == 5

    calls = 0
    original = ResponseSigner.sign

    def failing(self: ResponseSigner, *args: Any) -> bytes:
        nonlocal calls
        calls += 1
        if calls > fail_after:
            raise RuntimeError("signing device unplugged")
        return original(self, *args)

    monkeypatch.setattr(ResponseSigner, "sign", failing)
    with pytest.raises(RuntimeError, match="unplugged"):
        p.run_batch()
    assert calls == fail_after + 1
    assert all_dbs(setup.st) == before

    monkeypatch.undo()
    counts = run_all(p)
    assert sum(counts) >= 12  # see test_pending_and_due_serial_is_signed_once for the overlap
    assert dump_db(setup.st, setup.st.pending) == {}
    n = setup.issuer.number
    got = responses(setup.st)
    assert all(got[(n, 1, s)].revoked is (s in (2, 4, 6)) for s in range(1, 11))
    assert all(r.this_update == t1 - 3600 for r in got.values())


def _broken_then_fixed(setup: Setup) -> tuple[Callable[[store.IssuerRecord], ResponseSigner], list[bool]]:
    broken = [True]

    def loader(record: store.IssuerRecord) -> ResponseSigner:
        if broken[0]:
            raise PermissionError("key file not readable")
        return load_response_signer(setup.data_dir, record)

    return loader, broken


def _precomputer_with(setup: Setup, loader: Callable[[store.IssuerRecord], ResponseSigner]) -> Precomputer:
    clock: Any = setup.clock
    p = Precomputer(setup.st, setup.st.config.signer, loader, clock, logging.getLogger("test"), random.Random(1))
    p.reload_issuers()
    return p


def test_unusable_signer_keeps_responses_and_retries(setup: Setup) -> None:
    setup.add([1, 2, 3])
    run_all(setup.precomputer())
    n = setup.issuer.number
    signed = responses(setup.st)
    t1 = max(r.refresh_at for r in signed.values())
    setup.clock.wall = t1
    revoke(setup.st, setup.issuer, 2, 1, t1)
    loader, broken = _broken_then_fixed(setup)
    run_all(_precomputer_with(setup, loader))
    # Nothing signed, nothing lost: stored responses stay, every serial waits in the schedule.
    assert responses(setup.st) == signed
    assert dump_db(setup.st, setup.st.pending) == {}
    sched = schedule(setup.st)
    assert sorted(key for _, key in sched) == sorted(inv_key(n, s) for s in (1, 2, 3))
    assert all(t1 < at <= t1 + 3600 for at, _ in sched)
    assert dump_db(setup.st, setup.st.refresh) == {key: struct.pack(">Q", at) for at, key in sched}

    # The key is readable again and the signer restarts: the waiting serials are signed.
    broken[0] = False
    setup.clock.wall = max(at for at, _ in sched)
    run_all(_precomputer_with(setup, loader))
    got = responses(setup.st)
    assert set(got) == set(signed)
    assert all(r.this_update == setup.clock.wall - 3600 for r in got.values())
    assert [got[(n, 1, s)].revoked for s in (1, 2, 3)] == [False, True, False]


def test_running_signer_picks_up_a_repaired_key(setup: Setup) -> None:
    setup.add([1, 2, 3])
    loader, broken = _broken_then_fixed(setup)
    p = _precomputer_with(setup, loader)
    run_all(p)
    assert responses(setup.st) == {}
    broken[0] = False  # e.g. the key file's permissions are fixed
    for _ in range(5):  # the run loop calls reload_issuers before every batch
        setup.clock.wall = max(at for at, _ in schedule(setup.st))
        p.reload_issuers()
        run_all(p)
    n = setup.issuer.number
    assert {(n, c, s) for c in (1, 2) for s in (1, 2, 3)} <= set(responses(setup.st))


def test_pending_and_due_serial_is_signed_once(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    setup.add([1, 2, 3])
    p = setup.precomputer()
    run_all(p)
    setup.clock.wall = max(r.refresh_at for r in responses(setup.st).values())  # all three due
    revoke(setup.st, setup.issuer, 2, 1, setup.clock.wall)  # and serial 2 pending as well
    signed: list[bytes] = []
    original = ResponseSigner.response_data

    def counting(self: ResponseSigner, hash_code: int, serial: bytes, *args: Any) -> bytes:
        signed.append(serial)
        return original(self, hash_code, serial, *args)

    monkeypatch.setattr(ResponseSigner, "response_data", counting)
    assert p.run_batch() == 3
    assert sorted(signed) == sorted([b"\x01", b"\x01", b"\x02", b"\x02", b"\x03", b"\x03"])


def test_a_store_that_cannot_be_written_is_waited_for_not_died_of(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an audit: a full disk (LMDB's commit: Input/output error) ended the signer, and `up`
    then stopped the edge with it: no OCSP at all, a crash loop under a service manager. Now the signer
    says so once a minute, keeps its heartbeat, and signs again once the store can be written."""
    from signer import precompute

    monkeypatch.setattr(precompute, "WRITE_RETRY_SECONDS", 0.01)
    setup.add([1])
    beats: list[int] = []
    stop = threading.Event()
    failures = iter([lmdb.Error("mdb_txn_commit: Input/output error")] * 3)
    p = setup.precomputer()
    p._heartbeat = lambda: beats.append(1)  # type: ignore[method-assign]
    p._heartbeat_seconds = 0.0
    real_step = p.step

    def step() -> int:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        handled = real_step()
        if handled:
            stop.set()
        return handled

    p.step = step  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="test"):
        p.run(stop)
    said = [r.getMessage() for r in caplog.records if "the store" in r.getMessage()]
    assert len([m for m in said if m.startswith("the store cannot be written (mdb_txn_commit")]) == 1, said
    assert "the store is written again: signing goes on" in said
    assert (setup.issuer.number, 1, 1) in responses(setup.st) and len(beats) >= 4


def test_a_broken_store_still_ends_the_signer(setup: Setup) -> None:
    """Only a restart can mend LMDB's panic or a corrupted page: those are not waited for."""
    p = setup.precomputer()

    def step() -> int:
        raise lmdb.PanicError("MDB_PANIC")

    p.step = step  # type: ignore[method-assign]
    with pytest.raises(lmdb.PanicError):
        p.run(threading.Event())


def test_a_full_disk_signs_one_serial_at_a_time_revocations_first(setup: Setup) -> None:
    """The store file cannot grow, but the pages it frees may hold one serial: the revocation, which
    comes first, is published while the disk stays full (as when the map is full)."""
    setup.add([1, 2, 3])
    run_all(setup.precomputer())
    revoke(setup.st, setup.issuer, 2, 1, T0)
    setup.add([4, 5, 6])
    p = setup.precomputer()
    real_batch, limits = p.run_batch, []

    def run_batch(limit: int | None = None) -> int:
        limits.append(limit)
        if limit != 1:
            raise lmdb.Error("mdb_txn_commit: No space left on device")
        return real_batch(limit)

    p.run_batch = run_batch  # type: ignore[method-assign]
    assert p.step() == 1 and limits == [None, 1]
    assert responses(setup.st)[(setup.issuer.number, 1, 2)].revoked
    assert p.step() == 1 and limits == [None, 1, 1]  # one at a time for a while, not a batch each time


def test_a_clock_gone_back_has_every_serial_signed_again_by_the_right_time(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an audit: the signer's clock ran 8 days ahead, then was corrected. Every response was
    dated 8 days in the future (clients refuse them) until its refresh, 11 days on; and a certificate
    past its grace by the wrong clock lost its responses for good (unauthorized). Both are signed again
    at the next check, revoked ones first: here once running (the wall clock against the monotonic one),
    and at a start (the store's newest signature ahead of the clock)."""
    setup.add([1, 2])
    setup.add([3], not_after=T0 + 2 * DAY)  # its grace (a day) ends at T0 + 3 days
    revoke(setup.st, setup.issuer, 2, 1, T0)
    p = setup.precomputer()
    assert p.check_clock() == 0  # the store's newest signature is not ahead
    setup.clock.wall = T0 + 8 * DAY
    assert p.check_clock() == 0  # forward: the schedule makes everything due
    run_all(p)
    assert {serial for (_, _, serial) in responses(setup.st)} == {1, 2}  # 3: past its grace, dropped

    setup.clock.wall = T0  # corrected (by more than CLOCK_STEP_SECONDS)
    with caplog.at_level(logging.WARNING, logger="test"):
        assert p.check_clock() == 3
    assert "the clock went back 691200 s (responses were signed ahead of it): 3 serials queued" in caplog.text
    pending = sorted(dump_db(setup.st, setup.st.pending))
    assert pending[0][0] == store.PRIORITY_REVOCATION and [k[0] for k in pending[1:]] == [store.PRIORITY_NEW] * 2
    run_all(p)
    signed = responses(setup.st)
    assert {serial for (_, _, serial) in signed} == {1, 2, 3}
    assert all(r.this_update <= T0 and r.produced_at <= T0 for r in signed.values())
    assert p.check_clock() == 0  # said and done once

    # A store that cannot be written when the step back is seen keeps it for the next check.
    setup.clock.wall = T0 + 8 * DAY
    assert p.check_clock() == 0
    setup.clock.wall = T0
    setup.st.env = _FailingWrites(setup.st.env)  # type: ignore[assignment]
    with pytest.raises(lmdb.Error):
        p.check_clock()
    setup.st.env = setup.st.env.inner  # type: ignore[attr-defined]
    assert p.check_clock() == 3
    run_all(p)

    # A signer starting on a store whose newest signature is ahead of its clock does the same.
    setup.clock.wall = T0 + 8 * DAY
    run_all(setup.precomputer())
    late = setup.precomputer()
    setup.clock.wall = T0 + 8 * DAY - 299  # within CLOCK_STEP_SECONDS: NTP's business, not this
    assert late.check_clock() == 0
    setup.clock.wall = T0
    assert setup.precomputer().check_clock() == 3


def test_a_revocation_time_ahead_of_the_signers_clock_is_signed_as_now(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an audit: `revoke` run where the clock was a day ahead recorded that time, and the
    response said the certificate was revoked a day after it was signed."""
    setup.add([1])
    revoke(setup.st, setup.issuer, 1, 1, T0 + DAY)
    with caplog.at_level(logging.WARNING, logger="test"):
        run_all(setup.precomputer())
    assert "serial 1 of issuer 1: revocation time" in caplog.text and "ahead of the signer's clock" in caplog.text
    der = responses(setup.st)[(setup.issuer.number, 1, 1)].der
    single = ocsp.load_der_ocsp_response(der)
    assert single.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert single.revocation_time_utc == utc(T0) == single.produced_at_utc


def test_a_fresh_revocation_is_signed_again_once_thisupdate_can_cover_it(setup: Setup) -> None:
    """Found by an interop audit: thisUpdate, backdated an hour for clients' clock skew, came before the
    revocation time, when the status said was not yet true (RFC 6960 §4.2.1); so it stayed until the
    routine refresh, days later. Now re-signed once a backdated thisUpdate reaches the revocation."""
    setup.add([1, 2])
    config = setup.st.config.signer
    revoke(setup.st, setup.issuer, 1, 1, T0 - 5)  # just revoked
    revoke(setup.st, setup.issuer, 2, 1, T0 - 2 * DAY)  # an old revocation, imported
    run_all(setup.precomputer())
    n = setup.issuer.number
    first = responses(setup.st)
    fresh, old = first[(n, 1, 1)], first[(n, 1, 2)]
    assert fresh.this_update == T0 - config.backdate_seconds < T0 - 5  # the skew margin kept at first
    assert fresh.refresh_at == T0 - 5 + config.backdate_seconds
    assert old.refresh_at > T0 + DAY  # the routine refresh: its thisUpdate already covers the revocation

    setup.clock.wall = fresh.refresh_at
    assert run_all(setup.precomputer()) == [1]
    again = responses(setup.st)
    for code in (1, 2):
        single = ocsp.load_der_ocsp_response(again[(n, code, 1)].der)
        assert single.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert single.revocation_time_utc == utc(T0 - 5) == single.this_update_utc
        assert again[(n, code, 1)].refresh_at > T0 + DAY  # and now the routine schedule
    assert again[(n, 1, 2)] == old


class _FailingWrites:
    """An LMDB environment whose write transactions fail (a full disk), reads passing through."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def begin(self, *args: Any, write: bool = False, **kwargs: Any) -> Any:
        if write:
            raise lmdb.Error("mdb_txn_commit: No space left on device")
        return self.inner.begin(*args, **kwargs)
