"""The OCSP answering function: request bytes in, (status, headers, body) out.

Shared by every HTTP path that serves OCSP so that all give byte-identical
answers. All mapping of failures to OCSP and HTTP statuses happens here.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable
from email.utils import parsedate_tz
from typing import NamedTuple

import msgspec

from contract.jobs import CertRef
from contract.store import SERVED_WITHIN_SECONDS, StoredResponse
from edge.clock import Clock
from edge.metrics import Metrics
from edge.ocsp_request import CertID, MalformedRequest, common_request, issuer_part, parse_ocsp_request
from edge.source import NotFound, Source, SourceError, Stale, Unavailable
from edge.throttled_log import ThrottledLog

Headers = list[tuple[bytes, bytes]]

# OCSPResponse with only a responseStatus (RFC 6960 §2.3): no responseBytes, nothing signed.
MALFORMED_REQUEST = bytes.fromhex("30030a0101")
TRY_LATER = bytes.fromhex("30030a0103")
UNAUTHORIZED = bytes.fromhex("30030a0106")

CONTENT_TYPE = (b"content-type", b"application/ocsp-response")
NO_CACHE = (b"cache-control", b"max-age=0, no-cache")


class Answer(msgspec.Struct, frozen=True, gc=False):
    """An HTTP answer; ``head`` holds its header lines ready to write (``name: value\\r\\n`` each).

    Rendered once, as bytes: the fast lane writes them as they are, the ASGI path reads the same
    lines as a list (``headers``), so both paths send the very same headers. A Struct, not a
    NamedTuple: one is made per request, and a NamedTuple's ``__new__`` is Python (6x slower).
    """

    status: int
    head: bytes
    body: bytes

    @property
    def headers(self) -> Headers:
        return [_split_header_line(line) for line in self.head.split(b"\r\n") if line]


def _split_header_line(line: bytes) -> tuple[bytes, bytes]:
    """``name: value`` (as render_head writes it) back into its pair."""
    name, _, value = line.partition(b": ")
    return name, value


def render_head(headers: Headers) -> bytes:
    return b"".join(b"%s: %s\r\n" % header for header in headers)


class LiveSigning(NamedTuple):
    """A multi-CertID request the signer workers must sign (edge.app awaits the job queue)."""

    certs: tuple[CertRef, ...]


MAX_LIVE_CERT_IDS = 16
Locate = Callable[[CertID], tuple[int, int] | None]


class Conditional(NamedTuple):
    """Preconditions a GET or HEAD request carried (raw header values, RFC 9110 §13.1)."""

    if_none_match: bytes | None = None
    if_modified_since: bytes | None = None
    if_match: bytes | None = None
    if_unmodified_since: bytes | None = None


NO_CONDITIONS = Conditional()
_FIELDS = {b"if-none-match": "if_none_match", b"if-modified-since": "if_modified_since"}
_FIELDS |= {b"if-match": "if_match", b"if-unmodified-since": "if_unmodified_since"}
CONDITIONAL_HEADERS = frozenset(_FIELDS)
_LIST_FIELDS = frozenset({"if_none_match", "if_match"})


def conditional_of(headers: Headers) -> Conditional:
    """The preconditions among a request's headers (lower-case names, as uvicorn gives them).

    A list field sent in several lines is one list (RFC 9110 §5.3); a date sent twice is not one date.
    """
    found: dict[str, bytes] = {}
    for name, value in headers:
        field = _FIELDS.get(name)
        if field is not None:
            if field in found:  # a list's lines are one list; two dates are an invalid one, ignored
                value = found[field] + b", " + value if field in _LIST_FIELDS else b""
            found[field] = value
    return Conditional(**found) if found else NO_CONDITIONS


# The headers of an authoritative answer, in this order (a 304 has the cache lines only). must-revalidate
# forbids serving it stale; stale-while-revalidate=0 says so to caches that ignore must-revalidate
# (Varnish's default VCL takes its grace from it: 10 s of a possibly revoked good status otherwise).
_AUTHORITATIVE = b"cache-control: max-age=%d, public, no-transform, must-revalidate, stale-while-revalidate=0\r\n"
_CACHE_HEAD = _AUTHORITATIVE + b"last-modified: %s\r\nexpires: %s\r\netag: %s\r\n"
_RESPONSE_HEAD = render_head([CONTENT_TYPE]) + b"content-length: %d\r\n"
_HIT_HEAD = _CACHE_HEAD + _RESPONSE_HEAD


def _unsigned(status: int, body: bytes, *extra: tuple[bytes, bytes]) -> Answer:
    return Answer(status, render_head([CONTENT_TYPE, (b"content-length", b"%d" % len(body)), NO_CACHE, *extra]), body)


# One member of an If-None-Match or If-Match list: an entity-tag (quotes may hold commas), weak or not.
_LIST_MEMBER = re.compile(rb'(?:^|,)[ \t]*(W/)?("[^"]*")[ \t]*(?=,|$)')


def etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    """RFC 9110 §13.1.2: weak comparison over the list; ``*`` alone matches any current entity."""
    if if_none_match.strip(b" \t") == b"*":
        return True
    opaque = etag.removeprefix(b"W/")
    return any(tag == opaque for _, tag in _LIST_MEMBER.findall(if_none_match))


def etag_matches_strongly(if_match: bytes, etag: bytes) -> bool:
    """RFC 9110 §13.1.1: strong comparison over the list (a weak tag never matches); ``*`` alone matches."""
    if if_match.strip(b" \t") == b"*":
        return True
    if etag[:2] == b"W/":
        return False
    return any(not weak and tag == etag for weak, tag in _LIST_MEMBER.findall(if_match))


def _http_date(value: bytes) -> float | None:
    """An HTTP-date in any of its three forms (RFC 9110 §5.6.7), as Unix seconds; None if it is none."""
    parsed = parsedate_tz(value.decode("latin-1"))
    if parsed is None:
        return None
    # HTTP dates are UTC whatever their form; asctime carries no zone at all.
    try:
        return dt.datetime(*parsed[:6], tzinfo=dt.UTC).timestamp() - (parsed[9] or 0)
    except (ValueError, OverflowError):
        return None


def not_modified_since(if_modified_since: bytes, produced_at: int, now: int) -> bool:
    """RFC 9110 §13.1.3, judged by when the response was signed (its Last-Modified, producedAt).

    Not by its thisUpdate: that is backdated, and a revocation signed a minute ago would look older
    than the good response a client fetched an hour ago. Nor by producedAt alone: a response is served
    a moment after it is signed, and one signed in the second a client fetched the one before it has
    the same date. So a date counts only when the current response was already being served then:
    signed at least SERVED_WITHIN_SECONDS before it. A date echoing Last-Modified is earlier than that
    and gets the whole response: ETag (If-None-Match) is the validator that saves it. A date later
    than ``now`` is none (a client's clock ahead would otherwise keep a revoked status good).
    """
    if not produced_at:  # stored by a signer that did not record it: the condition cannot be judged
        return False
    since = _http_date(if_modified_since)
    if since is None or since > now:
        return False  # an invalid date is ignored (RFC 9110 §13.1.3), a future one too (RFC 7232 §3.3)
    return produced_at + SERVED_WITHIN_SECONDS <= since


def modified_since(if_unmodified_since: bytes, produced_at: int) -> bool:
    """RFC 9110 §13.1.4: whether If-Unmodified-Since fails (the response was signed after the date).

    An invalid date, or a response whose signing time was not recorded, is no condition at all.
    """
    since = _http_date(if_unmodified_since)
    return bool(produced_at) and since is not None and produced_at > since


# No max-age reaches it (34 years): the planned refresh and nextUpdate alone bound it. Below 2**30, so that
# Python 3.11 compares it as a one-digit int (the specialised comparison: a larger one costs 0.2k instructions).
_UNBOUNDED = (1 << 30) - 1


class OCSPAnswerer:
    def __init__(
        self,
        source: Source,
        clock: Clock,
        metrics: Metrics,
        logger: logging.Logger,
        *,
        retry_after_seconds: int,
        overdue_max_age_seconds: int,
        max_age_seconds: int = 0,
        locate: Locate | None = None,
    ) -> None:
        """``locate`` gives (issuer number, hash code) of a CertID; without it, several CertIDs are malformed.
        ``max_age_seconds``: the longest max-age of any answer (0: up to the planned refresh)."""
        self._locate = locate
        self._source = source
        self._clock = clock
        self._metrics = metrics
        self._good_hits = 0  # cache hits are counted here, read by the metrics (see edge.metrics)
        self._revoked_hits = 0
        metrics.collect(self._hit_counts)
        self._logger = logger
        # What the signer's state makes of every request (stale or future-dated responses): a line a minute.
        self._signer_log = ThrottledLog(logger, clock.now)
        self._retry_after = (b"retry-after", b"%d" % retry_after_seconds)
        self._overdue_max_age = overdue_max_age_seconds
        self._max_age = max_age_seconds or _UNBOUNDED
        self.malformed = _unsigned(400, MALFORMED_REQUEST)
        self.too_large = _unsigned(413, MALFORMED_REQUEST)
        self.unauthorized = _unsigned(200, UNAUTHORIZED)
        self.precondition_failed = Answer(412, render_head([(b"content-length", b"0"), NO_CACHE]), b"")
        self.try_later = _unsigned(503, TRY_LATER, self._retry_after)

    def _hit_counts(self) -> dict[str, int]:
        return {"ocsp_good": self._good_hits, "ocsp_revoked": self._revoked_hits}

    def answer_der(self, der: bytes, conditional: Conditional = NO_CONDITIONS) -> Answer | LiveSigning:
        # Almost every request is one CertID of a served issuer: looked up by its issuer part as
        # sent, without reading the CertID's fields. Anything else is decided by the general way
        # below, a failed lookup too: an unknown issuer part may be a malformed request.
        now = self._clock.now()  # one time for every check of this request
        failed: SourceError | None = None
        common = common_request(der)
        if common is not None:
            try:
                stored = self._source.response(common[0], common[1], now)
            except SourceError as exc:
                failed = exc
            else:
                return self.answer_stored(stored, now, conditional)
        try:
            request = parse_ocsp_request(der)
        except MalformedRequest:
            self._metrics.inc("ocsp_malformed")
            return self.malformed
        if len(request.cert_ids) != 1:
            # RFC 6960 §4.2.2.3: a SingleResponse for each CertID, so never the first one alone.
            self._metrics.inc("ocsp_multiple_certids")
            return self._live_signing(request.cert_ids, now)
        cert_id = request.cert_ids[0]
        if failed is None:  # else the lookup of this very CertID failed, above
            try:
                stored = self._source.response(issuer_part(cert_id), cert_id.serial_number, now)
            except SourceError as exc:
                failed = exc
            else:
                return self.answer_stored(stored, now, conditional)
        return self._failed(failed)

    def answer_cert_id(self, issuer_part: bytes, serial_number: bytes, conditional: Conditional) -> Answer:
        """A request known to be well-formed and of one CertID, by its issuer part as encoded.

        What ``edge.get_path.GetPaths.common_request`` reads from a GET path: the answer is the one
        ``answer_der`` gives the request's DER.
        """
        now = self._clock.now()
        try:
            stored = self._source.response(issuer_part, serial_number, now)
        except SourceError as exc:
            return self._failed(exc)
        return self.answer_stored(stored, now, conditional)

    def _failed(self, failed: SourceError) -> Answer:
        """The answer of a single CertID's failed lookup."""
        if isinstance(failed, NotFound):
            self._metrics.inc("ocsp_unauthorized")
            return self.unauthorized
        if isinstance(failed, Stale):
            self._metrics.inc("ocsp_stale")
            self._signer_log.log(logging.ERROR, Stale, "stale response requested: is the signer running?")
            return self.try_later
        self._metrics.inc("ocsp_unavailable")  # Unavailable, the last of the closed set
        return self.try_later

    def answer_stored(self, stored: StoredResponse, now: int, conditional: Conditional = NO_CONDITIONS) -> Answer:
        """The answer of a stored response at ``now``: 200 with RFC 5019bis §6.2 cache headers, or 304."""
        # max-age: never past nextUpdate or the planned refresh (RFC 5019bis §6.2); not min() and
        # max(), and not a method of its own: calls cost more than these lines, on every request.
        until = stored.refresh_at if stored.refresh_at > now else now + self._overdue_max_age
        if stored.next_update < until:
            until = stored.next_update
        max_age = until - now if until > now else 0
        if max_age > self._max_age:  # edge.max_age_seconds: how long a cache may keep a revoked status good
            max_age = self._max_age
        if stored.this_update > now:
            max_age = self._future_dated()
        if conditional is not NO_CONDITIONS:
            if self._precondition_failed(conditional, stored):
                self._metrics.inc("ocsp_precondition_failed")
                return self.precondition_failed
            if self._not_modified(conditional, stored, now):
                self._metrics.inc("ocsp_not_modified")
                return Answer(304, _CACHE_HEAD % (max_age, stored.last_modified, stored.expires, stored.etag), b"")
        if stored.revoked:
            self._revoked_hits += 1
        else:
            self._good_hits += 1
        body = stored.der
        head = _HIT_HEAD % (max_age, stored.last_modified, stored.expires, stored.etag, len(body))
        return Answer(200, head, body)

    def _future_dated(self) -> int:
        """The max-age of a response whose thisUpdate is ahead of our clock: 0.

        Its signer's clock ran ahead of ours by more than its backdating (signer.backdate_seconds):
        clients with our time refuse it (RFC 6960 §4.2.2.1), so no cache may keep it; if our clock is
        the one behind, clients take it and only the caching is lost. Served all the same: refusing
        it would let one slow edge clock stop every answer. The signer re-signs once its clock steps back.
        """
        self._metrics.inc("ocsp_future_dated")
        self._signer_log.log(
            logging.WARNING,
            "future-dated",
            "a stored response's thisUpdate is ahead of this edge's clock: served with max-age=0;"
            " check the signer's and the edge's clocks",
        )
        return 0

    def _live_signing(self, cert_ids: tuple[CertID, ...], now: int) -> Answer | LiveSigning:
        """What the signer workers must sign for a multi-CertID request, or the answer without signing.

        Only when every CertID is of one known issuer and a known, served serial: attacker-chosen
        serials or issuers never reach a signing key (unauthorized, unsigned).
        """
        if self._locate is None or len(cert_ids) > MAX_LIVE_CERT_IDS:
            return self.malformed
        refs = []
        for cert_id in cert_ids:
            try:
                self._source.response(issuer_part(cert_id), cert_id.serial_number, now)  # the rules of a cache hit
            except NotFound:
                return self.unauthorized
            except (Stale, Unavailable):
                return self.try_later
            located = self._locate(cert_id)
            if located is None:
                return self.unauthorized
            refs.append(CertRef(located[0], located[1], cert_id.serial_number))
        if len({ref.issuer_number for ref in refs}) != 1:
            return self.unauthorized  # one signature cannot speak for several CAs
        return LiveSigning(tuple(refs))

    def live_signed(self, der: bytes) -> Answer:
        """A response the workers signed for this request: authoritative, but for this request only."""
        return Answer(200, _AUTHORITATIVE % 0 + _RESPONSE_HEAD % len(der), der)

    @staticmethod
    def _precondition_failed(conditional: Conditional, stored: StoredResponse) -> bool:
        """RFC 9110 §13.2.2 steps 1 and 2: If-Match, else If-Unmodified-Since."""
        if conditional.if_match is not None:
            return not etag_matches_strongly(conditional.if_match, stored.etag)
        if conditional.if_unmodified_since is not None:
            return modified_since(conditional.if_unmodified_since, stored.produced_at)
        return False

    @staticmethod
    def _not_modified(conditional: Conditional, stored: StoredResponse, now: int) -> bool:
        if conditional.if_none_match is not None:
            return etag_matches(conditional.if_none_match, stored.etag)
        if conditional.if_modified_since is not None:
            # Never for a revoked status: a date cannot tell the revoked response from a good one cached
            # earlier when the signer's clock went back (the revocation's producedAt then comes before
            # the good one's). The ETag can: it is the signature's.
            return not stored.revoked and not_modified_since(conditional.if_modified_since, stored.produced_at, now)
        return False
