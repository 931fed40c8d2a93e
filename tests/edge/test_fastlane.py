"""The fast lane and the ASGI path give byte-identical answers and headers (real servers, real sockets)."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import socket
import time

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

from contract.config import Config
from signer.registry import create_ca
from signer.state import SignerStore
from tests.edge.edges import InProcessEdge, exchange, read_answers, request, run
from tests.signed_store import add_devices, drain


def comparable(headers: httpx.Headers) -> dict[str, str]:
    """Headers minus Date; max-age is checked apart (the servers answer up to a second apart)."""
    out = {k: v for k, v in headers.items() if k != "date"}
    if "cache-control" in out:
        age, _, rest = out["cache-control"].removeprefix("max-age=").partition(",")
        out["cache-control"] = rest
        out["max-age"] = age
    return out


def assert_same(a: dict[str, str], b: dict[str, str]) -> None:
    age_a, age_b = int(a.pop("max-age", 0)), int(b.pop("max-age", 0))
    assert abs(age_a - age_b) <= 2 and (age_a == 0) == (age_b == 0)
    assert a == b


def cases(ca):
    good = request(ca, 1)
    b64 = base64.b64encode(good).decode()
    return [
        ("POST", "/ocsp", {}, good),
        ("POST", "/", {}, request(ca, 2, hashes.SHA256())),
        ("POST", "/api/ocsp", {}, request(ca, 1, nonce=True)),
        ("POST", "/ocsp", {}, request(ca, 99)),
        ("POST", "/ocsp", {}, b"garbage"),
        ("POST", "/ocsp", {}, b"\x30" * 20000),
        ("GET", "/ocsp/" + b64.replace("/", "%2F").replace("+", "%2B").replace("=", "%3D"), {}, None),
        ("GET", "/api/ocsp/" + b64, {}, None),
        ("GET", "/ocsp//" + b64.rstrip("="), {}, None),
        ("HEAD", "/ocsp/" + b64, {}, None),
        ("GET", "/ocsp/!!!", {}, None),
        ("PUT", "/ocsp", {}, b""),
    ]


def test_fast_lane_and_asgi_answer_identically(store, servers):
    _, ca = store
    fast, plain = servers
    etag = None
    for method, path, headers, body in cases(ca):
        answers = []
        for base in (fast, plain):
            with httpx.Client(base_url=base) as c:
                r = c.request(method, path, headers=headers, content=body)
            answers.append((r.status_code, comparable(r.headers), r.content))
            etag = etag or r.headers.get("etag")
        assert answers[0][0] == answers[1][0] and answers[0][2] == answers[1][2], (method, path)
        if answers[0][0] == 413:
            # Sent before the body has all come, either path says close; whether it had come when the
            # head was read depends on how the client's writes arrived (httpx sends the body apart).
            for answer in answers:
                assert answer[1].pop("connection", "close") == "close"
        assert_same(answers[0][1], answers[1][1])
    # Conditional requests too.
    b64 = base64.b64encode(request(ca, 1)).decode()
    cdn = {"Via": "1.1 cdn-edge", "X-Forwarded-For": "203.0.113.7", "If-None-Match": etag, "CDN-Loop": "cdn"}
    for headers in ({"if-none-match": etag}, {"if-none-match": f'W/{etag}, "x"'}, {"if-none-match": "*"}, cdn):
        got = [httpx.get(base + "/ocsp/" + b64, headers=headers) for base in (fast, plain)]
        assert got[0].status_code == got[1].status_code == 304
        assert_same(comparable(got[0].headers), comparable(got[1].headers))


def test_fast_lane_keeps_connections_alive_and_pipelines(store, servers):
    _, ca = store
    fast = servers[0]
    der = request(ca, 1)
    port = int(fast.rsplit(":", 1)[1])
    one = b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(der), der)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(one * 3 + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        deadline = time.monotonic() + 5
        while not data.rstrip().endswith(b"ok") and time.monotonic() < deadline:
            data += s.recv(65536)
    assert data.count(b"HTTP/1.1 200 OK") == 4, data
    assert data.rstrip().endswith(b"ok"), data


def post_closing(server: str, der: bytes, cuts: tuple[int, ...] = ()) -> bytes:
    """A POST with ``Connection: close``, its body sent in pieces cut at ``cuts``; all the server wrote."""
    head = b"POST /ocsp HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(der)
    bounds = (0, *cuts, len(der))
    pieces = [der[start:end] for start, end in itertools.pairwise(bounds)]
    with socket.create_connection(("127.0.0.1", int(server.rsplit(":", 1)[1])), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(head + pieces[0])
        for piece in pieces[1:]:  # each read apart, so each a body callback of its own
            time.sleep(0.1)
            s.sendall(piece)
        data = b""
        while chunk := s.recv(65536):  # ends only when the server closes
            data += chunk
    return data


def test_fast_lane_closes_after_answering_connection_close(store, servers):
    _, ca = store
    data = post_closing(servers[0], request(ca, 1))
    assert data.startswith(b"HTTP/1.1 200 OK") and b"connection: close\r\n" in data
    assert ocsp.load_der_ocsp_response(data.split(b"\r\n\r\n", 1)[1]).serial_number == 1


def test_fast_lane_reads_a_post_body_arriving_in_pieces(store, servers):
    _, ca = store
    data = post_closing(servers[0], request(ca, 2), cuts=(1, 30))
    assert data.startswith(b"HTTP/1.1 200 OK"), data
    assert ocsp.load_der_ocsp_response(data.split(b"\r\n\r\n", 1)[1]).serial_number == 2


def test_fast_lane_reads_the_post_after_one_in_pieces_on_its_own(store, servers):
    """What a body read in pieces kept is not carried over to the next request of the connection."""
    _, ca = store
    first, second = request(ca, 2), request(ca, 1)
    head = b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
    with socket.create_connection(("127.0.0.1", int(servers[0].rsplit(":", 1)[1])), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(head % len(first) + first[:1])
        for piece in (first[1:30], first[30:]):
            time.sleep(0.1)
            s.sendall(piece)
        s.sendall(head % len(second) + second)
        answers = read_answers(s, 2)
    assert [ocsp.load_der_ocsp_response(body).serial_number for _, body in answers] == [2, 1]


def test_graceful_shutdown_sends_the_answers_already_gathered(store, app):
    import asyncio

    _, ca = store
    der = request(ca, 1)
    post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(der), der)
    edge = InProcessEdge(app, keep_alive=5)

    async def scenario() -> bytes:
        server, port = await edge.serve()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post * 2)
        await writer.drain()
        while not edge.protocols or edge.state.total_requests < 2:  # both answered, maybe not yet written
            await asyncio.sleep(0)
        for protocol in edge.protocols:
            protocol.shutdown()  # what uvicorn does to every connection on SIGTERM
        received = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        server.close()
        return received

    received = run(scenario())
    assert received.count(b"HTTP/1.1 200 OK") == 2


def test_requests_behind_a_live_signed_one_are_answered_after_it(store, servers):
    """Several CertIDs go to the signer workers (none run here: tryLater once the queue fails). A
    health check and an OCSP request pipelined behind it on the same connection come back after it,
    in order: whatever path answers, answers leave in the order of the requests."""
    from asn1crypto import ocsp as asn1_ocsp

    _, ca = store
    port = int(servers[0].rsplit(":", 1)[1])
    one, two = (asn1_ocsp.OCSPRequest.load(request(ca, serial)) for serial in (1, 2))
    requests = [one["tbs_request"]["request_list"][0], two["tbs_request"]["request_list"][0]]
    several = asn1_ocsp.OCSPRequest({"tbs_request": {"request_list": requests}}).dump()
    single = request(ca, 1)
    post = b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(
            post % (len(several), several) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + post % (len(single), single)
        )
        answers = read_answers(s, 3)
    (live_head, live_body), (health_head, health_body), (single_head, single_body) = answers
    assert live_head.startswith(b"HTTP/1.1 503") and live_body == bytes.fromhex("30030a0103"), answers[0]
    assert health_head.startswith(b"HTTP/1.1 200") and health_body.strip() == b"ok", answers[1]
    assert single_head.startswith(b"HTTP/1.1 200")
    assert ocsp.load_der_ocsp_response(single_body).serial_number == 1


class _FakeTransport:
    def __init__(self, log: list[tuple[str, bytes]], name: str, closing: bool = False) -> None:
        self.log, self.name, self.closing = log, name, closing

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.log.append((self.name, data))

    def close(self) -> None:
        self.log.append((self.name, b"<close>"))
        self.closing = True


def test_write_batch_writes_in_order_at_the_end_of_the_turn_and_skips_gone_clients():
    import asyncio

    from edge.fastlane import WriteBatch

    async def scenario() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        log: list[tuple[str, bytes]] = []
        a, b, gone = _FakeTransport(log, "a"), _FakeTransport(log, "b"), _FakeTransport(log, "gone", closing=True)
        batch = WriteBatch.of(asyncio.get_running_loop())
        assert WriteBatch.of(asyncio.get_running_loop()) is batch  # one per event loop
        batch.write(a, b"1", False)
        batch.write(gone, b"x", False)
        batch.write(b, b"2", True)
        batch.write(a, b"3", False)
        during = list(log)  # nothing is written before the loop turn ends
        await asyncio.sleep(0)
        return during, log

    during, log = run(scenario())
    assert during == []
    assert log == [("a", b"1"), ("b", b"2"), ("b", b"<close>"), ("a", b"3")]


@pytest.mark.parametrize(
    ("version", "headers", "closes"),
    [
        (b"HTTP/1.0", b"", True),
        (b"HTTP/1.0", b"Connection: keep-alive\r\n", True),  # uvicorn keeps no HTTP/1.0 connection alive
        (b"HTTP/1.0", b"Proxy-Connection: keep-alive\r\n", True),
        (b"HTTP/1.1", b"", False),
        (b"HTTP/1.1", b"Connection: keep-alive\r\n", False),
        (b"HTTP/1.1", b"Connection: close\r\n", True),
    ],
)
def test_both_paths_keep_alive_alike(store, servers, version: bytes, headers: bytes, closes: bool) -> None:
    _, ca = store
    der = request(ca, 1)
    path = b"/" + base64.b64encode(der).replace(b"/", b"%2F").replace(b"+", b"%2B").replace(b"=", b"%3D")
    for method, body in ((b"GET " + path, b""), (b"POST /ocsp", der)):
        message = method + b" " + version + b"\r\nHost: x\r\n" + headers
        message += b"Content-Length: %d\r\n\r\n%s" % (len(body), body) if body else b"\r\n"
        answers = [exchange(int(url.rsplit(":", 1)[1]), message) for url in servers]
        for received, closed in answers:
            assert received.startswith(b"HTTP/1.1 200 OK"), received[:100]
            assert closed is closes
            assert (b"connection: close\r\n" in received.lower()) is closes
        (fast, _), (asgi, _) = answers
        assert fast.split(b"\r\n\r\n", 1)[1] == asgi.split(b"\r\n\r\n", 1)[1] != b""


def test_both_paths_refuse_an_invalid_request_alike(servers) -> None:
    for url in servers:
        received, closed = exchange(int(url.rsplit(":", 1)[1]), b"GET / HTTP/1.1\r\nHost x\r\n\r\n")
        assert received.startswith(b"HTTP/1.1 400 Bad Request") and received.endswith(b"Invalid HTTP request received.")
        assert closed


@pytest.mark.parametrize(
    ("head", "body", "status"),
    [
        (b"Content-Length: 10001\r\n", b"0" * 10001, b"413"),  # over edge.max_request_bytes
        (b"Content-Length: 10000\r\n", b"0" * 10000, b"400"),  # at it: read, and malformed
        (b"Transfer-Encoding: chunked\r\n", b"2711\r\n" + b"0" * 10001 + b"\r\n0\r\n\r\n", b"413"),
        (b"Content-Length:  5 \r\n", b"00000", b"400"),
        (b"Content-Length: +5\r\n", b"00000", b"400"),
        (b"Content-Length: 5\r\nContent-Length: 6\r\n", b"000000", b"400"),
        (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n", b"400"),
    ],
)
def test_both_paths_answer_a_posts_length_alike(servers, head: bytes, body: bytes, status: bytes) -> None:
    """Past the limit, at it, and lengths the parser refuses: the same status line and body on both paths."""
    message = b"POST /ocsp HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n" + body
    answers = []
    for url in servers:
        received, _ = exchange(int(url.rsplit(":", 1)[1]), message)
        assert received.startswith(b"HTTP/1.1 " + status), received[:200]
        answers.append((received.split(b"\r\n", 1)[0], received.split(b"\r\n\r\n", 1)[1]))
    assert answers[0] == answers[1]


@pytest.mark.parametrize("target", [b"http://127.0.0.1{path}", b"http://127.0.0.1{path}?x=1", b"{path}?x=1"])
def test_both_paths_answer_an_absolute_form_or_query_target(store, servers, target: bytes) -> None:
    """RFC 9112 §3.2.2: a server accepts the absolute form (proxies send it); a query is not the request."""
    _, ca = store
    der = request(ca, 1)
    path = b"/ocsp/" + base64.b64encode(der).replace(b"/", b"%2F").replace(b"+", b"%2B").replace(b"=", b"%3D")
    message = b"GET " + target.replace(b"{path}", path) + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    bodies = []
    for url in servers:
        received, _ = exchange(int(url.rsplit(":", 1)[1]), message)
        assert received.startswith(b"HTTP/1.1 200 OK"), received[:200]
        bodies.append(received.split(b"\r\n\r\n", 1)[1])
        assert ocsp.load_der_ocsp_response(bodies[-1]).serial_number == 1
    assert bodies[0] == bodies[1]


def test_a_store_failing_under_a_running_server_answers_try_later_on_both_paths(tmp_path) -> None:
    """Reads failing inside LMDB (the environment closed under the server): 503 tryLater, never a 400."""
    import asyncio
    import logging

    from edge.answer import TRY_LATER
    from edge.app import build_app
    from edge.clock import SystemClock
    from edge.fastlane import OCSPHttpToolsProtocol
    from edge.http_protocol import EdgeHttpProtocol
    from edge.metrics import CounterMetrics
    from edge.source import LmdbSource

    st = SignerStore(tmp_path, Config())
    now = dt.datetime.now(dt.UTC)
    issuer = create_ca(st, "ca", "ec-p256", 30, None, None, now)
    add_devices(st, issuer, (1,), now)
    drain(st)
    der = request(x509.load_der_x509_certificate(issuer.cert_der), 1)
    logger = logging.getLogger("test.failing_store")
    app = build_app(LmdbSource(lambda: st.env, logger), Config(), SystemClock(), CounterMetrics(), logger)
    path = b"/" + base64.b64encode(der)
    requests = {
        "GET": b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path,
        "POST": b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(der), der),
    }

    async def ask(port: int, data: bytes) -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        writer.close()
        return head, body

    async def scenario() -> dict[tuple[str, str, bool], tuple[bytes, bytes]]:
        ports = {}
        for path_name, protocol_class in (("fast lane", OCSPHttpToolsProtocol), ("ASGI", EdgeHttpProtocol)):
            _, ports[path_name] = await InProcessEdge(app, 5, protocol_class).serve()
        answers = {}
        for failing in (False, True):
            if failing:
                st.env.close()  # every read now fails inside LMDB
            for path_name, port in ports.items():
                for method, data in requests.items():
                    answers[(path_name, method, failing)] = await ask(port, data)
        return answers

    answers = run(scenario())
    for (path_name, method, failing), (head, body) in answers.items():
        if not failing:
            assert head.startswith(b"HTTP/1.1 200"), (path_name, method, head)
            assert ocsp.load_der_ocsp_response(body).certificate_status == ocsp.OCSPCertStatus.GOOD
            continue
        assert head.startswith(b"HTTP/1.1 503"), (path_name, method, head)
        assert body == TRY_LATER and b"retry-after: " in head.lower(), (path_name, method, head)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        # every upgrade is declined (the edge serves no WebSocket): answered as HTTP, by the ASGI way
        (b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n", b"HTTP/1.1 200 OK"),
        (b"Connection: keep-alive, Upgrade\r\nUpgrade: h2c\r\n", b"HTTP/1.1 200 OK"),
        (b"Proxy-Connection: upgrade\r\nUpgrade: h2c\r\n", b"HTTP/1.1 200 OK"),  # llhttp reads it as Connection
        (b"Upgrade: h2c\r\n", b"HTTP/1.1 200 OK"),  # no Connection header: no upgrade (RFC 9110 §7.8)
    ],
)
def test_both_paths_answer_an_upgrade_request_alike(store, servers, headers: bytes, status: bytes) -> None:
    _, ca = store
    path = b"/ocsp/" + base64.b64encode(request(ca, 1)).replace(b"/", b"%2F").replace(b"+", b"%2B")
    message = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    bodies = []
    for url in servers:
        received, _ = exchange(int(url.rsplit(":", 1)[1]), message)
        assert received.startswith(status), received[:200]
        bodies.append(received.split(b"\r\n\r\n", 1)[1])
    assert bodies[0] == bodies[1]
    if status.endswith(b"200 OK"):
        assert ocsp.load_der_ocsp_response(bodies[0]).serial_number == 1


def test_both_paths_go_on_after_an_upgrade_they_do_not_support(store, servers) -> None:
    _, ca = store
    path = b"/ocsp/" + base64.b64encode(request(ca, 1)).replace(b"/", b"%2F").replace(b"+", b"%2B")
    first = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    second = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for url in servers:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(first)
            time.sleep(0.3)
            s.sendall(second)
            received = b""
            while chunk := s.recv(65536):
                received += chunk
        answers = received.split(b"HTTP/1.1 ")[1:]
        assert [answer[:6] for answer in answers] == [b"200 OK"] * 2, received[:300]
        assert ocsp.load_der_ocsp_response(answers[1].split(b"\r\n\r\n", 1)[1]).serial_number == 1


H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"


@pytest.mark.parametrize("pause", [0.0, 0.3], ids=["one-write", "body-later"])
def test_both_paths_read_the_body_and_the_requests_after_a_declined_upgrade(store, servers, pause: float) -> None:
    """RFC 9110 §7.8: a server that declines an upgrade serves the request as HTTP/1.1, body and all
    (curl --http2 and Java's HTTP clients offer h2c on every request), and what follows on the connection."""
    _, ca = store
    der = request(ca, 1)
    posted = b"POST /ocsp HTTP/1.1\r\nHost: x\r\n" + H2C + b"Content-Length: %d\r\n\r\n" % len(der)
    chunked = b"POST / HTTP/1.1\r\nHost: x\r\n" + H2C + b"Transfer-Encoding: chunked\r\n\r\n"
    chunks = b"%x\r\n%s\r\n0\r\n\r\n" % (len(der), der)
    path = b"/ocsp/" + base64.b64encode(der).replace(b"/", b"%2F").replace(b"+", b"%2B").replace(b"=", b"%3D")
    get = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + H2C + b"\r\n"
    for url in servers:
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(posted)
            time.sleep(pause)
            s.sendall(der + chunked)
            time.sleep(pause)
            s.sendall(chunks + get + get)  # two declined upgrades in one read
            answers = read_answers(s, 4)
        for head, body in answers:
            assert head.startswith(b"HTTP/1.1 200 OK"), (url, head)
            assert ocsp.load_der_ocsp_response(body).serial_number == 1, url


@pytest.mark.parametrize(
    ("version", "hosts", "served"),
    [
        (b"1.1", b"Host: ocsp.example\r\n", True),
        (b"1.1", b"Host: ocsp.example:8080\r\n", True),
        (b"1.1", b"Host: [2001:db8::1]:80\r\n", True),
        (b"1.1", b"Host: 192.0.2.1\r\n", True),
        (b"1.1", b"Host:\r\n", True),  # empty: the target has no authority (RFC 9112 §3.2)
        (b"1.1", b"Host: ocsp.example \t\r\n", True),  # whitespace around a value is not the value
        (b"1.1", b"Host: [fe80::1%25eth0]:80\r\n", True),  # an IPv6 zone (RFC 6874)
        (b"1.0", b"", True),  # HTTP/1.0 needs none
        (b"1.1", b"", False),
        (b"1.1", b"Host: a.example\r\nHost: a.example\r\n", False),
        (b"1.0", b"Host: a.example\r\nHost: b.example\r\n", False),
        (b"1.1", b"Host: a b/c@d\r\n", False),
        (b"1.1", b"Host: a.example:80x\r\n", False),
        (b"1.1", b"Host: [::1\r\n", False),
    ],
    ids=[
        "name",
        "port",
        "ipv6",
        "ipv4",
        "empty",
        "whitespace",
        "ipv6-zone",
        "1.0-none",
        "none",
        "twice",
        "1.0-twice",
        "invalid",
        "bad-port",
        "bad-ipv6",
    ],
)
def test_both_paths_want_one_valid_host(store, servers, version: bytes, hosts: bytes, served: bool) -> None:
    """RFC 9112 §3.2: a 400 for an HTTP/1.1 request without Host, and for any with several or an invalid one,
    after the answers to the requests before it on the connection."""
    _, ca = store
    path = b"/ocsp/" + base64.b64encode(request(ca, 1)).replace(b"/", b"%2F").replace(b"+", b"%2B")
    before = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    message = b"GET " + path + b" HTTP/" + version + b"\r\n" + hosts + b"Connection: close\r\n\r\n"
    for url, first in itertools.product(servers, (False, True)):  # the connection's first request too
        received, closed = exchange(int(url.rsplit(":", 1)[1]), message if first else before + message)
        answers = received.split(b"HTTP/1.1 ")[1:]
        assert closed and len(answers) == 2 - first, (url, received[:400])
        assert first or answers[0].startswith(b"200 OK"), (url, answers[0][:200])
        if served:
            assert answers[-1].startswith(b"200 OK"), (url, answers[-1][:200])
            assert ocsp.load_der_ocsp_response(answers[-1].split(b"\r\n\r\n", 1)[1]).serial_number == 1
        else:
            assert answers[-1].startswith(b"400 "), (url, answers[-1][:200])
            assert answers[-1].endswith(b"Invalid HTTP request received: missing, repeated or invalid Host header.")


def test_both_paths_answer_a_target_with_a_fragment_alike(store, servers) -> None:
    """A fragment is invalid in a request target (RFC 9112 §3.2); uvicorn drops it from the ASGI path,
    and the fast lane reads the path as that one does (httpx would not send it: raw sockets)."""
    _, ca = store
    path = b"/ocsp/" + base64.b64encode(request(ca, 1)).replace(b"/", b"%2F").replace(b"+", b"%2B")
    message = b"GET " + path + b"#frag HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    bodies = []
    for url in servers:
        received, _ = exchange(int(url.rsplit(":", 1)[1]), message)
        assert received.startswith(b"HTTP/1.1 200 OK"), (url, received[:200])
        bodies.append(received.split(b"\r\n\r\n", 1)[1])
    assert bodies[0] == bodies[1]
    assert ocsp.load_der_ocsp_response(bodies[0]).serial_number == 1
    for url in servers:  # and a health path with one is still the health path
        received, _ = exchange(
            int(url.rsplit(":", 1)[1]), b"GET /healthz#x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert received.startswith(b"HTTP/1.1 200 OK"), (url, received[:200])


def test_both_paths_refuse_connect_and_serve_on(servers) -> None:
    """llhttp hands every CONNECT over as an upgrade, with no Upgrade header to drop: 501 and close
    (giving it again to a new parser would loop for ever, the worker's CPU with it)."""
    for url in servers:
        port = int(url.rsplit(":", 1)[1])
        received, closed = exchange(port, b"CONNECT h:80 HTTP/1.1\r\nHost: h:80\r\n\r\n")
        assert closed and received.startswith(b"HTTP/1.1 501 "), (url, received[:200])
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("line", "status", "text"),
    [
        (b"GET /healthz HTTP/2.0", b"505 ", b"HTTP/2.0 is not supported."),
        (b"GET /healthz HTTP/0.9", b"505 ", b"HTTP/0.9 is not supported."),
        (b"BREW /healthz HTTP/1.1", b"501 ", b"Method not implemented."),
        (b"GET /healthz HTTP/1.2", b"400 ", b"Invalid HTTP request received."),  # llhttp's: 1.1 would do
    ],
    ids=["http-2.0", "http-0.9", "unknown-method", "http-1.2"],
)
def test_both_paths_refuse_other_versions_and_unknown_methods(servers, line: bytes, status: bytes, text: bytes):
    """llhttp reads an "HTTP/2.0" or "HTTP/0.9" request line as it does 1.1: 505 (RFC 9112 §2.3); a method it
    does not know is a 501 (RFC 9110 §9.1); each after the answer to the request before it, then closed."""
    before = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    message = line + b"\r\nHost: y\r\n\r\n"  # another Host than the request before: the head is checked again
    for url, first in itertools.product(servers, (False, True)):
        received, closed = exchange(int(url.rsplit(":", 1)[1]), message if first else before + message)
        answers = received.split(b"HTTP/1.1 ")[1:]
        assert closed and len(answers) == 2 - first, (url, received[:400])
        assert first or answers[0].startswith(b"200 OK"), (url, answers[0][:200])
        assert answers[-1].startswith(status) and answers[-1].endswith(text), (url, answers[-1][:200])


def test_both_paths_answer_413_to_a_head_declaring_too_long_a_body_before_it_arrives(store, servers) -> None:
    """The answer leaves when the head arrives (the client need not send a megabyte to learn it). It says
    Connection: close (RFC 9110 §10.1.1): what the client still sends is read and dropped for a few
    seconds (a lingering close), never taken for the next request, never awaited for good."""
    _, ca = store
    size = 1_000_000
    get = b"GET /ocsp/" + base64.b64encode(request(ca, 1)).replace(b"/", b"%2F") + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    answers = []
    for url in servers:
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5) as sock:
            sock.sendall(b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
            [(head, body)] = read_answers(sock, 1)  # nothing of the body sent yet
            assert head.startswith(b"HTTP/1.1 413 "), (url, head)
            assert b"\r\nconnection: close" in head, (url, head)
            sock.sendall(b"0" * 100_000 + get)  # part of the body, then a request: neither is answered
            assert sock.recv(65536) == b"", url  # closed in order (a reset would raise)
        answers.append((head.split(b"\r\n", 1)[0], body))
    assert answers[0] == answers[1]


@pytest.mark.parametrize(
    ("coding", "status"),
    [(b"gzip, chunked", b"501 "), (b"gz\xe9, chunked", b"501 "), (b"Chunked", b"400 "), (b" chunked ", b"400 ")],
    ids=["gzip-then-chunked", "obs-text-then-chunked", "chunked-any-case", "chunked-with-spaces"],
)
def test_both_paths_refuse_a_transfer_coding_other_than_chunked(servers, coding: bytes, status: bytes) -> None:
    """llhttp passes 'gzip, chunked' (chunked last): the body would reach OCSP still gzip'd. RFC 9112 §6.1:
    a coding the server does not implement is a 501. Chunked alone is read (here a malformed request: 400)."""
    message = b"POST /ocsp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + coding + b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    answers = []
    for url in servers:
        received, _ = exchange(int(url.rsplit(":", 1)[1]), message)
        assert received.startswith(b"HTTP/1.1 " + status), (url, received[:300])
        answers.append(received.split(b"\r\n", 1)[0] + received[received.index(b"\r\n\r\n") :])
    assert answers[0] == answers[1]
    if status == b"501 ":  # the value as sent, escaped: the refusal's text is ASCII
        said = f"transfer coding {coding.decode('latin-1')!a} not implemented (only chunked)."
        assert answers[0].endswith(said.encode())
