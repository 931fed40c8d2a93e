"""The OCSP fast lane: uvicorn's httptools protocol answering OCSP without an ASGI cycle.

uvicorn stays the server (sockets, workers, signals, keep-alive, limits) and
Starlette still serves everything else; only OCSP GET, HEAD and POST are
answered straight from the parser callbacks, through the very methods of
``edge.app.OCSPApp`` the ASGI path uses, so both give identical answers. Per
request this skips the scope dict, the task, the event and the receive/send
round trips that cost more than the OCSP answer itself.

Answers are not written at once but gathered and written together when the
event loop has handed out everything it read in this turn (``WriteBatch``):
one turn serves many connections, and writing their answers back to back
costs the kernel far fewer wake-ups of the waiting clients than writing each
between two Python request handlers (measured: +50 % requests per CPU-second
under load). An answer waits at most for the other requests of the same turn.

Enabled with ``uvicorn --http edge.fastlane:OCSPHttpToolsProtocol`` (what
``pki-edge edge`` passes). Its connections are bounded in size and time as every connection of the
edge is (``edge.http_protocol``, whose hot methods it inlines). Anything unusual (an upgrade, a pipelined request
behind a running ASGI cycle or a live-signed answer, ``Expect: 100-continue``)
goes the ASGI way, queued by uvicorn behind what is running: answers on a
connection always leave in the order of the requests.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from edge.answer import CONDITIONAL_HEADERS, NO_CONDITIONS, Answer, LiveSigning, conditional_of, render_head
from edge.app import OCSPApp
from edge.http_protocol import REPEATED_HOST, EdgeHttpProtocol, check_transfer_coding

_OCSP_METHODS = frozenset({b"GET", b"HEAD", b"POST"})
# On the hot path, bytes are searched with an int (a byte search) and compared by slices: `bytes in
# bytes` first fails as an integer, and bytes.startswith parses its arguments as a tuple (Python 3.11).
_QUERY = ord("?")
_CLOSE = b"connection: close\r\n\r\n"
# The header names the fast lane acts on: one set lookup a header, not a comparison with each.
_CONNECTION_HEADERS = frozenset({b"connection", b"proxy-connection"})
_NOTED_HEADERS = _CONNECTION_HEADERS | CONDITIONAL_HEADERS | {b"expect", b"host", b"transfer-encoding"}
# A POST answered 413 before its body arrived: the body is then read and dropped.
_WRITTEN = object()


class WriteBatch:
    """Answers of one event-loop turn, written (and their connections closed) in order at its end."""

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WriteBatch]] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[tuple[asyncio.Transport, bytes, bool]] = []
        self._flush = self.flush  # bound once, not once per turn

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> WriteBatch:
        batch = cls._by_loop.get(loop)
        if batch is None:
            batch = cls._by_loop[loop] = cls(loop)
        return batch

    def write(self, transport: asyncio.Transport, data: bytes, close: bool) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)  # runs once the loop has dispatched this turn's reads
        self._pending.append((transport, data, close))

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for transport, data, close in pending:
            if transport.is_closing():  # the client went away meanwhile
                continue
            transport.write(data)
            if close:
                transport.close()


class _LiveInFlight:
    """What uvicorn looks at on a running ASGI cycle, for a live-signed OCSP answer in flight."""

    def __init__(self) -> None:
        self.response_complete = False
        self.response_started = False
        self.more_body = False  # the request arrived whole
        self.keep_alive = True  # uvicorn's graceful shutdown sets it to False
        self.disconnected = False
        self.message_event = asyncio.Event()


class OCSPHttpToolsProtocol(EdgeHttpProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        ocsp = getattr(self.app, "ocsp", None)
        self._ocsp: OCSPApp | None = ocsp if isinstance(ocsp, OCSPApp) else None
        self._fast = False
        self._fast_method = b""
        # A POST's body: its first read as it is (one read holds most bodies whole: no list, no join),
        # the reads after it as a list joined once. At most max_request_bytes of it is kept.
        self._fast_body = b""
        self._fast_pieces: list[bytes] | None = None
        self._fast_size = 0
        self._max_body = self._ocsp.max_request_bytes if self._ocsp is not None else 0
        self._fast_early: Answer | LiveSigning | object | None = None
        self._length_checked = False  # a POST's declared length, searched for (_post_body_pending)
        self._connection_header = False
        self._conditional = False
        self._default_headers: list[tuple[bytes, bytes]] | None = None
        self._default_block = b""
        self._batch = WriteBatch.of(self.loop)
        self._next_message()

    def data_received(self, data: bytes) -> None:
        # EdgeHttpProtocol's, without a call layer per request: uvicorn's keep-alive timer is armed
        # only after an ASGI answer. Keep alike with it.
        self._active = True
        if self.timeout_keep_alive_task is not None:
            self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._invalid_request(exc)
            return
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade(data, upgrade.args[0])
            return
        if self.url:  # a read ended inside a request's head
            self._head_grew(data)
        elif self._fast:  # inside a POST's body
            self._post_body_pending(data)

    def _post_body_pending(self, data: bytes) -> None:
        """A read ended inside a POST's body: past the limit already (on_body's count), or declaring a
        length past it, it is answered 413 now, as the ASGI path answers, and the connection closed
        lingering (EarlyClosingCycle says why): not once it has all come. Else the read is counted
        (EdgeHttpProtocol._body_grew: chunk lines and trailers are bounded too).

        Only then are the headers searched for a declared length (3k instructions): a POST's body mostly
        comes with its head, and a body past the limit is refused by on_body's count all the same.
        """
        assert self._ocsp is not None
        early = self._fast_early
        if early is None and not self._length_checked:
            self._length_checked = True  # once a request, not once a read
            early = self._ocsp.check_post_headers(self.headers)
        if isinstance(early, Answer):
            self._fast_early = _WRITTEN
            self._fast_body, self._fast_pieces = b"", None
            self._write(early, False, lingering=True)
        elif early is None:
            self._body_grew(data)

    def shutdown(self) -> None:
        self._batch.flush()  # answers of this turn go out before a graceful shutdown closes connections
        super().shutdown()

    # uvicorn builds the ASGI scope when a message begins; the fast lane needs none, so it is built in
    # on_headers_complete only for requests that go the ASGI way. What a message reads is reset when
    # the one before it completes instead: httptools makes no callback that is None (one less a request).
    on_message_begin = None  # type: ignore[assignment]

    def _next_message(self) -> None:
        super()._next_message()
        self._connection_header = False
        self._conditional = False

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's, noting what the fast lane acts on. A Connection header: only with one (llhttp
        # reads Proxy-Connection as one too) can an HTTP/1.0 request ask to be kept alive or upgrade,
        # so only then are the version and the upgrade flag read (httptools formats the version as a
        # str each time). Validators: only then are the headers searched for them. Host: kept, and
        # checked once the head is complete (EdgeHttpProtocol.check_head). After the head: a trailer.
        if not self.url:
            self.on_trailer(name, value)
            return
        name = name.lower()
        if name in _NOTED_HEADERS:
            if name == b"host":
                self._host = value if self._host is None else REPEATED_HOST
            elif name in _CONNECTION_HEADERS:
                self._connection_header = True
            elif name == b"expect":
                if value.lower() == b"100-continue":
                    self.expect_100_continue = True
            elif name == b"transfer-encoding":
                check_transfer_coding(value, self.parser)
            else:
                self._conditional = True
        self.headers.append((name, value))

    def _to_asgi(self) -> None:
        self._fast = False
        url, headers, expect, host = self.url, self.headers, self.expect_100_continue, self._host
        super().on_message_begin()
        self.url, self.headers, self.expect_100_continue, self._host = url, headers, expect, host
        self.scope["headers"] = headers
        super().on_headers_complete()

    def on_headers_complete(self) -> None:
        if self._host != self._valid_host:
            self.check_head()
        if self.expect_100_continue:
            self.ignore_expect_from_http_1_0()
        ocsp = self._ocsp
        parser = self.parser
        method = parser.get_method()
        if (
            ocsp is None
            or method not in _OCSP_METHODS
            or self.expect_100_continue
            or (self.cycle is not None and not self.cycle.response_complete)
            or (self._connection_header and parser.should_upgrade())  # llhttp upgrades only with one
        ):
            self._to_asgi()  # an upgrade too: declined, it is read again without it
            return
        url = self.url
        raw_path = url[: url.find(b"?")] if _QUERY in url else url
        if raw_path[:1] != b"/" or not ocsp.serves(raw_path):  # absolute-form: uvicorn finds the path
            self._to_asgi()
            return
        self.url = b""  # the head is complete
        self._fast = True
        self._fast_method = method
        if method == b"POST":
            self._fast_size = 0
            self._length_checked = False
            # Not OCSPApp.check_post_headers (3k instructions a POST): llhttp refuses an invalid or
            # repeated Content-Length before this, and on_body's count answers a body over the limit
            # as the declared length would (at once when the body does not come with the head:
            # _post_body_pending).
            self._fast_early = None
        else:
            conditional = conditional_of(self.headers) if self._conditional else NO_CONDITIONS
            self._fast_early = ocsp.answer_get(raw_path, conditional, method == b"HEAD")

    def on_body(self, body: bytes) -> None:
        if not self._fast:
            super().on_body(body)
            return
        if self._fast_early is None:
            size = self._fast_size + len(body)
            self._fast_size = size
            if size > self._max_body:
                assert self._ocsp is not None
                # Stop buffering. Answered at once when the read ends inside the body, else as it ends.
                self._fast_early = self._ocsp.too_large
                self._fast_body, self._fast_pieces = b"", None
            elif size == len(body):
                self._fast_body = body
            elif self._fast_pieces is None:
                self._fast_pieces = [self._fast_body, body]
            else:
                self._fast_pieces.append(body)

    def on_message_complete(self) -> None:
        if not self._fast:
            super().on_message_complete()
            if not self.parser.should_upgrade():  # a declined upgrade was emptied as it is read again
                self._next_message()
            return
        self._fast = False
        found = self._fast_early
        if found is None:
            assert self._ocsp is not None
            if self._fast_pieces is None:
                found = self._ocsp.answer_post(self._fast_body)
            else:
                found = self._ocsp.answer_post(b"".join(self._fast_pieces))
                self._fast_pieces = None
            self._fast_body = b""
        # As uvicorn decides for ASGI answers: never kept alive after HTTP/1.0.
        parser = self.parser
        keep_alive = parser.should_keep_alive() and (not self._connection_header or parser.get_http_version() != "1.0")
        # _next_message's resets, inline (its call cost 0.6k instructions a request): keep them alike
        # (the URL was emptied when the head was complete)
        self.expect_100_continue = False
        self.headers = []
        self._host = None
        self._connection_header = False
        self._conditional = False
        if isinstance(found, Answer):
            self._write(found, keep_alive)
            return
        if found is _WRITTEN:
            return
        assert isinstance(found, LiveSigning)
        # A multi-CertID request waits for the signer workers. Until it is answered, a stand-in for
        # a running ASGI cycle makes every later request on this connection wait in uvicorn's own
        # pipeline, so the answers keep their order whichever path serves them.
        in_flight = _LiveInFlight()
        self.cycle = in_flight  # type: ignore[assignment]
        self.flow.pause_reading()
        self.loop.create_task(self._answer_live(found, self._fast_method == b"HEAD", keep_alive, in_flight))

    async def _answer_live(self, found: LiveSigning, head: bool, keep_alive: bool, in_flight: _LiveInFlight) -> None:
        assert self._ocsp is not None
        answer = await self._ocsp.live(found, head=head)
        if self.transport.is_closing():
            return
        keep_alive = keep_alive and in_flight.keep_alive  # a graceful shutdown may have cleared it
        self._write(answer, keep_alive)
        in_flight.response_complete = True
        if not keep_alive:
            return
        if self._refusal is not None and not self.pipeline:  # a head after it was refused
            self._send_refusal()
            return
        if self._may_read():
            self.flow.resume_reading()
        if self.pipeline:  # what arrived meanwhile, in order (uvicorn queues with appendleft)
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)

    def _write(self, answer: Answer, keep_alive: bool, lingering: bool = False) -> None:
        """Gather the answer into this turn's writes; ``lingering``: write it now and close lingering."""
        state = self.server_state
        if state.default_headers is not self._default_headers:  # uvicorn renews the list (date) every second
            self._default_headers = state.default_headers
            self._default_block = render_head(state.default_headers)
        state.total_requests += 1
        if keep_alive:
            data = b"".join((STATUS_LINE[answer.status], self._default_block, answer.head, b"\r\n", answer.body))
            self._batch.write(self.transport, data, False)
            return
        data = b"".join((STATUS_LINE[answer.status], self._default_block, answer.head, _CLOSE, answer.body))
        if lingering:
            self._write_and_close(data)
        else:
            self._batch.write(self.transport, data, True)

    def _write_and_close(self, data: bytes) -> None:
        self._batch.flush()  # the answers gathered in this turn first: they may be this connection's
        super()._write_and_close(data)

    def _request_incomplete(self) -> bool:
        return self._fast or super()._request_incomplete()
