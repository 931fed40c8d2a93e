"""The OCSP fast lane: uvicorn's httptools protocol answering OCSP without an ASGI cycle.

uvicorn stays the server (sockets, workers, signals, keep-alive, limits) and
Starlette still serves everything else; only OCSP GET, HEAD and POST are
answered straight from the parser callbacks, through the very methods of
``edge.app.OCSPApp`` the ASGI path uses, so both give identical answers. Per
request this skips the scope dict, the task, the event and the receive/send
round trips that cost more than the OCSP answer itself.

Enabled with ``uvicorn --http edge.fastlane:OCSPHttpToolsProtocol`` (what
``pki-edge edge`` passes). Anything unusual (an upgrade, a pipelined request
behind a running ASGI cycle, ``Expect: 100-continue``) goes the ASGI way.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from edge.answer import Answer, LiveSigning
from edge.app import OCSPApp

_OCSP_METHODS = frozenset({b"GET", b"HEAD", b"POST"})


class TlsScopeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the ASGI ``tls`` scope extension on TLS connections.

    uvicorn verifies the client certificate (``ssl_cert_reqs``) but does not pass it to the
    application; this adds ``scope["extensions"]["tls"]`` as the ASGI TLS extension defines it
    (``client_cert_chain`` as PEM strings, the leaf first; ``tls_version``; ``cipher_suite``).
    """

    _tls_extension: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
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

    def on_headers_complete(self) -> None:
        if self._tls_extension is not None:
            self.scope["extensions"] = {"tls": self._tls_extension}  # type: ignore[dict-item]
        super().on_headers_complete()


class OCSPHttpToolsProtocol(TlsScopeProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        ocsp = getattr(self.app, "ocsp", None)
        self._ocsp: OCSPApp | None = ocsp if isinstance(ocsp, OCSPApp) else None
        self._fast = False
        self._fast_method = b""
        self._fast_body: list[bytes] = []
        self._fast_size = 0
        self._fast_early: Answer | LiveSigning | None = None
        self._backlog: collections.deque[tuple[Answer | LiveSigning, bool, bool]] | None = None

    def on_headers_complete(self) -> None:
        ocsp = self._ocsp
        parser = self.parser
        method = parser.get_method()
        if (
            ocsp is None
            or method not in _OCSP_METHODS
            or self.expect_100_continue
            or parser.should_upgrade()
            or (self.cycle is not None and not self.cycle.response_complete)
        ):
            self._fast = False
            super().on_headers_complete()
            return
        url = self.url
        query = url.find(b"?")
        raw_path = url if query < 0 else url[:query]
        if not raw_path.startswith(b"/") or not ocsp.serves(raw_path):
            self._fast = False
            super().on_headers_complete()
            return
        self._fast = True
        self._fast_method = method
        if method == b"POST":
            self._fast_body = []
            self._fast_size = 0
            self._fast_early = ocsp.check_post_headers(self.headers)
        else:
            self._fast_early = ocsp.answer_get(method.decode(), raw_path, self.headers)

    def on_body(self, body: bytes) -> None:
        if not self._fast:
            super().on_body(body)
            return
        if self._fast_early is None:
            assert self._ocsp is not None
            self._fast_size += len(body)
            if self._fast_size > self._ocsp.max_request_bytes:
                self._fast_early = self._ocsp.too_large  # stop buffering; answer once the body ends
                self._fast_body = []
            else:
                self._fast_body.append(body)

    def on_message_complete(self) -> None:
        if not self._fast:
            super().on_message_complete()
            return
        self._fast = False
        assert self._ocsp is not None
        found = self._fast_early
        if found is None:
            found = self._ocsp.answer_post(b"".join(self._fast_body))
            self._fast_body = []
        keep_alive = self.parser.should_keep_alive() and self.parser.get_http_version() != "1.0"
        if self._backlog is None and isinstance(found, Answer):
            self._write(found, keep_alive)
            return
        # A multi-CertID request waits for the signer workers; answers after it keep their order.
        if self._backlog is None:
            self._backlog = collections.deque()
            self.flow.pause_reading()
            self.loop.create_task(self._drain())
        self._backlog.append((found, self._fast_method == b"HEAD", keep_alive))

    async def _drain(self) -> None:
        assert self._ocsp is not None and self._backlog is not None
        while self._backlog:
            found, head, keep_alive = self._backlog.popleft()
            answer = await self._ocsp.live(found, head=head) if isinstance(found, LiveSigning) else found
            if self.transport.is_closing():
                break
            self._write(answer, keep_alive)
        self._backlog = None
        self.flow.resume_reading()

    def _write(self, answer: Answer, keep_alive: bool) -> None:
        parts = [STATUS_LINE[answer.status]]
        for name, value in self.server_state.default_headers:
            parts += (name, b": ", value, b"\r\n")
        for name, value in answer.headers:
            parts += (name, b": ", value, b"\r\n")
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        parts.append(answer.body)
        transport = self.transport
        transport.write(b"".join(parts))
        self.server_state.total_requests += 1
        if not keep_alive:
            transport.close()
            return
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
