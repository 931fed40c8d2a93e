"""Bounds on a request's size and time, alike on both paths (real servers and sockets; in process with
a short keep-alive for the timers)."""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import subprocess
import time

import pytest
from cryptography.x509 import ocsp

from contract.config import DEFAULT_MAX_HEAD_BYTES
from edge.fastlane import OCSPHttpToolsProtocol
from edge.http_protocol import MAX_PARSED_URL_BYTES, EdgeHttpProtocol
from tests.edge.edges import InProcessEdge, port_of, read_answers, request, run

BIG = 1 << 20  # past the bound, and past what one read takes (256 kB)
PIECE = 16384
PROTOCOLS = pytest.mark.parametrize("protocol_class", [OCSPHttpToolsProtocol, EdgeHttpProtocol], ids=["fast", "asgi"])


def ocsp_get_path(ca, serial: int = 1) -> bytes:
    return b"/ocsp/" + base64.b64encode(request(ca, serial)).replace(b"/", b"%2F").replace(b"+", b"%2B")


def send_then_read(port: int, pieces: list[bytes]) -> tuple[bytes, bool]:
    """Send every piece (the server may refuse before the last: it reads on), then read to the end.

    Returns what came back and whether it ended in an orderly close (not a connection reset)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            s.sendall(piece)
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
        except ConnectionResetError:
            return received, False
    return received, True


def header_lines(total: int) -> list[bytes]:
    line = b"X-Filler: " + b"f" * 1000 + b"\r\n"
    return [line * (PIECE // len(line))] * (total // PIECE)


OVERSIZED = {
    # what is sent before the head would end, in pieces; the status it earns
    "request target": ([b"GET /ocsp/" + b"M" * (PIECE - 10)] + [b"A" * PIECE] * (BIG // PIECE), b"414"),
    "header lines": ([b"GET /healthz HTTP/1.1\r\nHost: x\r\n", *header_lines(BIG)], b"431"),
    "one header": ([b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "] + [b"v" * PIECE] * (BIG // PIECE), b"431"),
}


@pytest.mark.parametrize("kind", OVERSIZED)
def test_both_paths_refuse_an_oversized_head_and_let_the_client_read_why(servers, kind: str) -> None:
    pieces, status = OVERSIZED[kind]
    for url in servers:
        received, orderly = send_then_read(port_of(url), [*pieces, b"\r\n\r\n"])
        assert received.startswith(b"HTTP/1.1 " + status), (url, received[:200])
        assert b"\r\nconnection: close\r\n" in received
        assert orderly, url  # the refusal was read in full, then the connection closed (RFC 9112 §9.6)


@pytest.mark.parametrize("length", [MAX_PARSED_URL_BYTES + 1, DEFAULT_MAX_HEAD_BYTES + 500])
def test_both_paths_answer_414_to_a_target_too_long_to_split_in_one_read(servers, length: int) -> None:
    """A head arriving whole is read whatever its size (the bound counts reads it does not end in), but
    a target past 64 KiB cannot be split for ASGI: 414, not a 400 that says it is invalid."""
    target = b"/healthz?" + b"A" * (length - 9)
    for url in servers:
        received, orderly = send_then_read(port_of(url), [b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"])
        assert received.startswith(b"HTTP/1.1 414 "), (url, received[:200])
        assert orderly


def test_both_paths_answer_a_head_under_the_bound_arriving_in_pieces(store, servers) -> None:
    _, ca = store
    head = b"GET " + ocsp_get_path(ca) + b" HTTP/1.1\r\nHost: x\r\n" + b"".join(header_lines(3 * PIECE)) + b"\r\n"
    assert 40000 < len(head) < DEFAULT_MAX_HEAD_BYTES
    for url in servers:
        with socket.create_connection(("127.0.0.1", port_of(url)), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for start in range(0, len(head), 1000):
                s.sendall(head[start : start + 1000])
                time.sleep(0.001)
            ((answer_head, body),) = read_answers(s, 1)
        assert answer_head.startswith(b"HTTP/1.1 200 OK"), (url, answer_head)
        assert ocsp.load_der_ocsp_response(body).serial_number == 1


def test_an_oversized_head_is_refused_after_the_answers_of_the_requests_before_it(store, servers) -> None:
    _, ca = store
    answered = b"GET " + ocsp_get_path(ca) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    for url in servers:
        pieces = [answered + b"GET /healthz HTTP/1.1\r\nHost: x\r\n", *header_lines(BIG), b"\r\n"]
        received, orderly = send_then_read(port_of(url), pieces)
        first, _, rest = received.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200 OK"), (url, received[:300])
        length = int(first.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert ocsp.load_der_ocsp_response(rest[:length]).serial_number == 1
        assert rest[length:].startswith(b"HTTP/1.1 431"), (url, rest[length:][:100])
        assert orderly


def test_an_oversized_head_behind_a_live_signed_request_is_refused_after_its_answer(store, servers) -> None:
    """Several CertIDs go to the signer workers (none run here: tryLater once the queue fails); the
    oversized head sent behind that request is refused once its answer is out."""
    from asn1crypto import ocsp as asn1_ocsp

    _, ca = store
    one, two = (asn1_ocsp.OCSPRequest.load(request(ca, serial)) for serial in (1, 2))
    requests = [one["tbs_request"]["request_list"][0], two["tbs_request"]["request_list"][0]]
    several = asn1_ocsp.OCSPRequest({"tbs_request": {"request_list": requests}}).dump()
    live = b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(several), several)
    for url in servers:
        # Live and the refused head together: both are read before the live answer is out.
        pieces = [live + b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(header_lines(8 * PIECE)), b"\r\n"]
        received, orderly = send_then_read(port_of(url), pieces)
        first, _, rest = received.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 503"), (url, received[:300])
        assert rest.startswith(bytes.fromhex("30030a0103"))
        assert rest[5:].startswith(b"HTTP/1.1 431"), (url, rest[:100])
        assert orderly


def test_curl_sees_431_for_headers_past_the_bound(servers, tmp_path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    for lines, status in ((40, "200"), (500, "431")):  # 40 kB, and 500 kB (curl sends at most 1 MB)
        headers = tmp_path / f"headers-{lines}.txt"
        headers.write_bytes(b"".join(b"X-Filler-%d: %s\n" % (n, b"f" * 1000) for n in range(lines)))
        for url in servers:
            out = subprocess.run(
                [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"@{headers}", url + "/healthz"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.stdout == status, (url, lines, out.stdout, out.stderr)


# ---------------------------------------------------------------------------- timers (keep-alive 0.3 s)
KEEP_ALIVE = 0.3
SLACK = 0.4  # a loaded machine is late, never early...
TICK = 0.005  # ...but for the event loop's timer granularity (libuv rounds to the millisecond)


async def _closed_after(port: int, sent: list[bytes], every: float) -> tuple[float, bytes]:
    """Send the pieces ``every`` seconds apart (the last one again and again); how long until the
    server closed the connection, and what it sent."""
    loop = asyncio.get_running_loop()
    started = loop.time()  # before connecting: the server's timer starts when it accepts, maybe before we resume
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    reading = asyncio.ensure_future(reader.read())
    index = 0
    while not reading.done() and sent and loop.time() < started + 3:
        writer.write(sent[min(index, len(sent) - 1)])
        index += 1
        await asyncio.wait([reading], timeout=every)
    received = await asyncio.wait_for(reading, 5)
    closed = loop.time() - started
    writer.close()
    return closed, received


@PROTOCOLS
def test_a_connection_that_sends_nothing_is_closed_after_one_keep_alive_timeout(app, protocol_class) -> None:
    async def scenario() -> tuple[float, bytes]:
        server, port = await InProcessEdge(app, KEEP_ALIVE, protocol_class).serve()
        result = await _closed_after(port, [], 0)
        server.close()
        return result

    closed, received = run(scenario())
    assert received == b""
    assert KEEP_ALIVE - TICK <= closed < KEEP_ALIVE + SLACK, closed


@PROTOCOLS
@pytest.mark.parametrize(
    ("pieces", "every"),
    [
        ([b"GET /healthz HTTP/1.1\r\nHost: x\r\n"], 3.0),  # half a head, then silence
        ([b"GET /healthz HTTP/1.1\r\n", b"X"], 0.05),  # a header trickling for ever (slowloris)
    ],
    ids=["silent", "trickling"],
)
def test_a_head_not_complete_at_two_checks_is_answered_408(app, protocol_class, pieces, every) -> None:
    async def scenario() -> tuple[float, bytes]:
        server, port = await InProcessEdge(app, KEEP_ALIVE, protocol_class).serve()
        result = await _closed_after(port, pieces, every)
        server.close()
        return result

    closed, received = run(scenario())
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), received
    assert b"\r\nconnection: close\r\n" in received
    # Incomplete at two checks one keep-alive timeout apart: after one period at the earliest.
    assert KEEP_ALIVE - TICK <= closed < 2 * KEEP_ALIVE + SLACK, closed


@PROTOCOLS
def test_a_body_trickling_for_ever_is_cut_off(app, protocol_class) -> None:
    """408 on both paths: the fast lane reads an OCSP POST body itself; on the ASGI path the application
    is already reading it, and sees a disconnect (what it would still send is dropped)."""
    head = b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"

    async def scenario() -> tuple[float, bytes]:
        server, port = await InProcessEdge(app, KEEP_ALIVE, protocol_class).serve()
        result = await _closed_after(port, [head, b"0"], 0.05)
        server.close()
        return result

    closed, received = run(scenario())
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), received
    assert received.count(b"HTTP/1.1 ") == 1, received
    assert KEEP_ALIVE - TICK <= closed < 2 * KEEP_ALIVE + SLACK, closed


async def _sent_in_pieces(edge: InProcessEdge, pieces: list[bytes]) -> tuple[bytes, int]:
    """Send the pieces (as the edge takes them, until it has closed), then read to the end: what came
    back, and the peak of memory allocated meanwhile (tracemalloc: both ends, in this process)."""
    import tracemalloc

    server, port = await edge.serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    tracemalloc.start()
    for piece in pieces:
        if reader.at_eof():
            break
        writer.write(piece)
        await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    writer.close()
    server.close()
    return answer, peak


@PROTOCOLS
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_post_body_past_the_limit_is_counted_not_kept(app, protocol_class, framing: str) -> None:
    """Answered 413 once past the limit (edge.max_request_bytes), the connection closed lingering: no more
    than the limit of it was held."""

    size = 4 * BIG
    if framing == "chunked":
        head = b"POST /ocsp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        pieces = [b"%x\r\n%s\r\n" % (PIECE, b"0" * PIECE)] * (size // PIECE) + [b"0\r\n\r\n"]
    else:
        head = b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
        pieces = [b"0" * PIECE] * (size // PIECE)

    answer, peak = run(_sent_in_pieces(InProcessEdge(app, 5.0, protocol_class), [head, *pieces]))
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert peak < size // 4, peak  # pieces in flight and the limit's 10 kB, not the body


@PROTOCOLS
def test_idle_connections_close_between_one_and_two_keep_alive_timeouts(store, app, protocol_class):
    _, ca = store
    der = request(ca, 1)
    post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(der), der)
    edge = InProcessEdge(app, KEEP_ALIVE, protocol_class)

    async def answer(reader, writer) -> bytes:
        writer.write(post)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        return head

    async def scenario() -> tuple[float, float, bool]:
        loop = asyncio.get_running_loop()
        server, port = await edge.serve()
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
        idle_since = loop.time()  # the server's last read is after this (its silence starts then)
        assert (await answer(idle_reader, idle_writer)).startswith(b"HTTP/1.1 200")

        async def closed_at() -> float:
            assert await idle_reader.read() == b""  # the server closed it
            return loop.time()

        watcher = asyncio.create_task(closed_at())
        # The busy connection asks every 0.1 s for about three keep-alive periods and stays open.
        busy_until = idle_since + 3 * KEEP_ALIVE
        while loop.time() < busy_until:
            await answer(busy_reader, busy_writer)
            await asyncio.sleep(0.1)
        idle_closed = await asyncio.wait_for(watcher, 5)
        busy_open = not busy_reader.at_eof()
        for w in (idle_writer, busy_writer):
            w.close()
        server.close()
        return idle_since, idle_closed, busy_open

    idle_since, idle_closed, busy_open = run(scenario())
    assert busy_open
    # Closed after one keep-alive period of silence at the earliest, two at the latest.
    assert KEEP_ALIVE - TICK <= idle_closed - idle_since < 2 * KEEP_ALIVE + SLACK, idle_closed - idle_since


@PROTOCOLS
def test_a_websocket_upgrade_is_declined_and_the_connection_timed_as_any(app, protocol_class) -> None:
    """The edge serves no WebSocket: the request is answered as HTTP/1.1 (RFC 9110 §7.8), and its
    connection closes after a keep-alive timeout like any other (before, uvicorn handed it to its
    WebSocket protocol, which answered 403 with an empty reason phrase)."""
    upgrade = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )

    async def scenario() -> tuple[float, bytes]:
        server, port = await InProcessEdge(app, KEEP_ALIVE, protocol_class).serve()
        result = await _closed_after(port, [upgrade], 3.0)
        server.close()
        return result

    closed, received = run(scenario())
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"\r\n\r\nok\n"), received
    assert KEEP_ALIVE - TICK <= closed < 2 * KEEP_ALIVE + SLACK, closed


@PROTOCOLS
@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # RFC 9110 §10.1.1: an HTTP/1.0 request's 100-continue is ignored, no 1xx is sent (§15.2)
        (b"POST /ocsp HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc", b"HTTP/1.1 400 "),
        # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing
        (
            b"POST /ocsp HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\n",
        ),
    ],
    ids=["expect", "transfer-encoding"],
)
def test_http_1_0_gets_no_interim_answer_and_no_chunked_framing(app, protocol_class, message, expected) -> None:
    async def scenario() -> bytes:
        server, port = await InProcessEdge(app, 5.0, protocol_class).serve()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(message)
        received = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        server.close()
        return received

    received = run(scenario())
    assert received.startswith(expected), received
    assert b"100 Continue" not in received, received
    if b"Transfer-Encoding" in message:
        assert received.endswith(b"Transfer-Encoding in an HTTP/1.0 request."), received


# ---------------------------------------------------------------------------- answers before the body
EARLY = {
    # a request whose answer needs none of its body, sent without it; the status it earns
    "OCSP POST declaring too much": (b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n", b"413"),
    "POST to a health check": (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", b"405"),
    "EST over plain HTTP": (  # from no trusted proxy: refused before its CSR is read
        b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/pkcs10\r\n"
        b"Content-Length: 1000\r\n\r\n",
        b"403",
    ),
    "Expect: 100-continue, not given": (
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n",
        b"405",
    ),
}


async def _answered_then_dropped(port: int, head: bytes) -> tuple[bytes, float, float]:
    """Send ``head``, read the answer to the server's end of sending; then trickle a byte every 50 ms
    until the server's socket is gone. What came, when it ended, when the trickle was refused."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    received = await asyncio.wait_for(reader.read(), 5)  # up to the server's FIN
    answered = loop.time() - started
    try:
        while loop.time() < started + 5:
            writer.write(b"0")
            await writer.drain()
            await asyncio.sleep(0.05)
    except (ConnectionResetError, BrokenPipeError):
        pass
    writer.close()
    return received, answered, loop.time() - started


@PROTOCOLS
@pytest.mark.parametrize("kind", EARLY)
def test_an_answer_before_the_body_says_close_and_stops_reading_a_trickle(app, protocol_class, kind, monkeypatch):
    """RFC 9110 §10.1.1: an answer sent before the content was read says whether the connection closes.
    It does, lingering (RFC 9112 §9.6): the client reads the answer and the server's end of sending at
    once; what it still sends (a byte every 50 ms, for ever) is dropped until the lingering time ends."""
    from edge import http_protocol

    monkeypatch.setattr(http_protocol, "LINGER_SECONDS", 0.5)
    head, status = EARLY[kind]

    async def scenario() -> tuple[bytes, float, float]:
        server, port = await InProcessEdge(app, 5.0, protocol_class).serve()
        result = await _answered_then_dropped(port, head)
        server.close()
        return result

    received, answered, refused = run(scenario())
    assert received.startswith(b"HTTP/1.1 " + status + b" "), received
    assert b"\r\nconnection: close\r\n" in received.split(b"\r\n\r\n", 1)[0] + b"\r\n", received
    assert received.count(b"HTTP/1.1 ") == 1, received  # no 100 Continue, no second answer (408)
    assert answered < SLACK, answered
    assert 0.5 - TICK <= refused < 0.5 + SLACK + 0.2, refused


def test_both_paths_answer_a_body_that_has_come_and_keep_the_connection(store, servers) -> None:
    """An early answer closes only when the body is still to come: the same requests, bodies sent
    with them, are answered and the connection kept (as an EST client's 401, then its retry, would be)."""
    _, ca = store
    get = ocsp_get_path(ca)
    for kind in ("POST to a health check", "EST over plain HTTP"):
        head, status = EARLY[kind]
        body = b"0" * int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        for url in servers:
            with socket.create_connection(("127.0.0.1", port_of(url)), timeout=10) as s:
                s.sendall(head + body + b"GET " + get + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                (first, _), (second, _) = read_answers(s, 2)
            assert first.startswith(b"HTTP/1.1 " + status) and b"connection: close" not in first, (url, first)
            assert second.startswith(b"HTTP/1.1 200 OK"), (url, second)


def test_both_paths_read_a_client_no_faster_than_it_reads_its_answers(store, servers) -> None:
    """A client pipelining GETs and reading nothing: once its answers fill the transport, the edge stops
    reading it, and the client's sending stalls (before, the edge read on: its memory grew by 60 MB/s).
    What it may send is the kernel's buffers' worth and the requests whose answers fill them."""
    _, ca = store
    requests = (b"GET " + ocsp_get_path(ca) + b" HTTP/1.1\r\nHost: x\r\n\r\n") * 1000
    for url in servers:
        with socket.create_connection(("127.0.0.1", port_of(url)), timeout=1.0) as s:
            sent, deadline = 0, time.monotonic() + 20
            try:
                while time.monotonic() < deadline:
                    sent += s.send(requests)
            except TimeoutError:
                pass  # a second without room to send anything: stalled
            assert time.monotonic() < deadline, (url, sent)
            assert sent < 64 << 20, (url, sent)
            # It is answered all the same, in order, once it reads.
            s.settimeout(10)
            answers = read_answers(s, 10)
        assert all(head.startswith(b"HTTP/1.1 200 OK") for head, _ in answers), url


# ---------------------------------------------------------------------------- after the head: trailers, framing
CHUNKED_POST = b"POST /ocsp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"


@PROTOCOLS
@pytest.mark.parametrize(
    ("after_last_chunk", "status"),
    [
        ([b"X-Trailer: " + b"t" * 200 + b"\r\n"] * 400, b"431"),  # trailer lines past the head's bound
        ([b"X-Endless: "] + [b"a" * PIECE] * 256, b"413"),  # one trailer line that never ends
    ],
    ids=["many-trailers", "endless-trailer"],
)
def test_trailers_past_the_bound_are_refused_not_kept(app, protocol_class, after_last_chunk, status) -> None:
    """Before, every trailer field was kept (a worker grew by 330 MB/s); now they count against the bound
    of a head, and what follows a head against the largest body plus that bound."""
    answer, peak = run(_sent_in_pieces(InProcessEdge(app, 5.0, protocol_class), [CHUNKED_POST, *after_last_chunk]))
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:200]
    assert b"\r\nconnection: close\r\n" in answer
    assert peak < 2_000_000, peak  # both ends of the connection: the server's part is the bound's


@PROTOCOLS
def test_trailer_fields_never_reach_the_application_as_headers(protocol_class) -> None:
    """RFC 9110 §6.5.1: a trailer field is not merged into the header section (uvicorn appended them to
    the scope's headers, where an application reading them after the body would find them)."""

    async def echo_headers(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        names = b",".join(name for name, _ in scope["headers"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(names))]})
        await send({"type": "http.response.body", "body": names})

    trailers = b"Client-Cert: :forged:\r\nX-Trailer: 1\r\n\r\n"

    async def scenario() -> bytes:
        server, port = await InProcessEdge(echo_headers, 5.0, protocol_class).serve()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(CHUNKED_POST + trailers)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        writer.close()
        server.close()
        return head + body

    answer = run(scenario())
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer
    assert answer.endswith(b"\r\n\r\nhost,transfer-encoding"), answer
