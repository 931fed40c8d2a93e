"""The edge's ASGI application.

OCSP is served by a raw ASGI class (no Request object, no router on the hot
path); Starlette serves everything else (health, readiness, lifespan). The
store is opened by each worker after it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from contract.config import Config, data_dir_from, load_config
from contract.jobs import LiveOcspJob, OcspSigned, Refused, socket_path
from edge.answer import NO_CONDITIONS, Answer, Conditional, LiveSigning, OCSPAnswerer, conditional_of, render_head
from edge.clock import Clock, WholeSecondClock
from edge.est import EstService, RateLimiter
from edge.get_path import GetPaths
from edge.jobqueue import JobQueue, QueueError, UnixSocketQueue
from edge.later import after, later_on_running_loop
from edge.metrics import CounterMetrics, Metrics
from edge.ocsp_request import MalformedRequest, ServedRequests
from edge.source import READ_SNAPSHOT_SECONDS, FreshnessPolicy, LmdbSource, read_only_store
from edge.throttled_log import ThrottledLog
from edge.tls_trust import ClientTrust

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ALLOW = (b"allow", b"GET, HEAD, POST")
_FRAGMENT = ord("#")
STARLETTE_PATHS = frozenset({"/healthz", "/readyz"})
# Health is now or never: a cache in front (Varnish keeps what says nothing for 120 s) would show a
# monitor the state of minutes ago.
_NOT_STORED = {"cache-control": "no-store"}
STARLETTE_RAW_PATHS = frozenset(p.encode() for p in STARLETTE_PATHS)
_LONGEST_STARLETTE_PATH = max(map(len, STARLETTE_RAW_PATHS))


class OCSPApp:
    """Raw ASGI OCSP endpoint for GET, HEAD and POST under every configured prefix."""

    def __init__(
        self,
        answerer: OCSPAnswerer,
        prefixes: list[str],
        max_request_bytes: int,
        not_ocsp: tuple[str, ...] = (),
        queue: JobQueue | None = None,
        live_inflight: int = 16,
        live_timeout: float = 10.0,
    ) -> None:
        self._answerer = answerer
        self._queue = queue
        self._live_slots = asyncio.Semaphore(live_inflight)
        self._live_timeout = live_timeout
        self._not_ocsp = tuple(p.encode() for p in not_ocsp)
        self._not_ocsp_initials = frozenset(p[1] for p in self._not_ocsp if len(p) > 1)
        self._paths = GetPaths((p.encode() for p in prefixes), max_request_bytes)
        self._served = ServedRequests(max_request_bytes)
        self._max = max_request_bytes
        self.method_not_allowed = Answer(405, render_head([ALLOW, (b"content-length", b"0")]), b"")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        found: Answer | LiveSigning
        if method == "GET" or method == "HEAD":
            raw_path = scope.get("raw_path") or scope["path"].encode()
            found = self.answer_get(raw_path, conditional_of(scope["headers"]), method == "HEAD")
        elif method == "POST":
            found = self.check_post_headers(scope["headers"]) or await self._post(receive)
        else:
            found = self.method_not_allowed
        answer = await self.live(found, head=method == "HEAD") if isinstance(found, LiveSigning) else found
        await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
        await send({"type": "http.response.body", "body": answer.body})

    # The methods below are the whole OCSP-over-HTTP logic, shared with the fast lane
    # (edge.fastlane) so that both paths give byte-identical answers.

    def answer_get(self, raw_path: bytes, conditional: Conditional, head: bool) -> Answer | LiveSigning:
        """GET or HEAD: decode the request from the raw path; HEAD drops the body, keeps the headers.

        ``conditional``: the request's validators (``conditional_of`` its headers).
        """
        answer: Answer | LiveSigning
        common = self._paths.common_request(raw_path)
        if common is not None:
            answer = self._answerer.answer_cert_id(common[0], common[1], conditional)
        else:
            try:
                der = self._paths.der(raw_path)
            except MalformedRequest:
                if _FRAGMENT in raw_path:  # invalid in a request target; uvicorn's path for ASGI drops it
                    return self.answer_get(raw_path[: raw_path.find(b"#")], conditional, head)
                answer = self._answerer.malformed
            else:
                answer = self._answerer.answer_der(der, conditional)
        if head and isinstance(answer, Answer):
            return Answer(answer.status, answer.head, b"")
        return answer

    def serve_issuers(self, issuer_parts: Iterable[bytes]) -> None:
        """The issuer parts served now: their common requests are found without parsing (GET and POST)."""
        parts = list(issuer_parts)
        self._paths.serve_issuers(parts)
        self._served.serve_issuers(parts)

    def check_post_headers(self, headers: list[tuple[bytes, bytes]]) -> Answer | None:
        """An early answer for a POST whose declared length is invalid or too large, else None.

        The ASGI path's: it then reads no body. The fast lane counts the body as it comes instead
        (edge.fastlane), which gives the same answers.
        """
        for name, value in headers:
            if name == b"content-length":
                if not value.isdigit():
                    return self._answerer.malformed
                if int(value) > self._max:
                    return self._answerer.too_large
        return None

    def answer_post(self, body: bytes) -> Answer | LiveSigning:
        if len(body) > self._max:
            return self._answerer.too_large
        common = self._served.read(body)
        if common is not None:
            return self._answerer.answer_cert_id(common[0], common[1], NO_CONDITIONS)
        return self._answerer.answer_der(body)

    async def live(self, signing: LiveSigning, *, head: bool = False) -> Answer:
        """Have the signer workers sign a multi-CertID response; bounded, never waiting for a slot."""
        if self._queue is None or self._live_slots.locked():
            return self._answerer.try_later
        async with self._live_slots:
            try:
                result = await self._queue.submit(LiveOcspJob(signing.certs), self._live_timeout)
            except QueueError:
                return self._answerer.try_later
        if isinstance(result, OcspSigned):
            answer = self._answerer.live_signed(result.der)
            return Answer(answer.status, answer.head, b"") if head else answer
        if isinstance(result, Refused):
            return self._answerer.unauthorized
        return self._answerer.try_later

    @property
    def max_request_bytes(self) -> int:
        return self._max

    @property
    def too_large(self) -> Answer:
        return self._answerer.too_large

    def serves(self, path: bytes) -> bool:
        """True for every path OCSP answers: all but health, readiness and EST."""
        # Cheap tests first, for the hot path: no OCSP request is as short as a health path (so a
        # long path is not hashed), and a path can be under an EST prefix only if it starts alike.
        if len(path) <= _LONGEST_STARLETTE_PATH:
            return path not in STARLETTE_RAW_PATHS
        return path[1] not in self._not_ocsp_initials or not path.startswith(self._not_ocsp)

    async def _post(self, receive: Receive) -> Answer | LiveSigning:
        chunks = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return self._answerer.malformed
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max:
                return self._answerer.too_large
            chunks.append(chunk)
            more = message.get("more_body", False)
        return self.answer_post(b"".join(chunks))


class EdgeApp:
    """Sends OCSP straight to ``OCSPApp``; health, readiness and lifespan to Starlette."""

    def __init__(
        self,
        ocsp: OCSPApp,
        starlette: Starlette,
        client_trust: ClientTrust,
        max_head_bytes: int,
        max_body_bytes: int,
        refusal_log: ThrottledLog,
    ) -> None:
        self.ocsp = ocsp  # also reached by the fast lane (edge.fastlane)
        self._starlette = starlette
        self.client_trust = client_trust  # the HTTPS port's ssl_context_factory (edge.main)
        self.max_head_bytes = max_head_bytes  # read by the HTTP protocol (edge.http_protocol)
        self.max_body_bytes = max_body_bytes  # and this: the largest body any of its endpoints reads
        self.refusal_log = refusal_log  # so is this: the refused requests of all its connections

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.ocsp.serves(scope.get("raw_path") or scope["path"].encode()):
            await self.ocsp(scope, receive, send)
        else:
            await self._starlette(scope, receive, send)


STORE_CHECK_SECONDS = 1.0


async def _watch_store(source: LmdbSource) -> None:
    """Notice within a second, off the hot path, a store replaced under this worker (a restored backup)
    and a registry change: the TLS layer then trusts a new or renewed CA's client certificates before
    any request of this worker has read the registry (a handshake comes before the request)."""
    while True:
        await asyncio.sleep(STORE_CHECK_SECONDS)
        source.follow_store()


def build_app(
    source: LmdbSource,
    config: Config,
    clock: Clock,
    metrics: Metrics,
    logger: logging.Logger,
    queue: JobQueue | None = None,
) -> EdgeApp:
    """The edge application. Without a ``queue`` (tests of OCSP alone), EST answers 503."""
    answerer = OCSPAnswerer(
        FreshnessPolicy(source),
        clock,
        metrics,
        logger,
        retry_after_seconds=config.edge.retry_after_seconds,
        overdue_max_age_seconds=config.edge.overdue_max_age_seconds,
        max_age_seconds=config.edge.max_age_seconds,
        locate=source.cert_ref,
    )

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n", headers=_NOT_STORED)

    async def readyz(request: Request) -> Response:
        source.reopen_if_replaced()
        if not source.open():
            return JSONResponse({"ready": False, "reason": source.why_closed}, status_code=503, headers=_NOT_STORED)
        source.refresh_issuers()
        now = clock.now()
        newest = source.newest_signed_at()
        age = None if newest is None else max(0, now - newest)
        backlog = source.signer_backlog(now)
        body = {
            "ready": True,
            "issuers": source.issuer_count,
            "newest_response_age_seconds": age,
            "signer_backlog": None if backlog is None else backlog._asdict(),
            "unsignable_cas": source.unsignable_cas(),
        }
        return JSONResponse({**body, "counters": metrics.snapshot()}, headers=_NOT_STORED)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not source.open() and not source.refused:  # a refused store was said, with why
            logger.warning("store not created yet: answering tryLater until it is")
        # What start-up made lives as long as the worker: keep the collector from walking it again
        # and again (in an EST storm gc took 9 % of the edge's CPU, 4 % with this).
        gc.freeze()
        watch = asyncio.create_task(_watch_store(source))
        yield
        watch.cancel()

    est = EstService(
        source,
        config,
        queue or UnixSocketQueue(Path("/nonexistent"), 0, logger),
        logger,
        RateLimiter(config.est.rate_per_minute, config.est.rate_burst),
    )
    starlette = Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), *est.routes()],
        lifespan=lifespan,
    )
    starlette.router.redirect_slashes = False
    ocsp = OCSPApp(
        answerer,
        config.edge.ocsp_prefixes,
        config.edge.max_request_bytes,
        # A fragment (invalid, but uvicorn drops it for ASGI) after a health path keeps it Starlette's.
        not_ocsp=(*(prefix + "/" for prefix in config.est.prefixes), *(path + "#" for path in sorted(STARLETTE_PATHS))),
        queue=queue,
        live_inflight=config.workers.live_ocsp_max_inflight,
        live_timeout=config.est.job_timeout_seconds,
    )
    # After start too: a CA added later is found by its first request, the general way (edge.source).
    source.on_registry_change(lambda _: ocsp.serve_issuers(source.served_issuer_parts()))
    extra_trust = [path for path in (config.est.client_ca, config.est.ra_trust_anchors) if path]
    refusal_log = ThrottledLog(logger, time.monotonic)
    max_body = max(config.edge.max_request_bytes, config.est.max_body_bytes)
    trust = ClientTrust(source, extra_trust, logger)
    return EdgeApp(ocsp, starlette, trust, config.edge.max_head_bytes, max_body, refusal_log)


def create_app(config: Config | None = None) -> EdgeApp:
    """uvicorn factory: each worker process builds its app from the environment (or the given config)."""
    data_dir = data_dir_from(os.environ.get("PKI_EDGE_DATA"))
    logger = logging.getLogger("pki_edge.edge")
    config = config or load_config(data_dir)
    source = LmdbSource(read_only_store(data_dir, config.store.map_size_mb << 20), logger, after(READ_SNAPSHOT_SECONDS))
    queue = UnixSocketQueue(socket_path(data_dir), config.est.max_inflight, logger)
    return build_app(source, config, WholeSecondClock(later_on_running_loop), CounterMetrics(), logger, queue)
