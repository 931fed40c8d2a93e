"""Micro benchmarks of the OCSP hot path pieces. `make test` runs them once (--benchmark-disable)
so they never rot; `.venv/bin/pytest bench --benchmark-enable` times them."""

from __future__ import annotations

import asyncio
import base64
import logging

import httpx
from pytest_benchmark.fixture import BenchmarkFixture

from bench.conftest import MicroStore, ocsp_request
from contract.config import Config
from edge.answer import NO_CONDITIONS
from edge.app import EdgeApp, build_app
from edge.clock import SystemClock
from edge.get_path import decode_get_request
from edge.metrics import CounterMetrics
from edge.ocsp_request import issuer_part, parse_ocsp_request
from edge.source import FreshnessPolicy, LmdbSource


def _app(micro_store: MicroStore) -> tuple[LmdbSource, EdgeApp]:
    st, _ = micro_store
    source = LmdbSource(lambda: st.env, logging.getLogger("b"))
    source.open()
    return source, build_app(source, Config(), SystemClock(), CounterMetrics(), logging.getLogger("b"))


def _encoded(der: bytes) -> bytes:
    return base64.b64encode(der).replace(b"/", b"%2F").replace(b"+", b"%2B").replace(b"=", b"%3D")


def test_get_path_decode(benchmark: BenchmarkFixture, micro_store: MicroStore) -> None:
    der = ocsp_request(micro_store[1], 7)
    assert benchmark(decode_get_request, _encoded(der), 10000) == der


def test_get_path_read_the_quick_way(benchmark: BenchmarkFixture, micro_store: MicroStore) -> None:
    """The issuer part and serial number of a usual GET path, without decoding it whole (GetPaths.common_request)."""
    _, app = _app(micro_store)
    paths = app.ocsp._paths
    assert benchmark(paths.common_request, b"/ocsp/" + _encoded(ocsp_request(micro_store[1], 7)))[1] == b"\x07"


def test_cert_id_parse(benchmark: BenchmarkFixture, micro_store: MicroStore) -> None:
    der = ocsp_request(micro_store[1], 7)
    assert benchmark(parse_ocsp_request, der).cert_ids[0].serial_number == b"\x07"


def test_served_request_read(benchmark: BenchmarkFixture, micro_store: MicroStore) -> None:
    """The issuer part and serial number of a usual POST body, without parsing it (ServedRequests.read)."""
    _, app = _app(micro_store)
    served = app.ocsp._served
    assert benchmark(served.read, ocsp_request(micro_store[1], 7))[1] == b"\x07"


def test_store_lookup(benchmark: BenchmarkFixture, micro_store: MicroStore) -> None:
    source, _ = _app(micro_store)
    cert_id = parse_ocsp_request(ocsp_request(micro_store[1], 7)).cert_ids[0]
    assert benchmark(source.response, issuer_part(cert_id), cert_id.serial_number, SystemClock().now()).der


def test_header_computation(benchmark: BenchmarkFixture, micro_store: MicroStore) -> None:
    source, app = _app(micro_store)
    cert_id = parse_ocsp_request(ocsp_request(micro_store[1], 7)).cert_ids[0]
    now = SystemClock().now()
    stored = FreshnessPolicy(source).response(issuer_part(cert_id), cert_id.serial_number, now)
    answerer = app.ocsp._answerer
    assert benchmark(answerer.answer_stored, stored, now).head.count(b"\r\n") == 6


def test_whole_answer_get(benchmark: BenchmarkFixture, micro_store: MicroStore) -> None:
    _, app = _app(micro_store)
    path = b"/ocsp/" + _encoded(ocsp_request(micro_store[1], 7))
    assert benchmark(app.ocsp.answer_get, path, NO_CONDITIONS, False).status == 200


def test_whole_answer_post(benchmark: BenchmarkFixture, micro_store: MicroStore) -> None:
    _, app = _app(micro_store)
    der = ocsp_request(micro_store[1], 7)
    assert benchmark(app.ocsp.answer_post, der).status == 200


def test_asgi_path_in_process(benchmark: BenchmarkFixture, micro_store: MicroStore) -> None:
    _, app = _app(micro_store)
    der = ocsp_request(micro_store[1], 7)
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge")

    def one() -> int:
        return loop.run_until_complete(client.post("/ocsp", content=der)).status_code

    try:
        assert benchmark(one) == 200
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
