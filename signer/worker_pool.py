"""The signer's worker processes, fed in batches over their stdin and stdout.

Each worker (``python -m signer.worker DATA_DIR``) reads one frame of work items, runs them
and writes one frame of results in the same order. A worker that is free takes every job
waiting, up to ``MAX_BATCH`` (shared fairly when several are free): in a storm one worker's
batch is signed back to back and stored in one write transaction, so a commit and its fsync
serve many enrollments, and a quiet job waits for nobody. Frames are msgpack (the contract's
job and result types), so no pickling, no feeder or manager thread: the job server's event
loop does the reading and writing.

A worker that dies (killed, out of memory) takes only its batch with it, answered ``Busy``;
it is replaced at once (after ``RESTART_DELAY_S`` if it did not live that long, so a worker
that cannot start does not spin).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import msgspec

from contract import jobs

MAX_BATCH = 16  # jobs per frame: an RSA-2048 batch is ~16 x 3.5 ms of signing before its commit
# A batch carries up to MAX_BATCH jobs, each of which came in one frame from the edge.
MAX_BATCH_FRAME_BYTES = MAX_BATCH * jobs.MAX_FRAME_BYTES
RESTART_DELAY_S = 1.0
STOP_GRACE_S = 10.0


class WorkItem(msgspec.Struct, frozen=True, array_like=True):
    job: jobs.Job
    # Unix time after which the edge no longer waits: the worker then neither starts nor stores the job.
    deadline: float


ITEMS_ENCODER = msgspec.msgpack.Encoder()
ITEMS_DECODER = msgspec.msgpack.Decoder(list[WorkItem])
RESULTS_ENCODER = msgspec.msgpack.Encoder()
RESULTS_DECODER = msgspec.msgpack.Decoder(list[jobs.Result])


class WorkerPool(Protocol):
    """What the job server needs of its workers (faked with threads in the transport tests)."""

    async def start(self) -> None: ...

    async def run(self, job: jobs.Job, deadline: float) -> jobs.Result: ...

    async def close(self) -> None: ...


def worker_command(data_dir: Path) -> list[str]:
    """Found as the signer found its own modules: the same interpreter, environment and directory."""
    return [sys.executable, "-m", "signer.worker", str(data_dir)]


Waiting = tuple[WorkItem, "asyncio.Future[jobs.Result]"]


class ProcessPool:
    def __init__(self, command: Sequence[str], count: int, retry_after: int, logger: logging.Logger) -> None:
        self._command = list(command)
        self._count = count
        self._retry_after = retry_after
        self._logger = logger
        self._queue: collections.deque[Waiting] = collections.deque()
        self._work = asyncio.Event()
        self._idle = 0
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self.batches = 0  # frames sent, and jobs in them (the mean batch size is their ratio)
        self.jobs = 0

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._serve(index)) for index in range(self._count)]

    async def run(self, job: jobs.Job, deadline: float) -> jobs.Result:
        if self._closing:
            return jobs.Busy(self._retry_after)
        future: asyncio.Future[jobs.Result] = asyncio.get_running_loop().create_future()
        self._queue.append((WorkItem(job, deadline), future))
        self._work.set()
        return await future

    async def close(self) -> None:
        """Let the jobs accepted finish, then end every worker (EOF on its stdin); kill what hangs."""
        self._closing = True
        self._work.set()
        if self._tasks:
            _, hanging = await asyncio.wait(self._tasks, timeout=STOP_GRACE_S)
            if hanging:
                for proc in self._procs.values():
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()  # its batch is answered Busy
                await asyncio.wait(self._tasks)
        while self._queue:
            _, future = self._queue.popleft()
            if not future.done():
                future.set_result(jobs.Busy(self._retry_after))

    def worker_pids(self) -> list[int]:
        return [proc.pid for proc in self._procs.values()]

    async def _serve(self, index: int) -> None:
        while not self._closing:
            started = time.monotonic()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self._command,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    process_group=0,  # a terminal's Ctrl-C is the signer's to handle; we end workers by EOF
                )
            except OSError as exc:
                self._logger.error("cannot start signer worker %d: %s", index, exc)
                await asyncio.sleep(RESTART_DELAY_S)
                continue
            self._procs[index] = proc
            exited = asyncio.ensure_future(proc.wait())
            try:
                failed = await self._feed(proc, exited)
            finally:
                del self._procs[index]
                await self._end(proc)
            if failed:
                self._logger.error(
                    "signer worker %d (pid %d) ended with exit code %s: replacing it", index, proc.pid, proc.returncode
                )
                if not self._closing and time.monotonic() - started < RESTART_DELAY_S:
                    await asyncio.sleep(RESTART_DELAY_S)

    async def _feed(self, proc: asyncio.subprocess.Process, exited: asyncio.Future[int]) -> bool:
        """Hand ``proc`` batches until the pool closes (False) or the worker fails (True: its batch got Busy)."""
        assert proc.stdin is not None and proc.stdout is not None
        while (batch := await self._next_batch(exited)) is not None:
            try:
                proc.stdin.write(jobs.frame(ITEMS_ENCODER.encode([item for item, _ in batch])))
                await proc.stdin.drain()
                results = RESULTS_DECODER.decode(await jobs.read_frame(proc.stdout, MAX_BATCH_FRAME_BYTES))
                if len(results) != len(batch):
                    raise ValueError(f"{len(results)} results for {len(batch)} jobs")
            except (OSError, asyncio.IncompleteReadError, ValueError, msgspec.DecodeError) as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_result(jobs.Busy(self._retry_after))
                if not isinstance(exc, asyncio.IncompleteReadError | ConnectionError):
                    self._logger.error("signer worker pid %d: %s", proc.pid, exc)
                return True
            self.batches += 1
            self.jobs += len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        return exited.done()  # died while idle, or the pool is closing

    async def _next_batch(self, exited: asyncio.Future[int]) -> list[Waiting] | None:
        """The jobs waiting, up to MAX_BATCH and this worker's share of them; None once closing and idle,
        or as soon as the idle worker has died (so that it is replaced before a job is lost to it)."""
        self._idle += 1
        try:
            while exited.done() or not self._queue:
                if self._closing or exited.done():
                    return None
                self._work.clear()
                woken = asyncio.ensure_future(self._work.wait())
                await asyncio.wait((woken, exited), return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
            share = -(-len(self._queue) // self._idle)  # the free workers split what is waiting
            take = min(MAX_BATCH, share)
            return [self._queue.popleft() for _ in range(take)]
        finally:
            self._idle -= 1

    async def _end(self, proc: asyncio.subprocess.Process) -> None:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
