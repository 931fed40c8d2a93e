"""EST (RFC 7030 with RFC 8951): the HTTP endpoints of the edge.

The edge authenticates and authorises, decodes and checks the request, and
hands every signing job to the signer workers through the ``JobQueue``; it
never holds a CA key. Errors are one line of plain text with the status the
issue and RFC 7030 give; a client's mistake is never a 5xx.

Served under each configured prefix (``/.well-known/est`` and Lamassu's
``/api/devmanager/.well-known/est``), with and without a CA label.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import math
import os
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from contract import jobs
from contract.config import Config
from contract.store import IssuerRecord, RaRecord
from edge import est_auth
from edge.est_codec import (
    EST_PKCS7_CONTENT_TYPE,
    EstBodyError,
    base64_body,
    certs_only,
    csrattrs_der,
    decode_csr,
    est_response_headers,
    serverkeygen_multipart,
)
from edge.fair_slots import FairSlots, TooManyWaiting
from edge.jobqueue import JobQueue, QueueError
from edge.source import LmdbSource, Unavailable

_DER = Encoding.DER
OPERATIONS = frozenset({"cacerts", "simpleenroll", "simplereenroll", "serverkeygen", "csrattrs", "fullcmc"})
POST_OPERATIONS = frozenset({"simpleenroll", "simplereenroll", "serverkeygen", "fullcmc"})
# RFC 7030 §4.4.1.1 and §4.4.1.2: the client asks for its server-generated key encrypted (id-aa-decryptKeyID,
# id-aa-asymmDecryptKeyID). Not supported here: refused rather than answered with the key in the clear.
_KEY_ENCRYPTION_REQUESTS = frozenset(
    {x509.ObjectIdentifier("1.2.840.113549.1.9.16.2.37"), x509.ObjectIdentifier("1.2.840.113549.1.9.16.2.54")}
)
# Password checks (Argon2, memory-hard) at once per edge worker, and how many one address may have waiting.
KDF_SLOTS = 2
MAX_KDF_WAITING_PER_ADDRESS = 8
_HTTP_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"]  # RFC 9110 §9 and PATCH


def lower_own_priority(steps: int) -> None:
    """Lower the calling thread's scheduling priority by ``steps`` nice steps (19 at most).

    Linux keeps a nice value per thread, and threads a thread starts inherit it. Lowering is always
    allowed; where the system refuses anyway the thread stays as it is.
    """
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + steps))


def _shown(value: str) -> str:
    """A client's path segment quoted for an error line, cut short: it is echoed, not stored."""
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


class EstError(Exception):
    """Ends a request with ``status`` and a one-line plain-text ``message``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class RateLimiter:
    """Token buckets per client (certificate, user or address); bounded in memory."""

    def __init__(self, per_minute: int, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, client: str) -> bool:
        now = self._clock()
        tokens, last = self._buckets.get(client, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if len(self._buckets) > 100_000:  # forget idle clients rather than grow without bound
            self._buckets.clear()
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            return False
        self._buckets[client] = (tokens - 1, now)
        return True

    def exhausted(self, client: str) -> bool:
        """Whether ``allow`` would refuse ``client`` now (nothing is taken)."""
        found = self._buckets.get(client)
        if found is None:
            return self._burst < 1
        tokens, last = found
        return min(self._burst, tokens + (self._clock() - last) * self._rate) < 1

    def seconds_to_next(self, client: str) -> int:
        """Whole seconds until ``client`` has a token again (at least 1)."""
        found = self._buckets.get(client)
        if found is None or self._rate <= 0:
            return 1 if found is None else 60
        tokens = min(self._burst, found[0] + (self._clock() - found[1]) * self._rate)
        return max(1, math.ceil((1 - tokens) / self._rate))


class EstService:
    def __init__(
        self,
        source: LmdbSource,
        config: Config,
        queue: JobQueue,
        logger: logging.Logger,
        limiter: RateLimiter,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._source = source
        self._config = config
        self._est = config.est
        self._queue = queue
        self._logger = logger
        self._limiter = limiter
        self._now = now
        self._trusted = est_auth.TrustedProxies.parse(config.est.trusted_proxies)
        self._cert_header = config.est.client_cert_header.encode()
        # Memory-hard password checks: a few at a time, handed out in turn by address (edge.fair_slots),
        # on threads of their own at the signer workers' priority: argon2's threads (one per lane, made
        # anew for each pass) inherit it, and OCSP on this process's event loop keeps the core first
        # (at the loop's priority, a Basic enrollment every 0.66 s took OCSP's p99 from 0.35 to 9.3 ms).
        self._kdf_slots = FairSlots(KDF_SLOTS, MAX_KDF_WAITING_PER_ADDRESS)
        self._kdf_threads = ThreadPoolExecutor(
            KDF_SLOTS, "pki-edge-kdf", initializer=lower_own_priority, initargs=(config.workers.nice,)
        )
        # Checked once at startup: a bad csrattrs entry is a configuration error, not a request error.
        self._csrattrs = {name: csrattrs_der(profile.csrattrs) for name, profile in config.profiles.items()}
        self._ras: list[RaRecord] | None = None
        self._directory = est_auth.RaDirectory([])

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = []
        for prefix in self._est.prefixes:
            # Every method reaches the endpoint, which answers 405 with the operation's own Allow.
            routes.append(Route(prefix + "/{op}", self.endpoint, methods=_HTTP_METHODS))
            routes.append(Route(prefix + "/{label}/{op}", self.endpoint, methods=_HTTP_METHODS))
        return routes

    async def endpoint(self, request: Request) -> Response:
        try:
            return await self._dispatch(request)
        except EstError as exc:
            return self._error(exc)
        except EstBodyError as exc:
            return self._error(EstError(exc.status, str(exc)))
        except Unavailable:
            return self._error(self._busy("the certificate store is not ready"))

    def _error(self, exc: EstError) -> Response:
        if exc.status == 401:  # some clients fail on a body with the challenge
            return Response(b"", 401, headers=exc.headers)
        return PlainTextResponse(str(exc) + "\n", exc.status, headers=exc.headers)

    def _busy(self, why: str) -> EstError:
        return EstError(503, why, {"Retry-After": str(self._est.retry_after_seconds)})

    async def _dispatch(self, request: Request) -> Response:
        op = request.path_params["op"]
        label = request.path_params.get("label")
        if op not in OPERATIONS:
            raise EstError(404, f"unknown EST operation {_shown(op)}")
        allowed = "POST" if op in POST_OPERATIONS else "GET, HEAD"
        if request.method not in allowed.split(", "):
            raise EstError(405, f"{op} takes {allowed}", {"Allow": allowed})
        if not self._secure(request):
            raise EstError(403, "EST requires HTTPS (or a trusted TLS-terminating proxy)")
        if op == "fullcmc":
            raise EstError(501, "Full CMC is not supported by this server; use simpleenroll")
        client_cert = self._client_cert(request)
        if op == "simplereenroll":
            return await self._reenroll(request, label, client_cert)
        ca = self._ca(label)
        if op == "cacerts":
            return self._cacerts(ca)
        if op == "csrattrs":
            der = self._csrattrs.get(ca.name)
            if der is None:
                return Response(b"", 204)
            return _est_body(base64_body(der), "application/csrattrs")
        requester = await self._authorise_enrollment(request, ca, client_cert)
        self._rate_limit(requester)
        self._check_room()
        # The CSR's signature (proof of possession) is checked once, by the signer worker, before it
        # issues anything: not here as well, at the edge's priority, on the core OCSP needs.
        csr = decode_csr(await self._body(request), request.headers.get("content-type"), self._est.max_body_bytes)
        if op == "simpleenroll":
            result = await self._submit(jobs.EnrollJob(ca.name, _der(csr), requester))
            return self._certificate(result)
        if any(attribute.oid in _KEY_ENCRYPTION_REQUESTS for attribute in csr.attributes):
            raise EstError(400, "an encrypted server-generated key is not supported; ask for it without encryption")
        result = await self._submit(jobs.ServerKeygenJob(ca.name, _der(csr), requester))
        if not isinstance(result, jobs.IssuedWithKey):
            raise EstError(500, "unexpected answer from the signer")
        answer = _est_body(
            *serverkeygen_multipart(result.key_pkcs8_der, x509.load_der_x509_certificate(result.cert_der))
        )
        answer.headers["cache-control"] = "no-store"  # it holds a private key: never kept by a cache on the way
        return answer

    # --- pieces -------------------------------------------------------------------------------

    def _ra_directory(self) -> est_auth.RaDirectory:
        """Rebuilt only when the source reads the RAs again (a registry change), not per request."""
        ras = self._source.registration_authorities()
        if ras is not self._ras:
            self._ras, self._directory = ras, est_auth.RaDirectory(ras)
        return self._directory

    def _secure(self, request: Request) -> bool:
        if request.scope.get("scheme") == "https":
            return True
        client = request.client
        return client is not None and self._trusted.trusts(client.host)

    def _client_cert(self, request: Request) -> x509.Certificate | None:
        tls = request.scope.get("extensions", {}).get("tls") or {}
        chain = tls.get("client_cert_chain") or []
        tls_der = _pem_to_der(chain[0]) if chain else None
        client = request.client
        try:
            forwarded = est_auth.client_cert_from_forwarded(
                request.scope["headers"], client.host if client else None, self._trusted, self._cert_header
            )
        except est_auth.ForwardedCertError as exc:
            self._logger.warning("ignoring a forwarded client certificate: %s", exc)
            forwarded = None
        return est_auth.choose_client_cert(tls_der, forwarded)

    def _ca(self, label: str | None) -> IssuerRecord:
        self._source.refresh_issuers()
        issuers = self._source.issuers
        if label is None:
            label = self._est.default_label
            if label is None:
                if not issuers:
                    raise EstError(404, "no CA is configured")
                return min(issuers.values(), key=lambda record: record.number)
        if label.lower() in OPERATIONS or label not in issuers:
            raise EstError(404, f"unknown CA label {_shown(label)}")
        return issuers[label]

    def _cacerts(self, ca: IssuerRecord) -> Response:
        chain = [x509.load_der_x509_certificate(ca.cert_der)]
        parent = ca.parent
        while parent is not None and parent in self._source.issuers and len(chain) < 16:
            record = self._source.issuers[parent]
            chain.append(x509.load_der_x509_certificate(record.cert_der))
            parent = record.parent
        return _est_body(base64_body(certs_only(chain)), "application/pkcs7-mime")

    async def _authorise_enrollment(self, request: Request, ca: IssuerRecord, cert: x509.Certificate | None) -> str:
        """An RA authorised for this CA (by its certificate), or an EST user of this label (Basic)."""
        if cert is not None:
            decision = self._ra_directory().authorise(cert, ca.name, self._now(), self._source.is_revoked)
            if decision.authorised:
                return f"ra:{decision.ra}"
            if decision.ra is not None:  # a known RA, but not for this CA, or revoked/expired
                raise EstError(403, decision.reason or "not authorised")
        authorization = request.headers.get("authorization")
        if authorization is not None and self._secure(request):  # HTTPS here or at a trusted proxy
            # Wrong passwords are limited per address (each costs a memory-hard hash): one takes a
            # token of the address, and none is hashed while the address has none left (checked again
            # once a hashing slot is free, so that guesses sent at once wait and are refused). Right
            # ones take nothing of it: the users behind one address (a NAT, a proxy) are limited each
            # on their own, by the rate below.
            address = "basic:" + (request.client.host if request.client else "?")
            self._refuse_guesses_from(address)
            try:
                async with self._kdf_slots.slot(address):  # off the event loop
                    self._refuse_guesses_from(address)
                    user = await asyncio.get_running_loop().run_in_executor(
                        self._kdf_threads,
                        est_auth.verify_basic,
                        authorization.encode("latin-1"),
                        ca.name,
                        self._source.est_user,
                    )
            except TooManyWaiting:
                raise EstError(
                    429, "too many password checks from this address at once", {"Retry-After": "1"}
                ) from None
            if user is not None:
                return f"user:{ca.name}:{user}"
            self._limiter.allow(address)
            raise EstError(401, "", {"WWW-Authenticate": f'Basic realm="{ca.name}", charset="UTF-8"'})
        # Also with a certificate that is no RA's (from the TLS layer or a trusted proxy, where Basic is
        # accepted): HTTP authentication may come on top of TLS (RFC 7030 §3.2.3), and a client that
        # sends its credentials only when challenged must be challenged, or it never enrolls.
        raise EstError(401, "", {"WWW-Authenticate": f'Basic realm="{ca.name}", charset="UTF-8"'})

    async def _reenroll(self, request: Request, label: str | None, cert: x509.Certificate | None) -> Response:
        if cert is None:  # no password can stand for it: no Basic challenge (RFC 7030 §4.2.2)
            raise EstError(403, "re-enrollment is authenticated by the certificate it renews: present it over TLS")
        self._source.refresh_issuers()
        if label is not None:
            ca = self._ca(label)
        else:
            # Lamassu posts re-enrollment without a label: the CA is the one that issued the certificate.
            ca_or_none = next(
                (
                    r
                    for r in self._source.issuers.values()
                    if x509.load_der_x509_certificate(r.cert_der).subject == cert.issuer
                ),
                None,
            )
            if ca_or_none is None:
                raise EstError(403, "the client certificate was not issued by a CA of this server")
            ca = ca_or_none
        # By the identity a re-enrollment keeps (issuer and subject: RFC 7030 §4.2.2), not by the certificate,
        # which each re-enrollment renews: a chain of them would have a fresh bucket at every step.
        identity = hashlib.sha256(cert.issuer.public_bytes() + b"\x00" + cert.subject.public_bytes()).hexdigest()
        self._rate_limit("cert:" + identity)
        self._check_room()
        csr = decode_csr(await self._body(request), request.headers.get("content-type"), self._est.max_body_bytes)
        result = await self._submit(jobs.ReenrollJob(ca.name, _der(csr), cert.public_bytes(_DER)))
        return self._certificate(result)

    def _refuse_guesses_from(self, address: str) -> None:
        if self._limiter.exhausted(address):
            wait = self._limiter.seconds_to_next(address)
            raise EstError(429, "too many wrong passwords from this address", {"Retry-After": str(wait)})

    def _rate_limit(self, client: str) -> None:
        if not self._limiter.allow(client):
            wait = self._limiter.seconds_to_next(client)
            raise EstError(429, "too many requests from this client", {"Retry-After": str(wait)})

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._est.max_body_bytes:
            raise EstError(413, f"request body over {self._est.max_body_bytes} bytes")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > self._est.max_body_bytes:
                    raise EstError(413, f"request body over {self._est.max_body_bytes} bytes")
        except ClientDisconnect:  # the client went away, or did not send it in time (a 408 went out)
            raise EstError(400, "the request body did not arrive whole") from None
        return bytes(body)

    def _check_room(self) -> None:
        """503 before reading and verifying a CSR the full queue would refuse: in a storm the
        refusals would otherwise take the CPU that the accepted requests and OCSP need."""
        if not self._queue.has_room():
            raise self._busy("the signer queue is full")

    async def _submit(self, job: jobs.Job) -> jobs.Result:
        try:
            result = await self._queue.submit(job, self._est.job_timeout_seconds)
        except QueueError as exc:
            raise self._busy(f"the signer is not available: {exc}") from None
        if isinstance(result, jobs.Busy):
            raise EstError(503, "the signer is busy", {"Retry-After": str(result.retry_after)})
        if isinstance(result, jobs.Refused):
            if result.status == 503:
                raise self._busy(result.reason)
            raise EstError(result.status, result.reason)
        return result

    def _certificate(self, result: jobs.Result) -> Response:
        if not isinstance(result, jobs.Issued):
            raise EstError(500, "unexpected answer from the signer")
        return _est_body(
            base64_body(certs_only([x509.load_der_x509_certificate(result.cert_der)])), EST_PKCS7_CONTENT_TYPE
        )


def _est_body(body: bytes, content_type: str) -> Response:
    """200 with an EST body and its headers (Content-Transfer-Encoding, an exact Content-Length)."""
    headers = {
        name.decode("latin-1"): value.decode("latin-1") for name, value in est_response_headers(body, content_type)
    }
    return Response(body, 200, headers=headers)


def _der(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(_DER)


def _pem_to_der(pem: str) -> bytes:
    """The handshake certificate's DER from the TLS extension's PEM: undoing the base64 is enough.

    An unreadable PEM gives bytes that parse as no certificate, never a fallback to a forwarded one.
    """
    try:
        return ssl.PEM_cert_to_DER_cert(pem)
    except ValueError:
        return b"\x00"
