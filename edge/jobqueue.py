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

from contract import jobs

DEADLINE_MARGIN = 0.25  # seconds


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
                # The workers give up a little before we do, so an unstarted job never runs late.
                deadline = time.time() + max(0.0, timeout - DEADLINE_MARGIN)
                writer.write(jobs.frame(jobs.REQUEST_ENCODER.encode(jobs.JobRequest(job_id, job, deadline))))
                await writer.drain()
                return await future
        except TimeoutError:
            raise QueueTimeout(f"no signer answered within {timeout:g} s") from None
        except (OSError, ConnectionError) as exc:
            self._drop_connection()
            raise QueueUnavailable(f"signer job server unreachable: {exc}") from None
        finally:
            self._waiting.pop(job_id, None)

    async def _connection(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is None or self._writer.is_closing():
                reader, writer = await asyncio.open_unix_connection(str(self._path))
                self._writer = writer
                self._reader_task = asyncio.create_task(self._read_replies(reader))
            return self._writer

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                reply = jobs.REPLY_DECODER.decode(await jobs.read_frame(reader))
                future = self._waiting.get(reply.id)
                if future is not None and not future.done():
                    future.set_result(reply.result)
        except (asyncio.IncompleteReadError, OSError, ValueError) as exc:
            self._logger.warning("signer job connection closed: %s", exc)
        finally:
            self._drop_connection()
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(QueueUnavailable("the signer job server closed the connection"))

    def _drop_connection(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = None

    async def close(self) -> None:
        self._drop_connection()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
