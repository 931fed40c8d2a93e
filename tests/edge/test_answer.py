"""Table-driven tests of ``edge.answer``: request bytes in, (status, headers, body) out.

A fake ``Source`` returns a ``StoredResponse`` or raises one of the closed set of lookup
errors; ``FreshnessPolicy`` and ``FakeClock`` are the real ones. Expected statuses, bodies
and header values are written out from RFC 6960 / RFC 5019bis, not read back from the code.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterator
from email.utils import formatdate

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.config import Config
from contract.store import HASH_ALGORITHMS, SERVED_WITHIN_SECONDS, StoredResponse, serial_key
from edge import answer as answer_module
from edge.answer import (
    NO_CONDITIONS,
    Answer,
    Conditional,
    OCSPAnswerer,
    conditional_of,
    etag_matches,
    etag_matches_strongly,
    not_modified_since,
)
from edge.clock import FakeClock
from edge.metrics import CounterMetrics
from edge.ocsp_request import CertID, common_request, parse_ocsp_request_general
from edge.source import FreshnessPolicy, LmdbSource, NotFound, Source, Stale, Unavailable, issuer_hashes
from signer.inventory import revoke
from signer.registry import create_ca
from signer.state import SignerStore
from tests.edge.conftest import (
    SHA1_OID,
    SHA256_OID,
    SHA512_OID,
    algorithm_identifier,
    cert_id,
    crypto_request_by_hash,
    fake_hashes,
    integer_content,
    ocsp_request,
    simple_request,
    single_request,
)
from tests.edge.test_ocsp_request import MUTATIONS, mutate
from tests.signed_store import add_devices, drain

NOW = 1_700_000_000
MINUTE = 60
HOUR = 3600
DAY = 86400
RETRY_AFTER = 120
OVERDUE_MAX_AGE = 300

# OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED } for the unsigned statuses (RFC 6960 §4.2.1).
MALFORMED_BODY = bytes([0x30, 0x03, 0x0A, 0x01, 0x01])
TRY_LATER_BODY = bytes([0x30, 0x03, 0x0A, 0x01, 0x03])
UNAUTHORIZED_BODY = bytes([0x30, 0x03, 0x0A, 0x01, 0x06])

NAME_HASH, KEY_HASH = fake_hashes("sha1", b"answer-tests")
SERIAL = 0x0123456789ABCDEF
REQUEST = crypto_request_by_hash(NAME_HASH, KEY_HASH, SERIAL)
EXPECTED_CERT_ID = CertID(HASH_ALGORITHMS["sha1"][1], NAME_HASH, KEY_HASH, serial_key(SERIAL))
RESPONSE_DER = b"\x30\x81\x80" + bytes(range(128))  # opaque to the edge
ETAG = b'"5c1e-9f3a"'


def http_date(timestamp: int) -> bytes:
    return formatdate(timestamp, usegmt=True).encode()


def stored(
    *,
    this_update: int = NOW - HOUR,
    next_update: int = NOW + 7 * DAY,
    refresh_at: int = NOW + 3 * DAY,
    serve_until: int = NOW + 365 * DAY,
    revoked: bool = False,
    etag: bytes = ETAG,
    produced_at: int | None = None,
) -> StoredResponse:
    """A stored response as the signer makes it: thisUpdate backdated an hour before producedAt."""
    signed_at = this_update + HOUR if produced_at is None else produced_at
    return StoredResponse(
        der=RESPONSE_DER,
        this_update=this_update,
        next_update=next_update,
        refresh_at=refresh_at,
        serve_until=serve_until,
        etag=etag,
        last_modified=http_date(signed_at),
        expires=http_date(next_update),
        revoked=revoked,
        produced_at=signed_at,
    )


def cert_id_of(issuer_part: bytes, serial_number: bytes) -> CertID:
    """The CertID a Source was asked for, read back by the general parser."""
    der = issuer_part + bytes((0x02, len(serial_number))) + serial_number
    for _ in range(5):  # CertID, Request, requestList, TBSRequest, OCSPRequest
        size = len(der)
        length = (
            bytes((size,))
            if size < 0x80
            else bytes((0x80 | (n := (size.bit_length() + 7) // 8),)) + size.to_bytes(n, "big")
        )
        der = b"\x30" + length + der
    (read,) = parse_ocsp_request_general(der).cert_ids
    return read


class FakeSource:
    """Returns one outcome for every CertID and remembers what it was asked."""

    def __init__(self, outcome: StoredResponse | Exception) -> None:
        self.outcome = outcome
        self.calls: list[CertID] = []

    def response(self, issuer_part: bytes, serial_number: bytes, now: int) -> StoredResponse:
        self.calls.append(cert_id_of(issuer_part, serial_number))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


class Harness:
    def __init__(
        self, outcome: StoredResponse | Exception, *, policy: bool = True, now: int = NOW, max_age: int = 0
    ) -> None:
        self.clock = FakeClock(now)
        self.source = FakeSource(outcome)
        self.metrics = CounterMetrics()
        inner: Source = self.source
        self.answerer = OCSPAnswerer(
            FreshnessPolicy(inner) if policy else inner,
            self.clock,
            self.metrics,
            logging.getLogger("test"),
            retry_after_seconds=RETRY_AFTER,
            overdue_max_age_seconds=OVERDUE_MAX_AGE,
            max_age_seconds=max_age,
        )

    def answer(self, der: bytes = REQUEST, conditional: Conditional | None = None) -> Answer:
        if conditional is None:
            return self.answerer.answer_der(der)
        return self.answerer.answer_der(der, conditional)


def header_dict(answer: Answer) -> dict[bytes, bytes]:
    names = [name for name, _ in answer.headers]
    assert len(names) == len(set(names)), f"duplicate headers: {names}"
    assert all(name == name.lower() for name in names)
    return dict(answer.headers)


def cache_control(max_age: int) -> bytes:
    return f"max-age={max_age}, public, no-transform, must-revalidate, stale-while-revalidate=0".encode()


CACHE_HEADER_NAMES = (b"cache-control", b"last-modified", b"expires", b"etag")


# ------------------------------------------------------------------ authoritative answers

# (id, StoredResponse fields, expected max-age): max-age = min(nextUpdate, refresh_at) - now, or when the
# refresh is overdue (refresh_at <= now) min(nextUpdate - now, overdue max-age); never negative.
MAX_AGE_CASES = [
    ("refresh-before-next-update", {"refresh_at": NOW + 2 * DAY, "next_update": NOW + 7 * DAY}, 2 * DAY),
    ("next-update-before-refresh", {"refresh_at": NOW + DAY, "next_update": NOW + HOUR}, HOUR),
    ("refresh-equals-next-update", {"refresh_at": NOW + DAY, "next_update": NOW + DAY}, DAY),
    ("refresh-in-one-second", {"refresh_at": NOW + 1}, 1),
    ("next-update-in-one-second", {"next_update": NOW + 1, "refresh_at": NOW + DAY}, 1),
    ("overdue-refresh-is-now", {"refresh_at": NOW}, OVERDUE_MAX_AGE),
    ("overdue-refresh-long-past", {"refresh_at": NOW - 30 * DAY}, OVERDUE_MAX_AGE),
    ("overdue-next-update-sooner", {"refresh_at": NOW - 1, "next_update": NOW + MINUTE}, MINUTE),
    ("overdue-next-update-equal", {"refresh_at": NOW - 1, "next_update": NOW + OVERDUE_MAX_AGE}, OVERDUE_MAX_AGE),
    ("revoked", {"revoked": True, "refresh_at": NOW + 5 * MINUTE}, 5 * MINUTE),
    ("this-update-now", {"this_update": NOW}, 3 * DAY),
]

# A signer whose clock ran ahead of ours by more than its backdating: served, but no cache may keep it.
FUTURE_DATED_CASES = [
    ("this-update-two-minutes-ahead", {"this_update": NOW + 2 * MINUTE}),
    ("this-update-a-day-ahead", {"this_update": NOW + DAY, "refresh_at": NOW + 4 * DAY, "next_update": NOW + 8 * DAY}),
    ("revoked-ahead", {"this_update": NOW + HOUR, "revoked": True}),
]


@pytest.mark.parametrize(("fields", "max_age"), [c[1:] for c in MAX_AGE_CASES], ids=[c[0] for c in MAX_AGE_CASES])
def test_authoritative_answer(fields: dict[str, int], max_age: int) -> None:
    response = stored(**fields)  # type: ignore[arg-type]
    harness = Harness(response)

    answer = harness.answer()

    assert answer.status == 200
    assert answer.body == RESPONSE_DER
    assert header_dict(answer) == {
        b"content-type": b"application/ocsp-response",
        b"content-length": str(len(RESPONSE_DER)).encode(),
        b"cache-control": cache_control(max_age),
        b"last-modified": response.last_modified,
        b"expires": response.expires,
        b"etag": ETAG,
    }
    assert harness.source.calls == [EXPECTED_CERT_ID]
    assert harness.metrics.snapshot() == {"ocsp_revoked" if response.revoked else "ocsp_good": 1}


@pytest.mark.parametrize("fields", [c[1] for c in FUTURE_DATED_CASES], ids=[c[0] for c in FUTURE_DATED_CASES])
def test_a_response_dated_ahead_of_the_clock_is_served_with_max_age_0(
    fields: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    response = stored(**fields)  # type: ignore[arg-type]
    harness = Harness(response)

    with caplog.at_level(logging.WARNING, logger="test"):
        answers = [harness.answer() for _ in range(3)]
        harness.clock.advance(MINUTE)
        answers.append(harness.answer())
        not_modified = harness.answer(REQUEST, Conditional(if_none_match=ETAG))

    for answer in answers:
        assert answer.status == 200
        assert answer.body == RESPONSE_DER
        assert header_dict(answer)[b"cache-control"] == cache_control(0)
        assert header_dict(answer)[b"expires"] == response.expires
    assert not_modified.status == 304
    assert header_dict(not_modified)[b"cache-control"] == cache_control(0)
    said = [r.getMessage() for r in caplog.records]
    warning = "a stored response's thisUpdate is ahead of this edge's clock: served with max-age=0;"
    assert len(said) == 2 and all(m.startswith(warning) for m in said), said  # a line a minute, with a count
    assert said[1].endswith("(2 more like it in the 60 s before, not logged)")
    hits = "ocsp_revoked" if response.revoked else "ocsp_good"
    assert harness.metrics.snapshot() == {hits: 4, "ocsp_future_dated": 5, "ocsp_not_modified": 1}


@pytest.mark.parametrize(
    "fields",
    [
        {"next_update": NOW - 1, "refresh_at": NOW + DAY},
        {"next_update": NOW - DAY, "refresh_at": NOW - 2 * DAY},
        {"next_update": NOW, "refresh_at": NOW},
    ],
    ids=["next-update-passed", "both-passed", "both-now"],
)
def test_max_age_is_never_negative_without_the_freshness_policy(fields: dict[str, int]) -> None:
    answer = Harness(stored(**fields), policy=False).answer()  # type: ignore[arg-type]

    assert answer.status == 200
    assert header_dict(answer)[b"cache-control"] == cache_control(0)


# (id, StoredResponse fields, edge.max_age_seconds, expected max-age): the bound only ever shortens it.
BOUNDED_MAX_AGE_CASES = [
    ("bound-below-refresh", {"refresh_at": NOW + 2 * DAY, "next_update": NOW + 7 * DAY}, HOUR, HOUR),
    ("bound-above-refresh", {"refresh_at": NOW + MINUTE, "next_update": NOW + 7 * DAY}, HOUR, MINUTE),
    ("bound-equals-refresh", {"refresh_at": NOW + HOUR}, HOUR, HOUR),
    ("bound-above-next-update", {"refresh_at": NOW + DAY, "next_update": NOW + 30}, MINUTE, 30),
    ("bound-below-overdue", {"refresh_at": NOW - 1}, OVERDUE_MAX_AGE // 2, OVERDUE_MAX_AGE // 2),
    ("bound-of-a-revoked-status", {"revoked": True, "refresh_at": NOW + DAY}, 300, 300),
    ("bound-one-second", {}, 1, 1),
    ("future-dated-stays-0", {"this_update": NOW + HOUR}, MINUTE, 0),
]


@pytest.mark.parametrize(
    ("fields", "bound", "max_age"), [c[1:] for c in BOUNDED_MAX_AGE_CASES], ids=[c[0] for c in BOUNDED_MAX_AGE_CASES]
)
def test_max_age_seconds_bounds_every_authoritative_answer(fields: dict[str, int], bound: int, max_age: int) -> None:
    harness = Harness(stored(**fields), max_age=bound)  # type: ignore[arg-type]

    answer = harness.answer()
    not_modified = harness.answer(REQUEST, Conditional(if_none_match=ETAG))

    assert answer.status == 200
    assert header_dict(answer)[b"cache-control"] == cache_control(max_age)
    assert not_modified.status == 304  # a cache revalidating gets the same bound
    assert header_dict(not_modified)[b"cache-control"] == cache_control(max_age)


def test_max_age_follows_the_clock() -> None:
    harness = Harness(stored(refresh_at=NOW + HOUR, next_update=NOW + DAY))
    assert header_dict(harness.answer())[b"cache-control"] == cache_control(HOUR)
    harness.clock.advance(HOUR - 10)
    assert header_dict(harness.answer())[b"cache-control"] == cache_control(10)
    harness.clock.advance(10)  # refresh now overdue
    assert header_dict(harness.answer())[b"cache-control"] == cache_control(OVERDUE_MAX_AGE)
    harness.clock.advance(DAY - HOUR - 100)  # 100 s before nextUpdate
    assert header_dict(harness.answer())[b"cache-control"] == cache_control(100)


@pytest.mark.parametrize("hash_name", ["sha1", "sha256", "sha384", "sha512"])
def test_source_is_asked_for_the_request_cert_id(hash_name: str) -> None:
    name_hash, key_hash = fake_hashes(hash_name, b"lookup")
    harness = Harness(stored())

    harness.answer(crypto_request_by_hash(name_hash, key_hash, 2**100 + 1, hash_name))

    assert harness.source.calls == [
        CertID(HASH_ALGORITHMS[hash_name][1], name_hash, key_hash, integer_content(2**100 + 1))
    ]


# ------------------------------------------------------------------ non-authoritative and failures


def unsigned_headers(body: bytes, *extra: tuple[bytes, bytes]) -> dict[bytes, bytes]:
    return {
        b"content-type": b"application/ocsp-response",
        b"content-length": str(len(body)).encode(),
        b"cache-control": b"max-age=0, no-cache",
        **dict(extra),
    }


RETRY = (b"retry-after", str(RETRY_AFTER).encode())

# (id, source outcome, use FreshnessPolicy, status, body, extra headers, metric)
FAILURE_CASES = [
    ("not-found", NotFound("unknown serial"), True, 200, UNAUTHORIZED_BODY, (), "ocsp_unauthorized"),
    ("not-found-no-policy", NotFound("unknown issuer"), False, 200, UNAUTHORIZED_BODY, (), "ocsp_unauthorized"),
    ("past-serve-until", stored(serve_until=NOW - 1), True, 200, UNAUTHORIZED_BODY, (), "ocsp_unauthorized"),
    ("serve-until-now", stored(serve_until=NOW), True, 200, UNAUTHORIZED_BODY, (), "ocsp_unauthorized"),
    (
        "past-serve-until-and-stale",
        stored(serve_until=NOW - DAY, next_update=NOW - DAY, refresh_at=NOW - 2 * DAY),
        True,
        200,
        UNAUTHORIZED_BODY,
        (),
        "ocsp_unauthorized",
    ),
    ("stale-next-update-now", stored(next_update=NOW), True, 503, TRY_LATER_BODY, (RETRY,), "ocsp_stale"),
    (
        "stale-next-update-passed",
        stored(next_update=NOW - HOUR, refresh_at=NOW - DAY),
        True,
        503,
        TRY_LATER_BODY,
        (RETRY,),
        "ocsp_stale",
    ),
    ("stale-from-source", Stale("past nextUpdate"), False, 503, TRY_LATER_BODY, (RETRY,), "ocsp_stale"),
    ("unavailable", Unavailable("store not created yet"), True, 503, TRY_LATER_BODY, (RETRY,), "ocsp_unavailable"),
]


@pytest.mark.parametrize(
    ("outcome", "policy", "status", "body", "extra", "metric"),
    [c[1:] for c in FAILURE_CASES],
    ids=[c[0] for c in FAILURE_CASES],
)
def test_non_authoritative_answers(
    outcome: StoredResponse | Exception,
    policy: bool,
    status: int,
    body: bytes,
    extra: tuple[tuple[bytes, bytes], ...],
    metric: str,
) -> None:
    harness = Harness(outcome, policy=policy)

    answer = harness.answer()

    assert (answer.status, answer.body) == (status, body)
    assert header_dict(answer) == unsigned_headers(body, *extra)
    assert harness.source.calls == [EXPECTED_CERT_ID]
    assert harness.metrics.snapshot() == {metric: 1}


def test_stale_is_logged_as_an_error_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """Every request hits a stale response while the signer is down: one line a minute, not one each."""
    harness = Harness(stored(next_update=NOW))
    with caplog.at_level(logging.ERROR, logger="test"):
        for _ in range(1000):
            harness.answer()
        harness.clock.advance(60)
        harness.answer()
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "test"]
    assert said == [
        (logging.ERROR, "stale response requested: is the signer running?"),
        (
            logging.ERROR,
            "stale response requested: is the signer running? (999 more like it in the 60 s before, not logged)",
        ),
    ]
    assert harness.metrics.snapshot() == {"ocsp_stale": 1001}  # every one counted


def test_unavailable_is_not_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="test"):
        Harness(Unavailable("no store")).answer()
    assert [r for r in caplog.records if r.name == "test"] == []


TWO_CERT_IDS = ocsp_request(
    [
        single_request(cert_id(name_hash=NAME_HASH, key_hash=KEY_HASH, serial_content=serial_key(SERIAL))),
        single_request(cert_id(name_hash=NAME_HASH, key_hash=KEY_HASH, serial_content=serial_key(SERIAL + 1))),
    ]
)
SAME_CERT_ID_TWICE = ocsp_request(
    [single_request(cert_id(name_hash=NAME_HASH, key_hash=KEY_HASH, serial_content=serial_key(SERIAL)))] * 2
)

# (id, request bytes, metric)
MALFORMED_CASES = [
    ("empty", b"", "ocsp_malformed"),
    ("garbage", b"not an ocsp request", "ocsp_malformed"),
    ("truncated", REQUEST[:-1], "ocsp_malformed"),
    ("trailing-byte", REQUEST + b"\x00", "ocsp_malformed"),
    ("too-large", REQUEST[:2] + b"\x00" * 10_001, "ocsp_malformed"),
    ("two-cert-ids", TWO_CERT_IDS, "ocsp_multiple_certids"),
    ("same-cert-id-twice", SAME_CERT_ID_TWICE, "ocsp_multiple_certids"),
    (
        "three-cert-ids-mixed-hashes",
        ocsp_request(
            [
                single_request(cert_id()),
                single_request(cert_id(algorithm=algorithm_identifier(SHA256_OID), name_hash=b"\x01" * 32)),
                single_request(cert_id(serial_content=b"\x02")),
            ]
        ),
        "ocsp_multiple_certids",
    ),
]


@pytest.mark.parametrize(("der", "metric"), [c[1:] for c in MALFORMED_CASES], ids=[c[0] for c in MALFORMED_CASES])
def test_malformed_requests(der: bytes, metric: str) -> None:
    harness = Harness(stored())

    answer = harness.answer(der, Conditional(if_none_match=b"*"))

    assert (answer.status, answer.body) == (400, MALFORMED_BODY)
    assert header_dict(answer) == unsigned_headers(MALFORMED_BODY)
    assert harness.source.calls == []  # nothing is looked up for a request that is refused
    assert harness.metrics.snapshot() == {metric: 1}


def test_one_cert_id_built_the_same_way_is_answered() -> None:
    """The two-CertID request is refused as such, not because its CertIDs are unreadable."""
    single = ocsp_request(
        [single_request(cert_id(name_hash=NAME_HASH, key_hash=KEY_HASH, serial_content=serial_key(SERIAL)))]
    )
    harness = Harness(stored())
    assert harness.answer(single).status == 200
    assert harness.source.calls == [EXPECTED_CERT_ID]


def test_authoritative_headers_are_not_shared_between_answers() -> None:
    """Mutating one answer's headers must not leak into the next one."""
    harness = Harness(stored())
    first = harness.answer()
    first.headers.append((b"x-test", b"1"))
    assert b"x-test" not in header_dict(harness.answer())


# ------------------------------------------------------------------ conditional requests

RESPONSE = stored()  # this_update = NOW - HOUR, signed at NOW
LAST_MODIFIED = RESPONSE.last_modified
SERVED_SINCE = RESPONSE.produced_at + SERVED_WITHIN_SECONDS  # the earliest If-Modified-Since that gives 304
CONDITIONAL_NOW = NOW + 2 * DAY  # when the table's requests come: its dates are in the past, but one


def rfc850(timestamp: int) -> bytes:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%A, %d-%b-%y %H:%M:%S GMT").encode()


# (id, conditional, expected status)
CONDITIONAL_CASES = [
    ("no-validators", Conditional(), 200),
    ("inm-exact", Conditional(if_none_match=ETAG), 304),
    ("inm-list", Conditional(if_none_match=b'"other", ' + ETAG + b', "third"'), 304),
    ("inm-list-no-spaces", Conditional(if_none_match=b'"other",' + ETAG), 304),
    ("inm-weak", Conditional(if_none_match=b"W/" + ETAG), 304),
    ("inm-weak-in-list", Conditional(if_none_match=b'W/"x", W/' + ETAG), 304),
    ("inm-star", Conditional(if_none_match=b"*"), 304),
    ("inm-other", Conditional(if_none_match=b'"5c1e-9f3b"'), 200),
    ("inm-other-weak", Conditional(if_none_match=b'W/"5c1e-9f3b"'), 200),
    ("inm-unquoted", Conditional(if_none_match=ETAG.strip(b'"')), 200),
    ("inm-prefix-of-etag", Conditional(if_none_match=ETAG[:-2] + b'"'), 200),
    ("inm-empty", Conditional(if_none_match=b""), 200),
    ("ims-served-since", Conditional(if_modified_since=http_date(SERVED_SINCE)), 304),
    ("ims-served-since-rfc850", Conditional(if_modified_since=rfc850(SERVED_SINCE)), 304),
    ("ims-a-day-later", Conditional(if_modified_since=http_date(SERVED_SINCE + DAY)), 304),
    ("ims-ahead-of-the-server", Conditional(if_modified_since=http_date(CONDITIONAL_NOW + 1)), 200),
    # Last-Modified (thisUpdate) is backdated: its echo, or any date up to a minute after signing,
    # may be that of an older response (good, before a revocation).
    ("ims-last-modified-echo", Conditional(if_modified_since=LAST_MODIFIED), 200),
    ("ims-signing-instant", Conditional(if_modified_since=http_date(RESPONSE.produced_at)), 200),
    ("ims-just-short", Conditional(if_modified_since=http_date(SERVED_SINCE - 1)), 200),
    ("ims-earlier-date", Conditional(if_modified_since=http_date(RESPONSE.this_update - 1)), 200),
    ("ims-much-earlier", Conditional(if_modified_since=http_date(RESPONSE.this_update - 30 * DAY)), 200),
    ("ims-garbage", Conditional(if_modified_since=b"yesterday-ish"), 200),
    ("ims-empty", Conditional(if_modified_since=b""), 200),
    ("ims-non-latin", Conditional(if_modified_since="Montag, 1. Jänner".encode()), 200),
    (
        "inm-wins-nonmatching-over-matching-ims",
        Conditional(if_none_match=b'"other"', if_modified_since=http_date(SERVED_SINCE)),
        200,
    ),
    (
        "inm-wins-matching-over-earlier-ims",
        Conditional(if_none_match=ETAG, if_modified_since=http_date(RESPONSE.this_update - DAY)),
        304,
    ),
    (
        "inm-star-wins-over-garbage-ims",
        Conditional(if_none_match=b"*", if_modified_since=b"garbage"),
        304,
    ),
    ("inm-star-in-a-list", Conditional(if_none_match=b'*, "other"'), 200),  # not the grammar: "*" or tags
    # If-Match (strong comparison) and If-Unmodified-Since come first: 412 when they fail (RFC 9110 §13.2.2).
    ("im-exact", Conditional(if_match=ETAG), 200),
    ("im-in-list", Conditional(if_match=b'"other", ' + ETAG), 200),
    ("im-star", Conditional(if_match=b"*"), 200),
    ("im-other", Conditional(if_match=b'"other"'), 412),
    ("im-weak-never-matches", Conditional(if_match=b"W/" + ETAG), 412),
    ("im-star-in-a-list", Conditional(if_match=b'*, "other"'), 412),
    ("ius-signing-instant", Conditional(if_unmodified_since=http_date(RESPONSE.produced_at)), 200),
    ("ius-a-second-before", Conditional(if_unmodified_since=http_date(RESPONSE.produced_at - 1)), 412),
    ("ius-garbage", Conditional(if_unmodified_since=b"garbage"), 200),
    ("im-match-ignores-ius", Conditional(if_match=ETAG, if_unmodified_since=http_date(NOW - DAY)), 200),
    ("im-fails-before-inm", Conditional(if_match=b'"other"', if_none_match=ETAG), 412),
    ("im-passes-then-inm", Conditional(if_match=ETAG, if_none_match=ETAG), 304),
]


@pytest.mark.parametrize(
    ("conditional", "status"), [c[1:] for c in CONDITIONAL_CASES], ids=[c[0] for c in CONDITIONAL_CASES]
)
def test_conditional_requests(conditional: Conditional, status: int) -> None:
    harness = Harness(RESPONSE, now=CONDITIONAL_NOW)
    unconditional = harness.answer()

    answer = harness.answer(REQUEST, conditional)

    assert answer.status == status
    if status == 200:
        assert answer == unconditional
        assert harness.metrics.snapshot() == {"ocsp_good": 2}
    elif status == 412:
        assert answer.body == b""
        assert header_dict(answer) == {b"content-length": b"0", b"cache-control": b"max-age=0, no-cache"}
        assert harness.metrics.snapshot() == {"ocsp_good": 1, "ocsp_precondition_failed": 1}
    else:
        # The 304 repeats the cache headers of the 200 it stands for, and has no body.
        assert answer.body == b""
        full = header_dict(unconditional)
        assert header_dict(answer) == {name: full[name] for name in CACHE_HEADER_NAMES}
        assert harness.metrics.snapshot() == {"ocsp_good": 1, "ocsp_not_modified": 1}


def test_not_modified_tracks_the_max_age() -> None:
    harness = Harness(stored(refresh_at=NOW + HOUR))
    harness.clock.advance(HOUR // 2)
    answer = harness.answer(REQUEST, Conditional(if_none_match=ETAG))
    assert answer.status == 304
    assert header_dict(answer)[b"cache-control"] == cache_control(HOUR // 2)


@pytest.mark.parametrize(
    "outcome",
    [NotFound("x"), Unavailable("x"), stored(next_update=NOW), stored(serve_until=NOW)],
    ids=["not-found", "unavailable", "stale", "past-serve-until"],
)
def test_validators_never_turn_a_failure_into_304(outcome: StoredResponse | Exception) -> None:
    """'*' matches only a current representation; without one the failure answer stands."""
    plain = Harness(outcome).answer()
    conditional = Harness(outcome).answer(REQUEST, Conditional(if_none_match=b"*", if_modified_since=http_date(NOW)))
    assert conditional == plain
    assert conditional.status != 304


# ------------------------------------------------------------------ the nonce is ignored


@pytest.mark.parametrize(
    "conditional",
    [None, Conditional(if_none_match=ETAG), Conditional(if_modified_since=b"garbage")],
    ids=["unconditional", "inm", "ims"],
)
@pytest.mark.parametrize(
    "outcome", [RESPONSE, NotFound("x"), stored(next_update=NOW)], ids=["good", "not-found", "stale"]
)
def test_nonce_in_the_request_is_ignored(outcome: StoredResponse | Exception, conditional: Conditional | None) -> None:
    without = Harness(outcome)
    with_nonce = Harness(outcome)
    other_nonce = Harness(outcome)

    a = without.answer(REQUEST, conditional)
    b = with_nonce.answer(crypto_request_by_hash(NAME_HASH, KEY_HASH, SERIAL, nonce=b"\x01" * 16), conditional)
    c = other_nonce.answer(crypto_request_by_hash(NAME_HASH, KEY_HASH, SERIAL, nonce=b"\xfe" * 32), conditional)

    assert a == b == c
    assert without.source.calls == with_nonce.source.calls == other_nonce.source.calls == [EXPECTED_CERT_ID]


# ------------------------------------------------------------------ etag_matches / not_modified_since

ETAG_CASES = [
    ("exact", b'"abc"', b'"abc"', True),
    ("star", b"*", b'"abc"', True),
    ("star-with-spaces", b" * ", b'"abc"', True),
    ("star-in-list", b'"x", *', b'"abc"', False),
    ("weak-candidate", b'W/"abc"', b'"abc"', True),
    ("list-last", b'"a", "b", "abc"', b'"abc"', True),
    ("list-first", b'"abc","b"', b'"abc"', True),
    ("list-tabs-and-spaces", b'"a" ,\t"abc"\t', b'"abc"', True),
    ("different", b'"abd"', b'"abc"', False),
    ("case-sensitive", b'"ABC"', b'"abc"', False),
    ("unquoted", b"abc", b'"abc"', False),
    ("substring", b'"ab"', b'"abc"', False),
    ("superstring", b'"abcd"', b'"abc"', False),
    ("weak-different", b'W/"abd"', b'"abc"', False),
    ("lowercase-weak-prefix", b'w/"abc"', b'"abc"', False),
    ("empty", b"", b'"abc"', False),
    ("only-commas", b",,,", b'"abc"', False),
]


@pytest.mark.parametrize(
    ("if_none_match", "etag", "expected"), [c[1:] for c in ETAG_CASES], ids=[c[0] for c in ETAG_CASES]
)
def test_etag_matches(if_none_match: bytes, etag: bytes, expected: bool) -> None:
    assert etag_matches(if_none_match, etag) is expected


@pytest.mark.parametrize(
    ("if_match", "etag", "expected"),
    [
        (b'"abc"', b'"abc"', True),
        (b'"x", "abc"', b'"abc"', True),
        (b"*", b'"abc"', True),
        (b'W/"abc"', b'"abc"', False),
        (b'"abc"', b'W/"abc"', False),
        (b'"abd"', b'"abc"', False),
        (b'"x", *', b'"abc"', False),
        (b"", b'"abc"', False),
    ],
)
def test_etag_matches_strongly(if_match: bytes, etag: bytes, expected: bool) -> None:
    assert etag_matches_strongly(if_match, etag) is expected


def test_conditional_of_reads_every_precondition_and_joins_list_lines() -> None:
    headers = [
        (b"host", b"x"),
        (b"if-none-match", b'"a"'),
        (b"if-none-match", b'"b"'),
        (b"if-match", b"*"),
        (b"if-unmodified-since", b"Tue, 14 Nov 2023 22:13:19 GMT"),
        (b"if-modified-since", b"Tue, 14 Nov 2023 22:13:19 GMT"),
        (b"if-modified-since", b"Wed, 15 Nov 2023 22:13:19 GMT"),
    ]
    conditional = conditional_of(headers)
    assert conditional.if_none_match == b'"a", "b"'
    assert conditional.if_match == b"*"
    assert conditional.if_unmodified_since == b"Tue, 14 Nov 2023 22:13:19 GMT"
    # Two dates are no date (RFC 9110 §13.1.3): the condition is then ignored.
    assert not not_modified_since(conditional.if_modified_since or b"", PRODUCED_AT - DAY, PRODUCED_AT + DAY)
    assert conditional_of([(b"host", b"x")]) is NO_CONDITIONS


def test_etag_matches_weak_stored_etag() -> None:
    assert etag_matches(b'W/"abc"', b'W/"abc"')
    assert etag_matches(b'"abc"', b'W/"abc"')


def test_etag_matches_etag_containing_a_comma() -> None:
    assert etag_matches(b'"a,b"', b'"a,b"')


PRODUCED_AT = 1_699_999_939  # Tue, 14 Nov 2023 22:12:19 GMT
SINCE = PRODUCED_AT + SERVED_WITHIN_SECONDS  # Tue, 14 Nov 2023 22:13:19 GMT
IMS_NOW = SINCE + 2 * 365 * DAY  # the server's time: every date below is in its past but "a-day-ahead"

IMS_CASES = [
    ("served-since", http_date(SINCE), True),
    ("served-since-rfc850", rfc850(SINCE), True),
    ("served-since-numeric-zone", b"Tue, 14 Nov 2023 22:13:19 +0000", True),
    ("served-since-other-zone", b"Tue, 14 Nov 2023 23:13:19 +0100", True),
    ("a-year-later", http_date(SINCE + 365 * DAY), True),
    ("the-servers-now", http_date(IMS_NOW), True),
    ("a-second-ahead-of-the-server", http_date(IMS_NOW + 1), False),
    ("one-second-short", http_date(SINCE - 1), False),
    ("one-second-short-other-zone", b"Tue, 14 Nov 2023 17:13:18 -0500", False),
    ("signing-instant", http_date(PRODUCED_AT), False),
    ("a-year-earlier", http_date(SINCE - 365 * DAY), False),
    ("garbage", b"garbage", False),
    ("empty", b"", False),
    ("number", b"1699999999", False),
    ("iso-8601", b"2023-11-14T22:13:19Z", False),
    ("high-bytes", b"\xff\xfe\x00", False),
    ("out-of-range-day", b"Tue, 32 Nov 2023 22:13:19 GMT", False),
    ("out-of-range-year", b"Tue, 14 Nov 99999 22:13:19 GMT", False),
]


@pytest.mark.parametrize(("if_modified_since", "expected"), [c[1:] for c in IMS_CASES], ids=[c[0] for c in IMS_CASES])
def test_not_modified_since(if_modified_since: bytes, expected: bool) -> None:
    assert not_modified_since(if_modified_since, PRODUCED_AT, IMS_NOW) is expected


def test_not_modified_since_unknown_signing_time() -> None:
    """A response stored before producedAt was recorded: no date can show that the client has it."""
    assert not_modified_since(http_date(SINCE + DAY), 0, IMS_NOW) is False


def test_if_modified_since_after_a_revocation_gets_the_revoked_response() -> None:
    """A client holding the good response, asking with its Last-Modified or the Date it got it at,
    gets the revocation signed since, although that one's thisUpdate is backdated before both."""
    good = stored(this_update=NOW - 2 * HOUR)  # signed at NOW - HOUR
    fetched_at = NOW - HOUR + 5
    harness = Harness(good, now=fetched_at)
    assert harness.answer().body == RESPONSE_DER
    revoked_der = b"\x30\x03revoked"
    harness.source.outcome = msgspec.structs.replace(stored(revoked=True), der=revoked_der)  # signed at NOW
    harness.clock.advance(NOW + 30 - fetched_at)
    for validator in (good.last_modified, http_date(fetched_at), http_date(NOW)):
        answer = harness.answer(REQUEST, Conditional(if_modified_since=validator))
        assert (answer.status, answer.body) == (200, revoked_der), validator
    # A date when the revocation had been served for a while: still the whole answer (a date cannot
    # tell a cached good response from it, see below); its ETag gets the 304.
    harness.clock.advance(2 * MINUTE)
    assert harness.answer(REQUEST, Conditional(if_modified_since=http_date(NOW + MINUTE))).status == 200
    revoked_etag = harness.source.outcome.etag
    assert harness.answer(REQUEST, Conditional(if_none_match=revoked_etag)).status == 304


def test_a_revocation_signed_by_a_clock_gone_back_is_never_hidden_by_a_date() -> None:
    """Found by an audit: the signer's clock stepped back 5 minutes, so the revocation's producedAt
    (its Last-Modified) came before that of the good response a client holds. Judged by date, the
    client's If-Modified-Since was later than the revocation: 304, and the client kept "good"."""
    good = stored(this_update=NOW - HOUR)  # signed at NOW
    harness = Harness(good, now=NOW + 10)
    client_date = good.last_modified
    revoked = msgspec.structs.replace(
        stored(this_update=NOW - HOUR - 5 * MINUTE, revoked=True, etag=b'"r"'), der=b"\x30\x01r"
    )
    assert revoked.produced_at + SERVED_WITHIN_SECONDS <= NOW  # by date alone: "not modified"
    harness.source.outcome = revoked
    harness.clock.advance(MINUTE)
    answer = harness.answer(REQUEST, Conditional(if_modified_since=client_date))
    assert (answer.status, answer.body) == (200, b"\x30\x01r")
    assert harness.answer(REQUEST, Conditional(if_none_match=good.etag)).status == 200


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Let a test set the process time zone; restore it afterwards."""
    yield monkeypatch
    monkeypatch.undo()
    time.tzset()


def asctime(timestamp: int) -> bytes:
    """RFC 9110 asctime-date, e.g. 'Sun Nov  6 08:49:37 1994' (always UTC)."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return f"{moment:%a %b} {moment.day:2d} {moment:%H:%M:%S %Y}".encode()


@pytest.mark.parametrize("zone", ["XXX-05", "XXX+05"], ids=["utc+5", "utc-5"])
def test_asctime_if_modified_since_is_utc_whatever_the_local_zone(local_zone: pytest.MonkeyPatch, zone: str) -> None:
    local_zone.setenv("TZ", zone)
    time.tzset()
    same_instant = asctime(SINCE)
    hour_before = asctime(SINCE - HOUR)
    assert same_instant == b"Tue Nov 14 22:13:19 2023"

    assert not_modified_since(same_instant, PRODUCED_AT, IMS_NOW) is True
    assert not_modified_since(hour_before, PRODUCED_AT, IMS_NOW) is False


def test_asctime_if_modified_since_in_utc() -> None:
    """In a UTC process the asctime format already works; the bug above is the zone dependence."""
    if time.timezone != 0 or time.daylight:
        pytest.skip("process time zone is not UTC")
    assert not_modified_since(asctime(SINCE), PRODUCED_AT, IMS_NOW) is True
    assert not_modified_since(asctime(SINCE - HOUR), PRODUCED_AT, IMS_NOW) is False


# ------------------------------------------------- the common-request way against the general way
# A real store, signed by the signer code: every request gets the same answer whether it is
# looked up by its issuer part as sent (the common shape) or read field by field (the general way).


@pytest.fixture(scope="module")
def signed_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LmdbSource, bytes, int]]:
    data = tmp_path_factory.mktemp("answer-store")
    st = SignerStore(data, Config())
    now = datetime.datetime.now(datetime.UTC)
    issuer = create_ca(st, "ca", "ec-p256", 30, None, None, now)
    add_devices(st, issuer, (1, 2, 0x80, 2**64 + 3), now)
    revoke(st, issuer, 2, 1, int(now.timestamp()))
    drain(st)
    source = LmdbSource(lambda: st.env, logging.getLogger("test"))
    assert source.open()
    yield source, issuer.cert_der, int(now.timestamp())
    st.close()


def _store_requests(ca_der: bytes) -> list[bytes]:
    requests = []
    for hash_name in ("sha1", "sha256", "sha512"):
        name_hash, key_hash = issuer_hashes(ca_der, hash_name)
        oid_dotted = {"sha1": SHA1_OID, "sha256": SHA256_OID, "sha512": SHA512_OID}[hash_name]
        for params in (b"\x05\x00", b""):
            for serial_content in (
                b"\x01",
                b"\x02",
                b"\x00\x80",
                b"\x00\x00\x80",
                b"\x09",
                b"\x01" + b"\x00" * 7 + b"\x03",
            ):
                algorithm = algorithm_identifier(oid_dotted, params)
                requests.append(
                    simple_request(
                        algorithm=algorithm, name_hash=name_hash, key_hash=key_hash, serial_content=serial_content
                    )
                )
    return requests


def _both_ways(source: Source, now: int, der: bytes) -> tuple[object, object]:
    answerer = OCSPAnswerer(
        FreshnessPolicy(source),
        FakeClock(now),
        CounterMetrics(),
        logging.getLogger("test"),
        retry_after_seconds=RETRY_AFTER,
        overdue_max_age_seconds=OVERDUE_MAX_AGE,
    )
    common = answerer.answer_der(der)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(answer_module, "common_request", lambda der: None)
        general = answerer.answer_der(der)
    return common, general


def test_common_and_general_way_answer_alike_from_a_real_store(signed_store: tuple[LmdbSource, bytes, int]) -> None:
    source, ca_der, now = signed_store
    statuses = set()
    requests = _store_requests(ca_der)
    assert sum(common_request(der) is not None for der in requests) == 24  # SHA-512 ones are too long for it
    for der in requests:
        common, general = _both_ways(source, now, der)
        assert common == general
        assert isinstance(common, Answer)
        statuses.add((common.status, common.body[:5]))
    # Served (good, revoked), unknown serial (unauthorized): the table above reaches each outcome.
    assert (200, UNAUTHORIZED_BODY) in statuses and len(statuses) >= 3


def test_common_and_general_way_agree_on_stale_and_expired(signed_store: tuple[LmdbSource, bytes, int]) -> None:
    source, ca_der, now = signed_store
    der = _store_requests(ca_der)[0]
    for later in (now + 40 * DAY, now + 400 * DAY):
        common, general = _both_ways(source, later, der)
        assert common == general
        assert isinstance(common, Answer) and common.body in (TRY_LATER_BODY, UNAUTHORIZED_BODY)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 35), st.lists(MUTATIONS, min_size=1, max_size=3))
def test_common_and_general_way_answer_mutants_alike(
    signed_store: tuple[LmdbSource, bytes, int], seed: int, mutations: list[tuple[str, int, int]]
) -> None:
    source, ca_der, now = signed_store
    mutant = mutate(_store_requests(ca_der)[seed], mutations)
    common, general = _both_ways(source, now, mutant)
    assert common == general
