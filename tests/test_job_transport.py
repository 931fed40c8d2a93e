"""The embedded job backend end to end: edge.jobqueue.UnixSocketQueue <-> signer.jobserver.JobServer
over a real Unix socket, with a thread pool and fake job functions (the worker processes are
exercised in tests/signer/test_worker_pool.py and the integration tests)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from contract import jobs
from edge.jobqueue import QueueFull, QueueTimeout, QueueUnavailable, UnixSocketQueue, start_deadline
from signer.jobserver import JobServer

LOG = logging.getLogger("test")
JOB = jobs.EnrollJob(ca="ca", csr_der=b"csr", requester="ra")


def echo(job: jobs.Job, deadline: float) -> jobs.Result:
    assert isinstance(job, jobs.EnrollJob)
    return jobs.Issued(cert_der=job.csr_der + b"!")


class ThreadPool:
    """The job server's WorkerPool seam, with threads running a plain job function."""

    def __init__(self, run_job: Callable[[jobs.Job, float], jobs.Result], threads: int) -> None:
        self._run_job = run_job
        self._executor = ThreadPoolExecutor(threads)

    async def start(self) -> None:
        pass

    async def run(self, job: jobs.Job, deadline: float) -> jobs.Result:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run_job, job, deadline)

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


async def with_server(sock: Path, run_job, body, max_queue: int = 8, workers: int = 4):
    stop = asyncio.Event()
    server = JobServer(sock, ThreadPool(run_job, workers), max_queue, 7, LOG)
    serving = asyncio.create_task(server.serve(stop))
    for _ in range(100):
        if sock.exists():
            break
        await asyncio.sleep(0.01)
    try:
        return await body()
    finally:
        stop.set()
        await serving


def test_round_trip_and_concurrency(tmp_path):
    sock = tmp_path / "jobs.sock"

    async def body():
        queue = UnixSocketQueue(sock, max_inflight=32, logger=LOG)
        results = await asyncio.gather(
            *(queue.submit(jobs.EnrollJob("ca", b"%d" % i, "ra"), timeout=5) for i in range(20))
        )
        await queue.close()
        return results

    results = asyncio.run(with_server(sock, echo, body, max_queue=32))
    assert results == [jobs.Issued(b"%d!" % i) for i in range(20)]
    assert not sock.exists()  # removed on shutdown


def held_worker() -> tuple[threading.Event, Callable[[jobs.Job, float], jobs.Result]]:
    """A worker that issues only once the returned event is set (at most 5 s later)."""
    release = threading.Event()

    def slow(job: jobs.Job, deadline: float) -> jobs.Result:
        release.wait(5)
        return jobs.Issued(b"x")

    return release, slow


def test_server_answers_busy_past_its_queue_bound(tmp_path):
    sock = tmp_path / "jobs.sock"
    release, slow = held_worker()

    async def body():
        queue = UnixSocketQueue(sock, max_inflight=32, logger=LOG)
        pending = [asyncio.create_task(queue.submit(JOB, timeout=5)) for _ in range(3)]
        await asyncio.sleep(0.2)
        extra = await queue.submit(JOB, timeout=5)  # the server holds 2: the third and this are refused
        release.set()
        done = await asyncio.gather(*pending)
        await queue.close()
        return extra, done

    extra, done = asyncio.run(with_server(sock, slow, body, max_queue=2))
    assert extra == jobs.Busy(7)
    assert sorted(type(r).__name__ for r in done) == ["Busy", "Issued", "Issued"]


def test_client_fails_fast_when_its_slots_are_full(tmp_path):
    sock = tmp_path / "jobs.sock"
    release, slow = held_worker()

    async def body():
        queue = UnixSocketQueue(sock, max_inflight=1, logger=LOG)
        first = asyncio.create_task(queue.submit(JOB, timeout=5))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(QueueFull):
            await queue.submit(JOB, timeout=5)
        waited = time.monotonic() - started
        release.set()
        await first
        await queue.close()
        return waited

    assert asyncio.run(with_server(sock, slow, body)) < 0.5


def test_timeout_and_no_server(tmp_path):
    sock = tmp_path / "jobs.sock"
    release, slow = held_worker()

    async def body():
        queue = UnixSocketQueue(sock, max_inflight=4, logger=LOG)
        with pytest.raises(QueueTimeout):
            await queue.submit(JOB, timeout=0.3)
        release.set()
        await queue.close()

    asyncio.run(with_server(sock, slow, body))

    async def nobody():
        queue = UnixSocketQueue(tmp_path / "absent.sock", max_inflight=4, logger=LOG)
        with pytest.raises(QueueUnavailable):
            await queue.submit(JOB, timeout=1)

    asyncio.run(nobody())


def test_a_failing_job_is_answered_busy_and_the_server_keeps_serving(tmp_path):
    sock = tmp_path / "jobs.sock"
    calls = []

    def flaky(job: jobs.Job, deadline: float) -> jobs.Result:
        calls.append(job)
        if len(calls) == 1:
            raise RuntimeError("worker bug")
        return echo(job, deadline)

    async def body():
        queue = UnixSocketQueue(sock, max_inflight=4, logger=LOG)
        first = await queue.submit(JOB, timeout=5)
        second = await queue.submit(JOB, timeout=5)
        await queue.close()
        return first, second

    assert asyncio.run(with_server(sock, flaky, body)) == (jobs.Busy(7), jobs.Issued(b"csr!"))


def test_server_restart_is_picked_up_by_the_client(tmp_path):
    sock = tmp_path / "jobs.sock"

    async def scenario():
        queue = UnixSocketQueue(sock, max_inflight=4, logger=LOG)

        async def one():
            return await queue.submit(JOB, timeout=5)

        first = await with_server(sock, echo, one)
        await asyncio.sleep(0.1)
        second = await with_server(sock, echo, one)
        await queue.close()
        return first, second

    assert asyncio.run(scenario()) == (jobs.Issued(b"csr!"), jobs.Issued(b"csr!"))


def test_a_job_whose_client_gave_up_is_never_run(tmp_path):
    """The edge answered 503 on timeout: the job must not issue anything afterwards."""
    sock = tmp_path / "jobs.sock"
    release = threading.Event()
    ran: list[jobs.Job] = []

    def one_at_a_time(job: jobs.Job, deadline: float) -> jobs.Result:
        if time.time() >= deadline:  # what signer.worker.Worker.run_batch checks before running
            return jobs.Busy(1)
        ran.append(job)
        release.wait(5)
        return jobs.Issued(b"x")

    async def body():
        queue = UnixSocketQueue(sock, max_inflight=4, logger=LOG)
        first = asyncio.create_task(queue.submit(jobs.EnrollJob("ca", b"first", "ra"), timeout=5))
        await asyncio.sleep(0.1)
        with pytest.raises(QueueTimeout):  # queued behind the first, in a pool of one
            await queue.submit(jobs.EnrollJob("ca", b"late", "ra"), timeout=0.5)
        release.set()
        await first
        await asyncio.sleep(0.3)
        await queue.close()

    asyncio.run(with_server(sock, one_at_a_time, body, workers=1))
    assert [j.csr_der for j in ran if isinstance(j, jobs.EnrollJob)] == [b"first"]


def make_certificate(serial: int) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")])
    now = datetime.datetime.now(datetime.UTC)
    builder = x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    builder = builder.serial_number(serial).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
    return builder.sign(key, hashes.SHA256())


def test_a_job_started_just_in_time_is_stored_and_answered_before_the_edge_gives_up(tmp_path):
    """Found by a flakiness audit: a job started just before its deadline, then stored (a commit and its
    fsync at the workers' low priority), was answered after the edge had given up: a 503 for a
    certificate in the inventory. The start deadline now leaves half the timeout for that."""
    sock = tmp_path / "jobs.sock"
    timeout = 1.0

    def starts_late(job: jobs.Job, deadline: float) -> jobs.Result:
        time.sleep(max(0.0, deadline - 0.05 - time.time()))  # queued behind others until then
        if time.time() >= deadline:  # what signer.worker.Worker.run_batch checks
            return jobs.Busy(1)
        time.sleep(0.3)  # signing, then the batch's commit
        return jobs.Issued(b"x")

    async def body():
        queue = UnixSocketQueue(sock, max_inflight=4, logger=LOG)
        started = time.monotonic()
        result = await queue.submit(JOB, timeout=timeout)
        await queue.close()
        return result, time.monotonic() - started

    result, took = asyncio.run(with_server(sock, starts_late, body))
    assert result == jobs.Issued(b"x")
    assert took < timeout


def test_start_deadline_leaves_half_the_timeout_at_most_five_seconds():
    assert start_deadline(100.0, 1.0) == 100.5
    assert start_deadline(100.0, 10.0) == 105.0
    assert start_deadline(100.0, 60.0) == 155.0


def test_a_certificate_issued_after_the_edge_gave_up_is_logged(tmp_path, caplog):
    """A worker stalled past the whole timeout (a stopped process, a disk taking seconds to sync) still
    stores what it signed: the edge cannot take the 503 back, but says which certificate it was."""
    sock = tmp_path / "jobs.sock"
    cert = make_certificate(0xC0FFEE)
    release = threading.Event()

    def stalled(job: jobs.Job, deadline: float) -> jobs.Result:
        release.wait(5)
        return jobs.Issued(cert.public_bytes(serialization.Encoding.DER))

    async def body():
        queue = UnixSocketQueue(sock, max_inflight=4, logger=LOG)
        with pytest.raises(QueueTimeout):
            await queue.submit(JOB, timeout=0.3)
        release.set()
        for _ in range(100):
            if "was issued after" in caplog.text:
                break
            await asyncio.sleep(0.02)
        await queue.close()

    with caplog.at_level(logging.ERROR, logger="test"):
        asyncio.run(with_server(sock, stalled, body))
    assert [r.getMessage() for r in caplog.records] == [
        "certificate serial C0FFEE was issued after its request had ended (answered 503 past"
        " est.job_timeout_seconds, or the client gone): it was never delivered"
    ]


def test_an_old_connection_ending_late_fails_none_of_the_new_ones_jobs(tmp_path):
    """The audit's reading: a connection dropped on a write error, its reader ending after a new one
    was opened, closed the new connection too and failed every job waiting on it."""
    sock = tmp_path / "jobs.sock"

    def slow_echo(job: jobs.Job, deadline: float) -> jobs.Result:
        time.sleep(0.3)
        return echo(job, deadline)

    async def body():
        queue = UnixSocketQueue(sock, max_inflight=4, logger=LOG)
        assert await queue.submit(JOB, timeout=5) == jobs.Issued(b"csr!")
        old_reader = queue._reader_task
        queue._drop_connection(queue._writer)  # what a failed write does
        waiting = asyncio.create_task(queue.submit(JOB, timeout=5))  # on a new connection
        await asyncio.sleep(0.05)
        assert old_reader is not None and queue._reader_task is not old_reader
        await old_reader  # the old connection's end, seen while the new one's job is signed
        result = await waiting
        await queue.close()
        return result

    assert asyncio.run(with_server(sock, slow_echo, body)) == jobs.Issued(b"csr!")
