"""(c) HTTP semantics of the edge (RFC 5019bis §6, RFC 9110/9111), checked with httpx."""

from __future__ import annotations

import base64
import datetime as dt
import re
import subprocess
import time
from collections.abc import Iterator
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from contract.store import SERVED_WITHIN_SECONDS
from tests.integration.conftest import Shared
from tests.integration.helpers import (
    CURL,
    MALFORMED,
    UNAUTHORIZED,
    cert_status,
    load_cert,
    ocsp_request_by_serial,
    ocsp_request_der,
    openssl,
    wait_ocsp_status,
)

CACHE_CONTROL = re.compile(r"max-age=(\d+), public, no-transform, must-revalidate, stale-while-revalidate=0")
IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT"
)
CACHE_HEADERS = ("etag", "last-modified", "expires")


@pytest.fixture(scope="module")
def client(shared: Shared) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared.base_url, trust_env=False, timeout=10, follow_redirects=False) as c:
        yield c


@pytest.fixture(scope="module")
def request_der(shared: Shared) -> bytes:
    return ocsp_request_der(shared.good, shared.ca)


def _get_path(der: bytes) -> str:
    return "/ocsp/" + quote(base64.b64encode(der).decode(), safe="")


def _max_age(r: httpx.Response) -> int:
    m = CACHE_CONTROL.fullmatch(r.headers["cache-control"])
    assert m, r.headers["cache-control"]
    return int(m.group(1))


def _check_cacheable(r: httpx.Response) -> None:
    assert r.status_code == 200
    h = r.headers
    assert h["content-type"] == "application/ocsp-response"
    assert int(h["content-length"]) == len(r.content)
    m = CACHE_CONTROL.fullmatch(h["cache-control"])
    assert m, h["cache-control"]
    for name in ("last-modified", "expires", "date"):
        assert IMF_FIXDATE.fullmatch(h[name]), f"{name}: {h[name]!r}"
    date, expires = parsedate_to_datetime(h["date"]), parsedate_to_datetime(h["expires"])
    assert 0 < int(m.group(1)) <= (expires - date).total_seconds()
    resp = ocsp.load_der_ocsp_response(r.content)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert parsedate_to_datetime(h["last-modified"]) == resp.produced_at_utc
    assert resp.next_update_utc is not None
    assert expires == resp.next_update_utc
    # The signature's tail (and a tag of the responder certificate when one is sent): see README.
    assert h["etag"].startswith('"') and h["etag"].endswith(resp.signature[-16:].hex() + '"')


def test_get_and_post_headers(client: httpx.Client, request_der: bytes) -> None:
    got = client.get(_get_path(request_der))
    _check_cacheable(got)
    posted = client.post("/ocsp", content=request_der, headers={"content-type": "application/ocsp-request"})
    _check_cacheable(posted)
    assert posted.content == got.content
    for name in CACHE_HEADERS:
        assert posted.headers[name] == got.headers[name]


@pytest.mark.parametrize(
    "make_header",
    [
        pytest.param(lambda etag: {"if-none-match": etag}, id="etag"),
        pytest.param(lambda etag: {"if-none-match": "W/" + etag}, id="weak"),
        pytest.param(lambda etag: {"if-none-match": f'"0000", {etag} , "ffff"'}, id="list"),
        pytest.param(lambda etag: {"if-none-match": "*"}, id="star"),
    ],
)
def test_if_none_match(client: httpx.Client, request_der: bytes, make_header) -> None:  # type: ignore[no-untyped-def]
    full = client.get(_get_path(request_der))
    _check_cacheable(full)
    r = client.get(_get_path(request_der), headers=make_header(full.headers["etag"]))
    assert r.status_code == 304
    assert r.content == b""
    for name in CACHE_HEADERS:
        assert r.headers[name] == full.headers[name]
    assert abs(_max_age(r) - _max_age(full)) <= 2


def test_if_none_match_other_etag_gets_the_body(client: httpx.Client, request_der: bytes) -> None:
    r = client.get(_get_path(request_der), headers={"if-none-match": '"not-this-one"'})
    _check_cacheable(r)


def test_if_modified_since_needs_a_date_a_minute_past_the_signing(client: httpx.Client, request_der: bytes) -> None:
    full = client.get(_get_path(request_der))
    _check_cacheable(full)
    produced_at = ocsp.load_der_ocsp_response(full.content).produced_at_utc
    date = parsedate_to_datetime(full.headers["date"])
    # An echo of Last-Modified may stand for an older response signed in the same second; a date
    # ahead of the server's clock is none. Both get the whole response.
    ahead = format_datetime(date + dt.timedelta(seconds=120), usegmt=True)
    for since in (full.headers["last-modified"], ahead):
        r = client.get(_get_path(request_der), headers={"if-modified-since": since})
        _check_cacheable(r)
        assert r.content == full.content, since
    if date >= produced_at + dt.timedelta(seconds=SERVED_WITHIN_SECONDS):  # signed a while ago: 304 now
        _check_not_modified_since(client, request_der, full, full.headers["date"])


@pytest.mark.slow
def test_if_modified_since_a_minute_past_the_signing_is_304(client: httpx.Client, request_der: bytes) -> None:
    """The 304 by date, once the response has been served for SERVED_WITHIN_SECONDS (a wait: slow)."""
    full = client.get(_get_path(request_der))
    produced_at = ocsp.load_der_ocsp_response(full.content).produced_at_utc
    served = produced_at + dt.timedelta(seconds=SERVED_WITHIN_SECONDS)
    time.sleep(max(0.0, (served - dt.datetime.now(dt.UTC)).total_seconds()) + 1.1)
    _check_not_modified_since(client, request_der, full, format_datetime(served, usegmt=True))


def _check_not_modified_since(client: httpx.Client, request_der: bytes, full: httpx.Response, since: str) -> None:
    r = client.get(_get_path(request_der), headers={"if-modified-since": since})
    assert r.status_code == 304, since
    assert r.content == b""
    for name in CACHE_HEADERS:
        assert r.headers[name] == full.headers[name]


def test_if_match_and_if_unmodified_since(client: httpx.Client, request_der: bytes) -> None:
    """RFC 9110 §13.2.2: a failed If-Match, else a failed If-Unmodified-Since, is a 412 with no body."""
    full = client.get(_get_path(request_der))
    _check_cacheable(full)
    produced_at = ocsp.load_der_ocsp_response(full.content).produced_at_utc
    for headers in (
        {"if-match": full.headers["etag"]},
        {"if-match": "*"},
        {"if-unmodified-since": full.headers["last-modified"]},
    ):
        r = client.get(_get_path(request_der), headers=headers)
        _check_cacheable(r)
        assert r.content == full.content
    before = format_datetime(produced_at - dt.timedelta(seconds=1), usegmt=True)
    for headers in (
        {"if-match": '"not-this-one"'},
        {"if-match": "W/" + full.headers["etag"]},
        {"if-unmodified-since": before},
    ):
        r = client.get(_get_path(request_der), headers=headers)
        assert (r.status_code, r.content, r.headers["cache-control"]) == (412, b"", "max-age=0, no-cache"), headers


@pytest.mark.skipif(CURL is None, reason="curl is needed")
def test_curl_time_condition_sees_a_revocation(shared: Shared) -> None:
    """curl -z FILE asks If-Modified-Since the file's time, and keeps the file unless Last-Modified is
    later: after a revocation it must get the new response, whose thisUpdate is backdated before the
    file's time (Last-Modified is producedAt)."""
    assert CURL is not None
    work = shared.work / "ims"
    leaf_pem = Path(shared.run("issue", "root", "--cn", "ims.example", "--out", work).stdout.splitlines()[0])
    url = shared.base_url + _get_path(ocsp_request_der(load_cert(leaf_pem), shared.ca))
    wait_ocsp_status(shared.base_url, ocsp_request_der(load_cert(leaf_pem), shared.ca), "good")
    held = work / "status.der"

    def fetch() -> str:
        out = subprocess.run(
            [CURL, "-s", "-z", str(held), "-o", str(held), "-w", "%{http_code}", url],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        return out.stdout

    assert fetch() == "200"
    assert cert_status(held.read_bytes()) == "good"
    assert fetch() == "304"  # unchanged (Last-Modified is not later than the file): curl keeps its file
    assert cert_status(held.read_bytes()) == "good"
    # HTTP dates have whole seconds: curl keeps a file whose time is the second of Last-Modified.
    time.sleep(1.1)
    serial = openssl("x509", "-in", leaf_pem, "-noout", "-serial").strip()
    shared.run("revoke", "root", serial, "--reason", "keyCompromise")
    wait_ocsp_status(shared.base_url, ocsp_request_der(load_cert(leaf_pem), shared.ca), "revoked")
    assert fetch() == "200"
    assert cert_status(held.read_bytes()) == "revoked"


def test_head_has_the_get_headers_and_no_body(client: httpx.Client, request_der: bytes) -> None:
    got = client.get(_get_path(request_der))
    head = client.head(_get_path(request_der))
    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-type", "content-length", *CACHE_HEADERS):
        assert head.headers[name] == got.headers[name], name
    assert CACHE_CONTROL.fullmatch(head.headers["cache-control"])


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/", "/ocsp", "/api/ocsp/MAo="])
def test_other_methods_are_405(client: httpx.Client, method: str, path: str) -> None:
    r = client.request(method, path, content=b"x")
    assert r.status_code == 405
    allowed = {m.strip() for m in r.headers["allow"].split(",")}
    assert {"GET", "HEAD", "POST"} <= allowed


def _check_unsigned(r: httpx.Response, status: int, body: bytes) -> None:
    assert r.status_code == status
    assert r.content == body
    assert r.headers["content-type"] == "application/ocsp-response"
    assert r.headers["cache-control"] == "max-age=0, no-cache"
    assert "etag" not in r.headers


def test_unknown_serial_is_unauthorized_and_not_cacheable(shared: Shared, client: httpx.Client) -> None:
    der = ocsp_request_by_serial(shared.ca, 0xDEAD)
    _check_unsigned(client.post("/ocsp", content=der), 200, UNAUTHORIZED)
    _check_unsigned(client.get(_get_path(der)), 200, UNAUTHORIZED)


@pytest.mark.parametrize("body", [b"garbage", b"\x30\x03\x02\x01\x00", b""], ids=["text", "wrong-der", "empty"])
def test_garbage_post_is_malformed(client: httpx.Client, body: bytes) -> None:
    _check_unsigned(client.post("/ocsp", content=body), 400, MALFORMED)


def test_garbage_get_is_malformed(client: httpx.Client) -> None:
    _check_unsigned(client.get("/ocsp/not*base64"), 400, MALFORMED)
    _check_unsigned(client.get("/ocsp/" + base64.b64encode(b"garbage").decode()), 400, MALFORMED)


def test_oversized_post_is_413(client: httpx.Client, request_der: bytes) -> None:
    r = client.post("/ocsp", content=b"\x30" * 10001)
    assert r.status_code == 413
    # Without a content-length (chunked upload) the limit still holds.
    r = client.post("/ocsp", content=iter([b"\x30" * 4000] * 3))
    assert r.status_code == 413
    # The connection pool still works afterwards.
    _check_cacheable(client.post("/ocsp", content=request_der))


def _combined(*ders: bytes) -> bytes:
    requests = [asn1_ocsp.OCSPRequest.load(der)["tbs_request"]["request_list"][0] for der in ders]
    return asn1_ocsp.OCSPRequest({"tbs_request": {"request_list": requests}}).dump(force=True)


def test_two_cert_ids_get_one_live_signed_response_with_both(shared: Shared, client: httpx.Client) -> None:
    """RFC 6960 §4.2.2.3: a SingleResponse for each CertID, signed by the workers for this request."""
    two = _combined(ocsp_request_der(shared.good, shared.ca), ocsp_request_der(shared.revoked, shared.ca))
    assert len(asn1_ocsp.OCSPRequest.load(two)["tbs_request"]["request_list"]) == 2
    for r in (client.post("/ocsp", content=two), client.get(_get_path(two))):
        assert r.status_code == 200, r.content
        assert r.headers["content-type"] == "application/ocsp-response"
        assert "no-cache" not in r.headers["cache-control"]
        parsed = ocsp.load_der_ocsp_response(r.content)
        singles = list(parsed.responses)
        assert [s.serial_number for s in singles] == [shared.good.serial_number, shared.revoked.serial_number]
        assert [s.certificate_status for s in singles] == [ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED]
        public_key = shared.ca.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        public_key.verify(parsed.signature, parsed.tbs_response_bytes, ec.ECDSA(parsed.signature_hash_algorithm))


def test_two_cert_ids_with_one_unknown_serial_are_unauthorized_and_unsigned(
    shared: Shared, client: httpx.Client
) -> None:
    two = _combined(ocsp_request_der(shared.good, shared.ca), ocsp_request_by_serial(shared.ca, 0xDEAD))
    _check_unsigned(client.post("/ocsp", content=two), 200, UNAUTHORIZED)


def test_nonce_is_ignored(shared: Shared, client: httpx.Client, request_der: bytes) -> None:
    with_nonce = ocsp_request_der(shared.good, shared.ca, nonce=b"\x42" * 16)
    assert with_nonce != request_der
    plain = client.post("/ocsp", content=request_der)
    r = client.post("/ocsp", content=with_nonce)
    _check_cacheable(r)
    assert r.content == plain.content


@pytest.mark.parametrize("path", ["/ocsp", "/ocsp/", "/api/ocsp/", "/", "/healthz/", "/readyz/", "/ocsp/%"])
def test_no_redirect_ever(client: httpx.Client, path: str) -> None:
    for method in ("GET", "HEAD"):
        r = client.request(method, path)
        assert r.status_code == 400, (method, path, r.status_code, r.headers.get("location"))


def test_healthz_and_readyz(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["ready"] is True
    assert body["issuers"] >= 1


def test_readyz_counts_the_answers_of_its_worker(shared: Shared, client: httpx.Client) -> None:
    """Cache hits are tallied by the answerer and read at each snapshot; the rest through Metrics.inc.

    One keep-alive connection: its requests and /readyz reach the same worker (counters are per worker).
    """
    before = client.get("/readyz").json()["counters"]
    assert client.get(_get_path(ocsp_request_der(shared.good, shared.ca))).status_code == 200
    assert client.get(_get_path(ocsp_request_der(shared.revoked, shared.ca))).status_code == 200
    assert client.post("/ocsp", content=b"\x30\x00").status_code == 400
    after = client.get("/readyz").json()["counters"]
    for name in ("ocsp_good", "ocsp_revoked", "ocsp_malformed"):
        assert after.get(name, 0) - before.get(name, 0) == 1, (name, before, after)


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = (
        bytes((n,))
        if n < 0x80
        else bytes((0x80 | ((n.bit_length() + 7) // 8),)) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes((tag,)) + length + content


def test_padded_serial_finds_the_same_response(shared: Shared, client: httpx.Client, request_der: bytes) -> None:
    """A CertID whose serial INTEGER carries leading zero octets is keyed by value (README)."""
    parsed = ocsp.load_der_ocsp_request(request_der)
    serial = parsed.serial_number.to_bytes((parsed.serial_number.bit_length() + 8) // 8, "big")
    sha1_null = _tlv(0x30, bytes.fromhex("06052b0e03021a") + b"\x05\x00")

    def request(padding: bytes) -> bytes:
        hashes = _tlv(0x04, parsed.issuer_name_hash) + _tlv(0x04, parsed.issuer_key_hash)
        cert_id = _tlv(0x30, sha1_null + hashes + _tlv(0x02, padding + serial))
        return _tlv(0x30, _tlv(0x30, _tlv(0x30, _tlv(0x30, cert_id))))

    assert request(b"") == request_der  # the hand-made encoder agrees with cryptography's
    plain = client.post("/ocsp", content=request_der)
    r = client.post("/ocsp", content=request(b"\x00\x00"))
    assert r.status_code == 200
    assert r.content == plain.content


@pytest.mark.skipif(CURL is None, reason="curl is needed")
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_curl_offering_http2_is_answered_as_http1(shared: Shared, request_der: bytes, method: str) -> None:
    """curl --http2 offers h2c (Upgrade) with each request on plain http: declined, served as HTTP/1.1."""
    assert CURL is not None
    work = shared.work / "h2c"
    work.mkdir(exist_ok=True)
    (work / "req.der").write_bytes(request_der)
    out = work / f"{method}.der"
    args = ["--data-binary", f"@{work / 'req.der'}", shared.base_url + "/ocsp"]
    if method == "GET":
        args = [shared.base_url + _get_path(request_der)]
    done = subprocess.run(
        [CURL, "-s", "--http2", "-o", str(out), "-w", "%{http_code} %{http_version}", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    assert done.stdout == "200 1.1"
    assert cert_status(out.read_bytes()) == "good"
