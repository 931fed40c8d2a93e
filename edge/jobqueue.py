"""How the edge hands signing jobs to the signer workers and awaits their results.

``JobQueue`` is the seam: the EST endpoints and live OCSP only ever call
``submit``. The embedded backend (``UnixSocketQueue``) talks to the signer's
job server over a Unix socket on the same machine; a NATS backend (request/reply
to a queue group) can implement the same method without touching the endpoints.

Bounded: at most ``max_inflight`` jobs await at once per edge worker; when full,
``submit`` fails fast with ``QueueFull`` instead of piling up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from pathlib import Path
from typing import Protocol

from cryptography import x509

from contract import jobs

# A job is started by a worker only within the first part of its timeout; the rest is left for its
# batch to be stored (a commit and its fsync, at the workers' low priority) and the reply to come back,
# so that a job started in time is answered before the edge stops waiting: a client told 503 is then
# not issued a certificate it never got. Half the timeout, at most this much.
STORE_GRACE_SECONDS = 5.0


def start_deadline(now: float, timeout: float) -> float:
    """The Unix time after which a worker must not start a job submitted at ``now``."""
    return now + timeout - min(STORE_GRACE_SECONDS, timeout / 2)


class QueueError(Exception):
    """The job could not be run now; the caller answers 503 with Retry-After."""


class QueueFull(QueueError):
    """Too many jobs in flight from this edge worker."""


class QueueUnavailable(QueueError):
    """No signer job server answers (not running, or the connection broke)."""


class QueueTimeout(QueueError):
    """No result within the timeout."""


class JobQueue(Protocol):
    async def submit(self, job: jobs.Job, timeout: float) -> jobs.Result: ...

    def has_room(self) -> bool:
        """False when a job submitted now would be refused at once (the caller can skip its own work)."""
        ...


class UnixSocketQueue:
    """One multiplexed connection per edge worker to the signer's job server, reopened on demand."""

    def __init__(self, path: Path, max_inflight: int, logger: logging.Logger) -> None:
        self._path = path
        self._slots = max_inflight
        self._logger = logger
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[jobs.Result]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._connection_of: dict[int, asyncio.StreamWriter] = {}  # job id -> the connection it was sent on
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    def has_room(self) -> bool:
        return len(self._waiting) < self._slots

    async def submit(self, job: jobs.Job, timeout: float) -> jobs.Result:
        if len(self._waiting) >= self._slots:
            raise QueueFull(f"{self._slots} signing jobs already in flight")
        job_id = next(self._ids)
        future: asyncio.Future[jobs.Result] = asyncio.get_running_loop().create_future()
        self._waiting[job_id] = future
        try:
            async with asyncio.timeout(timeout):
                writer = await self._connection()
                deadline = start_deadline(time.time(), timeout)
                self._connection_of[job_id] = writer
                writer.write(jobs.frame(jobs.REQUEST_ENCODER.encode(jobs.JobRequest(job_id, job, deadline))))
                await writer.drain()
                return await future
        except TimeoutError:
            raise QueueTimeout(f"no signer answered within {timeout:g} s") from None
        except (OSError, ConnectionError) as exc:
            self._drop_connection(self._connection_of.get(job_id, self._writer))
            raise QueueUnavailable(f"signer job server unreachable: {exc}") from None
        finally:
            self._waiting.pop(job_id, None)
            self._connection_of.pop(job_id, None)

    async def _connection(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is None or self._writer.is_closing():
                reader, writer = await asyncio.open_unix_connection(str(self._path))
                self._writer = writer
                self._reader_task = asyncio.create_task(self._read_replies(reader, writer))
            return self._writer

    async def _read_replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                reply = jobs.REPLY_DECODER.decode(await jobs.read_frame(reader))
                future = self._waiting.get(reply.id)
                if future is not None and not future.done():
                    future.set_result(reply.result)
                elif isinstance(reply.result, jobs.Issued | jobs.IssuedWithKey):
                    self._issued_too_late(reply.result.cert_der)
        except (asyncio.IncompleteReadError, OSError, ValueError) as exc:
            self._logger.warning("signer job connection closed: %s", exc)
        finally:
            # Only this connection's jobs fail: a new connection may already carry others.
            self._drop_connection(writer)
            for job_id, future in self._waiting.items():
                if self._connection_of.get(job_id) is writer and not future.done():
                    future.set_exception(QueueUnavailable("the signer job server closed the connection"))

    def _issued_too_late(self, cert_der: bytes) -> None:
        """A certificate whose request had ended (a 503 past est.job_timeout_seconds, or a client gone):
        said, so that an operator can revoke it."""
        try:
            what = f"certificate serial {x509.load_der_x509_certificate(cert_der).serial_number:X}"
        except ValueError:
            what = "a certificate"
        self._logger.error(
            "%s was issued after its request had ended (answered 503 past est.job_timeout_seconds, or the"
            " client gone): it was never delivered",
            what,
        )

    def _drop_connection(self, writer: asyncio.StreamWriter | None) -> None:
        if writer is not None:
            writer.close()
        if writer is self._writer:
            self._writer = None

    async def close(self) -> None:
        self._drop_connection(self._writer)
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
