"""The signer's job server: the embedded backend of the edge's job queue.

It listens on a Unix socket in the signer's side of the data directory and
runs each job in a pool of worker processes that hold the CA keys
(``signer.worker_pool``). Bounded: at most ``max_queue`` jobs are accepted and
unfinished at once; past that a job is answered ``Busy`` at once, so the edge
fails fast with 503. A worker that dies takes only its own jobs with it
(answered ``Busy``) and is replaced. A job's certificate is in the inventory
before its result is sent, so nothing acknowledged is ever lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract import jobs
from signer.worker_pool import WorkerPool


class JobServer:
    def __init__(
        self,
        socket: Path,
        pool: WorkerPool,
        max_queue: int,
        retry_after: int,
        logger: logging.Logger,
    ) -> None:
        self._socket = socket
        self._pool = pool
        self._max_queue = max_queue
        self._retry_after = retry_after
        self._logger = logger
        self._accepted = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._readers: set[asyncio.Task[Any]] = set()

    async def serve(self, stop: asyncio.Event, listening: Callable[[], None] = lambda: None) -> None:
        """Serve until ``stop`` is set, then finish the jobs already accepted; ``listening`` is called
        once the socket accepts connections."""
        with contextlib.suppress(FileNotFoundError):
            self._socket.unlink()  # a stale socket left by a killed signer
        await self._pool.start()
        try:
            server = await asyncio.start_unix_server(self._connection, path=str(self._socket))
            os.chmod(self._socket, 0o660)
        except BaseException:
            await self._pool.close()  # no worker outlives a server that never listened
            raise
        self._logger.info("job server listening on %s", self._socket)
        listening()
        try:
            await stop.wait()
        finally:
            server.close()
            await server.wait_closed()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=30)
            for writer in list(self._writers):  # clients reconnect to the next server
                writer.close()
            for reader in list(self._readers):
                reader.cancel()
            if self._readers:
                await asyncio.wait(self._readers, timeout=5)
            await self._pool.close()
            with contextlib.suppress(FileNotFoundError):
                self._socket.unlink()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lock = asyncio.Lock()  # replies of concurrent jobs must not interleave on the stream
        self._writers.add(writer)
        me = asyncio.current_task()
        if me is not None:
            self._readers.add(me)
        try:
            while True:
                request = jobs.REQUEST_DECODER.decode(await jobs.read_frame(reader))
                task = asyncio.create_task(self._answer(request, writer, lock))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the edge worker went away (its started jobs still finish), or we are stopping
        except Exception as exc:  # a malformed frame: drop this connection only
            self._logger.warning("job connection dropped: %s", exc)
        finally:
            self._writers.discard(writer)
            if me is not None:
                self._readers.discard(me)
            writer.close()

    async def _answer(self, request: jobs.JobRequest, writer: asyncio.StreamWriter, lock: asyncio.Lock) -> None:
        result = await self.run(request.job, request.deadline)
        async with lock:
            if not writer.is_closing():
                writer.write(jobs.frame(jobs.REPLY_ENCODER.encode(jobs.JobReply(request.id, result))))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()

    async def run(self, job: jobs.Job, deadline: float) -> jobs.Result:
        if self._accepted >= self._max_queue or time.time() >= deadline:
            return jobs.Busy(self._retry_after)
        self._accepted += 1
        try:
            return await self._pool.run(job, deadline)
        except Exception:
            self._logger.exception("job %s failed", type(job).__name__)
            return jobs.Busy(self._retry_after)
        finally:
            self._accepted -= 1
