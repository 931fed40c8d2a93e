"""The edge's HTTP/1.1 connections: uvicorn's httptools protocol, bounded in size and time.

uvicorn with httptools bounds neither a request's head nor the time a connection may take to send one
(measured on one edge worker: a 1 GB header block took 1.2 GB of its memory; a 200 MB URL sent in pieces
took 21 s of its CPU, every other client waiting; a connection that sent nothing, or half a request,
stayed open for good). Every connection of the edge, on either port and either path, gets here:

- a bound on a request's head (request line and headers, ``edge.max_head_bytes``): past it the request
  is answered 414 (the URL alone is past it) or 431 and the connection closed. It is counted for each
  read a head does not end in, so a head that arrives whole in one read (at most what the event loop
  reads at once, 256 kB) is not refused: memory and time stay bounded either way;
- one timer per connection, every keep-alive timeout: a connection silent for a whole period with no
  request in progress is closed (keep-alive); a request still incomplete at two checks in a row (after
  one to two periods) is answered 408 and the connection closed;
- a refusal (those and uvicorn's 400 for a request it cannot parse) is followed by a lingering close
  (RFC 9112 §9.6): the write side is shut and what the client still sends is read and dropped for up
  to ``LINGER_SECONDS``, so that it reads the answer instead of a connection reset;
- the ASGI ``tls`` scope extension on TLS connections (uvicorn verifies a client certificate but does
  not pass it on);
- one valid ``Host`` header (RFC 9112 §3.2: none in HTTP/1.1, several or an invalid one are a 400,
  with the connection closed); a request line of HTTP/2.0 or HTTP/0.9, which llhttp reads, is a 505
  (checked with the Host: for the connection's first request, and whenever its Host changes); a
  method llhttp does not know is a 501, and so is a transfer coding other than chunked (llhttp passes
  ``gzip, chunked``);
- an ``Upgrade`` (``h2c``, which curl --http2 and Java's HTTP clients offer; WebSocket, which the edge
  does not serve) is declined as RFC 9110 §7.8 allows: the request is served as HTTP/1.1. llhttp stops at the end of
  such a head, body unread (uvicorn then lost the body and the rest of the connection: its issue
  #2722), so the head is given again, without its Upgrade header, to a new parser, followed by
  what came after it.

A request's head is "in progress" while ``url`` holds anything: uvicorn's parser callbacks fill it, and
this protocol empties it when the head is complete. After it, a field is a trailer (dropped, counted).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import ssl
import time
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from contract.config import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEAD_BYTES
from edge.answer import render_head
from edge.throttled_log import ThrottledLog

LINGER_SECONDS = 5.0
# The longest request target httptools.parse_url splits (uvicorn's, for the ASGI scope).
MAX_PARSED_URL_BYTES = 65535
# RFC 9110 §7.2: Host = uri-host [ ":" port ], uri-host an IP-literal (with an RFC 6874 zone, "%25…"),
# an IPv4 address or a reg-name (which may be empty).
_HOST = re.compile(
    rb"(?:\[[0-9A-Za-z:._~!$&'()*+,;=%-]+\]|(?:[0-9A-Za-z._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?"
)
# Host values already found valid: a server hears the same few again and again, and a set lookup costs
# a tenth of the pattern. Bounded: past it, new names are checked each time.
VALID_HOSTS: set[bytes] = set()
MAX_VALID_HOSTS = 1024


def valid_host(value: bytes) -> bool:
    if _HOST.fullmatch(value) is None:
        return False
    if len(VALID_HOSTS) < MAX_VALID_HOSTS:
        VALID_HOSTS.add(value)
    return True


# What a request's second Host header leaves, and what no request's Host equals before one was found
# valid on a connection: no valid Host holds a NUL (llhttp refuses one anyway). Two values, so that a
# connection's first request with two Host headers is not taken for a valid one.
REPEATED_HOST = b"\x00repeated"
_NO_VALID_HOST = b"\x00none"


class BadRequest(Exception):
    """Raised by a parser callback for a request llhttp accepts and HTTP does not: answered 400."""

    status = 400


class TrailersTooLarge(BadRequest):
    """Trailer fields past the head's bound (they are dropped, not kept: counted all the same)."""

    status = 431


class VersionNotSupported(BadRequest):
    """A request line of an HTTP version other than 1.x (RFC 9112 §2.3)."""

    status = 505


class CodingNotImplemented(BadRequest):
    """A transfer coding other than chunked, which llhttp passes when chunked comes last (RFC 9112 §6.1)."""

    status = 501


def check_transfer_coding(value: bytes, parser: httptools.HttpRequestParser) -> None:
    """Only chunked: a body also gzip'd (say) would reach the application still compressed. And not in
    HTTP/1.0, which has none: RFC 9112 §6.1 has such a message's framing treated as faulty."""
    if value.strip(b" \t").lower() != b"chunked":
        raise CodingNotImplemented(f"transfer coding {value.decode('latin-1')!a} not implemented (only chunked)")
    if parser.get_http_version() == "1.0":
        raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")


_HTTP_1 = ("1.1", "1.0")


@functools.cache  # one per logger: for an application that has no refusal_log of its own
def _refusal_log(logger: logging.Logger) -> ThrottledLog:
    return ThrottledLog(logger, time.monotonic)


class EarlyClosingCycle(RequestResponseCycle):
    """uvicorn's request-response cycle, but an answer begun before its request's body has arrived whole
    (a 401, 405 or 413 that reads no body, an Expect: 100-continue left unanswered) says Connection:
    close (RFC 9110 §10.1.1: the client may not know whether the rest would be read) and ends in a
    lingering close: reading the rest of a body a client trickles would keep the connection for good.
    """

    close_lingering: Any  # the protocol's, set with the class
    closing = False

    async def send(self, message: Any) -> None:
        if not self.response_started:
            if self.more_body and not self.disconnected:
                self.closing = True
                self.keep_alive = False  # uvicorn adds "connection: close"
        elif self.closing and not message.get("more_body", False):
            # Answered whole: the protocol closes it lingering, with nothing after it (uvicorn would
            # close at once, and then start what was pipelined behind it).
            self.keep_alive = True
            self.on_response = self.close_lingering
        await super().send(message)


class EdgeHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_head_bytes: int = getattr(self.app, "max_head_bytes", DEFAULT_MAX_HEAD_BYTES)
        # What may be read of a request after its head: its body (the largest any endpoint reads; each
        # refuses past its own) and the framing around it (chunk lines, extensions, trailers).
        self.max_body_read = self.max_head_bytes + getattr(self.app, "max_body_bytes", DEFAULT_MAX_BODY_BYTES)
        # One for all of a worker's connections (the app's): a flood of bad requests is one line a minute.
        self._refusal_log: ThrottledLog = getattr(self.app, "refusal_log", None) or _refusal_log(self.logger)
        self.url = b""
        self.headers = []
        self._tls_extension: dict[str, Any] | None = None
        self._counted_head: list[tuple[bytes, bytes]] | None = None  # the headers list of the head counted
        self._head_bytes = 0
        self._counted_body: list[tuple[bytes, bytes]] | None = None  # the same, for what follows the head
        self._body_bytes = 0
        self._counted_trailers: list[tuple[bytes, bytes]] | None = None  # and for the trailer fields
        self._trailer_bytes = 0
        self._active = False  # data arrived since the timer's last check
        self._incomplete_at_check: list[tuple[bytes, bytes]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._refusal: bytes | None = None  # written once the answers under way are
        self._host: bytes | None = None  # the Host of the request being read (REPEATED_HOST: two came)
        self._valid_host = _NO_VALID_HOST  # the last one found valid on this connection
        self._running: RequestResponseCycle | None = None  # the ASGI cycle started last

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer = self.loop.call_later(self.timeout_keep_alive, self._check)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            peer = ssl_object.getpeercert(binary_form=True)
            self._tls_extension = {
                "server_cert": None,
                "client_cert_chain": [ssl.DER_cert_to_PEM_cert(peer)] if peer else [],
                "client_cert_name": None,
                "client_cert_error": None,
                "tls_version": None,
                "cipher_suite": None,
            }

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        # uvicorn tells only its newest cycle, which is not the running one when requests were pipelined
        # behind it: the running one would write to the closed transport (a traceback in the log).
        running = self._running
        if running is not None and not running.response_complete:
            running.disconnected = True
            running.message_event.set()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    # Flow control. uvicorn stops writing answers while the transport holds more than its high-water mark
    # (the client does not read them), but goes on reading requests: pipelined ones pile up as queued
    # cycles, and the fast lane's answers in the transport (measured: a client sending GETs and reading
    # nothing took a worker from 50 MB to 430 MB in 6 s). A client is read only as fast as it reads.

    def pause_writing(self) -> None:
        super().pause_writing()
        self.flow.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._may_read():
            self.flow.resume_reading()

    def _may_read(self) -> bool:
        """Reading may go on: nothing refused or queued, no answer awaited but one still reading its body
        below uvicorn's own bound on what it buffers."""
        if self._refusal is not None or self.pipeline or self.flow.write_paused:
            return False
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return True
        return cycle.more_body and len(cycle.body) <= HIGH_WATER_LIMIT

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        self._active = True
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._invalid_request(exc)
            return
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade(data, upgrade.args[0])
            return
        if self.url:
            self._head_grew(data)
        else:
            cycle = self.cycle
            if cycle is not None and cycle.more_body and not cycle.response_complete:  # inside a body
                self._body_grew(data)

    def _invalid_request(self, exc: httptools.HttpParserError) -> None:
        """A request llhttp refused, or one a callback did (BadRequest): 400 (or the callback's status, or
        501 for a method llhttp does not know: RFC 9110 §9.1), and the connection closed."""
        cause = exc.__context__
        if isinstance(cause, BadRequest):
            self._refuse(
                cause.status, f"Invalid HTTP request received: {cause}." if cause.status == 400 else f"{cause}."
            )
        elif isinstance(exc, httptools.HttpParserInvalidMethodError):
            self._refuse(501, "Method not implemented.")
        elif isinstance(cause, httptools.HttpParserInvalidURLError) and len(self.url) > MAX_PARSED_URL_BYTES:
            # A head that came whole in one read is not refused for its size, but httptools cannot
            # split a target this long for ASGI (its offsets are 16-bit): too long, not invalid.
            self._refuse(414, "Request target too long.")
        else:
            self._refuse(400, "Invalid HTTP request received.")

    def _should_upgrade(self) -> bool:
        """Never: the edge serves no WebSocket (uvicorn runs with ws "none"). Every upgrade is declined, as
        RFC 9110 §7.8 allows, and the request served as HTTP/1.1."""
        return False

    def _upgrade(self, data: bytes, offset: int) -> None:
        """llhttp stopped at ``offset``, the end of a head asking for an upgrade: declined."""
        while True:
            if self.parser.get_method() == b"CONNECT":  # llhttp hands over every CONNECT: no header to drop
                self._refuse(501, "CONNECT is not supported.")
                return
            rest = len(data) - offset
            data = self._without_upgrade(data, offset)
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                self._invalid_request(exc)
                return
            except httptools.HttpParserUpgrade as upgrade:  # a later request in the same read asks again
                offset = upgrade.args[0]
                if offset <= len(data) - rest:  # not later: the request given again asks again (never loop)
                    self._refuse(400, "Unsupported upgrade request.")
                    return
                continue
            if self.url:
                self._head_grew(data)
            return

    def _without_upgrade(self, data: bytes, offset: int) -> bytes:
        """The declined request's head again, without its Upgrade header, and what followed it, for a new parser.

        Rebuilt from what the parser read of it (names lower-cased, values as sent), which llhttp has
        already checked: the same request, bounded as the first reading was.
        """
        parser = self.parser
        lines = [b"%s %s HTTP/%s\r\n" % (parser.get_method(), self.url, parser.get_http_version().encode())]
        lines += [b"%s: %s\r\n" % header for header in self.headers if header[0] != b"upgrade"]
        lines.append(b"\r\n")
        self._next_message()
        self.parser = httptools.HttpRequestParser(self)
        return b"".join(lines) + data[offset:]

    def _next_message(self) -> None:
        """What a request's callbacks fill, emptied for the next one."""
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._host = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._host = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.url:  # the head is complete: a trailer field
            self.on_trailer(name, value)
            return
        super().on_header(name, value)
        lowered = self.headers[-1][0]
        if lowered == b"host":
            self._host = value if self._host is None else REPEATED_HOST
        elif lowered == b"transfer-encoding":
            check_transfer_coding(value, self.parser)

    def check_head(self) -> None:
        """BadRequest unless the request is HTTP/1.x with one valid Host header (or none, in HTTP/1.0).

        Called when its Host is not the one last found valid on the connection (a comparison of
        bytes is cheaper than anything else per request): the version is checked with it, once
        per connection as clients send it.
        """
        version = self.parser.get_http_version()
        if version not in _HTTP_1:  # llhttp reads "HTTP/2.0" and "HTTP/0.9" request lines as well
            raise VersionNotSupported(f"HTTP/{version} is not supported")
        host = self._host
        if host is None:
            if version == "1.0":
                return
        elif host in VALID_HOSTS or valid_host(host.strip(b" \t")):  # REPEATED_HOST is not; llhttp keeps trailing OWS
            self._valid_host = host
            return
        raise BadRequest("missing, repeated or invalid Host header")

    def on_headers_complete(self) -> None:
        if self._host != self._valid_host:
            self.check_head()
        if self.expect_100_continue:
            self.ignore_expect_from_http_1_0()
        if self.parser.should_upgrade():
            return  # declined: served once it is given again without the upgrade (_without_upgrade)
        if self._tls_extension is not None:
            self.scope["extensions"] = {"tls": self._tls_extension}  # type: ignore[dict-item]
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not before and cycle is not None:
            cycle.__class__ = EarlyClosingCycle
            cycle.close_lingering = self._close_after_answer  # type: ignore[attr-defined]
        self.url = b""

    def ignore_expect_from_http_1_0(self) -> None:
        """RFC 9110 §10.1.1: a server MUST ignore a 100-continue expectation received in an HTTP/1.0
        request (and §15.2: never send a 1xx to an HTTP/1.0 client)."""
        if self.parser.get_http_version() == "1.0":
            self.expect_100_continue = False

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade():
            return  # declined: it has no cycle (on_headers_complete), and is read again
        super().on_message_complete()

    def _head_grew(self, data: bytes) -> None:
        """A read ended inside a request's head: count it, and refuse the request past the bound."""
        if self.headers is not self._counted_head:
            # The first read this head does not end in may hold earlier requests too: what is known
            # to be this head's is counted.
            self._counted_head = self.headers
            self._head_bytes = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
        else:
            self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            if len(self.url) > self.max_head_bytes:
                self._refuse(414, "Request target too long.")
            else:
                self._refuse(431, "Request head too large.")

    def on_trailer(self, name: bytes, value: bytes) -> None:
        """Trailer fields (after a chunked body) are dropped, as RFC 9112 §7.1.2 allows: nothing here reads
        them, and uvicorn would add them to the request's headers (RFC 9110 §6.5.1: never merged unless
        known safe). They count against the head's bound (RFC 9110 §6.5 lets a recipient limit them)."""
        if self._counted_trailers is not self.headers:
            self._counted_trailers = self.headers
            self._trailer_bytes = 0
        self._trailer_bytes += len(name) + len(value) + 4
        if self._trailer_bytes > self.max_head_bytes:
            raise TrailersTooLarge("trailer fields past the bound")

    def _body_grew(self, data: bytes) -> None:
        """A read ended inside a request's body (or its trailers): count it, and refuse past the bound.

        The first such read may hold earlier requests and the head: it is not counted."""
        if self.headers is not self._counted_body:
            self._counted_body = self.headers
            self._body_bytes = 0
        else:
            self._body_bytes += len(data)
            if self._body_bytes > self.max_body_read:
                self._refuse(413, "Request content too large.")

    def _request_incomplete(self) -> bool:
        """A request has begun to arrive and has not arrived whole."""
        cycle = self.cycle
        return bool(self.url) or (cycle is not None and cycle.more_body and not cycle.response_complete)

    def _check(self) -> None:
        """The connection's timer, every keep-alive timeout (see the module docstring)."""
        incomplete = self._request_incomplete()
        if incomplete and self.headers is self._incomplete_at_check:
            self._timer = None
            self._refuse(408, "Request not received in time.")
            return
        self._incomplete_at_check = self.headers if incomplete else None
        busy = self.cycle is not None and not self.cycle.response_complete
        if self._active or busy or incomplete:
            self._active = False
            self._timer = self.loop.call_later(self.timeout_keep_alive, self._check)
            return
        self._timer = None
        self.timeout_keep_alive_handler()

    def _refuse(self, status: int, text: str) -> None:
        """Answer ``status`` and close; after the answers already under way when there are some."""
        self._refusal_log.log(logging.WARNING, status, f"{text} ({status})")
        # Nothing more of this connection is parsed, even if uvicorn resumes reading (its receive()
        # does, for an application waiting on a request before the refused one).
        self.parser = _Refused()  # type: ignore[assignment]
        self.url = b""
        self.flow.pause_reading()
        cycle = self.cycle
        reading = cycle is not None and not cycle.response_complete and cycle.more_body
        if reading and cycle.response_started:
            self.transport.close()  # its answer is under way: cut short, the application sees a disconnect
            return
        body = text.encode("ascii")
        head = [
            *self.server_state.default_headers,
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
        ]
        self._refusal = STATUS_LINE[status] + render_head(head) + b"\r\n" + body
        if reading:  # the application waits for a body that will not come whole: it sees a disconnect
            assert cycle is not None
            cycle.disconnected = True  # what it still sends is dropped: the refusal is the answer
            cycle.message_event.set()
            self._send_refusal()
        elif cycle is None or cycle.response_complete:
            self._send_refusal()

    def on_response_complete(self) -> None:
        if self._refusal is not None and not self.pipeline:  # the requests before the refused one are answered
            self.server_state.total_requests += 1
            self._send_refusal()
            return
        super().on_response_complete()  # resumes reading, starts the next queued cycle
        if self._refusal is not None or self.pipeline or self.flow.write_paused:
            # The refused head is read no further; while cycles are queued, or answers not read, no more
            # requests are read (uvicorn would read on after each answer, queueing a read's worth).
            self.flow.pause_reading()

    def _close_after_answer(self) -> None:
        """An answer given before its request arrived whole is out: close, lingering (EarlyClosingCycle)."""
        self.server_state.total_requests += 1
        self.pipeline.clear()
        self._write_and_close(b"")

    def _send_refusal(self) -> None:
        assert self._refusal is not None
        refusal, self._refusal = self._refusal, None
        self._write_and_close(refusal)

    def send_400_response(self, msg: str) -> None:  # uvicorn's, for a request it cannot parse
        self._refuse(400, msg)

    def _write_and_close(self, data: bytes) -> None:
        """Write a last answer, then hand the connection to a lingering close."""
        transport = self.transport
        if transport.is_closing():
            return
        self._stop_timer()
        self.connections.discard(self)  # uvicorn's server no longer waits for it: the lingering is bounded
        transport.write(data)
        if transport.can_write_eof():  # not over TLS: the answer is followed by a close_notify there
            transport.write_eof()
        transport.set_protocol(_Lingering(transport, self.loop))
        transport.resume_reading()


class _Refused:
    """The parser of a connection whose next request was refused: what arrives is dropped."""

    def feed_data(self, data: bytes) -> None:
        pass


class _Lingering(asyncio.Protocol):
    """Reads and drops what a refused client still sends, until it closes or LINGER_SECONDS pass."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._timer = loop.call_later(LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        self._timer.cancel()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
