"""The edge ASGI app in-process, over a real LMDB store written by the signer code, with a fake clock."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gc
import logging

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from contract.config import Config
from contract.store import split_schedule_key
from edge import answer as answer_module
from edge.answer import NO_CONDITIONS, Conditional
from edge.app import build_app
from edge.clock import FakeClock
from edge.get_path import GetPaths
from edge.metrics import CounterMetrics
from edge.ocsp_request import ServedRequests
from edge.source import LmdbSource, read_only_store
from signer.inventory import revoke
from signer.precompute import Clock
from signer.registry import create_ca
from signer.state import SignerStore
from tests.signed_store import add_devices, drain

NOW = 1_800_000_000


class FixedClock(Clock):
    def now(self) -> int:
        return NOW


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    config = Config()
    st = SignerStore(data, config)
    when = dt.datetime.fromtimestamp(NOW - 60, dt.UTC)
    issuer = create_ca(st, "ca1", "ec-p256", 365, None, None, when)
    ca_cert = x509.load_der_x509_certificate(issuer.cert_der)
    # A serial whose GET encoding has "//" inside the base64 (must not be collapsed).
    slash_serial = next(s for s in range(1, 1 << 20) if "//" in base64.b64encode(request_der(ca_cert, s)).decode())
    add_devices(st, issuer, (0x10, 0x80, slash_serial), when)
    revoke(st, issuer, 0x80, 1, NOW - 30)
    drain(st, FixedClock())
    yield data, config, st, ca_cert, slash_serial
    st.close()


def request_der(ca_cert, serial, algorithm=None) -> bytes:
    leaf_like = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        *_issuer_hashes(ca_cert, algorithm or hashes.SHA1()), serial, algorithm or hashes.SHA1()
    )
    return leaf_like.build().public_bytes(serialization.Encoding.DER)


def _issuer_hashes(ca_cert, algorithm):
    from asn1crypto import x509 as a

    tbs = a.Certificate.load(ca_cert.public_bytes(serialization.Encoding.DER))["tbs_certificate"]
    name = hashes.Hash(algorithm)
    name.update(tbs["subject"].dump())
    keyh = hashes.Hash(algorithm)
    keyh.update(tbs["subject_public_key_info"]["public_key"].contents[1:])
    return name.finalize(), keyh.finalize()


def make_app(world, clock):
    # One process cannot open an LMDB environment twice: the edge reads through the signer's handle.
    _, config, st, *_ = world
    source = LmdbSource(lambda: st.env, logging.getLogger("t"))
    return build_app(source, config, clock, CounterMetrics(), logging.getLogger("t"))


def client(world, clock):
    app = make_app(world, clock)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge")


def call(world, method, path, clock=None, **kwargs) -> httpx.Response:
    async def go():
        async with client(world, clock or FakeClock(NOW)) as c:
            return await c.request(method, path, **kwargs)

    return asyncio.run(go())


@pytest.mark.parametrize("prefix", ["", "/ocsp", "/api/ocsp"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_good_answer_under_every_prefix(world, prefix, method):
    ca_cert = world[3]
    der = request_der(ca_cert, 0x10)
    if method == "GET":
        r = call(world, "GET", f"{prefix}/{base64.b64encode(der).decode()}")
    else:
        r = call(world, "POST", prefix or "/", content=der)
    assert r.status_code == 200
    resp = ocsp.load_der_ocsp_response(r.content)
    assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert resp.serial_number == 0x10


def test_revoked_and_sha256(world):
    r = call(world, "POST", "/ocsp", content=request_der(world[3], 0x80, hashes.SHA256()))
    resp = ocsp.load_der_ocsp_response(r.content)
    assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert isinstance(resp.hash_algorithm, hashes.SHA256)
    assert resp.revocation_reason == x509.ReasonFlags.key_compromise


def test_double_slash_inside_base64_is_not_collapsed(world):
    der = request_der(world[3], world[4])
    encoded = base64.b64encode(der).decode()
    assert "//" in encoded
    r = call(world, "GET", f"/ocsp/{encoded}")
    assert r.status_code == 200
    assert ocsp.load_der_ocsp_response(r.content).serial_number == world[4]


def test_head_has_get_headers_and_no_body(world):
    path = "/ocsp/" + base64.b64encode(request_der(world[3], 0x10)).decode()
    get, head = call(world, "GET", path), call(world, "HEAD", path)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]
    assert head.headers["etag"] == get.headers["etag"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_get_405_with_allow(world, method):
    r = call(world, method, "/ocsp")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD, POST"


def test_post_limits(world):
    assert call(world, "POST", "/ocsp", content=b"\x30" * 10001).status_code == 413
    assert call(world, "POST", "/ocsp", content=b"").status_code == 400
    r = call(world, "POST", "/ocsp", content=b"not der")
    assert (r.status_code, r.content) == (400, bytes.fromhex("30030a0101"))


def test_stale_response_is_never_served(world):
    der = request_der(world[3], 0x10)
    r = call(world, "POST", "/", content=der, clock=FakeClock(NOW + 8 * 24 * 3600))
    assert r.status_code == 503
    assert r.content == bytes.fromhex("30030a0103")
    assert r.headers["retry-after"] == "60"
    assert r.headers["cache-control"] == "max-age=0, no-cache"


def test_max_age_counts_down_to_the_planned_refresh(world):
    der = request_der(world[3], 0x10)
    first = call(world, "POST", "/", content=der, clock=FakeClock(NOW))
    later = call(world, "POST", "/", content=der, clock=FakeClock(NOW + 1000))
    age = int(first.headers["cache-control"].split("=")[1].split(",")[0])
    age_later = int(later.headers["cache-control"].split("=")[1].split(",")[0])
    assert age - age_later == 1000
    assert 0 < age <= 7 * 24 * 3600 / 2


def test_health_and_readiness_do_not_shadow_ocsp(world):
    health = call(world, "GET", "/healthz")
    assert health.text == "ok\n"
    r = call(world, "GET", "/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True and r.json()["issuers"] == 1
    # A cache in front (Varnish keeps an answer without Cache-Control 120 s) would show a monitor the past.
    assert health.headers["cache-control"] == r.headers["cache-control"] == "no-store"
    assert call(world, "GET", "/ocsp/healthz").status_code == 400


def test_readiness_reports_how_far_behind_the_signer_is(world):
    """The oldest due refresh's lateness, by the edge's clock: a signer stopped or lagging shows here."""
    st = world[2]
    with st.env.begin(db=st.schedule) as txn:
        first_refresh = split_schedule_key(next(txn.cursor().iternext(values=False)))[0]
    assert first_refresh > NOW
    on_time = call(world, "GET", "/readyz").json()
    assert on_time["signer_backlog"] == {"pending": 0, "overdue_seconds": 0}
    assert on_time["unsignable_cas"] == []
    late = call(world, "GET", "/readyz", clock=FakeClock(first_refresh + 100))
    assert late.status_code == 200 and late.json()["ready"] is True  # the stored responses are still served
    assert late.json()["signer_backlog"] == {"pending": 0, "overdue_seconds": 100}


def test_ca_added_after_start_is_found(world, monkeypatch):
    _, _, st, *_ = world
    decoded: list[bytes] = []
    der_of_path = GetPaths.der
    monkeypatch.setattr(GetPaths, "der", lambda self, raw_path: decoded.append(raw_path) or der_of_path(self, raw_path))

    async def go():
        app = make_app(world, FakeClock(NOW))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e") as c:
            assert (await c.post("/", content=request_der(world[3], 0x10))).status_code == 200  # opens the store
            when = dt.datetime.fromtimestamp(NOW - 60, dt.UTC)
            issuer = create_ca(st, "late", "ec-p256", 365, None, None, when)
            ca_cert = x509.load_der_x509_certificate(issuer.cert_der)
            der = request_der(ca_cert, 0x99)
            before = await c.post("/", content=der)
            add_devices(st, issuer, [0x99], when)
            drain(st, FixedClock())
            after = await c.post("/", content=der)
            path = "/" + base64.b64encode(der).decode()
            decoded.clear()
            gets = [await c.get(path), await c.get(path)]
            return before, after, gets

    before, after, gets = asyncio.run(go())
    assert before.content == bytes.fromhex("30030a0106")
    for answer in (after, *gets):
        assert answer.status_code == 200
        assert ocsp.load_der_ocsp_response(answer.content).certificate_status == ocsp.OCSPCertStatus.GOOD
    assert decoded == []  # the new CA's GET paths are read the quick way too


def _answers(world, clock, *, quick: bool):
    """Every GET, HEAD and POST of good, revoked and unknown serials as one app answers it, and its counters.

    ``quick``: as the app does (a served issuer's usual request found without decoding or parsing it);
    else as if it never found one that way. The app opens the store at its first request: a first
    pass, not compared, does that.
    """
    _, config, st, ca_cert, _ = world
    metrics = CounterMetrics()
    source = LmdbSource(lambda: st.env, logging.getLogger("t"))
    app = build_app(source, config, clock, metrics, logging.getLogger("t"))
    ders = [
        request_der(ca_cert, serial, algorithm)
        for serial in (0x10, 0x80, 0x99)
        for algorithm in (hashes.SHA1(), hashes.SHA256())
    ]
    paths = []
    for der in ders:
        b64 = base64.b64encode(der)
        paths += [b"/" + b64, b"/ocsp/" + b64.replace(b"/", b"%2F").replace(b"+", b"%2B").replace(b"=", b"%3D")]
    asks = [
        (path, conditional, head)
        for path in paths
        for conditional in (NO_CONDITIONS, Conditional(b"*"))
        for head in (False, True)
    ]
    app.ocsp.answer_get(paths[0], NO_CONDITIONS, False)
    decoded: list[bytes] = []
    parsed: list[bytes] = []
    with pytest.MonkeyPatch.context() as patch:
        der_of_path, parse = GetPaths.der, answer_module.parse_ocsp_request
        patch.setattr(GetPaths, "der", lambda self, raw_path: decoded.append(raw_path) or der_of_path(self, raw_path))
        patch.setattr(answer_module, "parse_ocsp_request", lambda der: parsed.append(der) or parse(der))
        if not quick:
            patch.setattr(GetPaths, "common_request", lambda self, raw_path: None)
            patch.setattr(ServedRequests, "read", lambda self, der: None)
        before = metrics.snapshot()
        answers = [app.ocsp.answer_get(*ask) for ask in asks] + [app.ocsp.answer_post(der) for der in ders]
    counts = {name: value - before.get(name, 0) for name, value in metrics.snapshot().items()}
    return answers, counts, decoded, parsed


@pytest.mark.parametrize("later", [0, 8 * 24 * 3600], ids=["fresh", "stale"])
def test_ocsp_answers_the_quick_way_as_the_general_way(world, later):
    """Byte for byte, with the same counters: a served issuer's usual request, found without decoding
    or parsing it (GetPaths.common_request, ServedRequests.read), is answered as the general way does."""
    quick, quick_counts, quick_decoded, quick_parsed = _answers(world, FakeClock(NOW + later), quick=True)
    general, general_counts, general_decoded, general_parsed = _answers(world, FakeClock(NOW + later), quick=False)
    assert quick == general
    assert quick_counts == general_counts
    # Each way really was taken: the quick way neither decodes nor parses a request (the general way
    # parses only where its lookup by the issuer part as sent fails: the unknown serials).
    assert quick_decoded == quick_parsed == []
    assert len(general_decoded) == len(general) - 6 and len(general_parsed) > 0
    statuses = {(answer.status, answer.body[:5]) for answer in quick if answer.body}  # GETs (HEADs alike)
    if later:
        assert statuses == {(503, bytes.fromhex("30030a0103")), (200, bytes.fromhex("30030a0106"))}
    else:  # good and revoked, unknown (unauthorized), and 304 for If-None-Match: *
        assert {answer.status for answer in quick} == {200, 304}
        assert (200, bytes.fromhex("30030a0106")) in statuses and len(statuses) >= 3


def test_store_not_created_answers_try_later(tmp_path):
    source = LmdbSource(read_only_store(tmp_path, 1 << 30), logging.getLogger("t"))
    app = build_app(source, Config(), FakeClock(NOW), CounterMetrics(), logging.getLogger("t"))

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e") as c:
            return await c.post("/", content=bytes.fromhex("3003300130")), await c.get("/readyz")

    post, ready = asyncio.run(go())
    assert post.status_code in (400, 503)
    assert ready.status_code == 503


def test_a_store_from_before_the_est_databases_still_serves(tmp_path):
    """An edge reading a store created before ras/est_users existed: OCSP works, EST sees no RA/user."""
    import lmdb

    from contract import store

    env = lmdb.open(str(tmp_path / "store"), max_dbs=len(store.ALL_DBS), map_size=1 << 24)
    for name in store.ALL_DBS:
        if name not in store.LATER_DBS:
            env.open_db(name, create=True)
    env.close()
    reader = store.open_env(tmp_path, readonly=True, map_size=1 << 24)
    source = LmdbSource(lambda: reader, logging.getLogger("t"))
    assert source.open()
    assert source.registration_authorities() == []
    assert source.est_user("ca", "alice") is None


SERVES_CASES = [
    (b"/healthz", False),
    (b"/readyz", False),
    (b"/healthz/", True),
    (b"/.well-known/est/cacerts", False),
    (b"/.well-known/est/", False),
    (b"/.well-known/est", True),  # not under the prefix: an OCSP path (a malformed request)
    (b"/.well-known/estx/cacerts", True),
    (b"/api/devmanager/.well-known/est/ca1/simpleenroll", False),
    (b"/api/devmanager/x", True),
    (b"/api/ocsp/MEIwQDA%2BMDww", True),
    (b"/MEIwQDA%2BMDww", True),
    (b"/a", True),
    (b"/", True),
    (b"", True),
]


@pytest.mark.parametrize(("path", "served"), SERVES_CASES)
def test_ocsp_serves_every_path_but_health_and_est(path: bytes, served: bool) -> None:
    source = LmdbSource(lambda: None, logging.getLogger("t"))
    app = build_app(source, Config(), FakeClock(0), CounterMetrics(), logging.getLogger("t"))
    assert app.ocsp.serves(path) is served


def test_startup_takes_what_it_built_out_of_the_collectors_way(app) -> None:
    """Lifespan startup freezes the objects made so far (modules, the app, caches): the collector then
    walks only what requests make (perf in an EST storm: 9 % of the edge's CPU in gc, 4 % after)."""
    gc.unfreeze()
    events = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []
    frozen_at_startup: list[int] = []

    async def receive() -> dict[str, str]:
        return events.pop(0)

    async def send(message: dict[str, str]) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            frozen_at_startup.append(gc.get_freeze_count())

    try:
        asyncio.run(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send))
    finally:
        gc.unfreeze()
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert frozen_at_startup[0] > 10_000
